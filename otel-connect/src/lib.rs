//! OpenTelemetry for [connectrpc](https://docs.rs/connectrpc) servers and
//! clients, with the vocabulary of
//! [otelconnect-go](https://github.com/connectrpc/otelconnect-go).
//!
//! This crate is thin glue over [`otel_tower`]: [`new_interceptor()`] returns
//! an [`Instrumentation`] with Connect presets, whose
//! [`server_layer()`](Instrumentation::server_layer) goes in front of a
//! `ConnectRpcService` and whose client side is [`OtelTransport`], a
//! [`ClientTransport`] around any other transport. Every protocol connectrpc
//! speaks is covered (Connect unary, GET and streaming, gRPC, gRPC-Web),
//! with spans that last the whole stream, `rpc.*.call.duration` metrics, and
//! W3C Trace Context + Baggage propagation by default.
//!
//! # Server
//!
//! connectrpc's built-in `Server` takes no user layers, so serve the
//! `ConnectRpcService` through axum (or hyper-util) and put the layer on it:
//!
//! ```
//! use opentelemetry_sdk::metrics::SdkMeterProvider;
//! use opentelemetry_sdk::trace::SdkTracerProvider;
//!
//! let otel = otel_connect::new_interceptor()
//!     .with_tracer_provider(SdkTracerProvider::builder().build())
//!     .with_meter_provider(SdkMeterProvider::builder().build());
//!
//! // Your services: `connectrpc::Router::new()` plus the generated
//! // `register(...)` calls.
//! let connect = connectrpc::ConnectRpcService::new(connectrpc::Router::new());
//! let app: axum::Router = axum::Router::new()
//!     .fallback_service(connect)
//!     .layer(otel.server_layer());
//! // axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
//! # let _ = app;
//! ```
//!
//! The client's socket address (`network.peer.address`/`port`) is read from
//! connectrpc's [`PeerAddr`](connectrpc::PeerAddr) extension, else from
//! axum's `ConnectInfo<SocketAddr>` (set by
//! `into_make_service_with_connect_info`), else from a plain `SocketAddr`
//! extension; see [`peer_addr`].
//!
//! # Client
//!
//! ```
//! use connectrpc::client::{ClientConfig, HttpClient};
//! use opentelemetry_sdk::trace::SdkTracerProvider;
//!
//! let otel = otel_connect::new_interceptor()
//!     .with_tracer_provider(SdkTracerProvider::builder().build());
//! let transport = otel_connect::OtelTransport::new(HttpClient::plaintext(), &otel);
//! let config = ClientConfig::new("http://127.0.0.1:8080".parse().unwrap());
//! // let client = PingServiceClient::new(transport, config);
//! # let _ = (transport, config);
//! ```
//!
//! [`OtelTransport`] wraps [`HttpClient`](https://docs.rs/connectrpc/0.9/connectrpc/client/struct.HttpClient.html),
//! [`SharedHttp2Connection`](https://docs.rs/connectrpc/0.9/connectrpc/client/struct.SharedHttp2Connection.html) and
//! any other [`ClientTransport`]; [`TowerTransport`] turns any cloneable
//! tower service (a `tower::buffer::Buffer` around an
//! [`Http2Connection`](https://docs.rs/connectrpc/0.9/connectrpc/client/struct.Http2Connection.html), a balancer)
//! into one, so [`OtelTransport::from_service`] needs nothing else. The
//! client span is a child of the current OpenTelemetry context, and its
//! context is injected into the request headers.
//!
//! # Coming from otelconnect-go
//!
//! In Go you build one interceptor and hand it to every handler and client:
//!
//! ```go
//! otelInterceptor, _ := otelconnect.NewInterceptor(
//!     otelconnect.WithTracerProvider(tp),
//!     otelconnect.WithMeterProvider(mp),
//!     otelconnect.WithoutServerPeerAttributes(),
//! )
//! ```
//!
//! Here the same value is an [`Instrumentation`]; its server layer goes on
//! the router and [`OtelTransport`] around the client's transport:
//!
//! ```
//! # use opentelemetry_sdk::{metrics::SdkMeterProvider, trace::SdkTracerProvider};
//! # let (tp, mp) = (SdkTracerProvider::builder().build(), SdkMeterProvider::builder().build());
//! let otel = otel_connect::new_interceptor()
//!     .with_tracer_provider(tp)
//!     .with_meter_provider(mp)
//!     .without_server_peer_attributes();
//! # let _ = otel;
//! ```
//!
//! | otelconnect-go | here | difference |
//! |---|---|---|
//! | `NewInterceptor(opts...)` | [`new_interceptor()`] then builder calls | no error to handle; a bad header name panics when the option is set |
//! | `WithTracerProvider(tp)` | [`with_tracer_provider(tp)`](Instrumentation::with_tracer_provider) | same; default the global provider |
//! | `WithMeterProvider(mp)` | [`with_meter_provider(mp)`](Instrumentation::with_meter_provider) | same; never panics |
//! | `WithPropagator(p)` | [`with_propagator(p)`](Instrumentation::with_propagator) | default: the global propagator if one is installed, else W3C Trace Context + Baggage (Go: the global one, a no-op until set) |
//! | `WithFilter(fn)` | [`with_filter(f)`](Instrumentation::with_filter) | a filtered call still propagates the caller's context (Go: no injection), so it never splits a trace |
//! | `WithoutTracing()` | [`without_tracing()`](Instrumentation::without_tracing) | same |
//! | `WithoutMetrics()` | [`without_metrics()`](Instrumentation::without_metrics) | same |
//! | `WithAttributeFilter(fn)` | [`with_attribute_filter(f)`](Instrumentation::with_attribute_filter) | independent of `without_server_peer_attributes()` (in Go one replaces the other); applies to span and metric attributes |
//! | `WithoutServerPeerAttributes()` | [`without_server_peer_attributes()`](Instrumentation::without_server_peer_attributes) | drops the peer attributes of every mode from server spans and metrics |
//! | `WithTrustRemote()` | the default | **default differs**: we trust the caller (the server span is its child, as otelgrpc and the Rust peers do). Go's default (untrusted: a new root with a link to the caller) is [`with_public_endpoint()`](Instrumentation::with_public_endpoint), or [`with_public_endpoint_fn(f)`](Instrumentation::with_public_endpoint_fn) per call. Baggage still reaches the handler when untrusted. |
//! | `WithTraceRequestHeader(keys...)` | [`with_trace_request_header(keys)`](Instrumentation::with_trace_request_header) | same, spans only |
//! | `WithTraceResponseHeader(keys...)` | [`with_trace_response_header(keys)`](Instrumentation::with_trace_response_header) | same, spans only (trailers too) |
//! | `WithoutTraceEvents()` | [`without_trace_events()`](Instrumentation::without_trace_events) | message events are off by default in Stable mode ([`with_trace_events()`](Instrumentation::with_trace_events) turns them on), on by default in Legacy mode |
//! | `WithPropagateResponseHeader()` | [`with_propagate_response_header()`](Instrumentation::with_propagate_response_header) | same |
//! | `WithRPCSystem(sys)` | [`with_rpc_system(RpcSystem::Grpc \| RpcSystem::ConnectRpc)`](Instrumentation::with_rpc_system) | same |
//! | (semconv v1.21 names) | [`with_semconv(Semconv::Legacy)`](Instrumentation::with_semconv) | the default is the stable v1.45.0 conventions; Legacy reproduces otelconnect-go v0.9.0's span names, attributes, events and ten metrics; `Both` emits both for a migration; or set `OTEL_SEMCONV_STABILITY_OPT_IN=rpc/old` / `rpc/dup` |
//!
//! Legacy names follow otelconnect-go's source: a gRPC-Web call is
//! `rpc.system="grpc_web"` with `rpc.grpc_web.status_code` and
//! `rpc.grpc_web.*.metadata.*` keys (unless
//! [`with_rpc_system`](Instrumentation::with_rpc_system) chose one system), a
//! Connect GET answered 304 carries `http.status_code=304` on the span and
//! every metric, and a failure without a code (transport error, panic) is
//! `unknown`, as `connect.CodeOf` reports it.
//!
//! Other differences a Go user may notice:
//!
//! - Legacy `message.uncompressed_size` is the envelope length on the wire
//!   (Go uses the protobuf size of the message): equal unless the message
//!   was compressed.
//! - Server spans are not marked Error for codes that are the caller's
//!   fault (`not_found`, `invalid_argument`, ...), per the OpenTelemetry
//!   conventions; client spans are Error for every code. The code itself
//!   is recorded either way (`rpc.status_code`; Legacy:
//!   `rpc.connect_rpc.error_code` / `rpc.grpc.status_code`).
//! - Streams that the caller drops without closing still end their span
//!   (`canceled`, or `deadline_exceeded` once the request's deadline passed).
//! - A call that ends `unimplemented`, to a method that has not yet
//!   succeeded through the layer, is reported as method `_OTHER` in Stable
//!   mode (so scanners probing random paths create no new metric series).
//!   Legacy mode keeps the method's names on the client, as Go does, and
//!   uses `_OTHER` on the server, where Go records nothing for a path it has
//!   no handler for. List your methods with
//!   [`with_known_methods`](Instrumentation::with_known_methods) to decide
//!   the names up front in every mode.
//! - Extra options Go lacks: [`with_known_methods`](Instrumentation::with_known_methods)
//!   (unknown methods become `_OTHER`), [`with_peer_addr_fn`](Instrumentation::with_peer_addr_fn).
//!
//! # Optional: method facts from the schema
//!
//! The layer sees only HTTP. A gRPC call does not tell on the wire whether
//! the method is unary or streaming, nor is its idempotency level visible.
//! [`SpecInterceptor`], registered on the `ConnectRpcService`, adds them to
//! the server span from the generated method [`Spec`](connectrpc::Spec).
//! Nothing else depends on it.
#![warn(missing_docs)]

