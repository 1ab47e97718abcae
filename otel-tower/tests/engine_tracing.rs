//! `tracing` integration: a handler's `tracing` span (through
//! tracing-opentelemetry) is a child of the server span, and an outgoing call
//! from the handler continues the trace.

mod support;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry::trace::{SpanKind, TracerProvider};
use support::*;
use tower::{ServiceBuilder, ServiceExt};
use tracing::Instrument;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

/// Serves `svc` on one HTTP/1.1 or HTTP/2 connection on 127.0.0.1.
async fn serve_one_connection<S, B>(svc: S) -> std::net::SocketAddr
where
    S: tower::Service<Request<hyper::body::Incoming>, Response = Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(
                TokioIo::new(stream),
                hyper_util::service::TowerToHyperService::new(svc),
            )
            .await;
    });
    addr
}

#[tokio::test(flavor = "current_thread")]
async fn handler_tracing_span_and_outgoing_call_join_the_server_trace() {
    let t = Telemetry::new();
    // A realistic filter: application spans, not hyper's or h2's internals.
    let subscriber = tracing_subscriber::registry().with(
        tracing_opentelemetry::layer()
            .with_tracer(t.tracer_provider.tracer("handler"))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
    );
    let _default = tracing::subscriber::set_default(subscriber);
    let otel = t.instrumentation();

    // Downstream service.
    let downstream = serve(
        otel.server_layer(),
        Arc::new(|_| {
            Response::builder()
                .header("content-type", "application/grpc")
                .body(Scripted::data_then_trailers(
                    &[],
                    trailers(&[("grpc-status", "0")]),
                ))
                .unwrap()
        }),
    )
    .await;

    // Frontend whose handler opens a tracing span and calls downstream.
    let client_layer = otel.client_layer();
    let handler = tower::service_fn(move |_req: Request<hyper::body::Incoming>| {
        let client = ServiceBuilder::new()
            .layer(client_layer.clone())
            .service(h2_client());
        async move {
            async {
                let response = client
                    .oneshot(grpc_request(
                        downstream,
                        "/backend.Svc/Get",
                        "application/grpc",
                    ))
                    .await
                    .unwrap();
                let _ = response.into_body().collect().await;
            }
            .instrument(tracing::info_span!("handler work"))
            .await;
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "application/grpc")
                    .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
                    .unwrap(),
            )
        }
    });
    let svc = ServiceBuilder::new()
        .layer(otel.server_layer())
        .service(handler);
    let frontend = serve_one_connection(svc).await;

    let response = h2_client()
        .oneshot(grpc_request(
            frontend,
            "/frontend.Svc/Call",
            "application/grpc",
        ))
        .await
        .unwrap();
    let _ = response.into_body().collect().await;
    let spans = t.wait_spans(4).await;
    let frontend_server = spans
        .iter()
        .find(|s| s.name == "frontend.Svc/Call")
        .unwrap();
    let handler_span = spans.iter().find(|s| s.name == "handler work").unwrap();
    let client_span = spans
        .iter()
        .find(|s| s.name == "backend.Svc/Get" && s.span_kind == SpanKind::Client)
        .unwrap();
    let backend_server = spans
        .iter()
        .find(|s| s.name == "backend.Svc/Get" && s.span_kind == SpanKind::Server)
        .unwrap();
    let trace_id = frontend_server.span_context.trace_id();
    for s in [handler_span, client_span, backend_server] {
        assert_eq!(
            s.span_context.trace_id(),
            trace_id,
            "{} in the same trace",
            s.name
        );
    }
    assert_eq!(
        handler_span.parent_span_id,
        frontend_server.span_context.span_id()
    );
    assert_eq!(
        backend_server.parent_span_id,
        client_span.span_context.span_id()
    );
    // tracing-opentelemetry activates the handler span's context while it is
    // entered, so the outgoing call nests under it.
    assert_eq!(
        client_span.parent_span_id,
        handler_span.span_context.span_id()
    );
}

/// A response body that records the active span on every poll: a gRPC
/// stream of two messages, then OK trailers.
struct RecordingBody {
    frames: std::collections::VecDeque<http_body::Frame<Bytes>>,
    seen: Arc<std::sync::Mutex<Vec<opentelemetry::trace::SpanId>>>,
}

impl http_body::Body for RecordingBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        use opentelemetry::trace::TraceContextExt;
        let current = opentelemetry::Context::map_current(|c| c.span().span_context().span_id());
        self.seen.lock().unwrap().push(current);
        std::task::Poll::Ready(self.frames.pop_front().map(Ok))
    }
}

/// Serves one streaming call through `otel`'s server layer; returns the
/// active span id during the service call and during each body poll, and
/// the server span's id.
async fn body_poll_contexts(
    otel: otel_tower::Instrumentation,
    t: &Telemetry,
) -> (
    opentelemetry::trace::SpanId,
    Vec<opentelemetry::trace::SpanId>,
    opentelemetry::trace::SpanId,
) {
    use opentelemetry::trace::TraceContextExt;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let at_call = Arc::new(std::sync::Mutex::new(None));
    let (seen2, at_call2) = (seen.clone(), at_call.clone());
    let handler = tower::service_fn(move |_req: Request<hyper::body::Incoming>| {
        *at_call2.lock().unwrap() = Some(opentelemetry::Context::map_current(|c| {
            c.span().span_context().span_id()
        }));
        let body = RecordingBody {
            frames: [
                http_body::Frame::data(Bytes::from(envelope(0, b"one"))),
                http_body::Frame::data(Bytes::from(envelope(0, b"two"))),
                http_body::Frame::trailers(trailers(&[("grpc-status", "0")])),
            ]
            .into(),
            seen: seen2.clone(),
        };
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "application/grpc")
                    .body(body)
                    .unwrap(),
            )
        }
    });
    let svc = ServiceBuilder::new()
        .layer(otel.server_layer())
        .service(handler);
    let addr = serve_one_connection(svc).await;
    let response = h2_client()
        .oneshot(grpc_request(addr, "/stream.Svc/Watch", "application/grpc"))
        .await
        .unwrap();
    let (_, body, trailers) = read_all(response).await;
    assert!(!body.is_empty());
    assert_eq!(trailers.unwrap().get("grpc-status").unwrap(), "0");
    let span = t.wait_spans(1).await.remove(0);
    let at_call = at_call.lock().unwrap().unwrap();
    let seen = seen.lock().unwrap().clone();
    (at_call, seen, span.span_context.span_id())
}

#[tokio::test]
async fn server_context_is_current_while_the_body_is_polled() {
    let t = Telemetry::new();
    let (at_call, polls, server) = body_poll_contexts(t.instrumentation(), &t).await;
    assert_eq!(at_call, server);
    // The frames before the trailers run with the server span current.
    assert!(polls.len() >= 3, "{polls:?}");
    assert!(polls[..3].iter().all(|id| *id == server), "{polls:?}");
}

#[tokio::test]
async fn without_body_context_the_body_runs_in_the_callers_context() {
    let t = Telemetry::new();
    let (at_call, polls, server) =
        body_poll_contexts(t.instrumentation().without_body_context(), &t).await;
    // Still current while the service runs.
    assert_eq!(at_call, server);
    assert!(polls.len() >= 3, "{polls:?}");
    assert!(
        polls
            .iter()
            .all(|id| *id == opentelemetry::trace::SpanId::INVALID),
        "{polls:?}"
    );
}
