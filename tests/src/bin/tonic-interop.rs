//! Interop driver for `otel_tonic`, used by `tests/interop/grpcio_interop.py`
//! to check our tonic server and client against Python's grpcio with
//! opentelemetry-instrumentation-grpc.
//!
//! `tonic-interop serve`: runs a `helloworld.Greeter` tonic server behind
//! `otel_tonic`'s server layer on 127.0.0.1 (ephemeral port) and prints
//! `{"port": N}`. Then reads commands from stdin, one a line:
//! - `spans N`: waits (at most 5 s) until N spans have ended, prints them as
//!   one JSON line `{"spans": [...]}` and forgets them;
//! - `quit` (or end of input): exits.
//!
//! The Greeter answers `SayHello(name)` with `Hello <name>`, except:
//! `fail:<code>` fails with that gRPC code (trailers-only), and `traceparent`
//! answers with the `traceparent` the handler's context would send onward
//! (what a client layer would inject on a downstream call).
//!
//! `tonic-interop call PORT NAME`: calls `helloworld.Greeter/SayHello` at
//! 127.0.0.1:PORT through `otel_tonic`'s client layer and prints one JSON
//! line `{"reply": "...", "code": 0, "message": "...", "status_in_headers":
//! bool, "spans": [...]}`, where `status_in_headers` says the server sent
//! `grpc-status` in the response headers (a trailers-only response).
//!
//! A span is `{"name", "kind", "trace_id", "span_id", "parent_span_id",
//! "parent_is_remote", "flags" (two hex digits), "status" ("unset" | "ok" |
//! "error"), "description", "scope", "attributes": {key: string value}}`.

use std::io::{BufRead, Write};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry_sdk::trace::SpanData;
use otel_integration_tests::Telemetry;
use otel_tower::propagation::{CompositePropagator, HeaderInjector};
use serde_json::{Value, json};
use tonic::{Request, Response};

#[allow(dead_code, clippy::all)]
mod pb {
    tonic::include_proto!("helloworld");
}

use pb::greeter_client::GreeterClient;
use pb::greeter_server::{Greeter, GreeterServer};
use pb::{HelloReply, HelloRequest};

fn instrumentation(t: &Telemetry) -> otel_tower::Instrumentation {
    otel_tonic::instrumentation()
        .with_tracer_provider(t.tracer_provider.clone())
        .with_meter_provider(t.meter_provider.clone())
        .with_propagator(CompositePropagator::w3c())
}

fn span_json(span: &SpanData) -> Value {
    let kind = match span.span_kind {
        SpanKind::Client => "client",
        SpanKind::Server => "server",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal => "internal",
    };
    let (status, description) = match &span.status {
        Status::Unset => ("unset", String::new()),
        Status::Ok => ("ok", String::new()),
        Status::Error { description } => ("error", description.to_string()),
    };
    let attributes: serde_json::Map<String, Value> = span
        .attributes
        .iter()
        .map(|kv| (kv.key.to_string(), Value::String(kv.value.to_string())))
        .collect();
    json!({
        "name": span.name,
        "kind": kind,
        "trace_id": span.span_context.trace_id().to_string(),
        "span_id": span.span_context.span_id().to_string(),
        "parent_span_id": span.parent_span_id.to_string(),
        "parent_is_remote": span.parent_span_is_remote,
        "flags": format!("{:02x}", span.span_context.trace_flags().to_u8()),
        "status": status,
        "description": description,
        "scope": span.instrumentation_scope.name(),
        "attributes": attributes,
    })
}

struct InteropGreeter;

