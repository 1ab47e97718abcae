//! OpenTelemetry for [tonic] gRPC servers and clients.
//!
//! A thin preset over [`otel_tower`]: the layers are `otel_tower`'s, so every
//! call gets a span that lasts until the stream's trailers, the RPC metrics
//! of the OpenTelemetry semantic conventions (v1.45.0 by default), and W3C
//! Trace Context + Baggage propagation (or the propagator you choose). What
//! this crate adds:
//!
//! - the instrumentation scope `otel-tonic` (with this crate's version);
//! - the client's socket address (`network.peer.address` / `network.peer.port`
//!   on server spans) from tonic's [`TcpConnectInfo`], which tonic's own TLS
//!   (`Server::tls_config`) inserts too; with the `tls` feature also from
//!   `TlsConnectInfo<TcpConnectInfo>`, all tonic inserts for TLS streams you
//!   accept yourself and hand to `serve_with_incoming` (see [`peer_addr`]);
//! - [`skip_health_checks`], a ready filter that keeps
//!   `grpc.health.v1.Health` probes out of your traces and metrics.
//!
//! # Server
//!
//! ```
//! use tonic::transport::Server;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Any generated service works the same way; here tonic-health's.
//! let (_reporter, health) = tonic_health::server::health_reporter();
//! let router = Server::builder()
//!     .layer(otel_tonic::server())
//!     .add_service(health);
//! // router.serve("127.0.0.1:50051".parse()?).await?;
//! # let _ = router;
//! # }
//! ```
//!
//! [`server()`] and [`client()`] use the global tracer and meter providers.
//! To pass providers explicitly, or to change any other option, start from
//! [`instrumentation()`]: it returns an [`otel_tower::Instrumentation`] with
//! the tonic presets, and one configuration serves a service's inbound and
//! outbound calls:
//!
//! ```
//! use opentelemetry_sdk::metrics::SdkMeterProvider;
//! use opentelemetry_sdk::trace::SdkTracerProvider;
//! use tonic::transport::{Endpoint, Server};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let tracer_provider = SdkTracerProvider::builder().build();
//! let meter_provider = SdkMeterProvider::builder().build();
//! let otel = otel_tonic::instrumentation()
//!     .with_tracer_provider(tracer_provider.clone())
//!     .with_meter_provider(meter_provider.clone())
//!     .with_filter(otel_tonic::skip_health_checks);
//!
//! let (_reporter, health) = tonic_health::server::health_reporter();
//! let router = Server::builder()
//!     .layer(otel.server_layer())
//!     .add_service(health);
//! # let _ = router;
//!
//! // Client: wrap the Channel, then hand it to any generated client, made
//! // `with_origin` so the layer sees the server's address (see below).
//! let origin: http::Uri = "http://127.0.0.1:50051".parse().unwrap();
//! let channel = Endpoint::from_shared(origin.to_string()).unwrap().connect_lazy();
//! let channel = tower::ServiceBuilder::new()
//!     .layer(otel.client_layer())
//!     .service(channel);
//! // let client = GreeterClient::with_origin(channel, origin);
//! # let _ = (channel, origin);
//! # }
//! ```
//!
//! A generated client made with `GreeterClient::new(channel)` sends requests
//! with a path-only URI: tonic's `Channel` adds the scheme and authority
//! below the client layer, so the client span and metrics then lack
//! `server.address` / `server.port`. Make the client with
//! `GreeterClient::with_origin(channel, uri)` (the same URI as the
//! endpoint; the Channel still decides where the request goes) and they are
//! there.
//!
//! # What you get
//!
//! - The server span is the child of the caller's span (from the
//!   `traceparent` header), and its `opentelemetry::Context` is in the
//!   request extensions and is the current context while your handler runs,
//!   so spans you create there (with the OpenTelemetry API or through
//!   `tracing-opentelemetry`) are its children, and calls you make through a
//!   client wrapped with [`client()`] continue the trace.
//! - The outcome is read from the trailers (or the headers of a trailers-only
//!   response), so `Err(Status)` from a handler, a failed stream and a
//!   deadline all show up with the right `rpc.status_code`; streams are
//!   measured until their last message.
//! - gRPC-Web through `tonic-web` is recognised too (reported as
//!   `rpc.system.name = grpc`); requests that are not RPCs, such as plain
//!   HTTP routes of an axum router that also serves tonic services, pass
//!   through untouched. (A `POST` with `application/json` is a Connect call
//!   by that protocol's rule: leave such routes out with
//!   [`Instrumentation::with_filter`].)
//!
//! Deadlines: a request with a timeout (`Request::set_timeout`, the
//! `grpc-timeout` header) that runs out ends as `DEADLINE_EXCEEDED` on both
//! sides, whether tonic's server drops the handler, tonic's `Channel` gives
//! up, or the caller drops the call after the deadline. A call dropped
//! before its deadline (or without one) is `CANCELLED`, an error on the
//! client only.
//!
//! Panics: tonic does not catch a panicking handler. The server layer sees
//! the panic go by and ends the server span as an error without a code
//! (`error.type` `_OTHER`, description `panicked`); the panic goes on, the
//! task serving the call dies and the HTTP/2 stream is reset. The client
//! sees a reset without a gRPC status (`error.type` `_OTHER` if no response
//! had arrived yet, `CANCELLED` mid-stream). To answer the client with a
//! gRPC status instead (and record that code on both sides), turn panics
//! into a status inside the server layer, e.g. with tower-http's
//! `CatchPanicLayer`:
//!
//! ```
//! use tonic::transport::Server;
//!
//! let catch_panic = tower_http::catch_panic::CatchPanicLayer::custom(|_| {
//!     tonic::Status::internal("handler panicked")
//!         .into_http::<http_body_util::Full<bytes::Bytes>>()
//! });
//! # let (_reporter, svc) = tonic_health::server::health_reporter();
//! let router = Server::builder()
//!     .layer(otel_tonic::server())
//!     .layer(catch_panic) // inside the server layer: its span sees INTERNAL
//!     .add_service(svc);
//! # let _ = router;
//! ```
//!
//! [tonic]: https://docs.rs/tonic
//! [`TcpConnectInfo`]: tonic::transport::server::TcpConnectInfo
#![warn(missing_docs)]

