//! RPC instrumentation benchmarks: ns/call and allocations/call, side by side.
//!
//! Every contender runs a gRPC-shaped unary call through a tower stack in
//! process: the request goes in, the response body (one message and
//! `grpc-status` trailers) is polled to the end. One SDK setup for all:
//! AlwaysOn sampler, a span processor that counts and drops spans inline, a
//! real meter provider. Contenders alternate over several rounds and the
//! fastest round of each is reported (the machine is noisy).
//!
//! Run: `cargo bench -p otel-integration-tests --bench rpc`
//! (`-- --quick` for a short run; `-- --rounds N --calls N` to tune).

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use opentelemetry::metrics::{Histogram, MeterProvider as _};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanProcessor};
use otel_tower::Instrumentation;
use otel_tower::propagation::{HeaderExtractor, HeaderInjector};
use otel_tower::semconv::Semconv;
use tower::{Layer, Service};

// ---------------------------------------------------------------- allocator

struct CountingAlloc;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// Whether allocations are counted: only while `measure` counts them. The
/// count is a locked increment, which costs a few ns on every allocation;
/// kept on in the timed rounds it would add that to every contender in
/// proportion to its allocations, a cost no real service pays.
static COUNTING: AtomicBool = AtomicBool::new(false);

#[inline]
fn count_allocation() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

// ---------------------------------------------------------------- SDK setup

/// Counts ended spans and drops them inline.
#[derive(Debug, Default)]
struct CountingProcessor(Arc<AtomicU64>);

impl SpanProcessor for CountingProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}
    fn on_end(&self, span: SpanData) {
        black_box(&span);
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

struct Sdk {
    tracer_provider: SdkTracerProvider,
    unsampled_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    ended: Arc<AtomicU64>,
}

fn sdk() -> Sdk {
    let ended = Arc::new(AtomicU64::new(0));
    let tracer_provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .with_span_processor(CountingProcessor(ended.clone()))
        .build();
    let unsampled_provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOff)
        .with_span_processor(CountingProcessor(ended.clone()))
        .build();
    let meter_provider = SdkMeterProvider::builder()
        .with_reader(
            PeriodicReader::builder(InMemoryMetricExporter::default())
                .with_interval(Duration::from_secs(3600))
                .build(),
        )
        .build();
    Sdk {
        tracer_provider,
        unsampled_provider,
        meter_provider,
        ended,
    }
}

// ---------------------------------------------------------------- the call

type Req = Request<http_body_util::Empty<Bytes>>;

const MESSAGE: &[u8] = b"\x00\x00\x00\x00\x0d\x0a\x0bhello world";

/// A response body: `messages` envelopes, then `grpc-status: 0` trailers.
struct GrpcBody {
    messages: u32,
    trailers: Option<HeaderMap>,
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.messages > 0 {
            self.messages -= 1;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(MESSAGE)))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.messages == 0 && self.trailers.is_none()
    }
}

fn grpc_response(messages: u32) -> Response<GrpcBody> {
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut response = Response::new(GrpcBody {
        messages,
        trailers: Some(trailers),
    });
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

fn handler(
    messages: u32,
) -> impl Service<Req, Response = Response<GrpcBody>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(move |_req: Req| {
        std::future::ready(Ok::<_, Infallible>(grpc_response(messages)))
    })
}

fn request(traceparent: bool) -> Req {
    let mut req = Request::new(http_body_util::Empty::new());
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = http::Uri::from_static("http://127.0.0.1:50051/helloworld.Greeter/SayHello");
    let headers = req.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("te", HeaderValue::from_static("trailers"));
    if traceparent {
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
    }
    req
}

/// Polls a future that never waits (everything here is in memory).
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = TaskContext::from_waker(std::task::Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

/// Drains a body; returns the number of data bytes (kept alive with black_box).
fn drain<B: Body + Unpin>(mut body: B) -> usize {
    let mut cx = TaskContext::from_waker(std::task::Waker::noop());
    let mut n = 0;
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    n += bytes::Buf::remaining(d);
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => return n,
            Poll::Pending => continue,
        }
    }
}

/// One call through `svc`, response polled to the end.
fn run_call<S, B>(svc: &mut S, traceparent: bool)
where
    S: Service<Req, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body + Unpin,
{
    let ready = block_on(std::future::poll_fn(|cx| svc.poll_ready(cx)));
    ready.unwrap();
    let response = block_on(svc.call(request(traceparent))).unwrap();
    black_box(drain(response.into_body()));
}

// ---------------------------------------------------------------- floors

/// The hand-written minimum: one span with four attributes and a status at
/// the end, one histogram record, a concrete `SdkTracer`.
#[derive(Clone)]
struct Floor<S> {
    inner: S,
    tracer: SdkTracer,
    histogram: Histogram<f64>,
    /// Extract (server) or inject (client) W3C Trace Context.
    propagate: Option<Arc<TraceContextPropagator>>,
    kind: SpanKind,
}

/// The floor's span: four attributes, a concrete `SdkTracer`.
fn floor_span(
    tracer: &SdkTracer,
    kind: SpanKind,
    start_time: SystemTime,
    parent: &Context,
) -> opentelemetry_sdk::trace::Span {
    tracer
        .span_builder("helloworld.Greeter/SayHello")
        .with_kind(kind)
        .with_start_time(start_time)
        .with_attributes([
            KeyValue::new("rpc.system.name", "grpc"),
            KeyValue::new("rpc.method", "helloworld.Greeter/SayHello"),
            KeyValue::new("server.address", "127.0.0.1"),
            KeyValue::new("server.port", 50051i64),
        ])
        .start_with_context(tracer, parent)
}

