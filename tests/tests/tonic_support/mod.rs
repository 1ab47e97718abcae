//! Shared pieces of the tonic suites: the generated test services, a scripted
//! Greeter and Backend, servers on 127.0.0.1:0 and instrumented clients.
//!
//! The Greeter's behaviour is chosen by the request's `name`:
//!
//! | name | SayHello / ServerStream / ClientStream / Bidi |
//! |---|---|
//! | `fail:<code>` | `Err(Status)` with that code, before any response (trailers-only) |
//! | `count:<n>` | ServerStream: `n` replies then OK |
//! | `count:<n>:fail:<code>` | ServerStream: `n` replies, then the status in the trailers |
//! | `stall:<n>` | ServerStream: `n` replies, then never ends |
//! | `sleep:<ms>` | SayHello: sleeps, then OK |
//! | `panic` | the handler panics |
//! | `panic-stream:<n>` | ServerStream: `n` replies, then the stream panics |
//! | `context` | SayHello: replies with the handler's view of the context |
//! | `call-backend[:<name>]` | SayHello: calls `Backend/Lookup` (with `name`, default `from-greeter`) through the client layer |
//!
//! ClientStream fails with the first `fail:<code>` it reads (after reading
//! the whole stream); Bidi echoes every message and ends the stream with the
//! status of the first `fail:<code>` (in the trailers, after the echoes so
//! far), or stalls on `stall`; with an `x-fail: <code>` request header it
//! fails at once (trailers-only).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::trace::SpanData;
use otel_integration_tests::Telemetry;
use otel_tower::{ClientService, Instrumentation};
use tokio::task::JoinHandle;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status, Streaming};

pub mod pb {
    tonic::include_proto!("helloworld");

    /// The encoded descriptor set of `helloworld.proto`, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/helloworld_descriptor.bin"));
}

pub use pb::backend_client::BackendClient;
pub use pb::backend_server::{Backend, BackendServer};
pub use pb::greeter_client::GreeterClient;
pub use pb::greeter_server::{Greeter, GreeterServer};
pub use pb::{HelloReply, HelloRequest};

/// The instrumented channel type the clients use.
pub type OtelChannel = ClientService<Channel>;

/// Upper bound for any single await in a test.
pub const LIMIT: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test after [`LIMIT`].
pub async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test step timed out")
}

/// `otel_tonic::instrumentation()` wired to the test providers, W3C
/// propagation, Stable conventions.
pub fn otel(t: &Telemetry) -> Instrumentation {
    otel_tonic::instrumentation()
        .with_tracer_provider(t.tracer_provider.clone())
        .with_meter_provider(t.meter_provider.clone())
        .with_propagator(otel_tower::propagation::CompositePropagator::w3c())
        .with_semconv(otel_tower::Semconv::Stable)
}

