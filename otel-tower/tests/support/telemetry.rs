//! SDK providers with in-memory exporters (never the globals, so tests run
//! in parallel) and helpers to read spans and histogram points. One file
//! for otel-tower's own tests and the cross-crate integration tests, which
//! include it by path (a dev-dependency on a shared crate would link a
//! second copy of otel-tower).

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use otel_tower::Instrumentation;
use otel_tower::semconv::Semconv;

/// SDK providers with in-memory exporters; never the globals.
#[derive(Clone)]
pub struct Telemetry {
    pub spans: InMemorySpanExporter,
    pub tracer_provider: SdkTracerProvider,
    pub metrics: InMemoryMetricExporter,
    pub meter_provider: SdkMeterProvider,
    _watchdog: std::sync::Arc<Watchdog>,
}

/// How long a test may keep its `Telemetry` before it counts as hung.
const HANG_LIMIT: Duration = Duration::from_secs(90);

/// Turns a hung test into a failure: if the test's `Telemetry` (every
/// clone) is still alive after [`HANG_LIMIT`], the test process aborts with
/// the test's name, instead of stalling CI until its own time limit.
struct Watchdog(#[allow(dead_code)] std::sync::mpsc::Sender<()>);

impl Watchdog {
    fn start() -> Self {
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let test = std::thread::current()
            .name()
            .unwrap_or("<unnamed>")
            .to_string();
        std::thread::spawn(move || {
            // Dropping the sender (the test ended) disconnects the channel.
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(HANG_LIMIT) {
                eprintln!("test {test} still running after {HANG_LIMIT:?}: aborting");
                std::process::abort();
            }
        });
        Watchdog(done)
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    /// Fresh providers.
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
            _watchdog: std::sync::Arc::new(Watchdog::start()),
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

/// The span's attributes as strings. Panics if a key appears twice: the
/// SDK appends rather than replaces, and an exported span must not carry
/// two values for one key.
pub fn attrs(span: &SpanData) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for kv in &span.attributes {
        let earlier = out.insert(kv.key.to_string(), kv.value.to_string());
        assert!(
            earlier.is_none(),
            "span {:?} has {} twice: {:?}",
            span.name,
            kv.key,
            span.attributes
        );
    }
    out
}

/// One attribute's value.
pub fn attr(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

/// A string map from pairs.
pub fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Whether the span status is Error.
pub fn is_error(span: &SpanData) -> bool {
    matches!(span.status, Status::Error { .. })
}
