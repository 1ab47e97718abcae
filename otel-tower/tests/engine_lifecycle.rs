//! When an RPC ends: body errors, drops of the future and the body, deadlines.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use opentelemetry::trace::{SpanKind, Status};
use support::*;
use tower::{ServiceBuilder, ServiceExt};

/// The server's response body failing is the service failing: an error
/// without a code there. The client sees the stream reset: CANCELLED.
#[tokio::test]
async fn body_error_mid_stream_fails_the_server_and_cancels_the_client() {
    let t = Telemetry::new();
    let otel = t.instrumentation();
    let response = call_through_both(
        &otel,
        Arc::new(|_| {
            let (tx, body) = Scripted::channel();
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(http_body::Frame::data(Bytes::from(envelope(0, b"one")))))
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = tx.send(Err("handler blew up".into())).await;
            });
            Response::builder()
                .header("content-type", "application/grpc")
                .body(body)
                .unwrap()
        }),
        "/pkg.Svc/Stream",
        "application/grpc",
    )
    .await;
    let collected = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .unwrap();
    assert!(
        collected.is_err(),
        "client sees the reset: {:?}",
        collected.map(|c| c.to_bytes())
    );
    t.wait_spans(2).await;
    let server = t.span(SpanKind::Server);
    let client_span = t.span(SpanKind::Client);
    assert!(!attrs(&server).contains_key("rpc.status_code"));
    assert_eq!(attrs(&server)["error.type"], "_OTHER");
    assert_eq!(server.status, Status::error("response body failed"));
    assert_eq!(attrs(&client_span)["rpc.status_code"], "CANCELLED");
    assert!(is_error(&client_span));
    let points = t.histogram("rpc.server.call.duration");
    assert_eq!(points.len(), 1, "recorded once: {points:?}");
    assert_eq!(points[0].count, 1);
    assert_eq!(points[0].attributes["error.type"], "_OTHER");
}

/// A Connect unary response's one message is its body: a 200 whose body is
/// dropped before its end (a deadline, the caller giving up) was cancelled,
/// on both sides.
#[tokio::test]
async fn connect_unary_success_dropped_before_its_end_is_cancelled() {
    let t = Telemetry::new();
    let otel = t.instrumentation();
    let response = call_through_both(
        &otel,
        Arc::new(|_| {
            Response::builder()
                .header("content-type", "application/proto")
                .body(Scripted::data_then_hang(&[b"first half"]))
                .unwrap()
        }),
        "/pkg.Svc/Unary",
        "application/proto",
    )
    .await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    assert_eq!(first_data(&mut body).await, &b"first half"[..]);
    drop(body);
    t.wait_spans(2).await;
    for kind in [SpanKind::Server, SpanKind::Client] {
        let span = t.span(kind.clone());
        assert_eq!(attrs(&span)["rpc.status_code"], "canceled", "{kind:?}");
        assert_eq!(is_error(&span), kind == SpanKind::Client, "{kind:?}");
    }
}

/// A non-200 answer to gRPC is a router's or proxy's: clients drop its
/// body unread, and the status line classifies the call (502: UNAVAILABLE),
/// not the drop.
#[tokio::test]
async fn a_proxy_answer_dropped_unread_is_classified_by_its_status() {
    let t = Telemetry::new();
    let otel = t.instrumentation();
    let response = call_through_both(
        &otel,
        Arc::new(|_| {
            Response::builder()
                .status(502)
                .header("content-type", "text/html")
                .body(Scripted::data_then_hang(&[b"<html>bad gateway"]))
                .unwrap()
        }),
        "/pkg.Svc/M",
        "application/grpc",
    )
    .await;
    assert_eq!(response.status(), 502);
    drop(response);
    t.wait_spans(2).await;
    for kind in [SpanKind::Server, SpanKind::Client] {
        let span = t.span(kind.clone());
        assert_eq!(attrs(&span)["rpc.status_code"], "UNAVAILABLE", "{kind:?}");
        assert!(is_error(&span), "{kind:?}");
    }
}

