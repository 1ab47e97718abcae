//! The default-propagator rule against the opentelemetry global: its own test
//! binary with a single test, because it installs a global propagator.

use http::{HeaderMap, HeaderValue};
use opentelemetry::Context;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use otel_tower::propagation::{B3, DefaultPropagator, HeaderExtractor, HeaderInjector};

const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const S: &str = "00f067aa0ba902b7";
const T2: &str = "0af7651916cd43dd8448eb211c80319c";
const S2: &str = "b7ad6b7169203331";

fn inject(p: &dyn TextMapPropagator, cx: &Context) -> Vec<String> {
    let mut map = HeaderMap::new();
    p.inject_context(cx, &mut HeaderInjector(&mut map));
    let mut keys: Vec<String> = map.keys().map(|k| k.as_str().to_string()).collect();
    keys.sort();
    keys
}

fn extracted_trace(p: &dyn TextMapPropagator, map: &HeaderMap) -> Option<String> {
    let cx = p.extract(&HeaderExtractor(map));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

#[test]
fn default_propagator_follows_the_installed_global() {
    let mut incoming = HeaderMap::new();
    incoming.insert(
        "traceparent",
        HeaderValue::from_str(&format!("00-{T}-{S}-01")).unwrap(),
    );
    incoming.insert("baggage", HeaderValue::from_static("k=v"));
    incoming.insert(
        "b3",
        HeaderValue::from_str(&format!("{T2}-{S2}-1")).unwrap(),
    );
    let sc = SpanContext::new(
        TraceId::from_hex(T).unwrap(),
        SpanId::from_hex(S).unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::NONE,
    );
    let cx = Context::new()
        .with_remote_span_context(sc)
        .with_baggage(vec![opentelemetry::KeyValue::new("k", "v")]);

    // Built before the global is installed; consulted on each use.
    let default = DefaultPropagator::new();

    // 1. No global installed (opentelemetry's no-op): W3C Trace Context + Baggage.
    assert_eq!(extracted_trace(&default, &incoming).as_deref(), Some(T));
    assert_eq!(inject(&default, &cx), ["baggage", "traceparent"]);
    let fields: Vec<&str> = default.fields().collect();
    assert_eq!(fields, ["traceparent", "tracestate", "baggage"]);

    // 2. The application installs B3 (single header): it is used from now on.
    opentelemetry::global::set_text_map_propagator(B3::single());
    assert_eq!(extracted_trace(&default, &incoming).as_deref(), Some(T2));
    assert_eq!(inject(&default, &cx), ["b3"]);
    let fresh = DefaultPropagator::new();
    assert_eq!(extracted_trace(&fresh, &incoming).as_deref(), Some(T2));
    assert_eq!(inject(&fresh, &cx), ["b3"]);
    // fields() lists exactly what is injected now.
    assert_eq!(default.fields().collect::<Vec<_>>(), ["b3"]);

    // Without a b3 header, the traceparent is no longer read.
    incoming.remove("b3");
    assert_eq!(extracted_trace(&default, &incoming), None);
}
