//! The tonic presets on their own (the end-to-end suites live in the
//! workspace's `tests` package).

use std::net::SocketAddr;

use tonic::transport::server::TcpConnectInfo;

#[test]
fn peer_addr_reads_tcp_connect_info() {
    let remote: SocketAddr = "10.1.2.3:45678".parse().unwrap();
    let mut ext = http::Extensions::new();
    ext.insert(TcpConnectInfo {
        local_addr: Some("127.0.0.1:50051".parse().unwrap()),
        remote_addr: Some(remote),
    });
    assert_eq!(otel_tonic::peer_addr(&ext), Some(remote));
}

#[test]
fn peer_addr_without_remote_addr_is_none() {
    let mut ext = http::Extensions::new();
    ext.insert(TcpConnectInfo {
        local_addr: None,
        remote_addr: None,
    });
    // A bare SocketAddr does not override what tonic said.
    ext.insert("10.0.0.1:1".parse::<SocketAddr>().unwrap());
    assert_eq!(otel_tonic::peer_addr(&ext), None);
}

#[test]
fn peer_addr_falls_back_to_a_socket_addr_extension() {
    let addr: SocketAddr = "[::1]:9000".parse().unwrap();
    let mut ext = http::Extensions::new();
    assert_eq!(otel_tonic::peer_addr(&ext), None);
    ext.insert(addr);
    assert_eq!(otel_tonic::peer_addr(&ext), Some(addr));
}

#[test]
fn layers_build_with_every_default() {
    let _server = otel_tonic::server();
    let _client = otel_tonic::client();
    let otel = otel_tonic::instrumentation();
    assert!(format!("{otel:?}").contains("otel-tonic"));
}