#[tokio::test]
async fn client_drops_stream_midway_both_spans_end_once() {
    let t = Telemetry::new();
    let otel = t.instrumentation();
    let response = call_through_both(
        &otel,
        Arc::new(|_| {
            Response::builder()
                .header("content-type", "application/grpc")
                .body(Scripted::data_then_hang(&[&envelope(0, b"first")]))
                .unwrap()
        }),
        "/pkg.Svc/Stream",
        "application/grpc",
    )
    .await;
    let mut body = response.into_body();
    assert_eq!(first_data(&mut body).await, envelope(0, b"first"));
    drop(body);
    let spans = t.wait_spans(2).await;
    assert_eq!(spans.len(), 2);
    for kind in [SpanKind::Server, SpanKind::Client] {
        assert_eq!(attrs(&t.span(kind))["rpc.status_code"], "CANCELLED");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(t.finished_spans().len(), 2, "no span ends twice");
    let points = t.histogram("rpc.client.call.duration");
    assert_eq!(points.iter().map(|p| p.count).sum::<u64>(), 1);
}

#[tokio::test]
async fn dropping_the_response_future_is_cancelled() {
    let t = Telemetry::new();
    let otel = t.instrumentation();
    // A service that never answers.
    let never = tower::service_fn(|_req: http::Request<http_body_util::Full<Bytes>>| async {
        std::future::pending::<
            Result<Response<http_body_util::Full<Bytes>>, std::convert::Infallible>,
        >()
        .await
    });
    let svc = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(never);
    let req = http::Request::post("http://example.test/pkg.Svc/M")
        .header("content-type", "application/grpc")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let result = tokio::time::timeout(Duration::from_millis(20), svc.oneshot(req)).await;
    assert!(result.is_err());
    let span = t.span(SpanKind::Client);
    assert_eq!(attrs(&span)["rpc.status_code"], "CANCELLED");
    assert_eq!(attrs(&span)["server.address"], "example.test");
}

#[tokio::test]
async fn deadline_passed_is_deadline_exceeded_on_both_sides() {
    let t = Telemetry::new();
    let otel = t.instrumentation();
    let addr = serve(
        otel.server_layer(),
        Arc::new(|_| {
            Response::builder()
                .header("content-type", "application/grpc")
                .body(Scripted::data_then_hang(&[]))
                .unwrap()
        }),
    )
    .await;
    let client = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h2_client());
    let mut req = grpc_request(addr, "/pkg.Svc/Slow", "application/grpc");
    req.headers_mut()
        .insert("grpc-timeout", "30m".parse().unwrap());
    let response = client.oneshot(req).await.unwrap();
    let mut body = response.into_body();
    // The caller enforces its deadline by giving up.
    let waited = tokio::time::timeout(Duration::from_millis(80), body.frame()).await;
    assert!(waited.is_err());
    drop(body);
    t.wait_spans(2).await;
    let server = t.span(SpanKind::Server);
    let client_span = t.span(SpanKind::Client);
    assert_eq!(attrs(&server)["rpc.status_code"], "DEADLINE_EXCEEDED");
    assert!(is_error(&server));
    assert_eq!(attrs(&client_span)["rpc.status_code"], "DEADLINE_EXCEEDED");
    assert_eq!(attrs(&client_span)["error.type"], "DEADLINE_EXCEEDED");
}

#[tokio::test]
async fn transport_error_has_no_code_and_other_error_type() {
    let t = Telemetry::new();
    let otel = t.instrumentation();
    // Nothing listens on this port.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h2_client());
    let result = client
        .oneshot(grpc_request(addr, "/pkg.Svc/M", "application/grpc"))
        .await;
    assert!(result.is_err());
    let span = t.span(SpanKind::Client);
    assert!(is_error(&span));
    assert!(!attrs(&span).contains_key("rpc.status_code"));
    assert_eq!(attrs(&span)["error.type"], "_OTHER");
    let points = t.histogram("rpc.client.call.duration");
    assert_eq!(points[0].attributes["error.type"], "_OTHER");
}

#[tokio::test]
async fn filter_skips_telemetry_but_still_propagates() {
    let t = Telemetry::new();
    let otel = t
        .instrumentation()
        .with_filter(|req| req.service() != "grpc.health.v1.Health");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let addr = serve(
        otel.server_layer(),
        Arc::new(move |req| {
            seen2
                .lock()
                .unwrap()
                .push(req.headers().get("traceparent").cloned());
            grpc_ok_response(&[])
        }),
    )
    .await;
    let client = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h2_client());
    // An outer span makes the propagated context observable.
    use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider};
    let tracer = t.tracer_provider.tracer("test");
    let outer = tracer.start("outer");
    let cx = opentelemetry::Context::current_with_span(outer);
    let mut req = grpc_request(addr, "/grpc.health.v1.Health/Check", "application/grpc");
    req.extensions_mut().insert(cx.clone());
    read_all(client.oneshot(req).await.unwrap()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(t.finished_spans().is_empty(), "filtered: no spans");
    let header = seen.lock().unwrap()[0]
        .clone()
        .expect("traceparent still sent");
    let trace_id = cx.span().span_context().trace_id().to_string();
    assert!(header.to_str().unwrap().contains(&trace_id));
    assert!(t.histograms().is_empty(), "filtered: no metrics");
}

