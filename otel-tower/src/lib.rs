//! OpenTelemetry for RPC over tower: spans, metrics and context propagation
//! for gRPC, gRPC-Web and Connect, on the server and the client side.
//!
//! One [`Instrumentation`] makes a [`ServerLayer`] for incoming calls and a
//! [`ClientLayer`] for outgoing ones. Both read only HTTP (no codegen, no
//! framework), so they work under tonic, connectrpc, axum or plain hyper:
//!
//! - the protocol is detected from the request (gRPC, gRPC-Web and its text
//!   mode, Connect unary POST and GET, Connect streaming); anything else
//!   passes through untouched. A `POST` with `application/json` or
//!   `application/proto` is a Connect unary call by the protocol's own rule,
//!   so a JSON route served next to RPCs is measured as one unless
//!   [`Instrumentation::with_filter`] leaves it out;
//! - spans follow the OpenTelemetry RPC semantic conventions v1.45.0 by
//!   default ([`Semconv`] selects otelconnect-go's legacy names, or both);
//! - the outcome is read wherever the protocol puts it (trailers,
//!   trailers-only headers, the gRPC-Web trailer frame, Connect error bodies
//!   and end-stream messages), and the span lasts until the stream ends;
//! - context is extracted and injected with W3C Trace Context + Baggage by
//!   default, or any [`propagation`] you choose.
//!
//! ```
//! use opentelemetry_sdk::metrics::SdkMeterProvider;
//! use opentelemetry_sdk::trace::SdkTracerProvider;
//! use tower::ServiceBuilder;
//!
//! let otel = otel_tower::Instrumentation::new()
//!     .with_tracer_provider(SdkTracerProvider::builder().build())
//!     .with_meter_provider(SdkMeterProvider::builder().build());
//!
//! // Any tower service over http::Request / http::Response.
//! let handler = tower::service_fn(|_req: http::Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//! });
//! let server = ServiceBuilder::new().layer(otel.server_layer()).service(handler);
//! # let _ = server;
//! ```
//!
//! # Cargo features
//!
//! - `experimental_metrics_bound_instruments` (off by default): once a method
//!   has succeeded, its later successful calls record their Stable duration
//!   through a histogram bound to their attributes, skipping the SDK's
//!   per-call attribute lookup (about 100 ns per server call and 200 ns per
//!   client call on the development machine). The attributes recorded are
//!   the same. It turns on the feature of the same name in `opentelemetry`
//!   and in `opentelemetry_sdk`, so it makes the SDK a dependency (a meter
//!   provider that is not the SDK's would drop bound records). Bound series
//!   stay in memory while their layer lives, including under delta
//!   temporality (one per method and RPC system on the server, one per
//!   method on the client). A series bound when the SDK's cardinality limit
//!   was already reached stays the overflow series.
#![warn(missing_docs)]

mod body;
mod call;
mod client;
mod clock;
mod instrumentation;
mod intern;
pub mod propagation;
mod request;
pub mod semconv;
mod server;
pub mod wire;

pub use body::{ResponseBody, ResponseFuture};
pub use call::{MAX_CAPTURED_VALUE, MAX_STATUS_MESSAGE};
pub use client::{ClientLayer, ClientService};
pub use instrumentation::Instrumentation;
pub use request::RpcRequest;
pub use semconv::{Semconv, Side};
pub use server::{ServerLayer, ServerService};
pub use wire::{Code, Protocol, RpcSystem};

/// A [`ServerLayer`] with every default: `Instrumentation::new().server_layer()`.
pub fn server() -> ServerLayer {
    Instrumentation::new().server_layer()
}

/// A [`ClientLayer`] with every default: `Instrumentation::new().client_layer()`.
pub fn client() -> ClientLayer {
    Instrumentation::new().client_layer()
}
