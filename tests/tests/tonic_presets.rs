//! What `otel_tonic` adds over a bare `otel_tower::Instrumentation`, checked
//! against real tonic servers: the `otel-tonic` scope, the peer address read
//! from tonic's `TcpConnectInfo` (Stable and Legacy conventions), the switch
//! that removes it, and the client's `server.address`, which depends on how
//! the generated client was made.

mod tonic_support;

use opentelemetry::trace::SpanKind;
use otel_integration_tests::{Telemetry, attrs};
use otel_tower::Semconv;
use tonic_support::*;

/// One SayHello through `otel`'s layers; returns (client span attrs, server span).
async fn one_call(t: &Telemetry, otel: &otel_tower::Instrumentation) -> std::net::SocketAddr {
    let server = serve_greeter(otel, None);
    let mut client = greeter_client(otel, server.addr).await;
    within(client.say_hello(hello("presets"))).await.unwrap();
    settled(t, 2).await;
    server.addr
}

#[tokio::test]
async fn peer_address_comes_from_tcp_connect_info() {
    let t = Telemetry::new();
    let addr = one_call(&t, &otel(&t)).await;
    let server = t.span(SpanKind::Server);
    let a = attrs(&server);
    assert_eq!(a["network.peer.address"], "127.0.0.1");
    let peer_port: u16 = a["network.peer.port"].parse().unwrap();
    assert_ne!(peer_port, addr.port());
    assert_eq!(server.instrumentation_scope.name(), "otel-tonic");
    // Never on metrics.
    let point = &t.histogram("rpc.server.call.duration")[0];
    assert!(!point.attributes.contains_key("network.peer.address"));
}

/// Without the tonic presets, the engine's default peer-address function
/// finds nothing in tonic's extensions (and the scope is otel-tower's): the
/// attributes above are this crate's doing.
#[tokio::test]
async fn bare_engine_finds_no_peer_address_in_tonic() {
    let t = Telemetry::new();
    one_call(&t, &t.instrumentation()).await;
    let server = t.span(SpanKind::Server);
    assert!(!attrs(&server).contains_key("network.peer.address"));
    assert_eq!(server.instrumentation_scope.name(), "otel-tower");
}

#[tokio::test]
async fn without_server_peer_attributes() {
    let t = Telemetry::new();
    one_call(&t, &otel(&t).without_server_peer_attributes()).await;
    let server = attrs(&t.span(SpanKind::Server));
    assert!(!server.contains_key("network.peer.address"));
    assert!(!server.contains_key("network.peer.port"));
    assert_eq!(server["rpc.status_code"], "OK");
}

/// Legacy (otelconnect-go) conventions: the server's `net.peer.*` is the
/// client's socket address, from the same TcpConnectInfo.
#[tokio::test]
async fn legacy_conventions_read_the_peer_too() {
    let t = Telemetry::new();
    let otel = otel(&t).with_semconv(Semconv::Legacy);
    let addr = one_call(&t, &otel).await;
    let server = attrs(&t.span(SpanKind::Server));
    assert_eq!(server["rpc.system"], "grpc");
    assert_eq!(server["rpc.service"], "helloworld.Greeter");
    assert_eq!(server["rpc.method"], "SayHello");
    assert_eq!(server["rpc.grpc.status_code"], "0");
    assert_eq!(server["net.peer.name"], "127.0.0.1");
    assert_ne!(server["net.peer.port"], addr.port().to_string());
    let client = attrs(&t.span(SpanKind::Client));
    assert_eq!(client["net.peer.name"], "127.0.0.1");
    assert_eq!(client["net.peer.port"], addr.port().to_string());
}

/// A generated client made with `new(channel)` sends path-only URIs: tonic's
/// Channel adds the origin below the client layer, so the layer cannot know
/// the server's address. With `with_origin` (as the tests above use) it can.
#[tokio::test]
async fn client_made_with_new_has_no_server_address() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let mut client = GreeterClient::new(channel(&otel, server.addr).await);
    within(client.say_hello(hello("no origin"))).await.unwrap();
    settled(&t, 2).await;
    let client_span = t.span(SpanKind::Client);
    let a = attrs(&client_span);
    assert!(!a.contains_key("server.address"), "{a:?}");
    assert_eq!(a["rpc.method"], "helloworld.Greeter/SayHello");
    assert_eq!(a["rpc.status_code"], "OK");
    // The server still learns its address from :authority.
    let server_span = attrs(&t.span(SpanKind::Server));
    assert_eq!(server_span["server.address"], "127.0.0.1");
}
