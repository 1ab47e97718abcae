//! The demo: one trace across a Connect frontend and a tonic backend, shown
//! in the terminal.
//!
//! On 127.0.0.1 it starts a tonic gRPC "backend" (`demo.inventory.v1.Inventory`)
//! and a Connect "frontend" behind axum (`demo.shop.v1.Shop`) that calls the
//! backend for every request. A driver then calls the frontend over Connect
//! POST, Connect GET, gRPC-Web and gRPC: a few successes, a NOT_FOUND, a call
//! that hits a deadline, and a server stream. Every hop is instrumented with
//! otel-tower (through otel-connect and otel-tonic); the spans are drawn as a
//! waterfall per trace, followed by a metrics summary.
//!
//! ```text
//! cargo run -p otel-examples --bin demo
//! OTEL_PROPAGATORS=b3 cargo run -p otel-examples --bin demo        # B3 instead of W3C
//! OTEL_SEMCONV_STABILITY_OPT_IN=rpc/old cargo run -p otel-examples --bin demo   # otelconnect-go names
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 cargo run -p otel-examples --bin demo
//! ```
//!
//! Flags do the same as the variables: `--propagators b3`, `--semconv old|dup|stable`.

use std::collections::{BTreeMap, HashMap};
use std::error::Error;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use connectrpc::client::{CallOptions, ClientConfig, HttpClient};
use connectrpc::{
    ConnectError, ConnectRpcService, ErrorCode, RequestContext, ServiceRequest, ServiceResult,
    ServiceStream,
};
use futures::{Stream, StreamExt};
use opentelemetry::context::FutureExt;
use opentelemetry::trace::{
    SpanId, SpanKind, Status, TraceContextExt, TraceId, Tracer, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use otel_examples::telemetry::otlp_configured;
use otel_tower::Instrumentation;
use tokio::sync::oneshot;

mod inventory {
    tonic::include_proto!("demo.inventory.v1");
}
mod shop {
    connectrpc::include_generated!("_connectrpc_shop.rs");
}
use inventory::inventory_client::InventoryClient;
use inventory::inventory_server::{Inventory, InventoryServer};
use shop::demo::shop::v1::*;

/// How long the frontend gives the backend for one lookup.
const BACKEND_BUDGET: Duration = Duration::from_millis(100);
/// The item the backend is slow for (it takes longer than the budget).
const SLOW_ITEM: i64 = 7;
/// The item the backend does not have.
const MISSING_ITEM: i64 = 404;

// ---------------------------------------------------------------- telemetry

/// One service's providers: everything goes to shared in-memory exporters
/// (for the terminal view), and to OTLP as well when it is configured.
struct ServiceTelemetry {
    name: &'static str,
    spans: InMemorySpanExporter,
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    metrics: InMemoryMetricExporter,
}

impl ServiceTelemetry {
    fn new(name: &'static str) -> Self {
        let spans = InMemorySpanExporter::default();
        let metrics = InMemoryMetricExporter::default();
        // Each of the three services keeps its own name (`OTEL_SERVICE_NAME`
        // would make them one in a tracing backend).
        let resource = Resource::builder().with_service_name(name).build();
        let mut tracer = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_simple_exporter(spans.clone());
        let mut meter = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(
                PeriodicReader::builder(metrics.clone())
                    .with_interval(Duration::from_secs(3600))
                    .build(),
            );
        if otlp_configured() {
            let span_exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
                .expect("OTLP spans");
            let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .build()
                .expect("OTLP metrics");
            tracer = tracer.with_batch_exporter(span_exporter);
            meter = meter.with_reader(PeriodicReader::builder(metric_exporter).build());
        }
        ServiceTelemetry {
            name,
            spans,
            tracer_provider: tracer.build(),
            meter_provider: meter.build(),
            metrics,
        }
    }

    /// This service's instrumentation, from a preset.
    fn instrument(&self, preset: Instrumentation, propagation: &Propagation) -> Instrumentation {
        let otel = preset
            .with_tracer_provider(self.tracer_provider.clone())
            .with_meter_provider(self.meter_provider.clone());
        match propagation {
            Propagation::Default => otel,
            Propagation::FromEnv => otel.with_propagator(otel_tower::propagation::from_env()),
        }
    }

    fn shutdown(&self) {
        let _ = self.tracer_provider.force_flush();
        let _ = self.meter_provider.force_flush();
        let _ = self.tracer_provider.shutdown();
        let _ = self.meter_provider.shutdown();
    }
}

enum Propagation {
    /// W3C Trace Context + Baggage.
    Default,
    /// `OTEL_PROPAGATORS`.
    FromEnv,
}

// ---------------------------------------------------------------- backend (tonic)

/// Propagation headers the backend received (to show what crossed the wire).
type SeenHeaders = Arc<Mutex<Vec<(String, String)>>>;

struct Backend;

#[tonic::async_trait]
impl Inventory for Backend {
    async fn lookup(
        &self,
        request: tonic::Request<inventory::LookupRequest>,
    ) -> Result<tonic::Response<inventory::Item>, tonic::Status> {
        let id = request.into_inner().id;
        if id == MISSING_ITEM {
            return Err(tonic::Status::not_found(format!("no item {id}")));
        }
        if id == SLOW_ITEM {
            tokio::time::sleep(BACKEND_BUDGET * 3).await;
        }
        Ok(tonic::Response::new(item(id)))
    }

    type ScanStream = Pin<Box<dyn Stream<Item = Result<inventory::Item, tonic::Status>> + Send>>;

    async fn scan(
        &self,
        request: tonic::Request<inventory::ScanRequest>,
    ) -> Result<tonic::Response<Self::ScanStream>, tonic::Status> {
        let limit = request.into_inner().limit.clamp(0, 100);
        let items = futures::stream::iter(1..=limit).then(|id| async move {
            tokio::time::sleep(Duration::from_millis(3)).await;
            Ok(item(id))
        });
        Ok(tonic::Response::new(Box::pin(items)))
    }
}

fn item(id: i64) -> inventory::Item {
    let names = [
        "anchor", "bell", "compass", "drum", "easel", "flute", "globe", "harp",
    ];
    inventory::Item {
        id,
        name: names[(id as usize) % names.len()].to_string(),
        stock: id * 3 % 17,
    }
}

async fn start_backend(
    otel: &Instrumentation,
    seen: SeenHeaders,
    shutdown: oneshot::Receiver<()>,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend address");
    let record = move |request: tonic::Request<()>| {
        let mut seen = seen.lock().expect("seen headers");
        if seen.is_empty() {
            for (name, value) in request.metadata().as_ref() {
                let name = name.as_str();
                if ["traceparent", "tracestate", "baggage", "b3"].contains(&name)
                    || name.starts_with("x-b3-")
                {
                    seen.push((name.to_string(), value.to_str().unwrap_or("?").to_string()));
                }
            }
        }
        Ok(request)
    };
    let server = tonic::transport::Server::builder()
        .layer(otel.server_layer())
        .add_service(InventoryServer::with_interceptor(Backend, record));
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = server
            .serve_with_incoming_shutdown(incoming, async {
                let _ = shutdown.await;
            })
            .await;
    });
    addr
}