use std::net::SocketAddr;
use std::task::{Context as TaskContext, Poll};

use connectrpc::client::{BoxFuture, ClientBody, ClientTransport};
use connectrpc::{ConnectError, Interceptor};
use http::{Request, Response};
use opentelemetry::KeyValue;
use opentelemetry::trace::TraceContextExt;
use otel_tower::{ClientLayer, ResponseBody};
use tower_service::Service;

pub use otel_tower::{Instrumentation, RpcSystem, Semconv};

/// The instrumentation scope name this crate reports.
pub const SCOPE_NAME: &str = "otel-connect";

/// An [`Instrumentation`] with the Connect presets: instrumentation scope
/// `otel-connect` and this crate's version, and the server reads the
/// client's socket address with [`peer_addr`].
///
/// Named after otelconnect-go's `NewInterceptor`; configure it with the same
/// options (see the [crate docs](crate#coming-from-otelconnect-go)), then use
/// [`server_layer()`](Instrumentation::server_layer) and
/// [`OtelTransport::new`].
pub fn new_interceptor() -> Instrumentation {
    Instrumentation::new()
        .with_instrumentation_scope(SCOPE_NAME, env!("CARGO_PKG_VERSION"))
        .with_peer_addr_fn(peer_addr)
}

/// Where the Connect presets find the client's socket address: connectrpc's
/// [`PeerAddr`](connectrpc::PeerAddr) extension, else axum's
/// `ConnectInfo<SocketAddr>` (with the default `axum` feature), else a plain
/// [`SocketAddr`] extension.
pub fn peer_addr(extensions: &http::Extensions) -> Option<SocketAddr> {
    if let Some(peer) = extensions.get::<connectrpc::PeerAddr>() {
        return Some(peer.0);
    }
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0);
    }
    extensions.get::<SocketAddr>().copied()
}

