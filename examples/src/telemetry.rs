//! Telemetry from the environment: OTLP over HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, stdout otherwise; flushed and shut
//! down on exit so nothing is lost.
//!
//! Copy this file into a service: it is the whole SDK setup.

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;

/// The providers a service hands to its layers.
pub struct Telemetry {
    /// Spans go here.
    pub tracer_provider: SdkTracerProvider,
    /// Metrics go here.
    pub meter_provider: SdkMeterProvider,
}

/// Whether OTLP export is configured (any of the standard endpoint variables).
pub fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|v| !v.is_empty()))
}

/// The resource: `OTEL_SERVICE_NAME` wins over `service_name`.
pub fn resource(service_name: &str) -> Resource {
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service_name.to_string());
    Resource::builder().with_service_name(name).build()
}

impl Telemetry {
    /// OTLP/HTTP (protobuf) to `OTEL_EXPORTER_OTLP_ENDPOINT` when set
    /// (the exporter reads the standard `OTEL_EXPORTER_OTLP_*` variables:
    /// endpoint, headers, timeout), else pretty-printed to stdout.
    pub fn from_env(service_name: &str) -> Self {
        let tracer = SdkTracerProvider::builder().with_resource(resource(service_name));
        let meter = SdkMeterProvider::builder().with_resource(resource(service_name));
        let (tracer, meter) = if otlp_configured() {
            let spans = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
                .expect("OTLP span exporter");
            let metrics = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .build()
                .expect("OTLP metric exporter");
            (
                tracer.with_batch_exporter(spans),
                meter.with_reader(PeriodicReader::builder(metrics).build()),
            )
        } else {
            (
                tracer.with_simple_exporter(opentelemetry_stdout::SpanExporter::default()),
                meter.with_reader(
                    PeriodicReader::builder(opentelemetry_stdout::MetricExporter::default())
                        .build(),
                ),
            )
        };
        Telemetry {
            tracer_provider: tracer.build(),
            meter_provider: meter.build(),
        }
    }

    /// Flushes everything still buffered and shuts the providers down.
    pub fn shutdown(self) {
        let _ = self.tracer_provider.force_flush();
        let _ = self.meter_provider.force_flush();
        let _ = self.tracer_provider.shutdown();
        let _ = self.meter_provider.shutdown();
    }
}
