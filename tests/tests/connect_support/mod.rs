//! Shared pieces of the connectrpc suites: the generated Ping service, a
//! real connectrpc server (behind axum or hyper-util) on 127.0.0.1:0, and
//! real connectrpc clients through `OtelTransport`.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connectrpc::client::{
    CallOptions, ClientConfig, Http2Connection, HttpClient, SharedHttp2Connection,
};
use connectrpc::{
    ConnectError, ConnectRpcService, ErrorCode, InboundStream, Protocol, RequestContext,
    ServiceRequest, ServiceResult, ServiceStream,
};
use std::collections::BTreeMap;

use futures::StreamExt;
use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceContextExt};
use opentelemetry_sdk::trace::SpanData;
use otel_connect::OtelTransport;
use otel_integration_tests::{Telemetry, attrs, is_error};
use otel_tower::Instrumentation;

pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/_connectrpc_ping.rs"));
}
pub use proto::observability::ping::v1::*;

pub const PING: &str = "observability.ping.v1.PingService/Ping";
pub const FAIL: &str = "observability.ping.v1.PingService/Fail";
pub const PING_STREAM: &str = "observability.ping.v1.PingService/PingStream";
pub const COUNT_UP: &str = "observability.ping.v1.PingService/CountUp";
pub const SUM: &str = "observability.ping.v1.PingService/Sum";

/// A response header `Ping` and `CountUp` set (value `pong`).
pub const RESPONSE_HEADER: &str = "x-ping-response";

/// A response trailer `Ping` and `CountUp` set (value `1`).
pub const RESPONSE_TRAILER: &str = "x-ping-cost";

/// Bound on every wait in these suites.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `f` with the suite's time bound.
pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .expect("call did not finish in time")
}

/// What a handler saw of one call.
#[derive(Clone, Debug)]
pub struct Observed {
    pub method: &'static str,
    /// Request headers as the handler sees them.
    pub headers: HeaderMap,
    /// The span context in the request extensions (put there by the layer).
    pub extension_span: Option<SpanContext>,
    /// The span context current while the handler ran.
    pub current_span: SpanContext,
    /// Baggage visible to the handler (extensions, else current).
    pub baggage: Vec<(String, String)>,
}

/// Everything the handlers saw, in order.
#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<Vec<Observed>>>);

impl Seen {
    fn record(&self, method: &'static str, ctx: &RequestContext) {
        let extension = ctx.extensions().get::<Context>().cloned();
        let current = Context::current();
        let baggage_cx = extension.clone().unwrap_or_else(|| current.clone());
        let mut baggage: Vec<(String, String)> = baggage_cx
            .baggage()
            .iter()
            .map(|(k, (v, _))| (k.to_string(), v.to_string()))
            .collect();
        baggage.sort();
        self.0.lock().unwrap().push(Observed {
            method,
            headers: ctx.headers().clone(),
            extension_span: extension.map(|c| c.span().span_context().clone()),
            current_span: current.span().span_context().clone(),
            baggage,
        });
    }

    pub fn all(&self) -> Vec<Observed> {
        self.0.lock().unwrap().clone()
    }

