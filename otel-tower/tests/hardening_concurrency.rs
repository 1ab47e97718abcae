//! Exactly once under concurrency: thousands of mixed calls, some cancelled
//! or timing out; every started span ends once, metric counts equal span
//! counts, and no task is left behind.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::Frame;
use http_body_util::BodyExt;
use opentelemetry::trace::SpanKind;
use support::*;
use tower::{ServiceBuilder, ServiceExt};

const CALLS: usize = 2000;
const IN_FLIGHT: usize = 64;

/// Deterministic pseudo-random choices (no extra dependency).
fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_span_ends_exactly_once_under_load() {
    let t = Telemetry::new();
    let otel = t.instrumentation();
    let addr = serve(
        otel.server_layer(),
        Arc::new(|req| {
            let kind = req.headers()["x-kind"].to_str().unwrap().to_string();
            let (tx, body) = Scripted::channel();
            tokio::spawn(async move {
                let messages = match kind.as_str() {
                    "unary" => 1,
                    "hang" => {
                        // Never answers in time; ends when the client gives up.
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    _ => 5,
                };
                for _ in 0..messages {
                    if tx
                        .send(Ok(Frame::data(Bytes::from(envelope(0, b"m")))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
                let status = if kind == "fail" { "13" } else { "0" };
                let _ = tx
                    .send(Ok(Frame::trailers(trailers(&[("grpc-status", status)]))))
                    .await;
            });
            Response::builder()
                .header("content-type", "application/grpc")
                .body(body)
                .unwrap()
        }),
    )
    .await;
    let client = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h2_client());
    let baseline_tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();

    let semaphore = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut seed = 42u64;
    let mut handles = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let kind = match lcg(&mut seed) % 10 {
            0..=3 => "unary",
            4..=5 => "stream",
            6 => "fail",
            7 => "cancel",
            _ => "hang",
        };
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        let client = client.clone();
        handles.push(tokio::spawn(async move {
            let _permit = permit;
            let mut req = grpc_request(addr, "/pkg.Svc/Mixed", "application/grpc");
            let wire_kind = if kind == "cancel" { "stream" } else { kind };
            req.headers_mut()
                .insert("x-kind", wire_kind.parse().unwrap());
            if kind == "hang" {
                req.headers_mut()
                    .insert("grpc-timeout", "20m".parse().unwrap());
            }
            let response = client.oneshot(req).await.unwrap();
            let mut body = response.into_body();
            match kind {
                "cancel" => {
                    let _ = body.frame().await;
                    drop(body);
                }
                "hang" => {
                    let waited =
                        tokio::time::timeout(Duration::from_millis(40), body.frame()).await;
                    assert!(waited.is_err());
                }
                _ => {
                    tokio::time::timeout(Duration::from_secs(10), body.collect())
                        .await
                        .unwrap()
                        .unwrap();
                }
            }
            kind
        }));
    }
    let mut expected = std::collections::HashMap::new();
    for h in handles {
        *expected.entry(h.await.unwrap()).or_insert(0usize) += 1;
    }

    // Both sides of every call end; give the server side a bounded moment.
    let spans = t.wait_spans(2 * CALLS).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let spans_after = t.finished_spans();
    assert_eq!(
        spans_after.len(),
        2 * CALLS,
        "no span ends twice, none is missing"
    );
    let ids: HashSet<_> = spans.iter().map(|s| s.span_context.span_id()).collect();
    assert_eq!(ids.len(), 2 * CALLS, "no duplicates");

    let servers = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Server)
        .count();
    let clients = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Client)
        .count();
    assert_eq!((servers, clients), (CALLS, CALLS));
    let count = |name: &str| t.histogram(name).iter().map(|p| p.count).sum::<u64>() as usize;
    assert_eq!(count("rpc.server.call.duration"), servers);
    assert_eq!(count("rpc.client.call.duration"), clients);

    let client_codes = |code: &str| {
        spans
            .iter()
            .filter(|s| {
                s.span_kind == SpanKind::Client
                    && attrs(s).get("rpc.status_code").map(String::as_str) == Some(code)
            })
            .count()
    };
    assert_eq!(client_codes("INTERNAL"), expected["fail"]);
    assert_eq!(client_codes("DEADLINE_EXCEEDED"), expected["hang"]);
    assert_eq!(client_codes("CANCELLED"), expected["cancel"]);
    assert_eq!(client_codes("OK"), expected["unary"] + expected["stream"]);

    // No task left behind: once the client is gone, connection and handler
    // tasks wind down (bounded wait; the hanging handlers sleep, so only
    // count the tasks that are not those sleepers).
    drop(client);
    let mut alive = usize::MAX;
    for _ in 0..100 {
        alive = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        if alive <= baseline_tasks + expected["hang"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        alive <= baseline_tasks + expected["hang"],
        "alive tasks {alive}"
    );
}
