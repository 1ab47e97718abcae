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

/// One gRPC call to `/backend.Svc/Get` on `addr` through `layer`, the
/// response read to the end.
async fn call_backend(layer: otel_tower::ClientLayer, addr: std::net::SocketAddr) {
    let response = ServiceBuilder::new()
        .layer(layer)
        .service(h2_client())
        .oneshot(grpc_request(addr, "/backend.Svc/Get", "application/grpc"))
        .await
        .unwrap();
    let _ = response.into_body().collect().await;
}

/// A gRPC response with an empty body.
fn empty_grpc_response()
-> Result<Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>, Infallible> {
    Ok(Response::builder()
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()).boxed())
        .unwrap())
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
    let downstream = serve(otel.server_layer(), Arc::new(|_| grpc_ok_response(&[]))).await;

    // Frontend whose handler opens a tracing span and calls downstream.
    let client_layer = otel.client_layer();
    let handler = tower::service_fn(move |_req: Request<hyper::body::Incoming>| {
        let client_layer = client_layer.clone();
        async move {
            call_backend(client_layer, downstream)
                .instrument(tracing::info_span!("handler work"))
                .await;
            empty_grpc_response()
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

/// A caller that declined sampling: the server and client spans record
/// nothing, yet the handler runs in a new (unsampled) server span of the
/// caller's trace, and the outgoing call carries its own span id onward.
#[tokio::test]
async fn unsampled_calls_still_parent_the_handler_and_propagate() {
    use opentelemetry::trace::{SpanContext, TraceContextExt};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider};

    let exported = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_simple_exporter(exported.clone())
        .build();
    let t = Telemetry::new();
    let otel = t.instrumentation().with_tracer_provider(provider);

    // Downstream, uninstrumented: records the trace context headers it receives.
    let received = Arc::new(std::sync::Mutex::new(None));
    let received2 = received.clone();
    let downstream = serve(
        tower::layer::util::Identity::new(),
        Arc::new(move |req| {
            let header = |name| {
                req.headers()
                    .get(name)
                    .map(|v: &http::HeaderValue| v.to_str().unwrap().to_string())
            };
            *received2.lock().unwrap() = Some((header("traceparent"), header("tracestate")));
            grpc_ok_response(&[])
        }),
    )
    .await;

    let seen: Arc<std::sync::Mutex<Option<(SpanContext, SpanContext, bool)>>> = Arc::default();
    let seen2 = seen.clone();
    let client_layer = otel.client_layer();
    let handler = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
        let current = opentelemetry::Context::current();
        let in_extensions = req
            .extensions()
            .get::<opentelemetry::Context>()
            .unwrap()
            .span()
            .span_context()
            .clone();
        *seen2.lock().unwrap() = Some((
            current.span().span_context().clone(),
            in_extensions,
            current.span().is_recording(),
        ));
        let client_layer = client_layer.clone();
        async move {
            call_backend(client_layer, downstream).await;
            empty_grpc_response()
        }
    });
    let svc = ServiceBuilder::new()
        .layer(otel.server_layer())
        .service(handler);
    let frontend = serve_one_connection(svc).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = grpc_request(frontend, "/frontend.Svc/Call", "application/grpc");
    request.headers_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-00").parse().unwrap(),
    );
    request
        .headers_mut()
        .insert("tracestate", "vendor=opaque".parse().unwrap());
    let response = h2_client().oneshot(request).await.unwrap();
    let (head, _, _) = read_all(response).await;
    assert_eq!(head.status, 200);

    let (current, in_extensions, recording) = seen.lock().unwrap().clone().unwrap();
    assert!(current.is_valid());
    assert_eq!(current.trace_id().to_string(), trace_id);
    assert_ne!(
        current.span_id().to_string(),
        caller_span,
        "a new server span"
    );
    assert!(!current.is_sampled());
    assert!(!current.is_remote(), "the server span is local");
    assert!(!recording);
    assert_eq!(in_extensions, current, "the extensions carry the same span");

    let (traceparent, tracestate) = received.lock().unwrap().clone().expect("called");
    let traceparent = traceparent.expect("propagated");
    assert_eq!(
        tracestate.as_deref(),
        Some("vendor=opaque"),
        "the caller's tracestate travels on with the unsampled trace"
    );
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts[1], trace_id);
    assert_ne!(parts[2], caller_span);
    assert_ne!(
        parts[2],
        current.span_id().to_string(),
        "the client span's own id"
    );
    assert_eq!(parts[3], "00", "still unsampled");
    assert!(exported.get_finished_spans().unwrap().is_empty());
}