/// The floor as a plain function (no boxing): the same work a minimal
/// hand-written layer does, inline.
fn floor_call<S>(floor: &mut Floor<S>, traceparent: bool)
where
    S: Service<Req, Response = Response<GrpcBody>>,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    let start_time = SystemTime::now();
    let mut req = request(traceparent);
    let parent = match (&floor.propagate, floor.kind.clone()) {
        (Some(p), SpanKind::Server) => p.extract(&HeaderExtractor(req.headers())),
        _ => Context::current(),
    };
    let mut span = floor_span(&floor.tracer, floor.kind.clone(), start_time, &parent);
    let _guard = match (&floor.propagate, floor.kind.clone()) {
        (Some(p), SpanKind::Client) => {
            let cx = parent.with_remote_span_context(span.span_context().clone());
            p.inject_context(&cx, &mut HeaderInjector(req.headers_mut()));
            None
        }
        (Some(_), _) => Some(parent.attach()),
        _ => None,
    };
    block_on(std::future::poll_fn(|cx| floor.inner.poll_ready(cx))).unwrap();
    let response = block_on(floor.inner.call(req)).unwrap();
    let (_, mut body) = response.into_parts();
    let mut cx = TaskContext::from_waker(std::task::Waker::noop());
    let mut code = None;
    while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
        if let Some(t) = frame.trailers_ref() {
            code = t.get("grpc-status").map(|v| v.as_bytes() == b"0");
        }
    }
    let ok = code == Some(true);
    span.set_attribute(KeyValue::new(
        "rpc.status_code",
        if ok { "OK" } else { "UNKNOWN" },
    ));
    if !ok {
        span.set_status(Status::error(""));
    }
    let elapsed = start.elapsed();
    span.end_with_timestamp(start_time + elapsed);
    floor.histogram.record(
        elapsed.as_secs_f64(),
        &[
            KeyValue::new("rpc.system.name", "grpc"),
            KeyValue::new("rpc.method", "helloworld.Greeter/SayHello"),
            KeyValue::new("rpc.status_code", "OK"),
        ],
    );
}

/// The same minimum written as a tower layer, the way a hand-rolled
/// middleware must be: the span travels in the response future and then the
/// body, and ends when the trailers arrive. With `propagate`, the server
/// extracts W3C Trace Context and makes the caller's context current around
/// the inner call; the client injects its span's context.
#[derive(Clone)]
struct FloorLayer {
    tracer: SdkTracer,
    histogram: Histogram<f64>,
    kind: SpanKind,
    propagate: Option<Arc<TraceContextPropagator>>,
}

impl<S> Layer<S> for FloorLayer {
    type Service = FloorService<S>;
    fn layer(&self, inner: S) -> FloorService<S> {
        FloorService {
            inner,
            floor: self.clone(),
        }
    }
}

#[derive(Clone)]
struct FloorService<S> {
    inner: S,
    floor: FloorLayer,
}

struct FloorState {
    span: opentelemetry_sdk::trace::Span,
    start: Instant,
    start_time: SystemTime,
    histogram: Histogram<f64>,
}

impl FloorState {
    fn end(mut self, ok: bool) {
        self.span.set_attribute(KeyValue::new(
            "rpc.status_code",
            if ok { "OK" } else { "UNKNOWN" },
        ));
        if !ok {
            self.span.set_status(Status::error(""));
        }
        let elapsed = self.start.elapsed();
        self.span.end_with_timestamp(self.start_time + elapsed);
        self.histogram.record(
            elapsed.as_secs_f64(),
            &[
                KeyValue::new("rpc.system.name", "grpc"),
                KeyValue::new("rpc.method", "helloworld.Greeter/SayHello"),
                KeyValue::new("rpc.status_code", if ok { "OK" } else { "UNKNOWN" }),
            ],
        );
    }
}

impl<S, ReqB, B> Service<Request<ReqB>> for FloorService<S>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    B: Body,
{
    type Response = Response<FloorBody<B>>;
    type Error = S::Error;
    type Future = FloorFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let start = Instant::now();
        let start_time = SystemTime::now();
        let floor = &self.floor;
        let server = floor.kind == SpanKind::Server;
        let parent = match &floor.propagate {
            Some(p) if server => p.extract(&HeaderExtractor(req.headers())),
            _ => Context::current(),
        };
        let span = floor_span(&floor.tracer, floor.kind.clone(), start_time, &parent);
        let _guard = match &floor.propagate {
            Some(p) if !server => {
                let cx = parent.with_remote_span_context(span.span_context().clone());
                p.inject_context(&cx, &mut HeaderInjector(req.headers_mut()));
                None
            }
            Some(_) => Some(parent.attach()),
            None => None,
        };
        FloorFuture {
            inner: self.inner.call(req),
            state: Some(FloorState {
                span,
                start,
                start_time,
                histogram: floor.histogram.clone(),
            }),
        }
    }
}

pin_project_lite::pin_project! {
    struct FloorFuture<F> {
        #[pin]
        inner: F,
        state: Option<FloorState>,
    }
}

impl<F, B, E> Future for FloorFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<FloorBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let state = this.state.take();
        Poll::Ready(Ok(response.map(|inner| FloorBody { inner, state })))
    }
}

pin_project_lite::pin_project! {
    struct FloorBody<B> {
        #[pin]
        inner: B,
        state: Option<FloorState>,
    }
}

impl<B: Body> Body for FloorBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(t) = f.trailers_ref()
                    && let Some(state) = this.state.take()
                {
                    state.end(t.get("grpc-status").is_some_and(|v| v.as_bytes() == b"0"));
                }
            }
            _ => {
                if let Some(state) = this.state.take() {
                    state.end(false);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

// ---------------------------------------------------------------- end to end

mod hello {
    tonic::include_proto!("helloworld");
}

struct Greeter;

#[tonic::async_trait]
impl hello::greeter_server::Greeter for Greeter {
    async fn say_hello(
        &self,
        request: tonic::Request<hello::HelloRequest>,
    ) -> Result<tonic::Response<hello::HelloReply>, tonic::Status> {
        Ok(tonic::Response::new(hello::HelloReply {
            message: format!("Hello {}", request.into_inner().name),
        }))
    }
    type ServerStreamStream =
        Pin<Box<dyn futures::Stream<Item = Result<hello::HelloReply, tonic::Status>> + Send>>;
    async fn server_stream(
        &self,
        _request: tonic::Request<hello::HelloRequest>,
    ) -> Result<tonic::Response<Self::ServerStreamStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("bench"))
    }
    async fn client_stream(
        &self,
        _request: tonic::Request<tonic::Streaming<hello::HelloRequest>>,
    ) -> Result<tonic::Response<hello::HelloReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("bench"))
    }
    type BidiStream =
        Pin<Box<dyn futures::Stream<Item = Result<hello::HelloReply, tonic::Status>> + Send>>;
    async fn bidi(
        &self,
        _request: tonic::Request<tonic::Streaming<hello::HelloRequest>>,
    ) -> Result<tonic::Response<Self::BidiStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("bench"))
    }
}

/// One end-to-end call, to completion.
type CallFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Gives each request a `traceparent` of its own, as a client layer sends
/// it (a fresh span id, marked sensitive so HTTP/2 sends it as a
/// never-indexed literal), and nothing else: what propagation alone costs
/// on the wire, with no instrumentation on either side.
fn with_traceparent<B>(mut req: http::Request<B>) -> http::Request<B> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut value = *b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01";
    for (i, digit) in value[36..52].iter_mut().enumerate() {
        *digit = DIGITS[((id >> (60 - 4 * i)) & 0xf) as usize];
    }
    let mut value = HeaderValue::from_bytes(&value).expect("hex digits and dashes");
    value.set_sensitive(true);
    req.headers_mut().insert("traceparent", value);
    req
}

