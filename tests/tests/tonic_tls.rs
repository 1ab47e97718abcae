//! otel-tonic's `tls` feature against a real tonic server over TLS: the
//! peer address comes from tonic's `TlsConnectInfo`. Run with
//! `cargo test -p otel-integration-tests --features tls --test tonic_tls`
//! (CI does); the certificates in `tls/` are a test CA and a certificate
//! for 127.0.0.1 it signed, valid until 2126.
#![cfg(feature = "tls")]

mod tonic_support;

use opentelemetry::trace::SpanKind;
use otel_integration_tests::{Telemetry, attrs};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic_support::*;

const CA: &str = include_str!("tls/ca.pem");
const CERT: &str = include_str!("tls/server.pem");
const KEY: &str = include_str!("tls/server.key");

/// A channel to `addr` over TLS, trusting the test CA.
async fn tls_channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    within(
        Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(CA))
                    .domain_name("127.0.0.1"),
            )
            .expect("client TLS")
            .connect(),
    )
    .await
    .expect("connect over TLS")
}

/// The server span's peer is the client's socket on 127.0.0.1.
fn assert_peer_is_the_client(t: &Telemetry, server_addr: std::net::SocketAddr) {
    let server = attrs(&t.span(SpanKind::Server));
    assert_eq!(server["network.peer.address"], "127.0.0.1", "{server:?}");
    let peer_port: u16 = server["network.peer.port"].parse().unwrap();
    assert_ne!(peer_port, server_addr.port(), "the client's port, not ours");
}

#[tokio::test]
async fn peer_address_comes_from_tls_connect_info() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let (incoming, addr) = incoming();
    let router = tonic::transport::Server::builder()
        .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(CERT, KEY)))
        .expect("server TLS")
        .layer(otel.server_layer())
        .add_service(GreeterServer::new(TestGreeter { backend: None }));
    let _server = spawn_server(addr, router.serve_with_incoming(incoming));

    let channel = tls_channel(addr).await;
    let channel = tower::ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(channel);
    let origin: http::Uri = format!("https://{addr}").parse().unwrap();
    let mut client = GreeterClient::with_origin(channel, origin);
    let reply = within(client.say_hello(hello("tls"))).await.unwrap();
    assert_eq!(reply.into_inner().message, "Hello tls");
    settled(&t, 2).await;

    assert_peer_is_the_client(&t, addr);
    let client = attrs(&t.span(SpanKind::Client));
    assert_eq!(client["server.address"], "127.0.0.1");
    assert_eq!(client["server.port"], addr.port().to_string());
}

/// TLS terminated by the application, its streams handed to tonic with
/// `serve_with_incoming`: tonic then inserts only `TlsConnectInfo`, which
/// the `tls` feature reads.
#[tokio::test]
async fn peer_address_of_tls_streams_served_with_incoming() {
    use std::sync::Arc;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs = CertificateDer::pem_slice_iter(CERT.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(KEY.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streams = futures::stream::unfold((listener, acceptor), |(listener, acceptor)| async {
        let (tcp, _) = listener.accept().await.ok()?;
        let tls = acceptor.accept(tcp).await;
        Some((tls, (listener, acceptor)))
    });

    let t = Telemetry::new();
    let otel = otel(&t);
    let router = tonic::transport::Server::builder()
        .layer(otel.server_layer())
        .add_service(GreeterServer::new(TestGreeter { backend: None }));
    let _server = spawn_server(addr, router.serve_with_incoming(Box::pin(streams)));

    let channel = tls_channel(addr).await;
    let mut client = GreeterClient::new(channel);
    let reply = within(client.say_hello(hello("own tls"))).await.unwrap();
    assert_eq!(reply.into_inner().message, "Hello own tls");
    settled(&t, 1).await;

    assert_peer_is_the_client(&t, addr);
}
