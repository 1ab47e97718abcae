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
