//! `OTEL_SEMCONV_STABILITY_OPT_IN` is read once, when the configuration is
//! built; an explicit `with_semconv` wins. (Its own test binary: it changes
//! the process environment.)

mod support;

use std::sync::Arc;

use opentelemetry::trace::SpanKind;
use otel_tower::Instrumentation;
use otel_tower::semconv::Semconv;
use support::*;
use tower::ServiceExt;

#[tokio::test]
async fn opt_in_variable_is_read_once_at_build_time() {
    // SAFETY: this test binary has a single test; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("OTEL_SEMCONV_STABILITY_OPT_IN", "http,rpc/dup") };
    let t = Telemetry::new();
    let otel = Instrumentation::new()
        .with_tracer_provider(t.tracer_provider.clone())
        .with_meter_provider(t.meter_provider.clone());
    let explicit = Instrumentation::new()
        .with_tracer_provider(t.tracer_provider.clone())
        .with_meter_provider(t.meter_provider.clone())
        .with_semconv(Semconv::Stable);
    let server = otel.server_layer();
    let explicit_server = explicit.server_layer();
    // Changing the variable afterwards has no effect on built layers.
    unsafe { std::env::set_var("OTEL_SEMCONV_STABILITY_OPT_IN", "rpc/old") };
    let handler = |_: &http::Request<hyper::body::Incoming>| grpc_ok_response(&[]);
    for (layer, both) in [(server, true), (explicit_server, false)] {
        t.spans.reset();
        let addr = serve(layer, Arc::new(handler)).await;
        read_all(
            h2_client()
                .oneshot(grpc_request(addr, "/p.S/M", "application/grpc"))
                .await
                .unwrap(),
        )
        .await;
        let span = t.wait_spans(1).await.pop().unwrap();
        assert_eq!(span.span_kind, SpanKind::Server);
        let a = attrs(&span);
        assert!(a.contains_key("rpc.system.name"));
        assert_eq!(a.contains_key("rpc.grpc.status_code"), both, "{a:?}");
    }
}
