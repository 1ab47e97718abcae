//! A `DefaultPropagator` installed as the global propagator: it would
//! consult itself without end; instead it acts as W3C Trace Context +
//! Baggage, for the layers, for other defaults and for libraries that call
//! the global directly. Its own test binary: it installs a process-wide
//! global.

mod support;

use std::sync::Arc;

use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId};
use otel_tower::Instrumentation;
use otel_tower::propagation::{DefaultPropagator, HeaderExtractor, HeaderInjector};
use support::*;
use tower::{ServiceBuilder, ServiceExt};

const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const S: &str = "00f067aa0ba902b7";

fn injected(p: &dyn TextMapPropagator, cx: &Context) -> HeaderMap {
    let mut map = HeaderMap::new();
    p.inject_context(cx, &mut HeaderInjector(&mut map));
    map
}

#[tokio::test(flavor = "current_thread")]
async fn a_default_propagator_installed_as_the_global_acts_as_w3c() {
    opentelemetry::global::set_text_map_propagator(DefaultPropagator::new());
    let cx = Context::new()
        .with_remote_span_context(SpanContext::new(
            TraceId::from_hex(T).unwrap(),
            SpanId::from_hex(S).unwrap(),
            TraceFlags::SAMPLED,
            true,
            Default::default(),
        ))
        .with_baggage(vec![opentelemetry::KeyValue::new("k", "v")]);
    let traceparent = format!("00-{T}-{S}-01");

    // Another default, and the global itself as other libraries call it.
    let default = DefaultPropagator::new();
    let through_global =
        opentelemetry::global::get_text_map_propagator(|global| injected(global, &cx));
    for map in [injected(&default, &cx), through_global] {
        assert_eq!(map["traceparent"], traceparent.as_str());
        assert_eq!(map["baggage"], "k=v");
        assert_eq!(map.len(), 2);
        let back = default.extract(&HeaderExtractor(&map));
        assert_eq!(back.span().span_context().trace_id().to_string(), T);
        assert_eq!(back.baggage().get("k").map(|v| v.as_str()), Some("v"));
    }
    assert_eq!(
        default.fields().collect::<Vec<_>>(),
        ["traceparent", "tracestate", "baggage"]
    );

    // The layers (default propagator): the server continues the caller's
    // trace, and the client sends a traceparent.
    let t = Telemetry::new();
    let otel = Instrumentation::new()
        .with_tracer_provider(t.tracer_provider.clone())
        .without_metrics();
    let addr = serve(
        otel.server_layer(),
        Arc::new(|req| {
            assert!(req.headers().contains_key("traceparent"));
            grpc_ok_response(&[])
        }),
    )
    .await;
    let client = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h2_client());
    let mut req = grpc_request(addr, "/global.Svc/Call", "application/grpc");
    req.extensions_mut().insert(cx.clone());
    let (head, _, _) = read_all(client.oneshot(req).await.unwrap()).await;
    assert_eq!(head.status, 200);
    let spans = t.wait_spans(2).await;
    let server = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Server)
        .unwrap();
    let client = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Client)
        .unwrap();
    assert_eq!(client.span_context.trace_id().to_string(), T);
    assert_eq!(server.parent_span_id, client.span_context.span_id());
}
