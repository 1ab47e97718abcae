//! `from_env()` reads `OTEL_PROPAGATORS`: its own test binary with a single
//! test, because it changes the process environment.

use opentelemetry::propagation::TextMapPropagator;
use otel_tower::propagation::from_env;

fn fields(p: &dyn TextMapPropagator) -> Vec<String> {
    p.fields().map(str::to_string).collect()
}

#[test]
fn from_env_reads_otel_propagators() {
    const VAR: &str = "OTEL_PROPAGATORS";
    let cases: [(Option<&str>, &[&str]); 6] = [
        (None, &["traceparent", "tracestate", "baggage"]),
        (Some(""), &["traceparent", "tracestate", "baggage"]),
        (
            Some("B3,tracecontext,b3"),
            &["b3", "traceparent", "tracestate"],
        ),
        (
            Some("b3multi"),
            &["x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags"],
        ),
        (Some("jaeger,baggage"), &["baggage"]),
        (Some("none"), &[]),
    ];
    for (value, expected) in cases {
        // SAFETY: this binary has a single test, so no other thread reads or
        // writes the environment meanwhile.
        unsafe {
            match value {
                Some(v) => std::env::set_var(VAR, v),
                None => std::env::remove_var(VAR),
            }
        }
        assert_eq!(fields(&from_env()), expected, "{VAR}={value:?}");
    }
    // SAFETY: as above.
    unsafe { std::env::remove_var(VAR) };
}
