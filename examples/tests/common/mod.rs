//! A minimal OTLP/HTTP receiver on 127.0.0.1 for the examples' tests: it
//! decodes the protobuf export requests with `opentelemetry-proto`.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

/// One received span.
#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub name: String,
    pub kind: i32,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent_span_id: Vec<u8>,
}

/// Everything received so far.
#[derive(Default, Debug)]
pub struct Received {
    pub spans: Vec<Span>,
    pub metrics: Vec<(String, String)>,
}

fn service_name(resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    resource
        .into_iter()
        .flat_map(|r| &r.attributes)
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Starts the receiver; it runs until the test's runtime ends.
pub async fn start() -> (SocketAddr, Arc<Mutex<Received>>) {
    let received = Arc::new(Mutex::new(Received::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let sink = sink.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let sink = sink.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let mut r = sink.lock().unwrap();
                            if path == "/v1/traces" {
                                let export =
                                    ExportTraceServiceRequest::decode(body).expect("trace export");
                                for rs in export.resource_spans {
                                    let service = service_name(rs.resource.as_ref());
                                    for ss in rs.scope_spans {
                                        for s in ss.spans {
                                            r.spans.push(Span {
                                                service: service.clone(),
                                                name: s.name,
                                                kind: s.kind,
                                                trace_id: s.trace_id,
                                                span_id: s.span_id,
                                                parent_span_id: s.parent_span_id,
                                            });
                                        }
                                    }
                                }
                            } else if path == "/v1/metrics" {
                                let export = ExportMetricsServiceRequest::decode(body)
                                    .expect("metrics export");
                                for rm in export.resource_metrics {
                                    let service = service_name(rm.resource.as_ref());
                                    for sm in rm.scope_metrics {
                                        r.metrics.extend(
                                            sm.metrics
                                                .into_iter()
                                                .map(|m| (service.clone(), m.name)),
                                        );
                                    }
                                }
                            }
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, received)
}

/// A child process that is killed when dropped, so a failed assertion does
/// not leave an example running.
pub struct Running(Option<std::process::Child>);

impl Running {
    /// Starts `cmd`.
    pub fn spawn(cmd: &mut std::process::Command) -> Self {
        Running(Some(cmd.spawn().expect("start the example")))
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, std::process::Child::id)
    }

    /// Waits (bounded) for the process to exit by itself; past `limit` it is
    /// killed and the test fails.
    pub fn wait_within(&mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        let child = self.0.as_mut().expect("running");
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.0 = None;
                return status;
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.0 = None;
                panic!("the example did not finish within {limit:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Sends `signal` (e.g. `-INT`, `-TERM`) and waits (bounded) for the exit.
    pub fn signal_and_wait(&mut self, signal: &str) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .arg(signal)
            .arg(self.id().to_string())
            .status();
        self.wait_within(std::time::Duration::from_secs(5))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `cmd` to completion within `limit` (killed past it), capturing
/// stdout and stderr.
pub fn output_within(
    cmd: &mut std::process::Command,
    limit: std::time::Duration,
) -> std::process::Output {
    use std::io::Read;
    use std::process::Stdio;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut running = Running::spawn(cmd);
    let child = running.0.as_mut().expect("running");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let stdout = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let stderr = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let status = running.wait_within(limit);
    std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}