/// A propagator the engine does not know: writes the span id it is given
/// and a baggage entry.
#[derive(Debug)]
struct SpanIdPropagator;

impl opentelemetry::propagation::TextMapPropagator for SpanIdPropagator {
    fn inject_context(
        &self,
        cx: &opentelemetry::Context,
        injector: &mut dyn opentelemetry::propagation::Injector,
    ) {
        use opentelemetry::baggage::BaggageExt;
        use opentelemetry::trace::TraceContextExt;
        injector.set("x-span-id", cx.span().span_context().span_id().to_string());
        if let Some(tenant) = cx.baggage().get("tenant") {
            injector.set("x-tenant", tenant.to_string());
        }
    }

    fn extract_with_context(
        &self,
        cx: &opentelemetry::Context,
        _extractor: &dyn opentelemetry::propagation::Extractor,
    ) -> opentelemetry::Context {
        cx.clone()
    }

    fn fields(&self) -> opentelemetry::propagation::text_map_propagator::FieldIter<'_> {
        opentelemetry::propagation::text_map_propagator::FieldIter::new(&[])
    }
}

/// A custom propagator on the client injects the client span (held by the
/// call, not by a context) and still sees the caller's baggage.
#[tokio::test]
async fn custom_propagator_injects_the_client_span_and_the_callers_baggage() {
    use opentelemetry::baggage::BaggageExt;
    let t = Telemetry::new();
    let otel = t.instrumentation().with_propagator(SpanIdPropagator);
    let received = Arc::new(std::sync::Mutex::new(None));
    let received2 = received.clone();
    let backend = serve(
        tower::layer::util::Identity::new(),
        Arc::new(move |req| {
            let get = |name: &str| {
                req.headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_string())
            };
            *received2.lock().unwrap() = Some((get("x-span-id"), get("x-tenant")));
            grpc_ok_response(&[])
        }),
    )
    .await;
    let mut request = grpc_request(backend, "/backend.Svc/Get", "application/grpc");
    request.extensions_mut().insert(
        opentelemetry::Context::new()
            .with_baggage([opentelemetry::KeyValue::new("tenant", "acme")]),
    );
    let response = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h2_client())
        .oneshot(request)
        .await
        .unwrap();
    let (_, _, trailers) = read_all(response).await;
    assert_eq!(trailers.unwrap().get("grpc-status").unwrap(), "0");
    let client = t.wait_spans(1).await.remove(0);
    assert_eq!(client.span_kind, SpanKind::Client);
    let (span_id, tenant) = received.lock().unwrap().clone().unwrap();
    assert_eq!(
        span_id.as_deref(),
        Some(client.span_context.span_id().to_string().as_str())
    );
    assert_eq!(tenant.as_deref(), Some("acme"));
}

/// A downstream service, uninstrumented, that records the propagation
/// headers of each request it receives (sorted `name: value` lines).
async fn recording_downstream() -> (
    std::net::SocketAddr,
    Arc<std::sync::Mutex<Vec<Vec<String>>>>,
) {
    let received: Arc<std::sync::Mutex<Vec<Vec<String>>>> = Arc::default();
    let received2 = received.clone();
    let addr = serve(
        tower::layer::util::Identity::new(),
        Arc::new(move |req| {
            let mut headers: Vec<String> = req
                .headers()
                .iter()
                .filter(|(name, _)| {
                    let name = name.as_str();
                    name == "b3" || name.starts_with("x-b3-") || name.starts_with("trace")
                })
                .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap()))
                .collect();
            headers.sort();
            received2.lock().unwrap().push(headers);
            grpc_ok_response(&[])
        }),
    )
    .await;
    (addr, received)
}