/// A service whose `call` itself panics (before any future exists): the
/// call is a failure without a code, as a panic in the future or body is,
/// not CANCELLED; on both sides, recorded once, and the panic goes on.
#[test]
fn panic_in_the_services_call_is_an_error_without_a_code() {
    use opentelemetry::trace::Status;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use tower::{Layer, Service};

    let t = Telemetry::new();
    let otel = t.instrumentation();
    let mut server = otel.server_layer().layer(PanicsInCall);
    let mut client = otel.client_layer().layer(PanicsInCall);
    let server_panic = catch_unwind(AssertUnwindSafe(|| drop(server.call(panics_request()))));
    let client_panic = catch_unwind(AssertUnwindSafe(|| drop(client.call(panics_request()))));
    assert_eq!(
        server_panic.unwrap_err().downcast_ref::<&str>(),
        Some(&"boom"),
        "the panic goes on"
    );
    assert!(client_panic.is_err());

    assert_eq!(t.finished_spans().len(), 2, "each span ends once");
    for (kind, metric) in [
        (SpanKind::Server, "rpc.server.call.duration"),
        (SpanKind::Client, "rpc.client.call.duration"),
    ] {
        let span = t.span(kind.clone());
        assert_eq!(span.status, Status::error("panicked"), "{kind:?}");
        assert_eq!(attrs(&span).get("rpc.status_code"), None, "{kind:?}");
        assert_eq!(attrs(&span)["error.type"], "_OTHER", "{kind:?}");
        let points = t.histogram(metric);
        assert_eq!(points.iter().map(|p| p.count).sum::<u64>(), 1, "{kind:?}");
        assert_eq!(points[0].attributes["error.type"], "_OTHER", "{kind:?}");
    }
}

/// Recording a panicking call runs user code (here an attribute filter
/// that panics on the error attribute). A second panic there, while the
/// first unwinds, must not abort the process: the service's own panic goes
/// on, on both sides.
#[test]
fn a_panic_while_recording_a_panic_leaves_the_first_one_going() {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use tower::{Layer, Service};

    let t = Telemetry::new();
    let otel = t.instrumentation().with_attribute_filter(|_req, kv| {
        assert_ne!(kv.key.as_str(), "error.type", "filter panics on errors");
        true
    });
    let mut server = otel.server_layer().layer(PanicsInCall);
    let mut client = otel.client_layer().layer(PanicsInCall);
    for (side, panic) in [
        (
            "server",
            catch_unwind(AssertUnwindSafe(|| drop(server.call(panics_request())))),
        ),
        (
            "client",
            catch_unwind(AssertUnwindSafe(|| drop(client.call(panics_request())))),
        ),
    ] {
        assert_eq!(
            panic.unwrap_err().downcast_ref::<&str>(),
            Some(&"boom"),
            "{side}: the service's panic goes on"
        );
    }
}

/// A call still running when some other panic unwinds past it is recorded
/// (cancelled) as its future is dropped. If recording panics too (here an
/// attribute filter that panics on the status code), the process must not
/// abort: the other panic goes on, on both sides.
#[test]
fn a_panic_while_recording_a_dropped_call_leaves_the_unwinding_panic_going() {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use tower::{Layer, Service};

    let t = Telemetry::new();
    let otel = t.instrumentation().with_attribute_filter(|_req, kv| {
        assert_ne!(
            kv.key.as_str(),
            "rpc.status_code",
            "filter panics on endings"
        );
        true
    });
    let pending = tower::service_fn(|_req: http::Request<http_body_util::Full<Bytes>>| {
        std::future::pending::<
            Result<Response<http_body_util::Full<Bytes>>, std::convert::Infallible>,
        >()
    });
    let mut server = otel.server_layer().layer(pending);
    let mut client = otel.client_layer().layer(pending);
    let futures = [
        (
            "server",
            Box::pin(server.call(panics_request()))
                as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>,
        ),
        ("client", Box::pin(client.call(panics_request()))),
    ];
    for (side, future) in futures {
        let unwound = catch_unwind(AssertUnwindSafe(move || {
            let _running = future;
            panic!("elsewhere");
        }));
        assert_eq!(
            unwound.unwrap_err().downcast_ref::<&str>(),
            Some(&"elsewhere"),
            "{side}: the unwinding panic goes on"
        );
    }
}

/// A service whose `call` panics with "boom" before any future exists.
#[derive(Clone)]
struct PanicsInCall;

impl tower::Service<http::Request<http_body_util::Full<Bytes>>> for PanicsInCall {
    type Response = Response<http_body_util::Full<Bytes>>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: http::Request<http_body_util::Full<Bytes>>) -> Self::Future {
        panic!("boom")
    }
}

/// A gRPC request to `pkg.Svc/Panics`.
fn panics_request() -> http::Request<http_body_util::Full<Bytes>> {
    http::Request::post("http://127.0.0.1:1/pkg.Svc/Panics")
        .header("content-type", "application/grpc")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap()
}

/// Serves `handler` behind `otel`'s server layer and calls it once through
/// `otel`'s client layer over HTTP/2: the response as the client got it.
async fn call_through_both(
    otel: &otel_tower::Instrumentation,
    handler: Handler,
    path: &str,
    content_type: &str,
) -> Response<otel_tower::ResponseBody<hyper::body::Incoming>> {
    let addr = serve(otel.server_layer(), handler).await;
    let client = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h2_client());
    tokio::time::timeout(
        Duration::from_secs(10),
        client.oneshot(grpc_request(addr, path, content_type)),
    )
    .await
    .expect("an answer")
    .unwrap()
}

/// The data of the next frame of `body` (within 5 s).
async fn first_data<B>(body: &mut B) -> Bytes
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    frame.into_data().unwrap()
}
