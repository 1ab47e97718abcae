//! The wire protocols as a tower layer sees them: detection, procedures,
//! status codes, envelopes, Connect errors, gRPC-Web trailers, timeouts.
//!
//! Everything here is pure parsing with bounded memory, usable on its own
//! (the fuzz targets drive it directly).

pub mod code;
pub mod connect_error;
pub mod envelope;
pub mod grpc_web;
pub mod protocol;
pub mod timeout;

pub use code::Code;
pub use protocol::{Procedure, Protocol, RpcSystem};

/// Percent-decodes a `grpc-message` leniently: malformed escapes are kept,
/// invalid UTF-8 becomes U+FFFD. Never fails.
pub fn decode_grpc_message(value: &[u8]) -> String {
    crate::propagation::percent_decode(&String::from_utf8_lossy(value))
}
