//! Interop driver for otel-connect, used by `tests/interop/connect-node/
//! interop.mjs` (@connectrpc/connect-node) and `tests/interop/
//! connect_python.py` (Python `connectrpc`).
//!
//! Modes:
//!
//! - `connect-interop descriptor PATH`: writes the `FileDescriptorSet` of
//!   `observability/ping/v1/ping.proto` (the peers build their message types
//!   from it at run time).
//! - `connect-interop server`: serves the Ping service (connectrpc behind
//!   axum, `otel_connect::new_interceptor()` layer, message events on) on
//!   127.0.0.1 and prints `LISTEN http://127.0.0.1:PORT`, then a
//!   `REQUEST {json}` line per HTTP request (method, path, traceparent,
//!   content-type and encodings) and a `SPAN {json}` line per ended span,
//!   until stdin closes.
//! - `connect-interop client URL`: calls a Ping server at URL with our
//!   instrumented connectrpc client over Connect, gRPC and gRPC-Web (HTTP/2),
//!   prints `CALL {json}` per call (protocol, method, the code our client got)
//!   and `SPAN {json}` per client span, then exits.
//!
//! A span is `{"name", "kind", "trace_id", "span_id", "parent_span_id",
//! "traceparent", "status": "unset"|"error", "description", "attributes":
//! {key: string or array}, "events": [{"name", "attributes"}], "links":
//! [{"trace_id", "span_id"}]}`.

#[path = "../../tests/connect_support/mod.rs"]
mod connect_support;

use std::io::{BufRead, Write};
use std::time::Duration;

use connect_support::*;
use connectrpc::client::{ClientConfig, Http2Connection};
use connectrpc::{ConnectError, Protocol};
use opentelemetry::Value;
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use otel_connect::OtelTransport;
use serde_json::{Value as Json, json};

const DESCRIPTOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ping_descriptor.bin"));

fn value_json(v: &Value) -> Json {
    match v {
        Value::Bool(b) => json!(b),
        Value::I64(i) => json!(i),
        Value::F64(f) => json!(f),
        Value::String(s) => json!(s.as_str()),
        Value::Array(opentelemetry::Array::String(a)) => {
            json!(a.iter().map(|s| s.as_str()).collect::<Vec<_>>())
        }
        other => json!(other.to_string()),
    }
}