/// A connectrpc [`ClientTransport`] that instruments every call made
/// through the transport it wraps: one client span per RPC (child of the
/// current OpenTelemetry context), `rpc.client.call.duration`, and the
/// span's context injected into the request headers.
///
/// The request body goes through untouched; the response body is an
/// [`otel_tower::ResponseBody`] with the inner body's `Data` and `Error`
/// types, `Unpin` whenever the inner body is (so server-streaming and bidi
/// calls work wherever they work without it). Errors are the inner
/// transport's, unchanged.
///
/// ```
/// use connectrpc::client::HttpClient;
///
/// let otel = otel_connect::new_interceptor();
/// let transport = otel_connect::OtelTransport::new(HttpClient::plaintext(), &otel);
/// # let _ = transport;
/// ```
#[derive(Clone)]
pub struct OtelTransport<T> {
    inner: T,
    layer: ClientLayer,
}

impl<T> std::fmt::Debug for OtelTransport<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtelTransport").finish_non_exhaustive()
    }
}

impl<T: ClientTransport> OtelTransport<T> {
    /// Instruments `inner` (an [`HttpClient`](https://docs.rs/connectrpc/0.9/connectrpc/client/struct.HttpClient.html),
    /// a [`SharedHttp2Connection`](https://docs.rs/connectrpc/0.9/connectrpc/client/struct.SharedHttp2Connection.html),
    /// or any other [`ClientTransport`]) with `otel`'s client layer.
    pub fn new(inner: T, otel: &Instrumentation) -> Self {
        OtelTransport {
            inner,
            layer: otel.client_layer(),
        }
    }
}