/// A server task that is aborted when dropped.
pub struct Served {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A listener on 127.0.0.1 with an ephemeral port.
pub fn incoming() -> (TcpIncoming, SocketAddr) {
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let addr = incoming.local_addr().expect("local addr");
    (incoming, addr)
}

/// Serves a future (made from a `TcpIncoming`) in the background.
pub fn spawn_server<F, E>(addr: SocketAddr, serve: F) -> Served
where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Debug,
{
    let task = tokio::spawn(async move {
        serve.await.expect("server failed");
    });
    Served { addr, task }
}

/// A tonic server with the server layer of `otel` and the Greeter (whose
/// `call-backend` goes to `backend`, if given).
pub fn serve_greeter(
    otel: &Instrumentation,
    backend: Option<BackendClient<OtelChannel>>,
) -> Served {
    let (incoming, addr) = incoming();
    let router = tonic::transport::Server::builder()
        .layer(otel.server_layer())
        .add_service(GreeterServer::new(TestGreeter { backend }));
    spawn_server(addr, router.serve_with_incoming(incoming))
}

/// A tonic server with the server layer of `otel` and the Backend.
pub fn serve_backend(otel: &Instrumentation) -> Served {
    let (incoming, addr) = incoming();
    let router = tonic::transport::Server::builder()
        .layer(otel.server_layer())
        .add_service(BackendServer::new(TestBackend));
    spawn_server(addr, router.serve_with_incoming(incoming))
}

/// A channel to `addr` wrapped in the client layer of `otel`.
pub async fn channel(otel: &Instrumentation, addr: SocketAddr) -> OtelChannel {
    let channel = within(
        Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect(),
    )
    .await
    .expect("connect");
    tower::ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(channel)
}

/// The origin URI of a server, for the generated clients' `with_origin`.
pub fn origin(addr: SocketAddr) -> http::Uri {
    format!("http://{addr}").parse().unwrap()
}

/// A Greeter client over an instrumented channel. Made `with_origin`, so the
/// requests the client layer sees carry the server's authority (a client made
/// with `new` sends path-only URIs; the Channel adds the origin below the
/// layer).
pub async fn greeter_client(
    otel: &Instrumentation,
    addr: SocketAddr,
) -> GreeterClient<OtelChannel> {
    GreeterClient::with_origin(channel(otel, addr).await, origin(addr))
}

/// A Backend client over an instrumented channel, made `with_origin`.
pub async fn backend_client(
    otel: &Instrumentation,
    addr: SocketAddr,
) -> BackendClient<OtelChannel> {
    BackendClient::with_origin(channel(otel, addr).await, origin(addr))
}

pub fn hello(name: &str) -> HelloRequest {
    HelloRequest { name: name.into() }
}

/// The request stream of a client-streaming or bidi call.
pub fn requests(names: &[&str]) -> impl Stream<Item = HelloRequest> + Send + 'static {
    let names: Vec<HelloRequest> = names.iter().map(|n| hello(n)).collect();
    tokio_stream::iter(names)
}

fn parse_code(s: &str) -> Code {
    Code::from_i32(s.parse().expect("numeric code"))
}

