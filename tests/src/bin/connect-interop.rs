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
//! - `connect-interop load-server`: the same Ping service and layer (no
//!   message events), for a load generator (`tests/interop/h2load.py`). Prints
//!   `LISTEN http://127.0.0.1:PORT`; then, for each `summary` line on stdin,
//!   one `SUMMARY {json}` line of what was recorded since the previous one
//!   (see `load_summary`); stops when stdin closes.
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

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use connect_support::*;
use connectrpc::client::{ClientConfig, Http2Connection};
use connectrpc::{ConnectError, Protocol};
use opentelemetry::Value;
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{
    InMemoryMetricExporter, InMemoryMetricExporterBuilder, PeriodicReader, SdkMeterProvider,
    Temporality,
};
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

/// Serves `app` on 127.0.0.1 (peer addresses from axum's `ConnectInfo`) and
/// prints the `LISTEN` line.
async fn serve(app: axum::Router) -> tokio::task::JoinHandle<()> {
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
    server
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
    let server = serve(app).await;
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

/// The HTTP requests, spans and metric points recorded since the previous
/// summary, grouped so that a run of thousands of calls prints a few lines:
/// `{"requests": N, "distinct_span_ids": N, "spans": [{"kind", "name",
/// "status", "code", "error_type", "trace_id", "parent_span_id", "count"}],
/// "metrics": [{"name", "attributes": {..}, "count"}]}`. Waits (at most 5 s)
/// for as many server spans as requests, or until no span has ended for
/// half a second (unsampled calls have none).
async fn load_summary(
    requests: &AtomicU64,
    spans: &InMemorySpanExporter,
    meters: &SdkMeterProvider,
    metrics: &InMemoryMetricExporter,
) -> Json {
    let n = requests.swap(0, Ordering::SeqCst);
    let mut finished = Vec::new();
    let mut unchanged = 0;
    for _ in 0..500 {
        let before = finished.len();
        finished = spans.get_finished_spans().unwrap_or_default();
        unchanged = if finished.len() == before {
            unchanged + 1
        } else {
            0
        };
        if finished.len() as u64 >= n || unchanged >= 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    spans.reset();
    let attr = |s: &SpanData, key: &str| {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    };
    let mut groups: BTreeMap<String, (Json, u64)> = BTreeMap::new();
    let mut ids = std::collections::HashSet::new();
    for s in &finished {
        ids.insert(s.span_context.span_id());
        let mut group = span_json(s);
        let group = json!({
            "kind": group["kind"].take(),
            "name": group["name"].take(),
            "status": group["status"].take(),
            "code": attr(s, "rpc.status_code"),
            "error_type": attr(s, "error.type"),
            "trace_id": group["trace_id"].take(),
            "parent_span_id": group["parent_span_id"].take(),
        });
        groups.entry(group.to_string()).or_insert((group, 0)).1 += 1;
    }
    // Delta temporality: each flush exports what was recorded since the last.
    let _ = meters.force_flush();
    let mut points = Vec::new();
    for batch in metrics.get_finished_metrics().unwrap_or_default() {
        for scope in batch.scope_metrics() {
            for metric in scope.metrics() {
                if let AggregatedMetrics::F64(MetricData::Histogram(h)) = metric.data() {
                    for p in h.data_points() {
                        points.push(json!({
                            "name": metric.name(),
                            "attributes": p.attributes()
                                .map(|kv| (kv.key.to_string(), value_json(&kv.value)))
                                .collect::<serde_json::Map<_, _>>(),
                            "count": p.count(),
                        }));
                    }
                }
            }
        }
    }
    metrics.reset();
    json!({
        "requests": n,
        "distinct_span_ids": ids.len(),
        "spans": groups.into_values().map(|(mut g, count)| {
            g["count"] = json!(count);
            g
        }).collect::<Vec<_>>(),
        "metrics": points,
    })
}

async fn load_server() {
    let (spans, tracer_provider) = providers();
    let metrics = InMemoryMetricExporterBuilder::new()
        .with_temporality(Temporality::Delta)
        .build();
    let meters = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(metrics.clone()).build())
        .build();
    let otel = otel_connect::new_interceptor()
        .with_tracer_provider(tracer_provider)
        .with_meter_provider(meters.clone())
        .with_propagator(otel_tower::propagation::CompositePropagator::w3c())
        .with_semconv(otel_tower::Semconv::Stable);
    let requests = Arc::new(AtomicU64::new(0));
    let counted = requests.clone();
    let app = axum::Router::new()
        .fallback_service(connect_service(&Seen::default(), ServerOptions::default()))
        .layer(otel.server_layer())
        .layer(tower::util::MapRequestLayer::new(
            move |req: http::Request<axum::body::Body>| {
                counted.fetch_add(1, Ordering::SeqCst);
                req
            },
        ));
    let server = serve(app).await;
    let (tx, mut commands) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(command) = commands.recv().await {
        if command.trim() == "summary" {
            let summary = load_summary(&requests, &spans, &meters, &metrics).await;
            print_line(format!("SUMMARY {summary}"));
        }
    }
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
        Some("load-server") => load_server().await,
        Some("client") => client(args.get(2).expect("client URL")).await,
        _ => {
            eprintln!("usage: connect-interop descriptor PATH | server | load-server | client URL");
            std::process::exit(2);
        }
    }
}