/// One end-to-end contender: its own runtime, a tonic server on 127.0.0.1
/// and clients, all with the contender's layers.
struct E2e {
    name: &'static str,
    runtime: tokio::runtime::Runtime,
    /// Makes one call on the client of the given connection (any index;
    /// taken modulo CONNECTIONS).
    call: Arc<dyn Fn(usize) -> CallFuture + Send + Sync>,
    /// Calls per second of each round.
    rounds: Vec<f64>,
    /// Calls per CPU-second of the process in each round.
    cpu_rounds: Vec<f64>,
    /// Calls completed so far, warm-up included (for instruction counts:
    /// see `print_call_counts`).
    calls: u64,
}

const IN_FLIGHT: usize = 64;

/// HTTP/2 connections the IN_FLIGHT calls are spread over. Over one
/// connection the two cores are not saturated (about 1.3-1.5 of them busy
/// here): each call waits on the two connection tasks in turn, so calls/s
/// measures how those tasks happen to be scheduled, and adjacent rounds of
/// the same contender differed by 10-20%. Over four, the cores are busy
/// (about 1.9), calls/s measures the CPU each call costs, and in a quiet
/// stretch the best round and the median ratio agree within a few points.
const CONNECTIONS: usize = 4;

/// A runtime with `workers` worker threads (each with `dispatch` as its
/// `tracing` dispatcher, if any) and, on it, a tonic Greeter server on
/// 127.0.0.1 behind `server_layer`: `(runtime, address)`. A macro: tonic's
/// layer bounds are long to spell.
macro_rules! serve_greeter {
    ($workers:expr, $server_layer:expr, $dispatch:expr $(,)?) => {{
        let (server_layer, dispatch): (_, Option<tracing::Dispatch>) = ($server_layer, $dispatch);
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads($workers).enable_all();
        if let Some(d) = dispatch {
            builder.on_thread_start(move || std::mem::forget(tracing::dispatcher::set_default(&d)));
        }
        let runtime = builder.build().unwrap();
        let addr = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(
                tonic::transport::Server::builder()
                    .layer(server_layer)
                    .add_service(hello::greeter_server::GreeterServer::new(Greeter))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
            );
            addr
        });
        (runtime, addr)
    }};
}

/// Builds one contender: the server on two workers, and on the same
/// runtime a client on each of CONNECTIONS connections.
macro_rules! e2e_contender {
    ($name:expr, $server_layer:expr, $client_layer:expr, $dispatch:expr $(,)?) => {{
        let (name, client_layer): (&'static str, _) = ($name, $client_layer);
        let (runtime, addr) = serve_greeter!(2, $server_layer, $dispatch);
        let clients: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let client_layer = client_layer.clone();
                runtime.block_on(async move {
                    let origin: http::Uri = format!("http://{addr}").parse().unwrap();
                    let channel = tonic::transport::Endpoint::from(origin.clone())
                        .connect()
                        .await
                        .unwrap();
                    hello::greeter_client::GreeterClient::with_origin(
                        client_layer.layer(channel),
                        origin,
                    )
                })
            })
            .collect();
        let call = Arc::new(move |i: usize| {
            let mut client = clients[i % clients.len()].clone();
            Box::pin(async move {
                let reply = client
                    .say_hello(hello::HelloRequest {
                        name: "bench".into(),
                    })
                    .await;
                black_box(reply.is_ok());
            }) as CallFuture
        });
        E2e {
            name,
            runtime,
            call,
            rounds: Vec::new(),
            cpu_rounds: Vec::new(),
            calls: 0,
        }
    }};
}

/// CPU time used by every thread of this process so far (`None` where
/// the bench cannot read it).
#[cfg(unix)]
fn process_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

#[cfg(not(unix))]
fn process_cpu_time() -> Option<Duration> {
    None
}

