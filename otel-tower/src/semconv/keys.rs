//! Attribute keys, metric names and fixed values: the one place names live.

use opentelemetry::Key;

// Stable (v1.45.0).
/// `rpc.system.name`
pub const RPC_SYSTEM_NAME: Key = Key::from_static_str("rpc.system.name");
/// `rpc.method` (stable: fully qualified; legacy: short method name)
pub const RPC_METHOD: Key = Key::from_static_str("rpc.method");
/// `rpc.method_original`
pub const RPC_METHOD_ORIGINAL: Key = Key::from_static_str("rpc.method_original");
/// `rpc.status_code` (not in the generated semconv crate, which stops at v1.42)
pub const RPC_STATUS_CODE: Key = Key::from_static_str("rpc.status_code");
/// `error.type`
pub const ERROR_TYPE: Key = Key::from_static_str("error.type");
/// `server.address`
pub const SERVER_ADDRESS: Key = Key::from_static_str("server.address");
/// `server.port`
pub const SERVER_PORT: Key = Key::from_static_str("server.port");
/// `network.peer.address`
pub const NETWORK_PEER_ADDRESS: Key = Key::from_static_str("network.peer.address");
/// `network.peer.port`
pub const NETWORK_PEER_PORT: Key = Key::from_static_str("network.peer.port");
/// `rpc.message.type`
pub const RPC_MESSAGE_TYPE: Key = Key::from_static_str("rpc.message.type");
/// `rpc.message.id`
pub const RPC_MESSAGE_ID: Key = Key::from_static_str("rpc.message.id");
/// `rpc.message.compressed_size`
pub const RPC_MESSAGE_COMPRESSED_SIZE: Key = Key::from_static_str("rpc.message.compressed_size");
/// `rpc.message.uncompressed_size`
pub const RPC_MESSAGE_UNCOMPRESSED_SIZE: Key =
    Key::from_static_str("rpc.message.uncompressed_size");

// Legacy (otelconnect-go v0.9.0, semconv v1.21 era).
/// `rpc.system`
pub const RPC_SYSTEM: Key = Key::from_static_str("rpc.system");
/// `rpc.service`
pub const RPC_SERVICE: Key = Key::from_static_str("rpc.service");
/// `net.peer.name`
pub const NET_PEER_NAME: Key = Key::from_static_str("net.peer.name");
/// `net.peer.port`
pub const NET_PEER_PORT: Key = Key::from_static_str("net.peer.port");
/// `rpc.grpc.status_code`
pub const RPC_GRPC_STATUS_CODE: Key = Key::from_static_str("rpc.grpc.status_code");
/// `rpc.grpc_web.status_code`: otelconnect-go's status key for gRPC-Web
/// calls (its key is `rpc.<rpc.system>.status_code`).
pub const RPC_GRPC_WEB_STATUS_CODE: Key = Key::from_static_str("rpc.grpc_web.status_code");
/// `rpc.connect_rpc.error_code`
pub const RPC_CONNECT_RPC_ERROR_CODE: Key = Key::from_static_str("rpc.connect_rpc.error_code");
/// `http.status_code`
pub const HTTP_STATUS_CODE: Key = Key::from_static_str("http.status_code");
/// `message.type`
pub const MESSAGE_TYPE: Key = Key::from_static_str("message.type");
/// `message.id`
pub const MESSAGE_ID: Key = Key::from_static_str("message.id");
/// `message.uncompressed_size`
pub const MESSAGE_UNCOMPRESSED_SIZE: Key = Key::from_static_str("message.uncompressed_size");

/// Legacy `rpc.system` of a gRPC-Web call (otelconnect-go's name for it).
pub const GRPC_WEB: &str = "grpc_web";

/// `_OTHER`: the method value for unknown methods, and `error.type` for
/// failures that carry no status code (transport errors, broken bodies).
pub const OTHER: &str = "_OTHER";

/// Schema URL of the stable conventions.
pub const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.45.0";

/// Stable metric names.
pub const RPC_SERVER_CALL_DURATION: &str = "rpc.server.call.duration";
/// Stable client duration metric.
pub const RPC_CLIENT_CALL_DURATION: &str = "rpc.client.call.duration";
/// Description of `rpc.server.call.duration`.
pub const SERVER_CALL_DURATION_DESCRIPTION: &str =
    "Measures the duration of an incoming Remote Procedure Call (RPC).";
/// Description of `rpc.client.call.duration`.
pub const CLIENT_CALL_DURATION_DESCRIPTION: &str =
    "Measures the duration of an outgoing Remote Procedure Call (RPC).";
/// Advisory bucket boundaries of the stable duration histograms, seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Description of the legacy duration histograms (otelconnect-go's text, for both sides).
pub const LEGACY_DURATION_DESCRIPTION: &str = "Measures the duration of inbound RPC.";
/// Description of the legacy request size histograms.
pub const LEGACY_REQUEST_SIZE_DESCRIPTION: &str =
    "Measures size of RPC request messages (uncompressed).";
/// Description of the legacy response size histograms.
pub const LEGACY_RESPONSE_SIZE_DESCRIPTION: &str =
    "Measures size of RPC response messages (uncompressed).";
/// Description of both legacy `_per_rpc` histograms (identical on purpose).
pub const LEGACY_PER_RPC_DESCRIPTION: &str =
    "Measures the number of messages received per RPC. Should be 1 for all non-streaming RPCs.";
