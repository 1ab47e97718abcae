//! Shared harness for the cross-crate integration tests: explicit SDK
//! providers with in-memory exporters (never the globals, so tests run in
//! parallel) and helpers to read spans and histogram points.

#[path = "../../otel-tower/tests/support/telemetry.rs"]
mod telemetry;

pub use telemetry::*;