// ---------------------------------------------------------------- frontend (Connect)

type BackendClient = InventoryClient<otel_tower::ClientService<tonic::transport::Channel>>;

struct Frontend {
    backend: BackendClient,
}

fn connect_error(status: tonic::Status) -> ConnectError {
    let code = ErrorCode::from_grpc_code(status.code() as u32).unwrap_or(ErrorCode::Unknown);
    ConnectError::new(code, status.message().to_string())
}

/// tonic reports its own client-side timeout as CANCELLED ("Timeout
/// expired"); past our budget that is the deadline.
fn lookup_error(status: tonic::Status, started: std::time::Instant) -> ConnectError {
    if status.code() == tonic::Code::Cancelled && started.elapsed() >= BACKEND_BUDGET {
        return ConnectError::new(
            ErrorCode::DeadlineExceeded,
            "inventory lookup exceeded its deadline",
        );
    }
    connect_error(status)
}

#[allow(refining_impl_trait)]
impl Shop for Frontend {
    async fn get_item(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, GetItemRequest>,
    ) -> ServiceResult<GetItemResponse> {
        let id = request.id;
        // The backend call runs inside the frontend's server span, so the
        // client layer makes it a child and sends the trace on.
        let mut lookup = tonic::Request::new(inventory::LookupRequest { id });
        lookup.set_timeout(BACKEND_BUDGET);
        let started = std::time::Instant::now();
        let found = self
            .backend
            .clone()
            .lookup(lookup)
            .await
            .map_err(|status| lookup_error(status, started))?
            .into_inner();
        Ok(GetItemResponse {
            id: found.id,
            name: found.name,
            stock: found.stock,
            ..Default::default()
        }
        .into())
    }

