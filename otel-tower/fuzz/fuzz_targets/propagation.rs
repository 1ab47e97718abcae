//! traceparent, tracestate, baggage and B3 parsing: arbitrary header bytes
//! never panic, and whatever is injected back is a valid header.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use otel_tower::propagation::{B3, Baggage, HeaderExtractor, HeaderInjector, TraceContext};

const NAMES: [&str; 9] = [
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-b3-parentspanid",
];

fuzz_target!(|data: &[u8]| {
    // Input: records of [name index][len][value bytes...]; repeated names allowed.
    let mut headers = HeaderMap::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let name = NAMES[rest[0] as usize % NAMES.len()];
        let len = (rest[1] as usize).min(rest.len() - 2);
        if let Ok(v) = HeaderValue::from_bytes(&rest[2..2 + len]) {
            headers.append(HeaderName::from_static(name), v);
        }
        rest = &rest[2 + len..];
    }
    let propagators: [Box<dyn TextMapPropagator>; 5] = [
        Box::new(TraceContext::new()),
        Box::new(Baggage::new()),
        Box::new(B3::single()),
        Box::new(B3::multi()),
        Box::new(B3::single_and_multi()),
    ];
    for p in &propagators {
        let cx = p.extract_with_context(&Context::new(), &HeaderExtractor(&headers));
        let mut out = HeaderMap::new();
        p.inject_context(&cx, &mut HeaderInjector(&mut out));
        for (name, value) in &out {
            assert!(p.fields().any(|f| f == name.as_str()), "injected a field it does not list");
            assert!(value.to_str().is_ok(), "injected value is visible ASCII");
            assert!(!value.is_empty(), "never an empty header");
        }
    }
});