    pub fn last(&self) -> Observed {
        self.all().pop().expect("the handler ran")
    }

    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

fn code(n: i32) -> ErrorCode {
    ErrorCode::from_grpc_code(n as u32).unwrap_or(ErrorCode::Unknown)
}

/// The Ping service of otelconnect-go's tests, plus CountUp and Sum.
#[derive(Clone, Default)]
pub struct PingServer {
    pub seen: Seen,
}

// Handlers return concrete types (the trait allows any `Encodable`).
#[allow(refining_impl_trait)]
impl PingService for PingServer {
    async fn ping(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, PingRequest>,
    ) -> ServiceResult<PingResponse> {
        self.seen.record("Ping", &ctx);
        let request = request.to_owned_message();
        if request.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(request.sleep_ms as u64)).await;
        }
        let response = PingResponse {
            id: request.id,
            data: request.data,
            ..Default::default()
        };
        Ok(connectrpc::Response::new(response)
            .with_header(RESPONSE_HEADER, "pong")
            .with_trailer(RESPONSE_TRAILER, "1"))
    }

    async fn fail(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, FailRequest>,
    ) -> ServiceResult<FailResponse> {
        self.seen.record("Fail", &ctx);
        let n = request.to_owned_message().code;
        Err(ConnectError::new(code(n), format!("failed with code {n}")))
    }

    async fn ping_stream(
        &self,
        ctx: RequestContext,
        requests: InboundStream<PingStreamRequest>,
    ) -> ServiceResult<ServiceStream<PingStreamResponse>> {
        self.seen.record("PingStream", &ctx);
        let out = requests.map(|item| {
            let request = item?.to_owned_message();
            if request.data == b"fail" {
                return Err(ConnectError::new(ErrorCode::DataLoss, "asked to fail"));
            }
            if let Some(n) = request
                .data
                .strip_prefix(b"code:")
                .and_then(|d| std::str::from_utf8(d).ok()?.parse().ok())
            {
                return Err(ConnectError::new(code(n), format!("failed with code {n}")));
            }
            Ok(PingStreamResponse {
                data: request.data,
                ..Default::default()
            })
        });
        // Stop after the first error, like a real handler would.
        let mut failed = false;
        let out = out.take_while(move |r| {
            let keep = !failed;
            failed |= r.is_err();
            std::future::ready(keep)
        });
        Ok(connectrpc::Response::new(Box::pin(out) as ServiceStream<_>))
    }

    async fn count_up(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, CountUpRequest>,
    ) -> ServiceResult<ServiceStream<CountUpResponse>> {
        self.seen.record("CountUp", &ctx);
        let request = request.to_owned_message();
        let delay = Duration::from_millis(request.delay_ms.max(0) as u64);
        let fail = request.fail_code;
        let numbers = futures::stream::iter(1..=request.number).then(move |number| async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(CountUpResponse {
                number,
                ..Default::default()
            })
        });
        let tail = futures::stream::iter((fail != 0).then(|| {
            Err(ConnectError::new(
                code(fail),
                format!("failed with code {fail}"),
            ))
        }));
        Ok(
            connectrpc::Response::new(Box::pin(numbers.chain(tail)) as ServiceStream<_>)
                .with_header(RESPONSE_HEADER, "pong")
                .with_trailer(RESPONSE_TRAILER, "1"),
        )
    }

    async fn sum(
        &self,
        ctx: RequestContext,
        mut requests: InboundStream<SumRequest>,
    ) -> ServiceResult<SumResponse> {
        self.seen.record("Sum", &ctx);
        let mut sum = 0;
        while let Some(item) = requests.next().await {
            let n = item?.to_owned_message().number;
            if n < 0 {
                return Err(ConnectError::new(
                    ErrorCode::InvalidArgument,
                    "negative number",
                ));
            }
            sum += n;
        }
        Ok(SumResponse {
            sum,
            ..Default::default()
        }
        .into())
    }
}

/// How the test server is put together.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerOptions {
    /// Register `otel_connect::SpecInterceptor` on the service.
    pub spec_interceptor: bool,
    /// Answer a GET carrying `if-none-match` with `304 Not Modified` (a
    /// caching middleware between the layer and the service).
    pub not_modified: bool,
}

/// A running server; stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub fn uri(&self) -> http::Uri {
        format!("http://{}", self.addr).parse().unwrap()
    }
}

pub fn connect_service(
    seen: &Seen,
    options: ServerOptions,
) -> ConnectRpcService<connectrpc::Router> {
    let server = Arc::new(PingServer { seen: seen.clone() });
    let router = server.register(connectrpc::Router::new());
    let service = ConnectRpcService::new(router);
    if options.spec_interceptor {
        service.with_interceptor(otel_connect::SpecInterceptor)
    } else {
        service
    }
}

/// The server behind axum: `Router::fallback_service(connect)` with the
/// layer on top, served with `into_make_service_with_connect_info` (so the
/// peer address comes from axum's `ConnectInfo`).
pub async fn serve_axum(otel: &Instrumentation, options: ServerOptions) -> TestServer {
    let seen = Seen::default();
    let connect = connect_service(&seen, options);
    let app = if options.not_modified {
        let cache = tower::service_fn(move |req: http::Request<axum::body::Body>| {
            let mut connect = connect.clone();
            async move {
                if req.method() == http::Method::GET
                    && req.headers().contains_key(http::header::IF_NONE_MATCH)
                {
                    let response = http::Response::builder()
                        .status(http::StatusCode::NOT_MODIFIED)
                        .header(http::header::ETAG, "\"v1\"")
                        .body(axum::body::Body::empty())
                        .unwrap();
                    return Ok::<_, Infallible>(response);
                }
                let response = tower::Service::call(&mut connect, req).await?;
                Ok(response.map(axum::body::Body::new))
            }
        });
        axum::Router::new().fallback_service(cache)
    } else {
        axum::Router::new().fallback_service(connect)
    };
    let app = app.layer(otel.server_layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    TestServer { addr, seen, task }
}

/// The server through hyper-util's auto (HTTP/1.1 + h2c) connection
/// builder; the accept loop inserts connectrpc's `PeerAddr`.
pub async fn serve_hyper(otel: &Instrumentation) -> TestServer {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let seen = Seen::default();
    let connect = connect_service(&seen, ServerOptions::default());
    let service = tower::ServiceBuilder::new()
        .layer(otel.server_layer())
        .service(connect);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            let service = service.clone();
            let with_peer = tower::ServiceExt::map_request(
                service,
                move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(connectrpc::PeerAddr(peer));
                    req
                },
            );
            tokio::spawn(async move {
                let _ = Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(with_peer))
                    .await;
            });
        }
    });
    TestServer { addr, seen, task }
}

