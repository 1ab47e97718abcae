//! OpenTelemetry for RPC over tower: spans, metrics and context propagation
//! for gRPC, gRPC-Web and Connect, on the server and the client side.
//!
//! The propagation part ([`propagation`]) can be used on its own: its
//! [`ExtractLayer`](propagation::ExtractLayer) and
//! [`InjectLayer`](propagation::InjectLayer) carry a trace across services
//! without creating spans.
//!
//! ```
//! use opentelemetry::propagation::TextMapPropagator;
//! use opentelemetry::trace::TraceContextExt;
//! use std::collections::HashMap;
//!
//! let propagator = otel_tower::propagation::TraceContext::new();
//! let mut incoming = HashMap::new();
//! incoming.insert(
//!     "traceparent".to_string(),
//!     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
//! );
//! let cx = propagator.extract(&incoming);
//!
//! let mut outgoing = HashMap::new();
//! propagator.inject_context(&cx, &mut outgoing);
//! assert_eq!(outgoing["traceparent"], incoming["traceparent"]);
//! ```
#![warn(missing_docs)]

pub mod propagation;