use std::net::SocketAddr;

use otel_tower::{ClientLayer, Instrumentation, RpcRequest, ServerLayer};
use tonic::transport::server::TcpConnectInfo;

/// The instrumentation scope name of the telemetry this crate produces.
pub const SCOPE_NAME: &str = "otel-tonic";

/// The fully qualified name of the standard gRPC health-checking service,
/// which [`skip_health_checks`] leaves uninstrumented.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// An [`Instrumentation`] with the tonic presets: scope `otel-tonic`, peer
/// address from tonic's connection info ([`peer_addr`]).
///
/// Every other option is `otel_tower`'s default (global providers, default
/// propagator, Stable conventions unless `OTEL_SEMCONV_STABILITY_OPT_IN`
/// says otherwise); change them with the builder methods of
/// [`Instrumentation`].
///
/// ```
/// let otel = otel_tonic::instrumentation()
///     .with_filter(otel_tonic::skip_health_checks)
///     .without_server_peer_attributes();
/// let (server, client) = (otel.server_layer(), otel.client_layer());
/// # let _ = (server, client);
/// ```
pub fn instrumentation() -> Instrumentation {
    Instrumentation::new()
        .with_instrumentation_scope(SCOPE_NAME, env!("CARGO_PKG_VERSION"))
        .with_peer_addr_fn(peer_addr)
}

/// The server layer with every default and the tonic presets:
/// `instrumentation().server_layer()`.
///
/// Give it to [`Server::builder().layer(...)`](tonic::transport::Server::layer),
/// or to an axum `Router` that serves tonic services.
pub fn server() -> ServerLayer {
    instrumentation().server_layer()
}

/// The client layer with every default and the tonic presets:
/// `instrumentation().client_layer()`.
///
/// Wrap a tonic `Channel` with it
/// (`tower::ServiceBuilder::new().layer(otel_tonic::client()).service(channel)`)
/// and give the result to a generated client, made with `with_origin` so
/// the span carries `server.address` and `server.port` (see the
/// [crate docs](crate)).
pub fn client() -> ClientLayer {
    instrumentation().client_layer()
}

/// Where the server finds the client's socket address: tonic's
/// [`TcpConnectInfo`] (plain TCP), with the `tls` feature also
/// `TlsConnectInfo<TcpConnectInfo>` (TLS over TCP), else a bare
/// [`SocketAddr`] extension (for servers built by hand).
///
/// [`instrumentation()`] installs it with
/// [`Instrumentation::with_peer_addr_fn`]; use it yourself when you compose
/// your own peer-address function, e.g. for tonic services served by
/// `axum::serve` with `into_make_service_with_connect_info::<SocketAddr>()`:
///
/// ```
/// use std::net::SocketAddr;
///
/// let otel = otel_tonic::instrumentation().with_peer_addr_fn(|ext| {
///     otel_tonic::peer_addr(ext)
///         .or_else(|| ext.get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0))
/// });
/// # let _ = otel;
/// ```
pub fn peer_addr(extensions: &http::Extensions) -> Option<SocketAddr> {
    if let Some(info) = extensions.get::<TcpConnectInfo>() {
        return info.remote_addr();
    }
    #[cfg(feature = "tls")]
    if let Some(info) = extensions.get::<tonic::transport::server::TlsConnectInfo<TcpConnectInfo>>()
    {
        return info.get_ref().remote_addr();
    }
    extensions.get::<SocketAddr>().copied()
}

/// Whether a call is a gRPC health check (service `grpc.health.v1.Health`:
/// `Check` and `Watch`).
pub fn is_health_check(request: &RpcRequest<'_>) -> bool {
    request.service() == HEALTH_SERVICE
}

/// A filter for [`Instrumentation::with_filter`] that instruments every call
/// except gRPC health checks (see [`is_health_check`]).
///
/// Load balancers and orchestrators probe health every few seconds; with
/// this filter those probes make no spans and no metrics (the caller's
/// context is still propagated). `with_filter` keeps one filter, so to
/// combine it with your own, call [`is_health_check`] from it:
///
/// ```
/// let otel = otel_tonic::instrumentation().with_filter(otel_tonic::skip_health_checks);
///
/// // Combined with a filter of your own:
/// let otel = otel_tonic::instrumentation().with_filter(|req| {
///     !otel_tonic::is_health_check(req) && req.service() != "internal.Admin"
/// });
/// # let _ = otel;
/// ```
pub fn skip_health_checks(request: &RpcRequest<'_>) -> bool {
    !is_health_check(request)
}
