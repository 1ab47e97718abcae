//! A client whose inner service enforces the request's deadline itself and
//! fails the call with an error once it passes (tonic's `Channel` does this
//! with `grpc-timeout`): the span is DEADLINE_EXCEEDED, like a drop or a body
//! error after the deadline. An error before the deadline stays a transport
//! failure with no code.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use opentelemetry::trace::SpanKind;
use support::*;
use tower::{ServiceBuilder, ServiceExt};

/// A service that waits `wait`, then fails like a transport would.
fn failing_after(
    wait: Duration,
) -> impl tower::Service<
    http::Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |_req: http::Request<Full<Bytes>>| async move {
        tokio::time::sleep(wait).await;
        Err::<Response<Full<Bytes>>, BoxError>("timeout expired".into())
    })
}

fn request(timeout: &str) -> http::Request<Full<Bytes>> {
    http::Request::post("http://example.test:8443/pkg.Svc/M")
        .header("content-type", "application/grpc")
        .header("grpc-timeout", timeout)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn service_error_after_the_deadline_is_deadline_exceeded() {
    let t = Telemetry::new();
    let svc = ServiceBuilder::new()
        .layer(t.instrumentation().client_layer())
        .service(failing_after(Duration::from_millis(40)));
    assert!(svc.oneshot(request("20m")).await.is_err());
    let span = t.span(SpanKind::Client);
    assert!(is_error(&span));
    assert_eq!(attrs(&span)["rpc.status_code"], "DEADLINE_EXCEEDED");
    assert_eq!(attrs(&span)["error.type"], "DEADLINE_EXCEEDED");
    let points = t.histogram("rpc.client.call.duration");
    assert_eq!(points.len(), 1);
    assert_eq!(points[0].count, 1);
    assert_eq!(points[0].attributes["rpc.status_code"], "DEADLINE_EXCEEDED");
    assert_eq!(points[0].attributes["error.type"], "DEADLINE_EXCEEDED");
}

#[tokio::test]
async fn service_error_before_the_deadline_has_no_code() {
    let t = Telemetry::new();
    let svc = ServiceBuilder::new()
        .layer(t.instrumentation().client_layer())
        .service(failing_after(Duration::ZERO));
    assert!(svc.oneshot(request("10S")).await.is_err());
    let span = t.span(SpanKind::Client);
    assert!(is_error(&span));
    assert!(!attrs(&span).contains_key("rpc.status_code"));
    assert_eq!(attrs(&span)["error.type"], "_OTHER");
}