#[tonic::async_trait]
impl Greeter for InteropGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, tonic::Status> {
        let name = request.into_inner().name;
        if let Some(code) = name.strip_prefix("fail:") {
            let code = tonic::Code::from_i32(code.parse().unwrap_or(2));
            return Err(tonic::Status::new(
                code,
                format!("failed on purpose: {name}"),
            ));
        }
        let message = if name == "traceparent" {
            let mut headers = http::HeaderMap::new();
            CompositePropagator::w3c()
                .inject_context(&Context::current(), &mut HeaderInjector(&mut headers));
            headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned()
        } else {
            format!("Hello {name}")
        };
        Ok(Response::new(HelloReply { message }))
    }

    type ServerStreamStream = tokio_stream::Empty<Result<HelloReply, tonic::Status>>;

    async fn server_stream(
        &self,
        _request: Request<HelloRequest>,
    ) -> Result<Response<Self::ServerStreamStream>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "not used by the interop suite",
        ))
    }

    async fn client_stream(
        &self,
        _request: Request<tonic::Streaming<HelloRequest>>,
    ) -> Result<Response<HelloReply>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "not used by the interop suite",
        ))
    }

    type BidiStream = tokio_stream::Empty<Result<HelloReply, tonic::Status>>;

    async fn bidi(
        &self,
        _request: Request<tonic::Streaming<HelloRequest>>,
    ) -> Result<Response<Self::BidiStream>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "not used by the interop suite",
        ))
    }
}

fn print_line(value: &Value) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}").expect("stdout");
    out.flush().expect("stdout");
}

async fn wait_spans(t: &Telemetry, n: usize) -> Vec<SpanData> {
    for _ in 0..500 {
        let spans = t.finished_spans();
        if spans.len() >= n {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t.finished_spans()
}

async fn serve() {
    let t = Telemetry::new();
    let otel = instrumentation(&t);
    let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
        .expect("bind 127.0.0.1");
    let port = incoming.local_addr().expect("local addr").port();
    let router = tonic::transport::Server::builder()
        .layer(otel.server_layer())
        .add_service(GreeterServer::new(InteropGreeter));
    tokio::spawn(async move {
        router
            .serve_with_incoming(incoming)
            .await
            .expect("tonic server")
    });
    print_line(&json!({ "port": port }));

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("spans") => {
                let n = words.next().and_then(|n| n.parse().ok()).unwrap_or(1);
                let spans = wait_spans(&t, n).await;
                t.spans.reset();
                let spans: Vec<Value> = spans.iter().map(span_json).collect();
                print_line(&json!({ "spans": spans }));
            }
            Some("quit") => break,
            _ => print_line(&json!({ "error": format!("unknown command {line:?}") })),
        }
    }
}

async fn call(port: u16, name: String) {
    let t = Telemetry::new();
    let otel = instrumentation(&t);
    let origin: http::Uri = format!("http://127.0.0.1:{port}").parse().unwrap();
    let channel = tonic::transport::Endpoint::from(origin.clone())
        .connect()
        .await
        .expect("connect to the grpcio server");
    // Below the client layer, note whether the status came in the response
    // headers (a trailers-only response) rather than in trailers.
    let status_in_headers = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = status_in_headers.clone();
    let channel = tower::ServiceBuilder::new()
        .layer(otel.client_layer())
        .map_response(move |res: http::Response<tonic::body::Body>| {
            seen.store(
                res.headers().contains_key("grpc-status"),
                std::sync::atomic::Ordering::SeqCst,
            );
            res
        })
        .service(channel);
    let mut client = GreeterClient::with_origin(channel, origin);
    let mut request = Request::new(HelloRequest { name });
    request.set_timeout(Duration::from_secs(5));
    let (reply, code, message) = match client.say_hello(request).await {
        Ok(r) => (r.into_inner().message, 0, String::new()),
        Err(status) => (
            String::new(),
            status.code() as i32,
            status.message().to_owned(),
        ),
    };
    let spans: Vec<Value> = wait_spans(&t, 1).await.iter().map(span_json).collect();
    let status_in_headers = status_in_headers.load(std::sync::atomic::Ordering::SeqCst);
    print_line(&json!({
        "reply": reply,
        "code": code,
        "message": message,
        "status_in_headers": status_in_headers,
        "spans": spans,
    }));
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve"] => serve().await,
        ["call", port, name] => call(port.parse().expect("port"), (*name).to_owned()).await,
        _ => {
            eprintln!("usage: tonic-interop serve | tonic-interop call PORT NAME");
            std::process::exit(2);
        }
    }
}