    async fn list_items(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, ListItemsRequest>,
    ) -> ServiceResult<ServiceStream<ListItemsResponse>> {
        let scan = inventory::ScanRequest {
            limit: request.limit,
        };
        let items = self
            .backend
            .clone()
            .scan(scan)
            .await
            .map_err(connect_error)?
            .into_inner();
        let relayed = items.map(|item| {
            let item = item.map_err(connect_error)?;
            Ok(ListItemsResponse {
                id: item.id,
                name: item.name,
                ..Default::default()
            })
        });
        Ok(connectrpc::Response::new(
            Box::pin(relayed) as ServiceStream<_>
        ))
    }
}

async fn start_frontend(
    otel: &Instrumentation,
    backend: BackendClient,
    shutdown: oneshot::Receiver<()>,
) -> SocketAddr {
    let router = Arc::new(Frontend { backend }).register(connectrpc::Router::new());
    let app = axum::Router::new()
        .fallback_service(ConnectRpcService::new(router))
        .layer(otel.server_layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind frontend");
    let addr = listener.local_addr().expect("frontend address");
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = shutdown.await;
        })
        .await;
    });
    addr
}

// ---------------------------------------------------------------- driver

/// What one driver call did, for the summary line.
struct Outcome {
    label: String,
    result: String,
}

async fn drive(
    otel: &Instrumentation,
    tracer: &opentelemetry_sdk::trace::SdkTracer,
    frontend: SocketAddr,
) -> Vec<Outcome> {
    let base: http::Uri = format!("http://{frontend}").parse().expect("frontend uri");
    let client = |protocol: connectrpc::Protocol| {
        let http = if protocol == connectrpc::Protocol::Grpc {
            HttpClient::plaintext_http2_only()
        } else {
            HttpClient::plaintext()
        };
        let config = ClientConfig::new(base.clone()).with_protocol(protocol);
        (otel_connect::OtelTransport::new(http, otel), config)
    };
    let mut outcomes = Vec::new();
    // (label, protocol, GET?, item id)
    let unary: [(&str, connectrpc::Protocol, bool, i64); 6] = [
        (
            "Connect POST GetItem(1)",
            connectrpc::Protocol::Connect,
            false,
            1,
        ),
        (
            "Connect GET GetItem(2)",
            connectrpc::Protocol::Connect,
            true,
            2,
        ),
        (
            "gRPC-Web GetItem(3)",
            connectrpc::Protocol::GrpcWeb,
            false,
            3,
        ),
        ("gRPC GetItem(4)", connectrpc::Protocol::Grpc, false, 4),
        (
            "Connect POST GetItem(404) - not found",
            connectrpc::Protocol::Connect,
            false,
            MISSING_ITEM,
        ),
        (
            "Connect POST GetItem(7) - backend too slow",
            connectrpc::Protocol::Connect,
            false,
            SLOW_ITEM,
        ),
    ];
    for (label, protocol, get, id) in unary {
        let (transport, config) = client(protocol);
        // A root span per scenario, so each trace is named after it.
        let cx = Context::current_with_span(tracer.start(label.to_string()));
        let request = GetItemRequest {
            id,
            ..Default::default()
        };
        let options = CallOptions::default().with_timeout(Duration::from_secs(2));
        let result = async {
            if get {
                connectrpc::client::call_unary_get::<_, _, GetItemResponseView<'static>>(
                    &transport,
                    &config,
                    SHOP_GET_ITEM_SPEC.with_origin(connectrpc::SpecOrigin::Client),
                    request,
                    options,
                )
                .await
                .map(|r| r.into_owned().name)
            } else {
                ShopClient::new(transport.clone(), config.clone())
                    .get_item_with_options(request, options)
                    .await
                    .map(|r| r.into_owned().name)
            }
        }
        .with_context(cx.clone())
        .await;
        cx.span().end();
        outcomes.push(Outcome {
            label: label.to_string(),
            result: match result {
                Ok(name) => format!("ok ({name})"),
                Err(e) => format!("error {:?}: {}", e.code, e.message.unwrap_or_default()),
            },
        });
    }

    // A server stream over Connect: one span for the whole stream on every hop.
    let label = "Connect stream ListItems(5)";
    let (transport, config) = client(connectrpc::Protocol::Connect);
    let cx = Context::current_with_span(tracer.start(label));
    let result = async {
        let mut stream = ShopClient::new(transport, config)
            .list_items(ListItemsRequest {
                limit: 5,
                ..Default::default()
            })
            .await?;
        let mut names = Vec::new();
        while let Some(message) = stream.message().await? {
            names.push(message.to_owned_message().name);
        }
        Ok::<_, ConnectError>(names)
    }
    .with_context(cx.clone())
    .await;
    cx.span().end();
    outcomes.push(Outcome {
        label: label.to_string(),
        result: match result {
            Ok(names) => format!("ok ({} messages)", names.len()),
            Err(e) => format!("error {:?}", e.code),
        },
    });
    outcomes
}

