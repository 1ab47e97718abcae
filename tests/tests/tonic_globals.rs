//! `otel_tonic::server()` and `otel_tonic::client()` exactly as api.md shows
//! them, with every default: the SDK providers installed as the globals (so
//! this suite is its own test binary with a single test), no propagator
//! configured (W3C Trace Context + Baggage by default). A caller, a front
//! service whose handler calls a backend service, the backend: one trace,
//! four spans, each parented on the one before.

mod tonic_support;

use opentelemetry::trace::SpanKind;
use otel_integration_tests::{Telemetry, attrs};
use tonic::transport::{Endpoint, Server};
use tonic_support::*;

#[tokio::test]
async fn defaults_with_global_providers_across_two_services() {
    let t = Telemetry::new();
    opentelemetry::global::set_tracer_provider(t.tracer_provider.clone());
    opentelemetry::global::set_meter_provider(t.meter_provider.clone());

    let (listener, backend_addr) = incoming();
    let backend = Server::builder()
        .layer(otel_tonic::server())
        .add_service(BackendServer::new(TestBackend));
    let _backend = spawn_server(backend_addr, backend.serve_with_incoming(listener));

    let backend_channel = Endpoint::from_shared(format!("http://{backend_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let backend_channel = tower::ServiceBuilder::new()
        .layer(otel_tonic::client())
        .service(backend_channel);
    let backend_client = BackendClient::with_origin(backend_channel, origin(backend_addr));

    let (listener, front_addr) = incoming();
    let front = Server::builder()
        .layer(otel_tonic::server())
        .add_service(GreeterServer::new(TestGreeter {
            backend: Some(backend_client),
        }));
    let _front = spawn_server(front_addr, front.serve_with_incoming(listener));

    let channel = Endpoint::from_shared(format!("http://{front_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let channel = tower::ServiceBuilder::new()
        .layer(otel_tonic::client())
        .service(channel);
    let mut client = GreeterClient::with_origin(channel, origin(front_addr));
    let reply = within(client.say_hello(hello("call-backend")))
        .await
        .unwrap();
    assert_eq!(
        reply.into_inner().message,
        "greeter+backend saw from-greeter"
    );

    let spans = settled(&t, 4).await;
    let find = |name: &str, kind: SpanKind| {
        spans
            .iter()
            .find(|s| s.name == name && s.span_kind == kind)
            .unwrap_or_else(|| panic!("no {kind:?} span {name}"))
            .clone()
    };
    let caller = find("helloworld.Greeter/SayHello", SpanKind::Client);
    let front_server = find("helloworld.Greeter/SayHello", SpanKind::Server);
    let backend_client = find("helloworld.Backend/Lookup", SpanKind::Client);
    let backend_server = find("helloworld.Backend/Lookup", SpanKind::Server);
    let trace = caller.span_context.trace_id();
    for span in &spans {
        assert_eq!(span.span_context.trace_id(), trace, "one trace");
        assert_eq!(span.instrumentation_scope.name(), "otel-tonic");
        assert_eq!(attrs(span)["rpc.status_code"], "OK");
    }
    assert_eq!(front_server.parent_span_id, caller.span_context.span_id());
    assert_eq!(
        backend_client.parent_span_id,
        front_server.span_context.span_id()
    );
    assert_eq!(
        backend_server.parent_span_id,
        backend_client.span_context.span_id()
    );
    assert_eq!(attrs(&front_server)["network.peer.address"], "127.0.0.1");
    assert_eq!(
        attrs(&backend_client)["server.port"],
        backend_addr.port().to_string()
    );
    let points = t.histogram("rpc.server.call.duration");
    assert_eq!(points.iter().map(|p| p.count).sum::<u64>(), 2);
    assert!(points.iter().all(|p| p.scope == "otel-tonic"));
}