/// `fail:<code>` anywhere in `name`, as a status.
fn failure(name: &str) -> Option<Status> {
    let idx = name.find("fail:")?;
    let code = parse_code(&name[idx + 5..]);
    Some(Status::new(code, format!("failed on purpose ({code:?})")))
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send + 'static>>;

fn reply(message: impl Into<String>) -> HelloReply {
    HelloReply {
        message: message.into(),
    }
}

/// The handler's view of the OpenTelemetry context, as a reply:
/// `current=<trace>/<span> ext=<trace>/<span>`.
fn context_report(extensions: &tonic::Extensions) -> String {
    let id = |cx: &Context| {
        let span = cx.span();
        let sc = span.span_context();
        format!("{}/{}", sc.trace_id(), sc.span_id())
    };
    let ext = extensions
        .get::<Context>()
        .map(id)
        .unwrap_or_else(|| "none".into());
    format!("current={} ext={}", id(&Context::current()), ext)
}

/// Parses a `context` reply into (current, extensions) `trace/span` pairs.
pub fn parse_context_report(message: &str) -> (String, String) {
    let mut current = String::new();
    let mut ext = String::new();
    for part in message.split(' ') {
        if let Some(v) = part.strip_prefix("current=") {
            current = v.into();
        } else if let Some(v) = part.strip_prefix("ext=") {
            ext = v.into();
        }
    }
    (current, ext)
}

/// `trace/span` of a finished span, as [`parse_context_report`] gives them.
pub fn span_ids(span: &SpanData) -> String {
    format!(
        "{}/{}",
        span.span_context.trace_id(),
        span.span_context.span_id()
    )
}

#[derive(Clone)]
pub struct TestGreeter {
    pub backend: Option<BackendClient<OtelChannel>>,
}

#[tonic::async_trait]
impl Greeter for TestGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let name = request.get_ref().name.clone();
        if let Some(rest) = name.strip_prefix("call-backend") {
            let forward = rest.strip_prefix(':').unwrap_or("from-greeter");
            let mut backend = self.backend.clone().expect("no backend configured");
            let answer = backend.lookup(hello(forward)).await?;
            return Ok(Response::new(reply(format!(
                "greeter+{}",
                answer.into_inner().message
            ))));
        }
        if let Some(status) = failure(&name) {
            return Err(status);
        }
        if name == "panic" {
            panic!("handler panics on purpose");
        }
        if name == "context" {
            return Ok(Response::new(reply(context_report(request.extensions()))));
        }
        if let Some(ms) = name.strip_prefix("sleep:") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        }
        Ok(Response::new(reply(format!("Hello {name}"))))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<Self::ServerStreamStream>, Status> {
        let name = request.into_inner().name;
        if name == "panic" {
            panic!("handler panics on purpose");
        }
        if name.starts_with("fail:") {
            return Err(failure(&name).unwrap());
        }
        let mut parts = name.splitn(3, ':');
        let kind = parts.next().unwrap_or_default().to_owned();
        let n: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(1);
        let rest = parts.next().unwrap_or_default().to_owned();
        let stream = async_stream(move |tx| async move {
            for i in 0..n {
                if tx.send(Ok(reply(format!("reply {i}")))).await.is_err() {
                    return;
                }
            }
            match kind.as_str() {
                "stall" => std::future::pending::<()>().await,
                "panic-stream" => {
                    // Let the replies so far reach the client first.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    panic!("stream panics on purpose")
                }
                _ => {}
            }
            if let Some(status) = failure(&rest) {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(stream))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<HelloReply>, Status> {
        let mut stream = request.into_inner();
        let mut names = Vec::new();
        while let Some(msg) = stream.next().await {
            names.push(msg?.name);
        }
        if let Some(status) = names.iter().find_map(|n| failure(n)) {
            return Err(status);
        }
        Ok(Response::new(reply(format!("{} messages", names.len()))))
    }

    type BidiStream = ReplyStream;

    async fn bidi(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<Self::BidiStream>, Status> {
        if let Some(code) = request.metadata().get("x-fail") {
            // Fail before reading anything: a trailers-only response.
            let code = parse_code(code.to_str().unwrap_or("2"));
            return Err(Status::new(code, format!("failed on purpose ({code:?})")));
        }
        let mut incoming = request.into_inner();
        let stream = async_stream(move |tx| async move {
            while let Some(msg) = incoming.next().await {
                let name = match msg {
                    Ok(m) => m.name,
                    Err(_) => return,
                };
                if let Some(status) = failure(&name) {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                if name == "stall" {
                    std::future::pending::<()>().await;
                }
                if tx.send(Ok(reply(format!("echo {name}")))).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }
}

#[derive(Clone)]
pub struct TestBackend;

#[tonic::async_trait]
impl Backend for TestBackend {
    async fn lookup(&self, request: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let name = request.into_inner().name;
        if let Some(status) = failure(&name) {
            return Err(status);
        }
        Ok(Response::new(reply(format!("backend saw {name}"))))
    }
}

/// A response stream fed by a producer future through a channel; the
/// producer future runs inside the stream's polls, so it is dropped with it.
fn async_stream<F, Fut>(producer: F) -> ReplyStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<HelloReply, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let producer = Box::pin(producer(tx));
    Box::pin(Producer {
        producer: Some(producer),
        rx,
    })
}

struct Producer {
    producer: Option<Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    rx: tokio::sync::mpsc::Receiver<Result<HelloReply, Status>>,
}

impl Stream for Producer {
    type Item = Result<HelloReply, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if let Some(p) = self.producer.as_mut()
            && p.as_mut().poll(cx).is_ready()
        {
            self.producer = None;
        }
        match self.rx.poll_recv(cx) {
            std::task::Poll::Ready(None) if self.producer.is_some() => std::task::Poll::Pending,
            other => other,
        }
    }
}

/// What one call must have produced on both sides.
pub struct Expect<'a> {
    /// `package.Service/Method`.
    pub method: &'a str,
    /// `rpc.status_code` on both sides.
    pub code: &'a str,
    /// The status message (span status description where the span is Error).
    pub message: &'a str,
}

/// The server span for this code is Error (semconv.md status table).
pub fn server_error(code: &str) -> bool {
    matches!(
        code,
        "UNKNOWN"
            | "DEADLINE_EXCEEDED"
            | "UNIMPLEMENTED"
            | "INTERNAL"
            | "UNAVAILABLE"
            | "DATA_LOSS"
    )
}

/// Checks the exact spans and metric points of one call between an
/// instrumented tonic client and an instrumented tonic server at `addr`:
/// names, kinds, parentage, attributes, statuses, scope, and one
/// `rpc.*.call.duration` point per side equal to its span's duration.
/// Returns (client span, server span).
pub async fn expect_call(t: &Telemetry, addr: SocketAddr, e: Expect<'_>) -> (SpanData, SpanData) {
    use opentelemetry::trace::{SpanKind, Status as SpanStatus};
    use otel_integration_tests::{attrs, map};

    t.wait_spans(2).await;
    // Give a late span a chance to show up, then require exactly two.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let spans = t.finished_spans();
    assert_eq!(
        spans.len(),
        2,
        "exactly one client and one server span: {:?}",
        spans
            .iter()
            .map(|s| (&s.name, s.span_kind.clone()))
            .collect::<Vec<_>>()
    );
    let server = t.span(SpanKind::Server);
    let client = t.span(SpanKind::Client);
    let port = addr.port().to_string();
    let is_ok = e.code == "OK";
    let server_err = server_error(e.code);

    for span in [&server, &client] {
        assert_eq!(span.name, e.method);
        assert_eq!(span.instrumentation_scope.name(), "otel-tonic");
        assert_eq!(
            span.instrumentation_scope.version(),
            Some(env!("CARGO_PKG_VERSION"))
        );
    }
    assert_eq!(
        server.span_context.trace_id(),
        client.span_context.trace_id(),
        "one trace"
    );
    assert_eq!(server.parent_span_id, client.span_context.span_id());
    assert!(server.parent_span_is_remote);
    assert!(server.start_time >= client.start_time);

    let mut server_attrs = attrs(&server);
    let peer_port = server_attrs
        .remove("network.peer.port")
        .expect("network.peer.port from TcpConnectInfo");
    assert_ne!(peer_port.parse::<u16>().unwrap(), 0);
    assert_ne!(peer_port, port, "peer port is the client's, not ours");
    let mut expected_server = map(&[
        ("rpc.system.name", "grpc"),
        ("rpc.method", e.method),
        ("server.address", "127.0.0.1"),
        ("server.port", &port),
        ("network.peer.address", "127.0.0.1"),
        ("rpc.status_code", e.code),
    ]);
    if server_err {
        expected_server.insert("error.type".into(), e.code.into());
    }
    assert_eq!(server_attrs, expected_server, "server span attributes");

    let mut expected_client = map(&[
        ("rpc.system.name", "grpc"),
        ("rpc.method", e.method),
        ("server.address", "127.0.0.1"),
        ("server.port", &port),
        ("rpc.status_code", e.code),
    ]);
    if !is_ok {
        expected_client.insert("error.type".into(), e.code.into());
    }
    assert_eq!(attrs(&client), expected_client, "client span attributes");

    let expect_status = |span: &SpanData, error: bool| {
        if error {
            assert_eq!(
                span.status,
                SpanStatus::error(e.message.to_owned()),
                "{:?} span status",
                span.span_kind
            );
        } else {
            assert_eq!(
                span.status,
                SpanStatus::Unset,
                "{:?} span status",
                span.span_kind
            );
        }
    };
    expect_status(&server, server_err);
    expect_status(&client, !is_ok);

    let server_points = t.histogram("rpc.server.call.duration");
    assert_eq!(server_points.len(), 1, "{server_points:?}");
    let mut expected = map(&[
        ("rpc.system.name", "grpc"),
        ("rpc.method", e.method),
        ("rpc.status_code", e.code),
    ]);
    if server_err {
        expected.insert("error.type".into(), e.code.into());
    }
    let p = &server_points[0];
    assert_eq!(p.attributes, expected, "server metric attributes");
    assert_eq!(
        (p.count, p.unit.as_str(), p.scope.as_str()),
        (1, "s", "otel-tonic")
    );
    assert_eq!(
        p.bounds,
        otel_tower::semconv::keys::DURATION_BUCKETS.to_vec()
    );
    assert_duration(p.sum, &server);

    let client_points = t.histogram("rpc.client.call.duration");
    assert_eq!(client_points.len(), 1, "{client_points:?}");
    let mut expected = map(&[
        ("rpc.system.name", "grpc"),
        ("rpc.method", e.method),
        ("rpc.status_code", e.code),
        ("server.address", "127.0.0.1"),
        ("server.port", &port),
    ]);
    if !is_ok {
        expected.insert("error.type".into(), e.code.into());
    }
    let p = &client_points[0];
    assert_eq!(p.attributes, expected, "client metric attributes");
    assert_eq!(
        (p.count, p.unit.as_str(), p.scope.as_str()),
        (1, "s", "otel-tonic")
    );
    assert_duration(p.sum, &client);
    (client, server)
}

/// The recorded duration equals the span's.
pub fn assert_duration(seconds: f64, span: &SpanData) {
    let d = span
        .end_time
        .duration_since(span.start_time)
        .unwrap()
        .as_secs_f64();
    assert!(
        (seconds - d).abs() < 1e-6,
        "metric {seconds} equals span duration {d}"
    );
}

/// Waits for `n` spans, lets anything late arrive, then requires exactly `n`
/// spans and exactly one duration point per span (no span or metric is
/// recorded twice). Returns the spans.
pub async fn settled(t: &Telemetry, n: usize) -> Vec<SpanData> {
    use opentelemetry::trace::SpanKind;
    t.wait_spans(n).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let spans = t.finished_spans();
    assert_eq!(
        spans.len(),
        n,
        "no span ends twice: {:?}",
        spans
            .iter()
            .map(|s| (&s.name, s.span_kind.clone()))
            .collect::<Vec<_>>()
    );
    for (kind, stable, legacy) in [
        (
            SpanKind::Server,
            "rpc.server.call.duration",
            "rpc.server.duration",
        ),
        (
            SpanKind::Client,
            "rpc.client.call.duration",
            "rpc.client.duration",
        ),
    ] {
        let spans_of_kind = spans.iter().filter(|s| s.span_kind == kind).count() as u64;
        let count = |metric: &str| -> u64 { t.histogram(metric).iter().map(|p| p.count).sum() };
        let (stable_points, legacy_points) = (count(stable), count(legacy));
        // Stable (and Both) modes record the stable histogram, Legacy only
        // the legacy one; one point per span either way.
        if stable_points > 0 || legacy_points == 0 {
            assert_eq!(
                stable_points, spans_of_kind,
                "{stable}: one point per {kind:?} span"
            );
        } else {
            assert_eq!(
                legacy_points, spans_of_kind,
                "{legacy}: one point per {kind:?} span"
            );
        }
    }
    spans
}

/// A gRPC request body: one uncompressed envelope around `msg`.
pub fn grpc_frame(msg: &impl prost::Message) -> bytes::Bytes {
    let payload = msg.encode_to_vec();
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(0);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out.into()
}

/// A plain hyper HTTP/2 (prior knowledge) client, with no instrumentation.
pub fn raw_h2_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http()
}