impl<S> OtelTransport<TowerTransport<S>> {
    /// Instruments a cloneable tower service over `Request<ClientBody>`
    /// (e.g. a `tower::buffer::Buffer` around an
    /// [`Http2Connection`](https://docs.rs/connectrpc/0.9/connectrpc/client/struct.Http2Connection.html), or a
    /// balancer), whose error may be a `Box<dyn Error>`: see
    /// [`TowerTransport`].
    pub fn from_service(service: S, otel: &Instrumentation) -> Self {
        OtelTransport {
            inner: TowerTransport::new(service),
            layer: otel.client_layer(),
        }
    }
}

impl<T> OtelTransport<T> {
    /// The wrapped transport.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// Unwraps the transport.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

/// `ClientTransport::send` as a tower service, borrowing the transport for
/// the one call (the future it returns owns everything it needs).
struct SendOnce<'a, T>(&'a T);

impl<T: ClientTransport> Service<Request<ClientBody>> for SendOnce<'_, T> {
    type Response = Response<T::ResponseBody>;
    type Error = T::Error;
    type Future = BoxFuture<'static, Result<Response<T::ResponseBody>, T::Error>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ClientBody>) -> Self::Future {
        self.0.send(request)
    }
}

impl<T: ClientTransport> ClientTransport for OtelTransport<T> {
    type ResponseBody = ResponseBody<T::ResponseBody>;
    type Error = T::Error;

    fn send(
        &self,
        request: Request<ClientBody>,
    ) -> BoxFuture<'static, Result<Response<Self::ResponseBody>, Self::Error>> {
        use tower_layer::Layer;
        // The layer reads the current context here, on the caller's task,
        // so the client span is a child of whatever span is active.
        let mut service = self.layer.layer(SendOnce(&self.inner));
        Box::pin(service.call(request))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Any cloneable tower service over `Request<ClientBody>` as a connectrpc
/// [`ClientTransport`], with its error turned into a [`ConnectError`]: a
/// `ConnectError` inside the error is kept as is, anything else becomes
/// `unavailable` with the original as its source (what connectrpc's own
/// transports do).
///
/// Useful for stacks whose error is `Box<dyn Error + Send + Sync>`, such as
/// a `tower::buffer::Buffer` around an
/// [`Http2Connection`](https://docs.rs/connectrpc/0.9/connectrpc/client/struct.Http2Connection.html) or a
/// `tower::balance` balancer over several; connectrpc's
/// `ServiceTransport` needs a concrete error type.
#[derive(Clone, Debug)]
pub struct TowerTransport<S> {
    service: S,
}

impl<S> TowerTransport<S> {
    /// Wraps a tower service.
    pub fn new(service: S) -> Self {
        TowerTransport { service }
    }