/// A caller's B3 "do not sample" without ids (`b3: 0`) holds for the calls
/// the handler makes: as the server records no span for the call, the
/// client layer records none for the outgoing call and sends no ids (a
/// span there would start a new, sampled trace one hop later). Metrics are
/// recorded on both sides. `b3: 1` alone, by contrast, lets the sampler
/// decide: both spans, and the client span's ids go downstream.
#[tokio::test]
async fn b3_do_not_sample_without_ids_holds_for_outgoing_calls() {
    let t = Telemetry::new();
    let otel = t
        .instrumentation()
        .with_propagator(otel_tower::propagation::B3::single());
    let (downstream, received) = recording_downstream().await;
    let client_layer = otel.client_layer();
    let handler = tower::service_fn(move |_req: Request<hyper::body::Incoming>| {
        let client_layer = client_layer.clone();
        async move {
            call_backend(client_layer, downstream).await;
            empty_grpc_response()
        }
    });
    let svc = ServiceBuilder::new()
        .layer(otel.server_layer())
        .service(handler);
    let frontend = serve_one_connection(svc).await;
    let client = h2_client();

    for (b3, spans) in [("0", 0), ("1", 2)] {
        t.spans.reset();
        received.lock().unwrap().clear();
        let mut request = grpc_request(frontend, "/frontend.Svc/Call", "application/grpc");
        request.headers_mut().insert("b3", b3.parse().unwrap());
        let response = client.clone().oneshot(request).await.unwrap();
        let (head, _, _) = read_all(response).await;
        assert_eq!(head.status, 200);
        let finished = if spans == 0 {
            t.finished_spans()
        } else {
            t.wait_spans(spans).await
        };
        assert_eq!(finished.len(), spans, "b3: {b3}");
        let received = received.lock().unwrap().clone();
        assert_eq!(received.len(), 1, "one downstream call");
        if spans == 0 {
            assert_eq!(received[0], Vec::<String>::new(), "no ids sent onward");
        } else {
            let client = t.span(SpanKind::Client);
            let server = t.span(SpanKind::Server);
            assert_eq!(client.parent_span_id, server.span_context.span_id());
            assert_eq!(
                received[0],
                [format!(
                    "b3: {}-{}-1",
                    client.span_context.trace_id(),
                    client.span_context.span_id()
                )]
            );
        }
    }
    for name in ["rpc.server.call.duration", "rpc.client.call.duration"] {
        let calls: u64 = t.histogram(name).iter().map(|p| p.count).sum();
        assert_eq!(calls, 2, "{name}: metrics for both calls");
    }
}

/// The client layer's propagation headers replace every one of their kind
/// the request already had: a `tracestate` or B3 header of another trace
/// (a forwarded request's) does not travel beside the client span's ids.
#[tokio::test]
async fn client_propagation_replaces_stale_headers() {
    let t = Telemetry::new();
    let otel = t
        .instrumentation()
        .with_propagator(otel_tower::propagation::from_env_value(Some(
            "tracecontext,b3multi",
        )));
    let (downstream, received) = recording_downstream().await;
    let mut request = grpc_request(downstream, "/backend.Svc/Get", "application/grpc");
    for (name, value) in [
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("tracestate", "stale=1"),
        ("b3", "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-d"),
        ("x-b3-parentspanid", "b7ad6b7169203331"),
        ("x-b3-flags", "1"),
        ("x-b3-sampled", "1"),
    ] {
        request.headers_mut().append(name, value.parse().unwrap());
    }
    request
        .headers_mut()
        .insert("x-application", "kept".parse().unwrap());
    let response = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h2_client())
        .oneshot(request)
        .await
        .unwrap();
    let _ = response.into_body().collect().await;
    let span = t.wait_spans(1).await.remove(0).span_context;
    let (trace, id) = (span.trace_id(), span.span_id());
    assert_eq!(
        received.lock().unwrap().clone(),
        [vec![
            format!("traceparent: 00-{trace}-{id}-01"),
            "x-b3-sampled: 1".to_string(),
            format!("x-b3-spanid: {id}"),
            format!("x-b3-traceid: {trace}"),
        ]]
    );
}