// ---------------------------------------------------------------- rendering

const BAR: usize = 32;

fn service_of(span: &SpanData, services: &HashMap<SpanId, &'static str>) -> &'static str {
    services
        .get(&span.span_context.span_id())
        .copied()
        .unwrap_or("?")
}

fn kind(span: &SpanData) -> &'static str {
    match span.span_kind {
        SpanKind::Server => "SERVER",
        SpanKind::Client => "CLIENT",
        SpanKind::Internal => "INTERNAL",
        SpanKind::Producer => "PRODUCER",
        SpanKind::Consumer => "CONSUMER",
    }
}

fn status(span: &SpanData) -> String {
    match &span.status {
        Status::Unset => "Unset".into(),
        Status::Ok => "Ok".into(),
        Status::Error { description } if description.is_empty() => "Error".into(),
        Status::Error { description } => format!("Error({description})"),
    }
}

/// The attributes a reader needs to follow the call, in either convention.
const KEY_ATTRIBUTES: [&str; 9] = [
    "rpc.system.name",
    "rpc.method",
    "rpc.status_code",
    "error.type",
    "rpc.system",
    "rpc.service",
    "rpc.grpc.status_code",
    "rpc.connect_rpc.error_code",
    "http.status_code",
];

fn key_attributes(span: &SpanData) -> String {
    let mut out = Vec::new();
    for key in KEY_ATTRIBUTES {
        if let Some(kv) = span.attributes.iter().find(|kv| kv.key.as_str() == key) {
            out.push(format!("{key}={}", kv.value));
        }
    }
    out.join(" ")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn render(spans: &[SpanData], services: &HashMap<SpanId, &'static str>) -> usize {
    let mut traces: BTreeMap<SystemTime, TraceId> = BTreeMap::new();
    let mut by_trace: HashMap<TraceId, Vec<&SpanData>> = HashMap::new();
    for s in spans {
        by_trace
            .entry(s.span_context.trace_id())
            .or_default()
            .push(s);
    }
    for (id, group) in &by_trace {
        let first = group
            .iter()
            .map(|s| s.start_time)
            .min()
            .expect("non-empty trace");
        traces.insert(first, *id);
    }
    for trace_id in traces.values() {
        let group = &by_trace[trace_id];
        let start = group.iter().map(|s| s.start_time).min().expect("start");
        let end = group.iter().map(|s| s.end_time).max().expect("end");
        let total = end
            .duration_since(start)
            .unwrap_or_default()
            .max(Duration::from_micros(1));
        let ids: std::collections::HashSet<SpanId> =
            group.iter().map(|s| s.span_context.span_id()).collect();
        let root = group
            .iter()
            .filter(|s| !ids.contains(&s.parent_span_id))
            .min_by_key(|s| s.start_time)
            .expect("a root");
        println!("\nTrace {trace_id}  {}  ({:.1} ms)", root.name, ms(total));
        let mut children: HashMap<SpanId, Vec<&SpanData>> = HashMap::new();
        for s in group {
            children.entry(s.parent_span_id).or_default().push(s);
        }
        for list in children.values_mut() {
            list.sort_by_key(|s| s.start_time);
        }
        let mut stack: Vec<(&SpanData, usize)> = group
            .iter()
            .filter(|s| !ids.contains(&s.parent_span_id))
            .map(|s| (*s, 0))
            .collect();
        stack.sort_by_key(|(s, _)| std::cmp::Reverse(s.start_time));
        while let Some((span, depth)) = stack.pop() {
            let offset = span.start_time.duration_since(start).unwrap_or_default();
            let duration = span
                .end_time
                .duration_since(span.start_time)
                .unwrap_or_default();
            let from = ((offset.as_secs_f64() / total.as_secs_f64()) * BAR as f64).floor() as usize;
            let width = (((duration.as_secs_f64() / total.as_secs_f64()) * BAR as f64).round()
                as usize)
                .max(1);
            let from = from.min(BAR - 1);
            let width = width.min(BAR - from);
            let bar: String = (0..BAR)
                .map(|i| {
                    if i >= from && i < from + width {
                        '█'
                    } else {
                        '·'
                    }
                })
                .collect();
            let name = format!("{}{}", "  ".repeat(depth), span.name);
            println!(
                "  {:<9} {:<8} {:<46} {} {:>7.1} ms  {}",
                service_of(span, services),
                kind(span),
                name,
                bar,
                ms(duration),
                status(span)
            );
            let attributes = key_attributes(span);
            if !attributes.is_empty() {
                println!(
                    "  {:<9} {:<8} {}  {}",
                    "",
                    "",
                    " ".repeat(depth * 2),
                    attributes
                );
            }
            if let Some(kids) = children.get(&span.span_context.span_id()) {
                for kid in kids.iter().rev() {
                    stack.push((kid, depth + 1));
                }
            }
        }
    }
    by_trace.len()
}

/// A percentile estimated from histogram buckets (linear inside a bucket).
fn percentile(bounds: &[f64], counts: &[u64], min: f64, max: f64, q: f64) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let target = q * total as f64;
    let mut seen = 0.0;
    for (i, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let next = seen + c as f64;
        if next >= target {
            let lower = if i == 0 { min } else { bounds[i - 1].max(min) };
            let upper = if i < bounds.len() {
                bounds[i].min(max)
            } else {
                max
            };
            let fraction = (target - seen) / c as f64;
            return lower + (upper - lower) * fraction;
        }
        seen = next;
    }
    max
}