    /// The wrapped service.
    pub fn inner(&self) -> &S {
        &self.service
    }
}

fn into_connect_error(error: BoxError) -> ConnectError {
    match error.downcast::<ConnectError>() {
        Ok(e) => *e,
        Err(other) => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(other.as_ref());
            while let Some(e) = source {
                if let Some(connect) = e.downcast_ref::<ConnectError>() {
                    return connect.clone();
                }
                source = e.source();
            }
            ConnectError::unavailable_from_transport("transport failed", other)
        }
    }
}

impl<S, B> ClientTransport for TowerTransport<S>
where
    S: Service<Request<ClientBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
{
    type ResponseBody = B;
    type Error = ConnectError;

    fn send(
        &self,
        request: Request<ClientBody>,
    ) -> BoxFuture<'static, Result<Response<B>, ConnectError>> {
        let mut service = self.service.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(|e| into_connect_error(e.into()))?;
            service
                .call(request)
                .await
                .map_err(|e| into_connect_error(e.into()))
        })
    }
}

/// Optional connectrpc [`Interceptor`] that adds what only the schema knows
/// to the server span: `rpc.connect_rpc.stream_type` (`unary`,
/// `client_stream`, `server_stream`, `bidi_stream`) and, when the proto
/// declares one, `rpc.connect_rpc.idempotency_level` (`no_side_effects`,
/// `idempotent`).
///
/// These are not OpenTelemetry semantic-convention attributes; they are
/// span-only (never on metrics), and since the interceptor sets them itself,
/// [`with_attribute_filter`](Instrumentation::with_attribute_filter) does
/// not see them. The server layer must be in front of the service (it puts
/// the span's context in the request extensions, where this reads it).
///
/// ```
/// let connect = connectrpc::ConnectRpcService::new(connectrpc::Router::new())
///     .with_interceptor(otel_connect::SpecInterceptor);
/// # let _ = connect;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SpecInterceptor;

/// The attribute key of the method's stream type, set by [`SpecInterceptor`].
pub const STREAM_TYPE: &str = "rpc.connect_rpc.stream_type";
/// The attribute key of the method's idempotency level, set by
/// [`SpecInterceptor`].
pub const IDEMPOTENCY_LEVEL: &str = "rpc.connect_rpc.idempotency_level";

fn annotate(ctx: &connectrpc::RequestContext) {
    let (Some(spec), Some(cx)) = (ctx.spec(), ctx.extensions().get::<opentelemetry::Context>())
    else {
        return;
    };
    let span = cx.span();
    if !span.is_recording() {
        return;
    }
    use connectrpc::{IdempotencyLevel, StreamType};
    let stream_type = match spec.stream_type {
        StreamType::Unary => "unary",
        StreamType::ClientStream => "client_stream",
        StreamType::ServerStream => "server_stream",
        StreamType::BidiStream => "bidi_stream",
    };
    span.set_attribute(KeyValue::new(STREAM_TYPE, stream_type));
    let level = match spec.idempotency_level {
        IdempotencyLevel::NoSideEffects => Some("no_side_effects"),
        IdempotencyLevel::Idempotent => Some("idempotent"),
        _ => None,
    };
    if let Some(level) = level {
        span.set_attribute(KeyValue::new(IDEMPOTENCY_LEVEL, level));
    }
}

#[connectrpc::async_trait]
impl Interceptor for SpecInterceptor {
    async fn intercept_unary(
        &self,
        req: connectrpc::interceptor::UnaryRequest,
        next: connectrpc::Next<'_>,
    ) -> Result<connectrpc::interceptor::UnaryResponse, ConnectError> {
        annotate(&req.ctx);
        next.run(req).await
    }

    async fn intercept_streaming(
        &self,
        req: connectrpc::interceptor::StreamRequest,
        inbound: connectrpc::PayloadStream,
        next: connectrpc::NextStream<'_>,
    ) -> Result<connectrpc::interceptor::StreamResponse, ConnectError> {
        annotate(&req.ctx);
        next.run(req, inbound).await
    }
}