/// A client config for `protocol` against `server`.
pub fn config(server: &TestServer, protocol: Protocol) -> ClientConfig {
    ClientConfig::new(server.uri()).with_protocol(protocol)
}

pub type HttpPingClient = PingServiceClient<OtelTransport<HttpClient>>;
pub type H2PingClient = PingServiceClient<OtelTransport<SharedHttp2Connection>>;

/// A client over `HttpClient` (HTTP/1.1; HTTP/2 prior knowledge for gRPC,
/// which needs it).
pub fn http_client(otel: &Instrumentation, config: ClientConfig) -> HttpPingClient {
    let http = if config.protocol() == Protocol::Grpc {
        HttpClient::plaintext_http2_only()
    } else {
        HttpClient::plaintext()
    };
    PingServiceClient::new(OtelTransport::new(http, otel), config)
}

/// A client over one shared HTTP/2 connection.
pub async fn h2_client(otel: &Instrumentation, config: ClientConfig) -> H2PingClient {
    let conn = Http2Connection::connect_plaintext(config.base_uri().clone())
        .await
        .unwrap()
        .shared(64);
    PingServiceClient::new(OtelTransport::new(conn, otel), config)
}

/// Connect GET of `Ping` (the generated client always POSTs).
pub async fn ping_get<T>(
    client_transport: &T,
    config: &ClientConfig,
    request: PingRequest,
    options: CallOptions,
) -> Result<PingResponse, ConnectError>
where
    T: connectrpc::client::ClientTransport,
    <T::ResponseBody as http_body::Body>::Error: std::fmt::Display,
{
    connectrpc::client::call_unary_get::<_, _, PingResponseView<'static>>(
        client_transport,
        config,
        PING_SERVICE_PING_SPEC.with_origin(connectrpc::SpecOrigin::Client),
        request,
        options,
    )
    .await
    .map(|r| r.into_owned())
}

pub fn ping_request(id: i64) -> PingRequest {
    PingRequest {
        id,
        ..Default::default()
    }
}

/// The span of `kind` named `name` among `spans`.
pub fn find<'a>(spans: &'a [SpanData], kind: SpanKind, name: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|s| s.span_kind == kind && s.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no {kind:?} span {name}; have {:?}",
                spans
                    .iter()
                    .map(|s| (&s.name, &s.span_kind))
                    .collect::<Vec<_>>()
            )
        })
}

/// Events of a span as `(name, attributes)`.
pub fn events(span: &SpanData) -> Vec<(String, std::collections::BTreeMap<String, String>)> {
    span.events
        .iter()
        .map(|e| {
            (
                e.name.to_string(),
                e.attributes
                    .iter()
                    .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                    .collect(),
            )
        })
        .collect()
}

/// The connectrpc code of every error, as `(grpc number, connect name)`.
pub fn all_error_codes() -> Vec<(i32, &'static str)> {
    (1..=16).map(|n| (n, code(n).as_str())).collect::<Vec<_>>()
}

pub fn grpc_name(code: ErrorCode) -> String {
    let n = code.grpc_code() as i32;
    otel_tower::Code::ALL
        .into_iter()
        .find(|c| c.as_i32() == n)
        .unwrap()
        .grpc_name()
        .to_string()
}

pub fn server_error(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unknown
            | ErrorCode::DeadlineExceeded
            | ErrorCode::Unimplemented
            | ErrorCode::Internal
            | ErrorCode::Unavailable
            | ErrorCode::DataLoss
    )
}

/// What both spans and both metrics must say about one call.
pub struct Expect {
    pub system: &'static str,
    pub method: &'static str,
    pub code: Option<ErrorCode>,
    /// `Some(code)`: the server side ended with this code instead of `code`
    /// (e.g. it saw the call dropped).
    pub server_code: Option<Option<ErrorCode>>,
}

impl Expect {
    /// The common case: both sides end with `code`.
    pub fn new(system: &'static str, method: &'static str, code: Option<ErrorCode>) -> Self {
        Expect {
            system,
            method,
            code,
            server_code: None,
        }
    }

    /// An `unimplemented` outcome without `with_known_methods`: the method
    /// is reported as `_OTHER`.
    pub fn other(&self) -> bool {
        self.code == Some(ErrorCode::Unimplemented)
    }

