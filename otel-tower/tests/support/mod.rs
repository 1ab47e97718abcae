//! Shared harness for the engine tests: explicit SDK providers with in-memory
//! exporters, a scripted response body, and hyper servers/clients on 127.0.0.1.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use otel_tower::Instrumentation;
use otel_tower::semconv::Semconv;
use tower::Service;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// SDK providers with in-memory exporters; never the globals.
pub struct Telemetry {
    pub spans: InMemorySpanExporter,
    pub tracer_provider: SdkTracerProvider,
    pub metrics: InMemoryMetricExporter,
    pub meter_provider: SdkMeterProvider,
}

impl Telemetry {
    pub fn new() -> Self {
        let spans = InMemorySpanExporter::default();
        let tracer_provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let metrics = InMemoryMetricExporter::default();
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metrics.clone()).build())
            .build();
        Telemetry {
            spans,
            tracer_provider,
            metrics,
            meter_provider,
        }
    }

    /// Instrumentation wired to these providers, W3C propagation, Stable mode.
    pub fn instrumentation(&self) -> Instrumentation {
        self.instrumentation_with(Semconv::Stable)
    }

    pub fn instrumentation_with(&self, mode: Semconv) -> Instrumentation {
        Instrumentation::new()
            .with_tracer_provider(self.tracer_provider.clone())
            .with_meter_provider(self.meter_provider.clone())
            .with_propagator(otel_tower::propagation::CompositePropagator::w3c())
            .with_semconv(mode)
    }

    pub fn finished_spans(&self) -> Vec<SpanData> {
        self.spans.get_finished_spans().unwrap()
    }

    /// Waits (bounded) until `n` spans ended; spans may end just after the
    /// client saw the response.
    pub async fn wait_spans(&self, n: usize) -> Vec<SpanData> {
        for _ in 0..200 {
            let spans = self.finished_spans();
            if spans.len() >= n {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let spans = self.finished_spans();
        panic!(
            "expected {n} spans, got {}: {:?}",
            spans.len(),
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
    }

    pub fn span(&self, kind: SpanKind) -> SpanData {
        let spans = self.finished_spans();
        let mut matching: Vec<SpanData> =
            spans.into_iter().filter(|s| s.span_kind == kind).collect();
        assert_eq!(matching.len(), 1, "exactly one {kind:?} span");
        matching.pop().unwrap()
    }

    /// Every histogram data point exported so far (cumulative).
    pub fn histograms(&self) -> Vec<HistPoint> {
        self.meter_provider.force_flush().unwrap();
        let mut out = Vec::new();
        let exported = self.metrics.get_finished_metrics().unwrap();
        // Cumulative temporality: the last export holds everything.
        let Some(last) = exported.last() else {
            return out;
        };
        for scope in last.scope_metrics() {
            for metric in scope.metrics() {
                let push = |out: &mut Vec<HistPoint>,
                            attrs: Vec<&KeyValue>,
                            count: u64,
                            bounds: Vec<f64>,
                            sum: f64| {
                    out.push(HistPoint {
                        name: metric.name().to_string(),
                        unit: metric.unit().to_string(),
                        description: metric.description().to_string(),
                        scope: scope.scope().name().to_string(),
                        attributes: attrs
                            .into_iter()
                            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                            .collect(),
                        count,
                        bounds,
                        sum,
                    })
                };
                match metric.data() {
                    AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                        for p in h.data_points() {
                            push(
                                &mut out,
                                p.attributes().collect(),
                                p.count(),
                                p.bounds().collect(),
                                p.sum(),
                            );
                        }
                    }
                    AggregatedMetrics::U64(MetricData::Histogram(h)) => {
                        for p in h.data_points() {
                            push(
                                &mut out,
                                p.attributes().collect(),
                                p.count(),
                                p.bounds().collect(),
                                p.sum() as f64,
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
        out
    }

    pub fn histogram(&self, name: &str) -> Vec<HistPoint> {
        self.histograms()
            .into_iter()
            .filter(|h| h.name == name)
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct HistPoint {
    pub name: String,
    pub unit: String,
    pub description: String,
    pub scope: String,
    pub attributes: BTreeMap<String, String>,
    pub count: u64,
    pub bounds: Vec<f64>,
    pub sum: f64,
}

pub fn attrs(span: &SpanData) -> BTreeMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| (kv.key.to_string(), kv.value.to_string()))
        .collect()
}

pub fn attr(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

pub fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn is_error(span: &SpanData) -> bool {
    matches!(span.status, Status::Error { .. })
}

/// A response body replaying a script of frames (and maybe an error).
pub struct Scripted {
    frames: VecDeque<Result<Frame<Bytes>, BoxError>>,
    /// After the frames, stay pending forever instead of ending.
    hang: bool,
    /// After the frames, continue with what this channel delivers.
    channel: Option<tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>>,
}

impl Scripted {
    pub fn new(frames: Vec<Result<Frame<Bytes>, BoxError>>) -> Self {
        Scripted {
            frames: frames.into(),
            hang: false,
            channel: None,
        }
    }

    /// A body fed by the returned sender (frames arrive over time).
    pub fn channel() -> (
        tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
        Self,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut s = Scripted::new(vec![]);
        s.channel = Some(rx);
        (tx, s)
    }

    /// Replays `chunks`, then never ends (for drop and timeout tests).
    pub fn data_then_hang(chunks: &[&[u8]]) -> Self {
        let mut s = Scripted::data(chunks);
        s.hang = true;
        s
    }

    pub fn empty() -> Self {
        Scripted::new(vec![])
    }

    pub fn data(chunks: &[&[u8]]) -> Self {
        Scripted::new(
            chunks
                .iter()
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect(),
        )
    }

    pub fn data_then_trailers(chunks: &[&[u8]], trailers: HeaderMap) -> Self {
        let mut frames: Vec<_> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        frames.push(Ok(Frame::trailers(trailers)));
        Scripted::new(frames)
    }
}

impl Body for Scripted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.frames.is_empty()
            && let Some(rx) = self.channel.as_mut()
        {
            return rx.poll_recv(cx);
        }
        match self.frames.pop_front() {
            None if self.hang => Poll::Pending,
            next => Poll::Ready(next),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && !self.hang && self.channel.is_none()
    }
}

pub fn envelope(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn trailers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    map
}

pub type Handler = Arc<dyn Fn(&Request<Incoming>) -> Response<Scripted> + Send + Sync>;

/// Serves `layer(handler)` on 127.0.0.1 (HTTP/1.1 and HTTP/2), forever in the
/// background; returns the address.
pub async fn serve<L>(layer: L, handler: Handler) -> SocketAddr
where
    L: tower::Layer<
            tower::util::BoxCloneSyncService<Request<Incoming>, Response<Scripted>, Infallible>,
        > + Send
        + 'static,
    L::Service: Service<Request<Incoming>, Error = Infallible> + Clone + Send + 'static,
    <L::Service as Service<Request<Incoming>>>::Future: Send + 'static,
    <L::Service as Service<Request<Incoming>>>::Response: IntoHyperResponse,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler =
        tower::util::BoxCloneSyncService::new(tower::service_fn(move |req: Request<Incoming>| {
            let response = handler(&req);
            async move {
                // Drain the request so the client's stream completes.
                let _ = req.into_body().collect().await;
                Ok::<_, Infallible>(response)
            }
        }));
    let svc = layer.layer(handler);
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            let svc = svc.clone();
            tokio::spawn(async move {
                let svc = tower::ServiceBuilder::new()
                    .map_response(IntoHyperResponse::into_hyper)
                    .map_request(move |mut req: Request<Incoming>| {
                        req.extensions_mut().insert(peer);
                        req
                    })
                    .service(svc);
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // Room for the adversarial tests' oversized headers.
                builder.http2().max_header_list_size(4 << 20);
                builder.http1().max_headers(512);
                let _ = builder
                    .serve_connection(
                        TokioIo::new(stream),
                        hyper_util::service::TowerToHyperService::new(svc),
                    )
                    .await;
            });
        }
    });
    addr
}

/// Boxes whatever body the layered service returns for hyper.
pub trait IntoHyperResponse {
    fn into_hyper(self) -> Response<http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>>;
}

impl<B> IntoHyperResponse for Response<B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn into_hyper(self) -> Response<http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>> {
        self.map(|b| b.map_err(Into::into).boxed_unsync())
    }
}

pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub fn h1_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A gRPC request carrying one message.
pub fn grpc_request(addr: SocketAddr, path: &str, content_type: &str) -> Request<Full<Bytes>> {
    Request::post(format!("http://{addr}{path}"))
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(Full::new(Bytes::from(envelope(0, b"hello"))))
        .unwrap()
}

/// Reads a whole response: body bytes and trailers.
pub async fn read_all<B>(
    response: Response<B>,
) -> (http::response::Parts, Vec<u8>, Option<HeaderMap>)
where
    B: Body + Unpin,
    B::Data: bytes::Buf,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = response.into_parts();
    let collected = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .unwrap()
        .unwrap();
    let trailers = collected.trailers().cloned();
    (parts, collected.to_bytes().to_vec(), trailers)
}
