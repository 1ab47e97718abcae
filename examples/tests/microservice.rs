//! The microservice template, run twice as separate processes (A calls B):
//! one trace across both, tower-http's TraceLayer spans nested under the RPC
//! span, and telemetry flushed over OTLP on SIGTERM.

mod common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(name: &str, port: u16, downstream: Option<u16>, otlp: &str) -> common::Running {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_microservice"));
    cmd.env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("OTEL_SERVICE_NAME", name)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
        .env_remove("OTEL_PROPAGATORS")
        .env_remove("DOWNSTREAM_URL")
        .stdout(std::process::Stdio::null());
    if let Some(d) = downstream {
        cmd.env("DOWNSTREAM_URL", format!("http://127.0.0.1:{d}"));
    }
    common::Running::spawn(&mut cmd)
}

async fn wait_healthy(port: u16) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for _ in 0..200 {
        let uri: http::Uri = format!("http://127.0.0.1:{port}/healthz").parse().unwrap();
        if let Ok(r) = client.get(uri).await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("microservice on {port} did not come up");
}

/// SIGTERM, then a graceful exit (telemetry flushed) within 5 s.
fn terminate(mut child: common::Running) {
    let status = child.signal_and_wait("-TERM");
    assert!(status.success(), "graceful exit: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_one_trace_flushed_on_shutdown() {
    let (otlp, received) = common::start().await;
    let endpoint = format!("http://{otlp}");
    let (port_a, port_b) = (free_port(), free_port());
    let b = spawn("svc-b", port_b, None, &endpoint);
    let a = spawn("svc-a", port_a, Some(port_b), &endpoint);
    wait_healthy(port_b).await;
    wait_healthy(port_a).await;

    // A Connect unary call in JSON, continuing a trace of ours.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = http::Request::post(format!(
        "http://127.0.0.1:{port_a}/observability.ping.v1.PingService/Ping"
    ))
    .header("content-type", "application/json")
    .header(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    .body(Full::new(Bytes::from_static(br#"{"id":"42"}"#)))
    .unwrap();
    let (head, body) = send(&client, req).await;
    assert!(
        head.headers.contains_key("x-request-id"),
        "request-id layer in the stack"
    );
    assert!(body.contains("42"), "{body}");

    // A Connect server stream (CountUp to 3) from the template.
    let message = br#"{"number":"3"}"#;
    let mut envelope = vec![0u8];
    envelope.extend_from_slice(&(message.len() as u32).to_be_bytes());
    envelope.extend_from_slice(message);
    let req = http::Request::post(format!(
        "http://127.0.0.1:{port_a}/observability.ping.v1.PingService/CountUp"
    ))
    .header("content-type", "application/connect+json")
    .body(Full::new(Bytes::from(envelope)))
    .unwrap();
    let (_, text) = send(&client, req).await;
    assert!(
        text.contains(r#""number":"3""#) && !text.contains("error"),
        "{text}"
    );

    let (a, b) = (a, b);
    tokio::task::spawn_blocking(move || {
        terminate(a);
        terminate(b);
    })
    .await
    .unwrap();

    let r = received.lock().unwrap();
    let trace_id = hex("4bf92f3577b34da6a3ce929d0e0e4736");
    let in_trace: Vec<_> = r.spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let find = |service: &str, kind: i32, name: &str| {
        in_trace
            .iter()
            .find(|s| s.service == service && s.kind == kind && s.name == name)
            .unwrap_or_else(|| panic!("no {service} {kind} {name} in {in_trace:#?}"))
    };
    // OTLP span kinds: 2 = SERVER, 3 = CLIENT.
    let a_server = find("svc-a", 2, "observability.ping.v1.PingService/Ping");
    let a_client = find("svc-a", 3, "observability.ping.v1.PingService/Ping");
    let b_server = find("svc-b", 2, "observability.ping.v1.PingService/Ping");
    assert_eq!(
        a_server.parent_span_id,
        hex("00f067aa0ba902b7"),
        "continues the caller's trace"
    );
    assert_eq!(
        b_server.parent_span_id, a_client.span_id,
        "B is the child of A's client span"
    );
    // tower-http's TraceLayer span is a child of the RPC server span.
    let request_span = in_trace
        .iter()
        .find(|s| s.service == "svc-a" && s.name == "request")
        .unwrap_or_else(|| panic!("TraceLayer span: {in_trace:#?}"));
    assert_eq!(request_span.parent_span_id, a_server.span_id);
    // The downstream call is made inside it (tracing-opentelemetry makes the
    // entered span's context current).
    assert_eq!(a_client.parent_span_id, request_span.span_id);
    // The stream's span (a trace of its own), ended with its last message.
    assert!(
        r.spans.iter().any(|s| s.service == "svc-a"
            && s.kind == 2
            && s.name == "observability.ping.v1.PingService/CountUp"),
        "{:#?}",
        r.spans
    );
    assert!(
        r.metrics
            .iter()
            .any(|(s, m)| s == "svc-b" && m == "rpc.server.call.duration"),
        "{:?}",
        r.metrics
    );
    assert!(
        r.metrics
            .iter()
            .any(|(s, m)| s == "svc-a" && m == "rpc.client.call.duration"),
        "{:?}",
        r.metrics
    );
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Sends `req` (within 10 s), expects 200, and reads the whole body.
async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    req: http::Request<Full<Bytes>>,
) -> (http::response::Parts, String) {
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let (head, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (head, String::from_utf8_lossy(&body).into_owned())
}