fn attr(attributes: &[&KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn summarize(services: &[ServiceTelemetry]) {
    println!("\nMetrics (duration histograms; p50/p99 estimated from buckets)\n");
    println!(
        "  {:<9} {:<26} {:<36} {:<20} {:>5} {:>9} {:>9}",
        "service", "metric", "method", "status", "count", "p50", "p99"
    );
    for service in services {
        let _ = service.meter_provider.force_flush();
        let exported = service.metrics.get_finished_metrics().unwrap_or_default();
        let Some(last) = exported.last() else {
            continue;
        };
        for scope in last.scope_metrics() {
            for metric in scope.metrics() {
                let name = metric.name();
                let (is_seconds, points): (bool, Vec<_>) = match metric.data() {
                    AggregatedMetrics::F64(MetricData::Histogram(h))
                        if name.ends_with("call.duration") =>
                    {
                        (
                            true,
                            h.data_points()
                                .map(|p| {
                                    (
                                        p.attributes().collect::<Vec<_>>(),
                                        p.bounds().collect::<Vec<_>>(),
                                        p.bucket_counts().collect::<Vec<_>>(),
                                        p.min().unwrap_or(0.0),
                                        p.max().unwrap_or(0.0),
                                        p.count(),
                                    )
                                })
                                .collect(),
                        )
                    }
                    AggregatedMetrics::U64(MetricData::Histogram(h))
                        if name.ends_with(".duration") =>
                    {
                        (
                            false,
                            h.data_points()
                                .map(|p| {
                                    (
                                        p.attributes().collect::<Vec<_>>(),
                                        p.bounds().collect::<Vec<_>>(),
                                        p.bucket_counts().collect::<Vec<_>>(),
                                        p.min().unwrap_or(0) as f64,
                                        p.max().unwrap_or(0) as f64,
                                        p.count(),
                                    )
                                })
                                .collect(),
                        )
                    }
                    _ => continue,
                };
                // Series that differ only in other attributes (Legacy's
                // peer ports) are merged per method and status.
                type Merged = (Vec<f64>, Vec<u64>, f64, f64, u64);
                let mut merged: BTreeMap<(String, String), Merged> = BTreeMap::new();
                for (attributes, bounds, counts, min, max, count) in points {
                    let method = match (
                        attr(&attributes, "rpc.service"),
                        attr(&attributes, "rpc.method"),
                    ) {
                        (Some(service), Some(method)) if !is_seconds => {
                            format!("{service}/{method}")
                        }
                        (_, Some(method)) => method,
                        _ => "?".into(),
                    };
                    let status = attr(&attributes, "rpc.status_code")
                        .or_else(|| attr(&attributes, "rpc.connect_rpc.error_code"))
                        .or_else(|| {
                            attr(&attributes, "rpc.grpc.status_code").map(|c| format!("grpc {c}"))
                        })
                        .or_else(|| attr(&attributes, "error.type"))
                        .unwrap_or_else(|| "(success)".into());
                    let entry = merged.entry((method, status)).or_insert_with(|| {
                        (
                            bounds,
                            vec![0; counts.len()],
                            f64::INFINITY,
                            f64::NEG_INFINITY,
                            0,
                        )
                    });
                    for (total, c) in entry.1.iter_mut().zip(&counts) {
                        *total += c;
                    }
                    entry.2 = entry.2.min(min);
                    entry.3 = entry.3.max(max);
                    entry.4 += count;
                }
                let scale = if is_seconds { 1000.0 } else { 1.0 };
                let rows: Vec<_> = merged
                    .into_iter()
                    .map(|((method, status), (bounds, counts, min, max, count))| {
                        let p50 = percentile(&bounds, &counts, min, max, 0.5) * scale;
                        let p99 = percentile(&bounds, &counts, min, max, 0.99) * scale;
                        (method, status, count, p50, p99)
                    })
                    .collect();
                for (method, status, count, p50, p99) in rows {
                    println!(
                        "  {:<9} {:<26} {:<36} {:<20} {:>5} {:>6.1} ms {:>6.1} ms",
                        service.name, name, method, status, count, p50, p99
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------- main

fn apply_flags() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned();
        match args[i].as_str() {
            "--propagators" => {
                let v = value.ok_or("--propagators needs a value, e.g. b3")?;
                // SAFETY: set before the runtime and any other thread start.
                unsafe { std::env::set_var("OTEL_PROPAGATORS", v) };
                i += 2;
            }
            "--semconv" => {
                let v = match value.as_deref() {
                    Some("old") | Some("legacy") => "rpc/old",
                    Some("dup") | Some("both") => "rpc/dup",
                    Some("stable") => "rpc",
                    _ => return Err("--semconv takes stable, old or dup".into()),
                };
                // SAFETY: as above.
                unsafe { std::env::set_var("OTEL_SEMCONV_STABILITY_OPT_IN", v) };
                i += 2;
            }
            "-h" | "--help" => {
                println!(
                    "usage: demo [--propagators tracecontext,baggage|b3|b3multi] [--semconv stable|old|dup]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    apply_flags()?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> Result<(), Box<dyn Error>> {
    let propagation = if std::env::var("OTEL_PROPAGATORS").is_ok_and(|v| !v.is_empty()) {
        Propagation::FromEnv
    } else {
        Propagation::Default
    };
    let services = [
        ServiceTelemetry::new("driver"),
        ServiceTelemetry::new("frontend"),
        ServiceTelemetry::new("backend"),
    ];
    let finished_spans = || -> Vec<(&'static str, SpanData)> {
        services
            .iter()
            .flat_map(|s| {
                s.spans
                    .get_finished_spans()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|span| (s.name, span))
            })
            .collect()
    };
    let [driver, frontend, backend] = &services;
    let driver_otel = driver.instrument(otel_connect::new_interceptor(), &propagation);
    let frontend_otel = frontend.instrument(otel_connect::new_interceptor(), &propagation);
    let frontend_client_otel = frontend.instrument(otel_tonic::instrumentation(), &propagation);
    let backend_otel = backend.instrument(otel_tonic::instrumentation(), &propagation);

    let semconv = std::env::var("OTEL_SEMCONV_STABILITY_OPT_IN").unwrap_or_default();
    println!("otel-tower demo");
    println!(
        "  propagation: {}",
        match propagation {
            Propagation::Default => "W3C Trace Context + Baggage (default)".to_string(),
            Propagation::FromEnv => format!(
                "OTEL_PROPAGATORS={}",
                std::env::var("OTEL_PROPAGATORS").unwrap_or_default()
            ),
        }
    );
    println!(
        "  semantic conventions: {}",
        match otel_tower::semconv::Semconv::from_opt_in(Some(&semconv)) {
            otel_tower::semconv::Semconv::Stable => "stable v1.45.0",
            otel_tower::semconv::Semconv::Legacy =>
                "legacy (otelconnect-go names, OTEL_SEMCONV_STABILITY_OPT_IN=rpc/old)",
            otel_tower::semconv::Semconv::Both => "both (OTEL_SEMCONV_STABILITY_OPT_IN=rpc/dup)",
        }
    );
    println!(
        "  export: {}",
        if otlp_configured() {
            "terminal + OTLP/HTTP (OTEL_EXPORTER_OTLP_ENDPOINT)"
        } else {
            "terminal"
        }
    );

    // Backend (tonic), then the frontend (Connect behind axum) that calls it.
    let seen: SeenHeaders = Arc::default();
    let (stop_backend, backend_stop) = oneshot::channel();
    let backend_addr = start_backend(&backend_otel, seen.clone(), backend_stop).await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{backend_addr}"))?.connect_lazy();
    let backend_client = InventoryClient::new(
        tower::ServiceBuilder::new()
            .layer(frontend_client_otel.client_layer())
            .service(channel),
    );
    let (stop_frontend, frontend_stop) = oneshot::channel();
    let frontend_addr = start_frontend(&frontend_otel, backend_client, frontend_stop).await;
    println!(
        "  backend (tonic gRPC) on {backend_addr}, frontend (Connect behind axum) on {frontend_addr}"
    );

    // The driver's calls.
    let tracer = driver.tracer_provider.tracer("demo-driver");
    let outcomes = drive(&driver_otel, &tracer, frontend_addr).await;
    println!("\nCalls");
    for o in &outcomes {
        println!("  {:<46} {}", o.label, o.result);
    }
    let headers = seen.lock().map(|h| h.clone()).unwrap_or_default();
    println!("\nPropagation headers the backend received on its first call:");
    for (name, value) in &headers {
        println!("  {name}: {value}");
    }

    // Every span has ended once the streams are closed; give the servers a
    // bounded moment to finish theirs, then stop everything.
    for _ in 0..100 {
        let done = finished_spans().len();
        if done >= outcomes.len() * 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_frontend.send(());
    let _ = stop_backend.send(());

    let tagged = finished_spans();
    let owners: HashMap<SpanId, &'static str> = tagged
        .iter()
        .map(|(n, s)| (s.span_context.span_id(), *n))
        .collect();
    let finished: Vec<SpanData> = tagged.into_iter().map(|(_, s)| s).collect();
    println!("\nTraces (one per call; bars share each trace's time axis)");
    let traces = render(&finished, &owners);
    summarize(&services);
    println!("\n{traces} traces, {} spans.", finished.len());
    for s in &services {
        s.shutdown();
    }
    Ok(())
}