fn span_json(s: &SpanData) -> Json {
    let sc = &s.span_context;
    let (status, description) = match &s.status {
        Status::Error { description } => ("error", description.to_string()),
        Status::Ok => ("ok", String::new()),
        Status::Unset => ("unset", String::new()),
    };
    json!({
        "name": s.name,
        "kind": match s.span_kind {
            SpanKind::Client => "client",
            SpanKind::Server => "server",
            _ => "other",
        },
        "trace_id": sc.trace_id().to_string(),
        "span_id": sc.span_id().to_string(),
        "parent_span_id": s.parent_span_id.to_string(),
        "traceparent": format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()),
        "status": status,
        "description": description,
        "attributes": s.attributes.iter()
            .map(|kv| (kv.key.to_string(), value_json(&kv.value)))
            .collect::<serde_json::Map<_, _>>(),
        "events": s.events.iter().map(|e| json!({
            "name": e.name,
            "attributes": e.attributes.iter()
                .map(|kv| (kv.key.to_string(), value_json(&kv.value)))
                .collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
        "links": s.links.iter().map(|l| json!({
            "trace_id": l.span_context.trace_id().to_string(),
            "span_id": l.span_context.span_id().to_string(),
        })).collect::<Vec<_>>(),
    })
}

fn print_line(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Prints spans as they end.
fn spawn_span_printer(exporter: InMemorySpanExporter) {
    tokio::spawn(async move {
        let mut printed = 0;
        loop {
            let spans = exporter.get_finished_spans().unwrap_or_default();
            for s in spans.iter().skip(printed) {
                print_line(format!("SPAN {}", span_json(s)));
            }
            printed = spans.len();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

fn providers() -> (InMemorySpanExporter, SdkTracerProvider) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    (exporter, provider)
}

async fn server() {
    let (exporter, provider) = providers();
    let otel = otel_connect::new_interceptor()
        .with_tracer_provider(provider)
        .with_propagator(otel_tower::propagation::CompositePropagator::w3c())
        .with_semconv(otel_tower::Semconv::Stable)
        .with_trace_events();
    // The Ping service behind axum with our layer, and outside it a layer
    // that reports each HTTP request (so the peers can tell GET from POST).
    let seen = Seen::default();
    let app = axum::Router::new()
        .fallback_service(connect_service(&seen, ServerOptions::default()))
        .layer(otel.server_layer())
        .layer(tower::util::MapRequestLayer::new(
            |req: http::Request<axum::body::Body>| {
                let header = |name| {
                    req.headers()
                        .get(name)
                        .and_then(|v: &http::HeaderValue| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                print_line(format!(
                    "REQUEST {}",
                    json!({"method": req.method().as_str(), "path": req.uri().path(),
                           "traceparent": header("traceparent"),
                           "content_type": header("content-type"),
                           "content_encoding": header("content-encoding"),
                           "grpc_encoding": header("grpc-encoding"),
                           "connect_content_encoding": header("connect-content-encoding")})
                ));
                req
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap()
    });
    print_line(format!("LISTEN http://{addr}"));
    spawn_span_printer(exporter.clone());
    // Until stdin closes.
    tokio::task::spawn_blocking(|| {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            if line.is_err() {
                break;
            }
        }
    })
    .await
    .unwrap();
    // Let the printer flush the last spans.
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.abort();
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Connect => "connect",
        Protocol::Grpc => "grpc",
        _ => "grpc-web",
    }
}

async fn client(url: &str) {
    let (exporter, provider) = providers();
    let otel = otel_connect::new_interceptor()
        .with_tracer_provider(provider)
        .with_propagator(otel_tower::propagation::CompositePropagator::w3c())
        .with_semconv(otel_tower::Semconv::Stable);
    let uri: http::Uri = url.parse().expect("URL");
    for protocol in [Protocol::Connect, Protocol::Grpc, Protocol::GrpcWeb] {
        let conn = Http2Connection::connect_plaintext(uri.clone())
            .await
            .expect("connect")
            .shared(16);
        let client = PingServiceClient::new(
            OtelTransport::new(conn, &otel),
            ClientConfig::new(uri.clone()).with_protocol(protocol),
        );
        let mut calls: Vec<(&str, i32, Result<(), ConnectError>)> = Vec::new();
        let r = client.ping(ping_request(1)).await.map(|_| ());
        calls.push(("Ping", 0, r));
        for code in [5, 13, 16] {
            let r = client
                .fail(FailRequest {
                    code,
                    ..Default::default()
                })
                .await
                .map(|_| ());
            calls.push(("Fail", code, r));
        }
        let r = async {
            let mut s = client
                .count_up(CountUpRequest {
                    number: 2,
                    fail_code: 9,
                    ..Default::default()
                })
                .await?;
            while s.message().await?.is_some() {}
            Ok(())
        }
        .await;
        calls.push(("CountUp", 9, r));
        for (method, code, r) in calls {
            let (got, message) = match r {
                Ok(()) => ("ok".to_string(), String::new()),
                Err(e) => (e.code.as_str().to_string(), e.message.unwrap_or_default()),
            };
            print_line(format!(
                "CALL {}",
                json!({"protocol": protocol_name(protocol), "method": method,
                       "requested": code, "code": got, "message": message})
            ));
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for s in exporter.get_finished_spans().unwrap_or_default() {
        print_line(format!("SPAN {}", span_json(&s)));
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("descriptor") => {
            let path = args.get(2).expect("descriptor PATH");
            std::fs::write(path, DESCRIPTOR).expect("write descriptor");
        }
        Some("server") => server().await,
        Some("client") => client(args.get(2).expect("client URL")).await,
        _ => {
            eprintln!("usage: connect-interop descriptor PATH | server | client URL");
            std::process::exit(2);
        }
    }
}