    /// The span name: `rpc.method`, or the system for `_OTHER`.
    pub fn span_name(&self) -> &'static str {
        if self.other() {
            self.system
        } else {
            self.method
        }
    }

    pub fn status_value(&self, code: Option<ErrorCode>) -> Option<String> {
        match (self.system, code) {
            ("grpc", None) => Some("OK".into()),
            ("grpc", Some(c)) => Some(grpc_name(c)),
            (_, None) => None,
            (_, Some(c)) => Some(c.as_str().into()),
        }
    }

    /// The exact attributes of one side's span (`metric`: of its metric
    /// point, which never carries `rpc.method_original`).
    pub fn side_attrs(&self, side: SpanKind, port: u16, metric: bool) -> BTreeMap<String, String> {
        let code = match (side.clone(), self.server_code) {
            (SpanKind::Server, Some(c)) => c,
            _ => self.code,
        };
        let mut m = BTreeMap::new();
        m.insert("rpc.system.name".into(), self.system.into());
        if self.other() {
            m.insert("rpc.method".into(), "_OTHER".into());
            if !metric {
                m.insert("rpc.method_original".into(), self.method.into());
            }
        } else {
            m.insert("rpc.method".into(), self.method.into());
        }
        if let Some(v) = self.status_value(code) {
            m.insert("rpc.status_code".into(), v.clone());
            let error = match side {
                SpanKind::Server => code.is_some_and(server_error),
                _ => code.is_some(),
            };
            if error {
                m.insert("error.type".into(), v);
            }
        }
        if side == SpanKind::Client {
            m.insert("server.address".into(), "127.0.0.1".into());
            m.insert("server.port".into(), port.to_string());
        }
        m
    }
}

/// Checks the client and server spans and metrics of the one call `t` saw.
pub async fn check(t: &Telemetry, server: &TestServer, e: &Expect) -> (SpanData, SpanData) {
    let spans = t.wait_spans(2).await;
    assert_eq!(spans.len(), 2, "one span per side: {spans:#?}");
    let c = find(&spans, SpanKind::Client, e.span_name()).clone();
    let s = find(&spans, SpanKind::Server, e.span_name()).clone();
    let port = server.addr.port();

    // Client span: exactly the stable attributes.
    assert_eq!(
        attrs(&c),
        e.side_attrs(SpanKind::Client, port, false),
        "client"
    );
    assert_eq!(
        is_error(&c),
        e.code.is_some(),
        "client status {:?}",
        c.status
    );

    // Server span: plus server.* from the authority and the peer socket.
    let mut sa = attrs(&s);
    let peer_port: u16 = sa
        .remove("network.peer.port")
        .expect("network.peer.port")
        .parse()
        .unwrap();
    assert_ne!(peer_port, port, "the client's ephemeral port");
    assert_eq!(
        sa.remove("network.peer.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(sa.remove("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(sa.remove("server.port"), Some(port.to_string()));
    assert_eq!(sa, e.side_attrs(SpanKind::Server, port, false), "server");
    let server_code = e.server_code.unwrap_or(e.code);
    assert_eq!(
        is_error(&s),
        server_code.is_some_and(server_error),
        "server status {:?}",
        s.status
    );
    if let (Status::Error { description }, Some(_)) = (&c.status, e.code) {
        assert!(
            !description.starts_with(e.code.unwrap().as_str()),
            "the description does not repeat the code: {description}"
        );
    }

    // One trace: the server span is the client span's child.
    assert_eq!(s.span_context.trace_id(), c.span_context.trace_id());
    assert_eq!(s.parent_span_id, c.span_context.span_id());
    for span in [&c, &s] {
        assert_eq!(span.instrumentation_scope.name(), "otel-connect");
        assert_eq!(
            span.instrumentation_scope.version(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(
            span.instrumentation_scope.schema_url(),
            Some("https://opentelemetry.io/schemas/1.45.0")
        );
    }

    // Metrics: one point per side, final attributes without peer, duration
    // equal to the span's.
    for (name, kind, span) in [
        ("rpc.client.call.duration", SpanKind::Client, &c),
        ("rpc.server.call.duration", SpanKind::Server, &s),
    ] {
        let points = t.histogram(name);
        assert_eq!(points.len(), 1, "{name}: {points:#?}");
        let p = &points[0];
        assert_eq!(p.attributes, e.side_attrs(kind, port, true), "{name}");
        assert_eq!(p.count, 1);
        assert_eq!(p.unit, "s");
        assert_eq!(p.scope, "otel-connect");
        assert_eq!(
            p.bounds,
            [
                0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0
            ]
        );
        let span_secs = span
            .end_time
            .duration_since(span.start_time)
            .unwrap()
            .as_secs_f64();
        assert!(
            (p.sum - span_secs).abs() < 1e-6,
            "{name}: metric {} vs span {span_secs}",
            p.sum
        );
    }
    (c, s)
}
