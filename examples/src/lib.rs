//! Shared setup for the examples and the demo: OpenTelemetry providers
//! configured from the environment, the way a service would do it.

pub mod telemetry;
