//! The wire protocols as a tower layer sees them: detection, procedures,
//! status codes, envelopes, Connect errors, gRPC-Web trailers, timeouts.
//!
//! Everything here is pure parsing with bounded memory, usable on its own
//! (the fuzz targets drive it directly).

pub mod code;
pub mod connect_error;
pub mod envelope;
pub mod grpc_web;
pub(crate) mod headers;
pub mod protocol;
pub mod timeout;

pub use code::Code;

/// Header names the engine reads on every call, parsed once.
pub(crate) mod names {
    use http::HeaderName;
    pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
    pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
    pub const GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");
    pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
    pub const CONNECT_TIMEOUT_MS: HeaderName = HeaderName::from_static("connect-timeout-ms");
    pub const CONNECT_PROTOCOL_VERSION: HeaderName =
        HeaderName::from_static("connect-protocol-version");
    pub const CONNECT_CONTENT_ENCODING: HeaderName =
        HeaderName::from_static("connect-content-encoding");
    /// Connect unary sends its trailers as response headers with this prefix.
    pub const CONNECT_UNARY_TRAILER_PREFIX: &str = "trailer-";
}
pub use protocol::{Procedure, Protocol, RpcSystem};

/// Percent-decodes a `grpc-message` leniently: malformed escapes are kept,
/// invalid UTF-8 becomes U+FFFD. Never fails.
pub fn decode_grpc_message(value: &[u8]) -> String {
    crate::propagation::percent_decode(&String::from_utf8_lossy(value))
}