/// With IN_FLIGHT calls always outstanding for `duration`: calls per
/// second, and calls per CPU-second of the whole process (client and
/// server; NaN where the CPU time cannot be read). Adds the calls made to
/// `c.calls`.
fn e2e_round(c: &mut E2e, duration: Duration) -> (f64, f64) {
    let call = c.call.clone();
    let cpu = process_cpu_time();
    let out = c.runtime.block_on(async move {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Instant::now() + duration;
        let workers: Vec<_> = (0..IN_FLIGHT)
            .map(|i| {
                let call = call.clone();
                let done = done.clone();
                tokio::spawn(async move {
                    while Instant::now() < stop {
                        call(i).await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        done.load(Ordering::Relaxed)
    });
    c.calls += out;
    let out = out as f64;
    let per_cpu = match (cpu, process_cpu_time()) {
        (Some(before), Some(after)) => out / (after - before).as_secs_f64(),
        _ => f64::NAN,
    };
    (out / duration.as_secs_f64(), per_cpu)
}

/// The `tracing` dispatcher tonic-tracing-opentelemetry's spans go through:
/// tracing-opentelemetry on the SDK's tracer, at the level its spans use.
fn ttoc_dispatch(sdk: &Sdk) -> tracing::Dispatch {
    use tracing_subscriber::layer::SubscriberExt;
    tracing::Dispatch::new(
        tracing_subscriber::registry().with(tracing_subscriber::Layer::with_filter(
            tracing_opentelemetry::layer().with_tracer(sdk.tracer_provider.tracer("tracing")),
            tracing_subscriber::filter::Targets::new()
                .with_target("otel::tracing", tracing::Level::TRACE),
        )),
    )
}

/// `--solo NAME`: keeps only the contender named NAME exactly if there is
/// one, else those whose name contains NAME (for profilers).
fn retain_solo<T>(contenders: &mut Vec<T>, name: impl Fn(&T) -> &str) {
    let args: Vec<String> = std::env::args().collect();
    if let Some(solo) = args
        .iter()
        .position(|a| a == "--solo")
        .and_then(|i| args.get(i + 1))
    {
        if contenders.iter().any(|c| name(c) == solo) {
            contenders.retain(|c| name(c) == solo);
        } else {
            contenders.retain(|c| name(c).contains(solo.as_str()));
        }
    }
}

/// Prints a throughput table (each contender's rounds, `unit` per second)
/// and returns, per contender, its best round and the median over rounds
/// of its ratio to bare's round at the same time, both as ratios to bare.
fn rate_table(
    title: &str,
    unit: &str,
    rows: &[(&'static str, &[f64])],
) -> Vec<(&'static str, f64, f64)> {
    let best = |rounds: &[f64]| rounds.iter().copied().fold(f64::NAN, f64::max);
    let bare: &[f64] = rows
        .iter()
        .find(|(name, _)| name.starts_with("bare"))
        .map_or(&[], |(_, rounds)| rounds);
    let bare_best = best(bare);
    println!("\n### {title}\n");
    println!(
        "\"best\": the fastest round of each; \"median ratio\": the median over rounds of the contender's {unit} over bare's in the same round.\n"
    );
    println!("| contender | best {unit} | best vs bare | median ratio |");
    println!("|---|---:|---:|---:|");
    let mut out = Vec::new();
    for (name, rounds) in rows {
        let mut ratios: Vec<f64> = rounds.iter().zip(bare).map(|(x, b)| x / b).collect();
        ratios.sort_by(f64::total_cmp);
        let median = ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN);
        let best_ratio = best(rounds) / bare_best;
        println!(
            "| {name} | {:.0} | {:.1}% | {:.1}% |",
            best(rounds),
            100.0 * best_ratio,
            100.0 * median
        );
        out.push((*name, best_ratio, median));
    }
    out
}

/// A propagator that neither extracts nor injects anything.
fn no_propagation() -> opentelemetry::propagation::TextMapCompositePropagator {
    opentelemetry::propagation::TextMapCompositePropagator::new(Vec::new())
}

/// Prints how many calls each contender completed, warm-up included. Under
/// callgrind, two runs of `--e2e-only --solo NAME` with different
/// `--rounds` give a contender's instructions per call, both ends together,
/// free of this machine's timing noise: the difference of the instruction
/// totals over the difference of these counts.
fn print_call_counts(contenders: &[E2e]) {
    println!("\ncalls completed, warm-up included (for instruction counts):");
    for c in contenders {
        println!("- {}: {}", c.name, c.calls);
    }
}

/// Runs the loopback contenders; returns each one's best and median ratio
/// to bare.
fn end_to_end(sdk: &Sdk, rounds: usize, duration: Duration) -> Vec<(&'static str, f64, f64)> {
    let ours = ours(sdk, Semconv::Stable);
    let meter = sdk.meter_provider.meter("floor");
    let floor_layer = |kind: SpanKind| FloorLayer {
        tracer: sdk.tracer_provider.tracer("floor"),
        histogram: meter
            .f64_histogram(match kind {
                SpanKind::Server => "rpc.server.call.duration",
                _ => "rpc.client.call.duration",
            })
            .build(),
        kind,
        propagate: Some(Arc::new(TraceContextPropagator::new())),
    };
    let ttoc_dispatch = ttoc_dispatch(sdk);
    let mut contenders = vec![
        e2e_contender!(
            "bare (no instrumentation)",
            tower::layer::util::Identity::new(),
            tower::layer::util::Identity::new(),
            None
        ),
        e2e_contender!(
            // The same as bare, in its own runtime and connections: how far
            // two identical contenders land apart in this run.
            "bare again (noise check: a second runtime)",
            tower::layer::util::Identity::new(),
            tower::layer::util::Identity::new(),
            None
        ),
        e2e_contender!(
            "floor + W3C (server + client layers)",
            floor_layer(SpanKind::Server),
            floor_layer(SpanKind::Client),
            None
        ),
        e2e_contender!(
            "otel-tower (server + client layers)",
            ours.server_layer(),
            ours.client_layer(),
            None
        ),
        e2e_contender!(
            "otel-tower, metrics only",
            ours.clone().without_tracing().server_layer(),
            ours.clone().without_tracing().client_layer(),
            None
        ),
        e2e_contender!(
            "otel-tower, tracing only",
            ours.clone().without_metrics().server_layer(),
            ours.clone().without_metrics().client_layer(),
            None
        ),
        e2e_contender!(
            "bare + a traceparent per call (no instrumentation)",
            tower::layer::util::Identity::new(),
            tower::util::MapRequestLayer::new(with_traceparent::<tonic::body::Body>),
            None
        ),
        e2e_contender!(
            "otel-tower, no propagation",
            ours.clone()
                .with_propagator(no_propagation())
                .server_layer(),
            ours.clone()
                .with_propagator(no_propagation())
                .client_layer(),
            None
        ),
        e2e_contender!(
            "tonic-tracing-opentelemetry 0.42",
            tonic_tracing_opentelemetry::middleware::server::OtelGrpcLayer::default(),
            tonic_tracing_opentelemetry::middleware::client::OtelGrpcLayer,
            Some(ttoc_dispatch),
        ),
    ];
    retain_solo(&mut contenders, |c| c.name);
    if contenders.is_empty() {
        return Vec::new();
    }
    for c in contenders.iter_mut() {
        e2e_round(c, Duration::from_millis(200)); // warm up
    }
    for _ in 0..rounds {
        for c in contenders.iter_mut() {
            let (calls, per_cpu) = e2e_round(c, duration);
            c.rounds.push(calls);
            c.cpu_rounds.push(per_cpu);
        }
    }
    print_call_counts(&contenders);
    let rows: Vec<(&'static str, &[f64])> =
        contenders.iter().map(|c| (c.name, &c.rounds[..])).collect();
    let wall = rate_table(
        &format!(
            "End to end over loopback (tonic Greeter, {IN_FLIGHT} calls in flight over {CONNECTIONS} connections, {rounds} rounds x {duration:?})"
        ),
        "calls/s",
        &rows,
    );
    // The same rounds by the CPU they used: client and server share the
    // process, so this is what each call costs both ends together.
    let cpu_rows: Vec<(&'static str, &[f64])> = contenders
        .iter()
        .map(|c| (c.name, &c.cpu_rounds[..]))
        .filter(|(_, rounds)| rounds.iter().all(|r| r.is_finite()))
        .collect();
    if cpu_rows.len() < contenders.len() {
        return wall;
    }
    rate_table(
        "End to end, the same rounds per CPU-second of the process (client and server)",
        "calls per CPU-s",
        &cpu_rows,
    );
    wall
}

// ------------------------------------------------ server side under h2load

/// One server contender for h2load: its own runtime (one worker) and a
/// tonic Greeter server on 127.0.0.1 with the contender's server layer.
struct Served {
    name: &'static str,
    _runtime: tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    rounds: Vec<f64>,
}

macro_rules! h2load_contender {
    ($name:expr, $server_layer:expr, $dispatch:expr $(,)?) => {{
        let (_runtime, addr) = serve_greeter!(1, $server_layer, $dispatch);
        Served {
            name: $name,
            _runtime,
            addr,
            rounds: Vec::new(),
        }
    }};
}

/// Requests per second h2load reached against `server` in `seconds`, or
/// `None` (with h2load's output printed) when a call failed or h2load
/// could not run.
fn h2load_round(
    server: &Served,
    body: &std::path::Path,
    seconds: u32,
    pinned: bool,
) -> Option<f64> {
    // Pinned: h2load on the second core, the servers on the first.
    let mut command = if pinned {
        let mut c = std::process::Command::new("taskset");
        c.args(["-c", "1", "h2load"]);
        c
    } else {
        std::process::Command::new("h2load")
    };
    let out = command
        .args(["-c", "4", "-m", "16", "-t", "1", "-D", &seconds.to_string()])
        .arg("-d")
        .arg(body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .args([
            "-H",
            "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ])
        .arg(format!(
            "http://{}/helloworld.Greeter/SayHello",
            server.addr
        ))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let clean = text.contains(" 0 failed, 0 errored, 0 timeout");
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1)?.strip_suffix(" req/s")?.parse().ok());
    if !clean || rate.is_none() {
        println!("h2load against {} went wrong:\n{text}", server.name);
        return None;
    }
    rate
}

/// `--h2load`: the server layers alone, driven by h2load (nghttp2's HTTP/2
/// load generator: an independent client), each contender in turn for
/// `rounds` rounds of `seconds`. The servers run on one core and h2load on
/// the other (pinned with `taskset` when it is there), so that the server's
/// CPU time per call is what limits the rate.
fn h2load_server_side(sdk: &Sdk, rounds: usize, seconds: u32) {
    if std::process::Command::new("h2load")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("\nh2load is not installed (Debian package nghttp2-client): no h2load section");
        return;
    }
    let ours = ours(sdk, Semconv::Stable);
    let floor = FloorLayer {
        tracer: sdk.tracer_provider.tracer("floor"),
        histogram: sdk
            .meter_provider
            .meter("floor")
            .f64_histogram("rpc.server.call.duration")
            .build(),
        kind: SpanKind::Server,
        propagate: Some(Arc::new(TraceContextPropagator::new())),
    };
    let ttoc_dispatch = ttoc_dispatch(sdk);
    let mut contenders = vec![
        h2load_contender!(
            "bare (no instrumentation)",
            tower::layer::util::Identity::new(),
            None
        ),
        h2load_contender!("floor + W3C (server layer)", floor, None),
        h2load_contender!("otel-tower server layer", ours.server_layer(), None),
        h2load_contender!(
            "otel-tonic server layer (its presets: peer attributes from TcpConnectInfo)",
            otel_tonic::instrumentation()
                .with_tracer_provider(sdk.tracer_provider.clone())
                .with_meter_provider(sdk.meter_provider.clone())
                .with_propagator(otel_tower::propagation::TraceContext::new())
                .server_layer(),
            None
        ),
        h2load_contender!(
            "tonic-tracing-opentelemetry 0.42 server layer",
            tonic_tracing_opentelemetry::middleware::server::OtelGrpcLayer::default(),
            Some(ttoc_dispatch),
        ),
    ];
    retain_solo(&mut contenders, |c| c.name);
    let pinned = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", "0", &std::process::id().to_string()])
        .output()
        .is_ok_and(|o| o.status.success());
    if !pinned {
        println!("\n(taskset failed: server and h2load share the cores)");
    }
    // A HelloRequest { name: "bench" } in a gRPC envelope.
    let body = std::env::temp_dir().join(format!("otel-tower-bench-{}.grpc", std::process::id()));
    std::fs::write(&body, b"\x00\x00\x00\x00\x07\x0a\x05bench").unwrap();
    for c in &contenders {
        h2load_round(c, &body, 1, pinned); // warm up
    }
    for _ in 0..rounds {
        for c in contenders.iter_mut() {
            if let Some(rate) = h2load_round(c, &body, seconds, pinned) {
                c.rounds.push(rate);
            }
        }
    }
    let _ = std::fs::remove_file(&body);
    let rows: Vec<(&'static str, &[f64])> =
        contenders.iter().map(|c| (c.name, &c.rounds[..])).collect();
    rate_table(
        &format!(
            "Server side under h2load (tonic Greeter on one core, h2load on the other; gRPC unary with a sampled `traceparent`, 4 connections x 16 streams, {rounds} rounds x {seconds} s)"
        ),
        "req/s",
        &rows,
    );
}

// ---------------------------------------------------------------- harness

struct Contender {
    name: String,
    run: Box<dyn FnMut()>,
    best_ns: f64,
    allocs: f64,
}

impl Contender {
    fn new(name: &str, run: impl FnMut() + 'static) -> Self {
        Contender {
            name: name.to_string(),
            run: Box::new(run),
            best_ns: f64::INFINITY,
            allocs: 0.0,
        }
    }
}

struct Options {
    /// In-process rounds: many short ones over several seconds, so that
    /// every contender gets rounds in the machine's quiet phases (on a
    /// shared 2-vCPU VM, slow phases come and go over seconds) and its
    /// fastest round is one of them.
    rounds: usize,
    calls: usize,
    stream_calls: usize,
    /// Rounds of the loopback and h2load parts (each round lasts a fixed
    /// time, so they keep their own, smaller default).
    throughput_rounds: usize,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
    };
    Options {
        rounds: value("--rounds").unwrap_or(if quick { 10 } else { 60 }),
        calls: value("--calls").unwrap_or(if quick { 2_000 } else { 3_000 }),
        stream_calls: if quick { 20 } else { 100 },
        throughput_rounds: value("--rounds").unwrap_or(7),
    }
}

/// Measures every contender of every group: warm-up and allocation count
/// first, then `rounds` rounds in which all of them, across groups, run
/// their group's number of calls in turn. Groups share rounds so that the
/// server's and the client's figures, unary and streaming, come from the
/// same stretches of time: on a shared VM the slow phases last seconds,
/// longer than one part's whole run, and a per-message cost compares a
/// stream's figures with the unary ones.
fn measure(groups: &mut [(&mut Vec<Contender>, usize)], rounds: usize) {
    // `--only NAME` keeps the contenders whose name contains NAME (and bare).
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1));
    for (contenders, _) in groups.iter_mut() {
        if let Some(only) = only {
            contenders.retain(|c| {
                c.name.contains(only.as_str()) || c.name.starts_with("bare") || c.name == "floor"
            });
        }
        retain_solo(contenders, |c| c.name.as_str());
    }
    for c in groups.iter_mut().flat_map(|(g, _)| g.iter_mut()) {
        // Warm up (and fill caches), then count allocations on a short run.
        for _ in 0..200 {
            (c.run)();
        }
        COUNTING.store(true, Ordering::Relaxed);
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let n = 500;
        for _ in 0..n {
            (c.run)();
        }
        c.allocs = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / n as f64;
        COUNTING.store(false, Ordering::Relaxed);
    }
    for _ in 0..rounds {
        for (contenders, calls) in groups.iter_mut() {
            let calls = *calls;
            for c in contenders.iter_mut() {
                let start = Instant::now();
                for _ in 0..calls {
                    (c.run)();
                }
                let ns = start.elapsed().as_nanos() as f64 / calls as f64;
                c.best_ns = c.best_ns.min(ns);
            }
        }
    }
}

fn report(title: &str, contenders: &[Contender], bare: &str, floor: &str) {
    let find = |n: &str| {
        contenders
            .iter()
            .find(|c| c.name == n)
            .map(|c| c.best_ns)
            .unwrap_or(f64::NAN)
    };
    let (bare_ns, floor_ns) = (find(bare), find(floor));
    println!("\n### {title}\n");
    println!("| contender | ns/call | allocs/call | overhead vs floor |");
    println!("|---|---:|---:|---:|");
    for c in contenders {
        let ratio = if c.name == bare {
            "-".to_string()
        } else {
            format!("{:.2}", (c.best_ns - bare_ns) / (floor_ns - bare_ns))
        };
        println!(
            "| {} | {:.0} | {:.1} | {} |",
            c.name, c.best_ns, c.allocs, ratio
        );
    }
}

fn ours(sdk: &Sdk, mode: Semconv) -> Instrumentation {
    Instrumentation::new()
        .with_tracer_provider(sdk.tracer_provider.clone())
        .with_meter_provider(sdk.meter_provider.clone())
        .with_propagator(otel_tower::propagation::TraceContext::new())
        .with_semconv(mode)
}

fn server_contenders(sdk: &Sdk, messages: u32) -> Vec<Contender> {
    let mut out = Vec::new();
    let mut bare = handler(messages);
    out.push(Contender::new("bare (no instrumentation)", move || {
        run_call(&mut bare, true)
    }));

    let meter = sdk.meter_provider.meter("floor");
    let histogram = meter.f64_histogram("rpc.server.call.duration").build();
    let floor = Floor {
        inner: handler(messages),
        tracer: sdk.tracer_provider.tracer("floor"),
        histogram: histogram.clone(),
        propagate: None,
        kind: SpanKind::Server,
    };
    let mut f1 = floor.clone();
    out.push(Contender::new("floor", move || floor_call(&mut f1, true)));
    let mut f2 = Floor {
        propagate: Some(Arc::new(TraceContextPropagator::new())),
        ..floor
    };
    out.push(Contender::new("floor + W3C extract/attach", move || {
        floor_call(&mut f2, true)
    }));
    let mut layer = FloorLayer {
        tracer: sdk.tracer_provider.tracer("floor"),
        histogram,
        kind: SpanKind::Server,
        propagate: None,
    }
    .layer(handler(messages));
    out.push(Contender::new(
        "floor as a tower layer (no W3C)",
        move || run_call(&mut layer, true),
    ));

    let variants: [(&str, Instrumentation); 7] = [
        (
            "otel-tower Stable (spans+metrics+W3C)",
            ours(sdk, Semconv::Stable),
        ),
        (
            "otel-tower Stable, without_body_context",
            ours(sdk, Semconv::Stable).without_body_context(),
        ),
        (
            "otel-tower Stable, default propagator",
            Instrumentation::new()
                .with_tracer_provider(sdk.tracer_provider.clone())
                .with_meter_provider(sdk.meter_provider.clone()),
        ),
        (
            "otel-tower unsampled",
            ours(sdk, Semconv::Stable).with_tracer_provider(sdk.unsampled_provider.clone()),
        ),
        (
            "otel-tower metrics only",
            ours(sdk, Semconv::Stable).without_tracing(),
        ),
        (
            "otel-tower tracing only",
            ours(sdk, Semconv::Stable).without_metrics(),
        ),
        ("otel-tower Legacy", ours(sdk, Semconv::Legacy)),
    ];
    for (name, otel) in variants {
        let mut svc = otel.server_layer().layer(handler(messages));
        out.push(Contender::new(name, move || run_call(&mut svc, true)));
    }

    // tonic-tracing-opentelemetry: tracing spans bridged by tracing-opentelemetry.
    let dispatch = tracing_dispatch(sdk);
    let mut ttoc = tonic_tracing_opentelemetry::middleware::server::OtelGrpcLayer::default()
        .layer(handler(messages));
    out.push(Contender::new(
        "tonic-tracing-opentelemetry 0.42",
        move || tracing::dispatcher::with_default(&dispatch, || run_call(&mut ttoc, true)),
    ));

    // opentelemetry-instrumentation-tower (HTTP only; global providers only).
    let mut oit =
        opentelemetry_instrumentation_tower::http::server::Layer::new().layer(handler(messages));
    out.push(Contender::new(
        "opentelemetry-instrumentation-tower 0.19",
        move || run_call(&mut oit, true),
    ));
    out
}

fn client_contenders(sdk: &Sdk, messages: u32) -> Vec<Contender> {
    let mut out = Vec::new();
    let mut bare = handler(messages);
    out.push(Contender::new("bare (no instrumentation)", move || {
        run_call(&mut bare, false)
    }));
    let meter = sdk.meter_provider.meter("floor");
    let floor = Floor {
        inner: handler(messages),
        tracer: sdk.tracer_provider.tracer("floor"),
        histogram: meter.f64_histogram("rpc.client.call.duration").build(),
        propagate: None,
        kind: SpanKind::Client,
    };
    let mut f1 = floor.clone();
    out.push(Contender::new("floor", move || floor_call(&mut f1, false)));
    let mut f2 = Floor {
        propagate: Some(Arc::new(TraceContextPropagator::new())),
        ..floor
    };
    out.push(Contender::new("floor + W3C inject", move || {
        floor_call(&mut f2, false)
    }));
    let variants = [
        ("otel-tower client Stable", ours(sdk, Semconv::Stable)),
        (
            "otel-tower client unsampled",
            ours(sdk, Semconv::Stable).with_tracer_provider(sdk.unsampled_provider.clone()),
        ),
        (
            "otel-tower client metrics only",
            ours(sdk, Semconv::Stable).without_tracing(),
        ),
        (
            "otel-tower client tracing only",
            ours(sdk, Semconv::Stable).without_metrics(),
        ),
        ("otel-tower client Legacy", ours(sdk, Semconv::Legacy)),
        (
            "otel-tower client Stable, default propagator",
            Instrumentation::new()
                .with_tracer_provider(sdk.tracer_provider.clone())
                .with_meter_provider(sdk.meter_provider.clone()),
        ),
    ];
    for (name, otel) in variants {
        let mut svc = otel.client_layer().layer(handler(messages));
        out.push(Contender::new(name, move || run_call(&mut svc, false)));
    }
    let dispatch = tracing_dispatch(sdk);
    let mut ttoc =
        tonic_tracing_opentelemetry::middleware::client::OtelGrpcLayer.layer(handler(messages));
    out.push(Contender::new(
        "tonic-tracing-opentelemetry 0.42 client",
        move || tracing::dispatcher::with_default(&dispatch, || run_call(&mut ttoc, false)),
    ));
    out
}

/// Prints the per-message cost of contender `name`: its extra time (and
/// allocations) over bare on the 1000-message stream, less the same on the
/// unary call, over 1000 messages.
fn per_message(name: &str, stream: &[Contender], unary: &[Contender]) -> (f64, f64) {
    let get = |v: &[Contender], n: &str| {
        v.iter()
            .find(|c| c.name.starts_with(n))
            .map_or((f64::NAN, f64::NAN), |c| (c.best_ns, c.allocs))
    };
    let (stream_ns, stream_allocs) = get(stream, name);
    let (stream_bare, stream_bare_allocs) = get(stream, "bare");
    let (unary_ns, unary_allocs) = get(unary, name);
    let (unary_bare, unary_bare_allocs) = get(unary, "bare");
    let per_message = ((stream_ns - stream_bare) - (unary_ns - unary_bare)) / 1000.0;
    let allocs_per_message =
        ((stream_allocs - stream_bare_allocs) - (unary_allocs - unary_bare_allocs)) / 1000.0;
    // Allocation counts are averages over a round: a difference below the
    // printed precision is none (and is not printed as "-0.000").
    let allocs_per_message = if allocs_per_message.abs() < 0.0005 {
        0.0
    } else {
        allocs_per_message
    };
    println!(
        "\nper-message cost with events off ({name}): {per_message:.1} ns, {allocs_per_message:.3} allocs"
    );
    (per_message, allocs_per_message)
}

fn tracing_dispatch(sdk: &Sdk) -> tracing::Dispatch {
    use tracing_subscriber::layer::SubscriberExt;
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(sdk.tracer_provider.tracer("tracing")));
    tracing::Dispatch::new(subscriber)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo test --benches` asks for a list; there are no unit tests here.
        return;
    }
    let opts = options();
    let sdk = sdk();
    // The one peer that can only use globals gets the same SDK through them.
    opentelemetry::global::set_tracer_provider(sdk.tracer_provider.clone());
    opentelemetry::global::set_meter_provider(sdk.meter_provider.clone());
    // `--global-propagator`: the W3C propagator a tonic-tracing-opentelemetry
    // service installs (its layers extract and inject only through the
    // global; without one they propagate nothing). Our layers built with
    // `with_propagator` ignore the global; the "default propagator" rows
    // then use it, as such a service's would.
    let global_propagator = std::env::args().any(|a| a == "--global-propagator");
    if global_propagator {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    }

    println!(
        "otel-tower RPC benchmark: {} rounds x {} calls, fastest round per contender; {} cores",
        opts.rounds,
        opts.calls,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "otel-tower feature experimental_metrics_bound_instruments: {}",
        if cfg!(feature = "experimental_metrics_bound_instruments") {
            "on (successful calls record through bound histograms)"
        } else {
            "off (the default)"
        }
    );

    println!(
        "global propagator: {}",
        if global_propagator {
            "W3C Trace Context (the peers that read the global extract and inject)"
        } else {
            "none (the peers that read the global propagate nothing)"
        }
    );

    if std::env::args().any(|a| a == "--e2e-only") {
        end_to_end(&sdk, opts.throughput_rounds, Duration::from_millis(1000));
        return;
    }
    if std::env::args().any(|a| a == "--h2load") {
        h2load_server_side(&sdk, opts.throughput_rounds, 2);
        return;
    }
    let mut targets = Targets::default();
    let mut server = server_contenders(&sdk, 1);
    let mut client = client_contenders(&sdk, 1);
    let streams = !std::env::args().any(|a| a == "--no-stream");
    let mut stream: Vec<Contender> = if streams {
        server_contenders(&sdk, 1000)
    } else {
        Vec::new()
    };
    stream.retain(|c| {
        c.name.starts_with("bare")
            || c.name == "otel-tower Stable (spans+metrics+W3C)"
            || c.name == "otel-tower Stable, without_body_context"
            || c.name.starts_with("floor")
    });
    let mut client_stream: Vec<Contender> = if streams {
        client_contenders(&sdk, 1000)
    } else {
        Vec::new()
    };
    client_stream.retain(|c| {
        c.name.starts_with("bare") || c.name == "floor" || c.name == "otel-tower client Stable"
    });
    // The streams run in the unary rounds, so that a per-message cost (a
    // stream's figures less the unary ones) never compares a quiet stretch
    // of the machine with a slow one.
    measure(
        &mut [
            (&mut server, opts.calls),
            (&mut client, opts.calls),
            (&mut stream, opts.stream_calls),
            (&mut client_stream, opts.stream_calls),
        ],
        opts.rounds,
    );
    report(
        "Server side, unary",
        &server,
        "bare (no instrumentation)",
        "floor",
    );
    report(
        "Client side, unary",
        &client,
        "bare (no instrumentation)",
        "floor",
    );

    targets.unary(&server, &client);
    if !streams {
        targets.print();
        return;
    }
    if !std::env::args().any(|a| a == "--no-e2e") {
        let quick = std::env::args().any(|a| a == "--quick");
        targets.e2e = end_to_end(
            &sdk,
            // Many short rounds: the best round of each contender is the
            // one least disturbed by the machine's noise.
            if quick { 3 } else { 12 },
            Duration::from_millis(if quick { 300 } else { 500 }),
        );
    }
    report(
        "Server side, stream of 1000 messages",
        &stream,
        "bare (no instrumentation)",
        "floor",
    );
    targets.per_message_server = Some(per_message(
        "otel-tower Stable (spans+metrics+W3C)",
        &stream,
        &server,
    ));
    targets.per_message_server_opt_out = Some(per_message(
        "otel-tower Stable, without_body_context",
        &stream,
        &server,
    ));

    report(
        "Client side, stream of 1000 messages",
        &client_stream,
        "bare (no instrumentation)",
        "floor",
    );
    targets.per_message_client = Some(per_message(
        "otel-tower client Stable",
        &client_stream,
        &client,
    ));
    println!("\nspans ended: {}", sdk.ended.load(Ordering::Relaxed));
    targets.print();
}

// ---------------------------------------------------------------- targets

/// The performance issue's targets, read from this run's figures.
#[derive(Default)]
struct Targets {
    rows: Vec<(String, String, bool)>,
    e2e: Vec<(&'static str, f64, f64)>,
    per_message_server: Option<(f64, f64)>,
    per_message_server_opt_out: Option<(f64, f64)>,
    per_message_client: Option<(f64, f64)>,
}

/// A contender's figures: ns/call, allocations/call, overhead over bare.
fn figures(contenders: &[Contender], name: &str) -> (f64, f64, f64) {
    let get = |n: &str| contenders.iter().find(|c| c.name == n);
    let bare = get("bare (no instrumentation)").map_or(f64::NAN, |c| c.best_ns);
    get(name).map_or((f64::NAN, f64::NAN, f64::NAN), |c| {
        (c.best_ns, c.allocs, c.best_ns - bare)
    })
}

/// `x` to `decimals` places, rounded away from meeting the target: up
/// for an upper bound (`upper`), down for a lower bound. A figure just
/// short of its bound then never prints as the bound itself beside
/// "not met", and a printed figure that meets its bound was met.
fn toward_miss(x: f64, decimals: i32, upper: bool) -> f64 {
    let scale = 10f64.powi(decimals);
    let scaled = x * scale;
    // Products like 0.6 * 100 land a hair above the integer they
    // stand for: do not let that carry them to the next step.
    let nearest = scaled.round();
    let scaled = if (scaled - nearest).abs() < 1e-9 {
        nearest
    } else if upper {
        scaled.ceil()
    } else {
        scaled.floor()
    };
    scaled / scale
}

impl Targets {
    fn row(&mut self, target: &str, measured: String, met: bool) {
        self.rows.push((target.to_string(), measured, met));
    }

    /// The rows read from the unary tables.
    fn unary(&mut self, server: &[Contender], client: &[Contender]) {
        self.side(
            "server",
            server,
            [
                "otel-tower Stable (spans+metrics+W3C)",
                "otel-tower unsampled",
                "tonic-tracing-opentelemetry 0.42",
            ],
            1.2,
        );
        let (_, w3c_allocs, _) = figures(server, "floor + W3C extract/attach");
        let (_, allocs, _) = figures(server, "otel-tower Stable (spans+metrics+W3C)");
        self.row(
            "server allocations <= floor + W3C",
            format!("{allocs:.0} vs {w3c_allocs:.0}"),
            allocs <= w3c_allocs,
        );
        self.side(
            "client",
            client,
            [
                "otel-tower client Stable",
                "otel-tower client unsampled",
                "tonic-tracing-opentelemetry 0.42 client",
            ],
            1.8,
        );
    }

    /// One side's rows: its overhead against the floor's (at most
    /// `max_vs_floor`) and tonic-tracing-opentelemetry's, and unsampled
    /// calls against sampled ones.
    fn side(
        &mut self,
        side: &str,
        contenders: &[Contender],
        [sampled, unsampled, ttoc]: [&str; 3],
        max_vs_floor: f64,
    ) {
        let (_, _, floor) = figures(contenders, "floor");
        let (ns, _, ours) = figures(contenders, sampled);
        let (_, _, ttoc) = figures(contenders, ttoc);
        let (unsampled_ns, _, unsampled) = figures(contenders, unsampled);
        self.row(
            &format!("{side} overhead <= {max_vs_floor}x the floor's"),
            format!("{:.2}x", toward_miss(ours / floor, 2, true)),
            ours / floor <= max_vs_floor,
        );
        self.row(
            &format!("{side} overhead >= 2.5x less than tonic-tracing-opentelemetry"),
            format!("{:.2}x less", toward_miss(ttoc / ours, 2, false)),
            ttoc / ours >= 2.5,
        );
        self.row(
            &format!("{side} unsampled <= 60% of sampled"),
            format!(
                "{:.0}% of the time ({:.0}% of the overhead)",
                toward_miss(100.0 * unsampled_ns / ns, 0, true),
                toward_miss(100.0 * unsampled / ours, 0, true)
            ),
            unsampled_ns / ns <= 0.6,
        );
    }

    fn print(mut self) {
        // "A few ns": at most 10 ns and no allocation per message.
        let few = |(ns, allocs): (f64, f64)| ns <= 10.0 && allocs < 0.01;
        let show = |(ns, allocs): (f64, f64)| {
            format!(
                "{:.1} ns, {:.3} allocs",
                toward_miss(ns, 1, true),
                toward_miss(allocs, 3, true)
            )
        };
        for (target, figures) in [
            (
                "per-message cost, server (default)",
                self.per_message_server,
            ),
            (
                "per-message cost, server (without_body_context)",
                self.per_message_server_opt_out,
            ),
            ("per-message cost, client", self.per_message_client),
        ] {
            if let Some(figures) = figures {
                self.row(
                    &format!("{target}: a few ns, no allocation"),
                    show(figures),
                    few(figures),
                );
            }
        }
        if let Some(&(_, best, median)) = self
            .e2e
            .iter()
            .find(|(name, ..)| name.starts_with("otel-tower (server"))
        {
            // Another contender's best round and median ratio, labelled.
            let beside = |prefix: &str, label: &str| {
                self.e2e
                    .iter()
                    .find(|(name, ..)| name.starts_with(prefix))
                    .map_or(String::new(), |&(_, best, median)| {
                        format!("{label}: {:.1}%, {:.1}%", 100.0 * best, 100.0 * median)
                    })
            };
            // Two identical contenders land this far apart in this run.
            let noise = beside("bare again", "; bare again");
            // What the propagation header alone costs, with no layer at all.
            let header = beside("bare + a traceparent", "; a traceparent alone");
            self.row(
                "end to end >= 95% of bare",
                format!(
                    "{:.1}% best round, {:.1}% median ratio{noise}{header}",
                    toward_miss(100.0 * best, 1, false),
                    100.0 * median
                ),
                // The fastest round of each, as for the in-process figures.
                best >= 0.95,
            );
        }
        println!("\n### Targets, from this run\n");
        println!("| target | this run | |");
        println!("|---|---|---|");
        for (target, measured, met) in &self.rows {
            let status = if *met { "met" } else { "not met" };
            println!("| {target} | {measured} | {status} |");
        }
    }
}
