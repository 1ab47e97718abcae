//! The layers' default propagator: W3C Trace Context + Baggage while no
//! global propagator is installed, the global one once the application
//! installs it, even while calls are being served (within a second). Its
//! own test binary: it installs a process-wide global.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::SpanKind;
use otel_tower::Instrumentation;
use otel_tower::propagation::B3;
use support::*;
use tower::{ServiceBuilder, ServiceExt};

const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const T2: &str = "80f198ee56343ba864fe8b2a57d3eff7";

#[tokio::test(flavor = "current_thread")]
async fn layers_pick_up_a_global_installed_while_serving() {
    let t = Telemetry::new();
    let otel = Instrumentation::new()
        .with_tracer_provider(t.tracer_provider.clone())
        .without_metrics();
    // Records the propagation headers each call brings.
    let seen: Arc<Mutex<Vec<(bool, bool)>>> = Arc::default();
    let seen2 = seen.clone();
    let addr = serve(
        otel.server_layer(),
        Arc::new(move |req| {
            let h = req.headers();
            seen2.lock().unwrap().push((
                h.contains_key("traceparent") && h.contains_key("x-from-client"),
                h.contains_key("b3") && h.contains_key("x-from-client"),
            ));
            grpc_ok_response(&[])
        }),
    )
    .await;

    // A call that carries both a traceparent (T) and a b3 header (T2): the
    // server span's trace says which one the server read.
    let incoming = |n: usize| {
        let mut req = grpc_request(addr, "/global.Svc/Call", "application/grpc");
        let h = req.headers_mut();
        h.insert(
            "traceparent",
            format!("00-{T}-00f067aa0ba902b7-01").parse().unwrap(),
        );
        h.insert("b3", format!("{T2}-00f067aa0ba902b{n}-1").parse().unwrap());
        req
    };
    let server_trace = |n: usize| {
        let spans = t.finished_spans();
        let servers: Vec<_> = spans
            .iter()
            .filter(|s| s.span_kind == SpanKind::Server)
            .collect();
        servers[n].span_context.trace_id().to_string()
    };

    // 1. No global: the server reads W3C.
    let response = h2_client().oneshot(incoming(1)).await.unwrap();
    read_all(response).await;
    t.wait_spans(1).await;
    assert_eq!(server_trace(0), T);

    // And a client sends a traceparent, not b3.
    let client = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h2_client());
    let mut req = grpc_request(addr, "/global.Svc/Call", "application/grpc");
    req.headers_mut()
        .insert("x-from-client", "1".parse().unwrap());
    read_all(client.clone().oneshot(req).await.unwrap()).await;
    assert_eq!(seen.lock().unwrap().last(), Some(&(true, false)));

    // 2. The application installs B3 while serving; within a second the
    // layers use it on both sides.
    opentelemetry::global::set_text_map_propagator(B3::single());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    t.spans.reset();
    let response = h2_client().oneshot(incoming(2)).await.unwrap();
    read_all(response).await;
    t.wait_spans(1).await;
    assert_eq!(server_trace(0), T2);

    let mut req = grpc_request(addr, "/global.Svc/Call", "application/grpc");
    req.headers_mut()
        .insert("x-from-client", "1".parse().unwrap());
    read_all(client.oneshot(req).await.unwrap()).await;
    assert_eq!(seen.lock().unwrap().last(), Some(&(false, true)));
}
