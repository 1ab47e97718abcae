//! The copyable examples, run as processes: with `OTEL_EXPORTER_OTLP_ENDPOINT`
//! set, client and server export over OTLP/HTTP, and their spans join in one
//! trace.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_listening(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listening on {port}");
}

/// Runs `server` (listening on `addr_var`) and then `client` (pointed at it
/// with `url_var`), both exporting to a local OTLP receiver.
async fn run_pair(server: &str, addr_var: &str, client: &str, url_var: &str) -> common::Received {
    let (otlp, received) = common::start().await;
    let endpoint = format!("http://{otlp}");
    let port = free_port();
    let mut server = common::Running::spawn(
        Command::new(server)
            .env(addr_var, format!("127.0.0.1:{port}"))
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .stdout(Stdio::null()),
    );
    wait_listening(port).await;
    let client = client.to_string();
    let url_var = url_var.to_string();
    let status = tokio::task::spawn_blocking(move || {
        common::Running::spawn(
            Command::new(client)
                .env(url_var, format!("http://127.0.0.1:{port}"))
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
                .stdout(Stdio::null()),
        )
        .wait_within(Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert!(status.success());
    // The server flushes its telemetry when interrupted.
    tokio::task::spawn_blocking(move || server.signal_and_wait("-INT"))
        .await
        .unwrap();
    std::mem::take(&mut *received.lock().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_examples_export_one_trace_over_otlp() {
    let r = run_pair(
        env!("CARGO_BIN_EXE_connect-server"),
        "PING_ADDR",
        env!("CARGO_BIN_EXE_connect-client"),
        "PING_URL",
    )
    .await;
    let ping = "observability.ping.v1.PingService/Ping";
    let client = r
        .spans
        .iter()
        .find(|s| s.service == "ping-client" && s.kind == 3 && s.name == ping)
        .expect("client span");
    let server = r
        .spans
        .iter()
        .find(|s| s.service == "ping-server" && s.kind == 2 && s.name == ping)
        .expect("server span");
    assert_eq!(server.trace_id, client.trace_id);
    assert_eq!(server.parent_span_id, client.span_id);
    assert!(
        r.metrics
            .iter()
            .any(|(s, m)| s == "ping-server" && m == "rpc.server.call.duration")
    );
    assert!(
        r.metrics
            .iter()
            .any(|(s, m)| s == "ping-client" && m == "rpc.client.call.duration")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_examples_export_one_trace_over_otlp() {
    let r = run_pair(
        env!("CARGO_BIN_EXE_tonic-server"),
        "GREETER_ADDR",
        env!("CARGO_BIN_EXE_tonic-client"),
        "GREETER_URL",
    )
    .await;
    let hello = "helloworld.Greeter/SayHello";
    let client = r
        .spans
        .iter()
        .find(|s| s.service == "greeter-client" && s.kind == 3 && s.name == hello)
        .expect("client span");
    let server = r
        .spans
        .iter()
        .find(|s| {
            s.service == "greeter-server"
                && s.kind == 2
                && s.name == hello
                && s.parent_span_id == client.span_id
        })
        .expect("server span, child of the client span");
    assert_eq!(server.trace_id, client.trace_id);
    assert!(
        r.metrics
            .iter()
            .any(|(s, m)| s == "greeter-server" && m == "rpc.server.call.duration")
    );
    assert!(
        r.metrics
            .iter()
            .any(|(s, m)| s == "greeter-client" && m == "rpc.client.call.duration")
    );
}
