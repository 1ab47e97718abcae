//! Layers built over and over (a client layer per request, say) leave no
//! memory behind: the names interned for methods and hosts are kept once per
//! process, not once per configuration. In its own test binary: it counts
//! the live bytes of the whole process.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http_body_util::Empty;
use opentelemetry_sdk::trace::SdkTracerProvider;
use otel_tower::Instrumentation;
use otel_tower::propagation::TraceContext;
use tower::{Layer, Service};

#[path = "support/live_bytes.rs"]
mod live_bytes;
use live_bytes::live;

fn grpc_ok() -> http::Response<Empty<Bytes>> {
    http::Response::builder()
        .header("content-type", "application/grpc")
        .header("grpc-status", "0")
        .body(Empty::new())
        .unwrap()
}

/// One successful call through `svc`, which answers at once.
fn call<S>(svc: &mut S)
where
    S: Service<http::Request<Empty<Bytes>>>,
{
    let request = http::Request::post("http://svc.example:8080/pkg.Svc/Method")
        .header("content-type", "application/grpc")
        .body(Empty::new())
        .unwrap();
    let mut future = std::pin::pin!(svc.call(request));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(future.as_mut().poll(&mut cx).is_ready());
}

/// A fresh configuration, a server and a client layer built from it, one
/// call through each (the method and the host get interned), all dropped.
fn round(provider: &SdkTracerProvider) {
    let otel = Instrumentation::new()
        .with_tracer_provider(provider.clone())
        .with_propagator(TraceContext::new());
    let answer = || {
        tower::service_fn(|_req: http::Request<Empty<Bytes>>| {
            std::future::ready(Ok::<_, Infallible>(grpc_ok()))
        })
    };
    call(&mut otel.server_layer().layer(answer()));
    call(&mut otel.client_layer().layer(answer()));
}

#[test]
fn configurations_built_per_request_leave_nothing_behind() {
    let provider = SdkTracerProvider::builder().build();
    for _ in 0..200 {
        round(&provider);
    }
    let before = live();
    const ROUNDS: isize = 3000;
    for _ in 0..ROUNDS {
        round(&provider);
    }
    let grown = live() - before;
    // Leaking the interned names per configuration kept about a kilobyte
    // per round here; what is left must not depend on the number of rounds.
    assert!(
        grown < 16 * 1024,
        "{grown} bytes still live after {ROUNDS} rounds ({} per round)",
        grown / ROUNDS
    );
}
