//! Names a peer chooses (the `Host` header, the request path) never make
//! the process keep memory for good: the process-wide tables of interned
//! names take only names of a size real hosts and methods have. In its own
//! test binary: it counts the live bytes of the whole process.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http_body_util::Empty;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use otel_tower::Instrumentation;
use otel_tower::propagation::TraceContext;
use tower::{Layer, Service};

#[path = "support/live_bytes.rs"]
mod live_bytes;
use live_bytes::live;

/// One Connect unary call through `svc` (which answers 200 at once), with
/// this path and `Host`.
fn call<S>(svc: &mut S, path: &str, host: &str)
where
    S: Service<http::Request<Empty<Bytes>>>,
{
    let request = http::Request::post(path)
        .header("host", host)
        .header("content-type", "application/proto")
        .body(Empty::new())
        .unwrap();
    let mut future = std::pin::pin!(svc.call(request));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(future.as_mut().poll(&mut cx).is_ready());
}

#[test]
fn long_hosts_and_paths_are_not_kept() {
    let spans = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    let otel = Instrumentation::new()
        .with_tracer_provider(provider.clone())
        .with_propagator(TraceContext::new());
    // Succeeds on any path, like a catch-all route.
    let mut svc =
        otel.server_layer()
            .layer(tower::service_fn(|_req: http::Request<Empty<Bytes>>| {
                std::future::ready(Ok::<_, Infallible>(
                    http::Response::builder()
                        .header("content-type", "application/proto")
                        .body(Empty::<Bytes>::new())
                        .unwrap(),
                ))
            }));
    const LONG: usize = 20_000;
    const CALLS: usize = 300;
    let filler = "a".repeat(LONG);
    call(&mut svc, "/pkg.Svc/Warm", "warm.example");
    spans.reset();
    let before = live();
    for i in 0..CALLS {
        call(
            &mut svc,
            &format!("/pkg.Svc/M{i}{filler}"),
            &format!("h{i}{filler}.example"),
        );
        spans.reset();
    }
    let grown = live() - before;
    // Interned, each call would keep its host twice and its path four
    // times: about 30 MB here.
    assert!(
        grown < 1024 * 1024,
        "{grown} bytes still live after {CALLS} calls with {LONG}-byte names"
    );

    // Credentials in an authority are never kept: a thousand distinct
    // `user:secret@host` authorities leave nothing behind.
    let secret = "s".repeat(200);
    let before = live();
    for i in 0..1000 {
        call(
            &mut svc,
            "/pkg.Svc/Warm",
            &format!("user{i}:{secret}@h.example"),
        );
        spans.reset();
    }
    let grown = live() - before;
    assert!(
        grown < 64 * 1024,
        "{grown} bytes still live after 1000 authorities with credentials"
    );

    // Such a host is no `server.address`; a real one is, with or without
    // user information.
    call(&mut svc, "/pkg.Svc/M", &format!("{filler}.example"));
    call(&mut svc, "/pkg.Svc/M", "api.example:8443");
    call(&mut svc, "/pkg.Svc/M", "user:pw@creds.example:8443");
    let finished = spans.get_finished_spans().unwrap();
    let address = |i: usize| {
        finished[i]
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == "server.address")
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(address(0), None);
    assert_eq!(address(1).as_deref(), Some("api.example"));
    assert_eq!(address(2).as_deref(), Some("creds.example"));
}
