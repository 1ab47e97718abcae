//! Semantic conventions: which attributes, statuses and metrics each mode
//! emits (Stable v1.45.0, Legacy otelconnect-go v0.9.0, or Both).

pub mod keys;
pub(crate) mod series;

use std::cell::RefCell;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use opentelemetry::metrics::{Histogram, Meter};
use opentelemetry::trace::Status;
use opentelemetry::{KeyValue, StringValue, Value};

use crate::wire::{Code, RpcSystem};
use keys::*;

/// Attributes built per call, on the stack for the usual sizes.
pub(crate) type Attrs = smallvec::SmallVec<[KeyValue; 8]>;

/// Where attributes are collected: one at a time, each made straight into
/// room reserved for it. `push` would keep a value alive across a possible
/// reallocation, so the value would be made on the stack first and copied
/// with wide loads that stall on the narrow stores that just wrote it
/// (measured: most of the time spent building a span's attributes).
pub(crate) trait AttrSink {
    /// Pushes the attribute `kv` makes.
    fn push_with(&mut self, kv: impl FnOnce() -> KeyValue);
}

impl AttrSink for Attrs {
    #[inline]
    fn push_with(&mut self, kv: impl FnOnce() -> KeyValue) {
        self.reserve(1);
        let len = self.len();
        // SAFETY: `reserve(1)` left room for one more item past `len`, which
        // is written before the length covers it.
        unsafe {
            self.as_mut_ptr().add(len).write(kv());
            self.set_len(len + 1);
        }
    }
}

impl AttrSink for Vec<KeyValue> {
    #[inline]
    fn push_with(&mut self, kv: impl FnOnce() -> KeyValue) {
        self.reserve(1);
        let len = self.len();
        self.spare_capacity_mut()[0].write(kv());
        // SAFETY: the slot just past the length was written above.
        unsafe { self.set_len(len + 1) };
    }
}

/// Which set of semantic conventions to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Semconv {
    /// OpenTelemetry semantic conventions v1.45.0 (the default).
    #[default]
    Stable,
    /// What connectrpc/otelconnect-go v0.9.0 emits (semconv v1.21-era names).
    Legacy,
    /// Both attribute sets on each span, both metric families.
    Both,
}

impl Semconv {
    /// The mode selected by a value of `OTEL_SEMCONV_STABILITY_OPT_IN`
    /// (`None`: unset): `rpc/dup` wins and selects [`Semconv::Both`],
    /// `rpc/old` selects [`Semconv::Legacy`], anything else [`Semconv::Stable`].
    pub fn from_opt_in(value: Option<&str>) -> Semconv {
        let mut mode = Semconv::Stable;
        for token in value.unwrap_or_default().split(',').map(str::trim) {
            match token {
                "rpc/dup" => return Semconv::Both,
                "rpc/old" => mode = Semconv::Legacy,
                _ => {}
            }
        }
        mode
    }

    /// Whether stable names are emitted.
    pub fn stable(self) -> bool {
        matches!(self, Semconv::Stable | Semconv::Both)
    }

    /// Whether legacy names are emitted.
    pub fn legacy(self) -> bool {
        matches!(self, Semconv::Legacy | Semconv::Both)
    }
}

/// Which side of the call a layer instruments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Server layer: incoming calls.
    Server,
    /// Client layer: outgoing calls.
    Client,
}

/// The names a call's method is reported under.
#[derive(Debug, Clone)]
pub(crate) struct MethodNames {
    /// `package.Service/Method`, or the raw path when it does not parse.
    pub full: StringValue,
    /// `package.Service` (empty when the path does not parse).
    pub service: StringValue,
    /// `Method` (empty when the path does not parse).
    pub short: StringValue,
    /// The span name for a known method (`full`, shared when cached).
    pub span_name: std::borrow::Cow<'static, str>,
    /// Whether the method is reported as `_OTHER`.
    pub other: bool,
}

/// A call's method names: interned (shared by every call of the method) or
/// parsed for this call alone.
#[derive(Debug)]
pub(crate) enum MethodRef {
    /// From the method cache.
    Interned(&'static MethodNames),
    /// Parsed for this call (not cached yet, or never).
    Parsed(Box<MethodNames>),
}

impl std::ops::Deref for MethodRef {
    type Target = MethodNames;
    fn deref(&self) -> &MethodNames {
        match self {
            MethodRef::Interned(names) => names,
            MethodRef::Parsed(names) => names,
        }
    }
}

/// The facts attributes are built from.
pub(crate) struct Facts<'a> {
    pub mode: Semconv,
    pub side: Side,
    pub system: RpcSystem,
    /// A gRPC-Web call under the wire's own system (no `with_rpc_system`):
    /// Legacy names it as otelconnect-go does, `grpc_web`, with
    /// `rpc.grpc_web.*` keys.
    pub grpc_web: bool,
    pub method: &'a MethodNames,
    /// Whether `rpc.method` is decided when the call starts (see
    /// `call::method_final`). Otherwise an UNIMPLEMENTED outcome can still
    /// make it `_OTHER`, so Stable sets it when the call ends: the SDK
    /// appends attributes and never replaces one, and a span must not carry
    /// the key twice.
    pub method_final: bool,
    pub server_address: Option<&'a StringValue>,
    pub server_port: Option<i64>,
    /// Server: the client's socket address, when peer attributes are on.
    pub peer: Option<SocketAddr>,
}

/// Which conventions report a call's method as `_OTHER` because of how it
/// ended: the server did not recognise it (UNIMPLEMENTED, and the method's
/// name was not final when the call began).
///
/// Stable renames on both sides (semconv.md). Legacy renames on the server
/// only: otelconnect-go never sees an unregistered path on its server, so
/// `_OTHER` is the bounded stand-in there, while its client keeps the
/// method's names (the parity reference data), and a client's methods come
/// from its own stubs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Rename {
    pub stable: bool,
    pub legacy: bool,
}

impl Rename {
    pub fn new(mode: Semconv, side: Side, unknown: bool) -> Self {
        Rename {
            stable: unknown && mode.stable(),
            legacy: unknown && mode.legacy() && side == Side::Server,
        }
    }

    /// Whether the span takes the system's name (the span name follows
    /// Stable when Stable is on).
    pub fn span_name(self, mode: Semconv) -> bool {
        if mode.stable() {
            self.stable
        } else {
            self.legacy
        }
    }
}

/// How the call ended, as far as attributes are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ending {
    /// The status code, `None` for a failure without one (transport error).
    pub code: Option<Code>,
    /// The status message.
    pub message: Option<String>,
    /// A Connect GET answered `304 Not Modified`.
    pub not_modified: bool,
}

impl Ending {
    /// An ending with `code` and no message.
    pub fn code(code: Code) -> Self {
        Ending::with_message(Some(code), None)
    }

    /// An ending with `code` (`None`: a failure without one) and `message`.
    pub fn with_message(code: Option<Code>, message: Option<String>) -> Self {
        Ending {
            code,
            message,
            not_modified: false,
        }
    }

    /// Whether this ending is an error for `side` (span status Error).
    pub fn is_error(&self, side: Side) -> bool {
        match (self.code, side) {
            (None, _) => true,
            (Some(Code::Ok), _) => false,
            (Some(_), Side::Client) => true,
            (Some(code), Side::Server) => code.is_server_error(),
        }
    }
}

/// How many client addresses each thread keeps formatted (see `peer_ip`).
const RECENT_PEERS: usize = 4;

/// The client's IP as an attribute value. Formatting an address costs more
/// than the rest of a server span's attributes together (about 180 ns per
/// call in a real tonic server), while a server's callers are usually few
/// (proxies, sidecars, the services next to it): each thread keeps the
/// values of the last few addresses it formatted and hands out shared
/// references to them. A stream of new addresses only replaces them.
fn peer_ip(peer: &SocketAddr) -> Value {
    type Recent = (usize, [Option<(IpAddr, StringValue)>; RECENT_PEERS]);
    thread_local! {
        static RECENT: RefCell<Recent> = const { RefCell::new((0, [const { None }; RECENT_PEERS])) };
    }
    let ip = peer.ip();
    let cached = RECENT.try_with(|recent| {
        // Formatting calls nothing of ours, so this is never re-entered;
        // were it, the call would format anew rather than panic.
        let Ok(mut recent) = recent.try_borrow_mut() else {
            return format_ip(ip);
        };
        let (next, recent) = &mut *recent;
        if let Some((_, value)) = recent.iter().flatten().find(|(seen, _)| *seen == ip) {
            return value.clone();
        }
        let value = format_ip(ip);
        recent[*next] = Some((ip, value.clone()));
        *next = (*next + 1) % RECENT_PEERS;
        value
    });
    // A thread being torn down has no cache left: it formats anew.
    Value::String(cached.unwrap_or_else(|_| format_ip(ip)))
}

/// `ip` as text, formatted on the stack: the shared string is the one
/// allocation.
fn format_ip(ip: IpAddr) -> StringValue {
    let mut text = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut text[..]);
    let shared: Arc<str> = match write!(cursor, "{ip}") {
        Ok(()) => {
            let len = cursor.position() as usize;
            String::from_utf8_lossy(&text[..len]).as_ref().into()
        }
        Err(_) => ip.to_string().into(),
    };
    shared.into()
}

impl Facts<'_> {
    fn stable_method_value(&self) -> StringValue {
        if self.method.other {
            StringValue::from(OTHER)
        } else {
            self.method.full.clone()
        }
    }

    /// Span name: `rpc.method`, or the system's name for `_OTHER`.
    pub fn span_name(&self) -> std::borrow::Cow<'static, str> {
        if self.method.other {
            std::borrow::Cow::Borrowed(self.system_span_name())
        } else {
            self.method.span_name.clone()
        }
    }

    /// The name of a span whose method is `_OTHER`: the value of the
    /// system attribute it carries (`rpc.system.name`, or in Legacy alone
    /// `rpc.system`).
    pub fn system_span_name(&self) -> &'static str {
        if self.mode.stable() {
            self.system.name()
        } else {
            self.legacy_system()
        }
    }

    /// Legacy `rpc.system`.
    fn legacy_system(&self) -> &'static str {
        if self.grpc_web {
            GRPC_WEB
        } else {
            self.system.legacy_name()
        }
    }

    fn legacy_service(&self) -> StringValue {
        if self.method.other {
            StringValue::from(OTHER)
        } else {
            self.method.service.clone()
        }
    }

    fn legacy_method(&self) -> StringValue {
        if self.method.other {
            StringValue::from(OTHER)
        } else {
            self.method.short.clone()
        }
    }

    /// Legacy `net.peer.*`: the server's address on the client, the client's
    /// socket on the server.
    fn legacy_peer(&self, out: &mut impl AttrSink) {
        match self.side {
            Side::Client => {
                if let Some(addr) = self.server_address {
                    out.push_with(|| KeyValue::new(NET_PEER_NAME, addr.clone()));
                    if let Some(port) = self.server_port {
                        out.push_with(|| KeyValue::new(NET_PEER_PORT, port));
                    }
                }
            }
            Side::Server => {
                if let Some(peer) = &self.peer {
                    out.push_with(|| KeyValue::new(NET_PEER_NAME, peer_ip(peer)));
                    out.push_with(|| KeyValue::new(NET_PEER_PORT, i64::from(peer.port())));
                }
            }
        }
    }

    /// Attributes given to the span at creation (samplers see them).
    pub fn start_attributes(&self, out: &mut impl AttrSink) {
        if self.mode.stable() {
            out.push_with(|| KeyValue::new(RPC_SYSTEM_NAME, self.system.name()));
            if self.method_final {
                self.stable_method(out);
            }
            if let Some(addr) = self.server_address {
                out.push_with(|| KeyValue::new(SERVER_ADDRESS, addr.clone()));
                if let Some(port) = self.server_port {
                    out.push_with(|| KeyValue::new(SERVER_PORT, port));
                }
            }
            if let (Side::Server, Some(peer)) = (self.side, &self.peer) {
                out.push_with(|| KeyValue::new(NETWORK_PEER_ADDRESS, peer_ip(peer)));
                out.push_with(|| KeyValue::new(NETWORK_PEER_PORT, i64::from(peer.port())));
            }
        }
        if self.mode.legacy() {
            out.push_with(|| KeyValue::new(RPC_SYSTEM, self.legacy_system()));
            if self.legacy_method_at_start() {
                self.legacy_method_names(false, out);
            }
            self.legacy_peer(out);
        }
    }

    /// Whether Legacy's `rpc.service`/`rpc.method` go on the span when it
    /// starts: they cannot change later (see [`Rename`]).
    fn legacy_method_at_start(&self) -> bool {
        self.method_final || self.side == Side::Client
    }

    /// Legacy `rpc.service` and (unless Stable owns the key) the short
    /// `rpc.method`; `_OTHER` for both when `renamed`.
    fn legacy_method_names(&self, renamed: bool, out: &mut impl AttrSink) {
        let (service, method) = if renamed {
            (StringValue::from(OTHER), StringValue::from(OTHER))
        } else {
            (self.legacy_service(), self.legacy_method())
        };
        out.push_with(|| KeyValue::new(RPC_SERVICE, service));
        if !self.mode.stable() {
            out.push_with(|| KeyValue::new(RPC_METHOD, method));
        }
    }

    /// Stable `rpc.method`, and `rpc.method_original` when it is `_OTHER`.
    fn stable_method(&self, out: &mut impl AttrSink) {
        out.push_with(|| KeyValue::new(RPC_METHOD, self.stable_method_value()));
        if self.method.other {
            out.push_with(|| KeyValue::new(RPC_METHOD_ORIGINAL, self.method.full.clone()));
        }
    }

    /// Attributes added when the call ends; `rename`: which conventions the
    /// outcome made report the method as `_OTHER`.
    pub fn end_attributes(&self, ending: &Ending, rename: Rename, out: &mut impl AttrSink) {
        if self.mode.stable() {
            if rename.stable {
                out.push_with(|| KeyValue::new(RPC_METHOD, OTHER));
                out.push_with(|| KeyValue::new(RPC_METHOD_ORIGINAL, self.method.full.clone()));
            } else if !self.method_final {
                self.stable_method(out);
            }
            self.stable_status(ending, out);
        }
        if self.mode.legacy() {
            if !self.legacy_method_at_start() {
                self.legacy_method_names(rename.legacy, out);
            }
            self.legacy_status(ending, out);
        }
    }

    fn stable_status(&self, ending: &Ending, out: &mut impl AttrSink) {
        let code_value = match (self.system, ending.code) {
            (_, None) => None,
            (RpcSystem::Grpc, Some(code)) => Some(code.grpc_name()),
            (RpcSystem::ConnectRpc, Some(Code::Ok)) => None,
            (RpcSystem::ConnectRpc, Some(code)) => Some(code.connect_name()),
        };
        if let Some(value) = code_value {
            out.push_with(|| KeyValue::new(RPC_STATUS_CODE, value));
        }
        if ending.is_error(self.side) {
            out.push_with(|| KeyValue::new(ERROR_TYPE, code_value.unwrap_or(OTHER)));
        }
    }

    /// Legacy's status attribute, on the span and every Legacy metric (as
    /// otelconnect-go does). A failure without a code is `unknown`, as Go's
    /// `connect.CodeOf` reports an error that carries none.
    fn legacy_status(&self, ending: &Ending, out: &mut impl AttrSink) {
        if ending.not_modified {
            out.push_with(|| KeyValue::new(HTTP_STATUS_CODE, 304i64));
            return;
        }
        let code = ending.code.unwrap_or(Code::Unknown);
        match self.system {
            RpcSystem::Grpc => {
                let key = if self.grpc_web {
                    RPC_GRPC_WEB_STATUS_CODE
                } else {
                    RPC_GRPC_STATUS_CODE
                };
                out.push_with(|| KeyValue::new(key, i64::from(code.as_i32())))
            }
            RpcSystem::ConnectRpc if code != Code::Ok => {
                out.push_with(|| KeyValue::new(RPC_CONNECT_RPC_ERROR_CODE, code.connect_name()))
            }
            RpcSystem::ConnectRpc => {}
        }
    }

    /// Attributes of the stable duration metric (final method, no peer).
    pub fn stable_metric_attributes(&self, ending: &Ending, other: bool, out: &mut impl AttrSink) {
        out.push_with(|| KeyValue::new(RPC_SYSTEM_NAME, self.system.name()));
        out.push_with(|| {
            KeyValue::new(
                RPC_METHOD,
                if other {
                    StringValue::from(OTHER)
                } else {
                    self.method.full.clone()
                },
            )
        });
        self.stable_status(ending, out);
        if self.side == Side::Client
            && let Some(addr) = self.server_address
        {
            out.push_with(|| KeyValue::new(SERVER_ADDRESS, addr.clone()));
            if let Some(port) = self.server_port {
                out.push_with(|| KeyValue::new(SERVER_PORT, port));
            }
        }
    }

    /// Base attributes of the legacy metrics (the span's legacy attributes).
    pub fn legacy_metric_base(&self, other: bool, out: &mut impl AttrSink) {
        out.push_with(|| KeyValue::new(RPC_SYSTEM, self.legacy_system()));
        if other {
            out.push_with(|| KeyValue::new(RPC_SERVICE, OTHER));
            out.push_with(|| KeyValue::new(RPC_METHOD, OTHER));
        } else {
            out.push_with(|| KeyValue::new(RPC_SERVICE, self.method.service.clone()));
            out.push_with(|| KeyValue::new(RPC_METHOD, self.method.short.clone()));
        }
        self.legacy_peer(out);
    }

    /// Legacy metric attributes with the status attribute.
    pub fn legacy_metric_attributes(&self, ending: &Ending, other: bool, out: &mut impl AttrSink) {
        self.legacy_metric_base(other, out);
        self.legacy_status(ending, out);
    }

    /// The span status for `ending` on this side.
    pub fn span_status(&self, ending: &Ending) -> Status {
        if !ending.is_error(self.side) {
            return Status::Unset;
        }
        Status::error(ending.message.clone().unwrap_or_default())
    }
}

/// The histograms of one side.
#[derive(Debug, Clone)]
pub(crate) struct SideInstruments {
    pub call_duration: Option<Histogram<f64>>,
    pub legacy: Option<LegacyInstruments>,
}

/// The five legacy histograms of one side.
#[derive(Debug, Clone)]
pub(crate) struct LegacyInstruments {
    pub duration: Histogram<u64>,
    pub request_size: Histogram<u64>,
    pub response_size: Histogram<u64>,
    pub requests_per_rpc: Histogram<u64>,
    pub responses_per_rpc: Histogram<u64>,
}

impl SideInstruments {
    pub fn new(meter: &Meter, mode: Semconv, side: Side) -> Self {
        let (prefix, duration_name, description) = match side {
            Side::Server => (
                "rpc.server",
                RPC_SERVER_CALL_DURATION,
                SERVER_CALL_DURATION_DESCRIPTION,
            ),
            Side::Client => (
                "rpc.client",
                RPC_CLIENT_CALL_DURATION,
                CLIENT_CALL_DURATION_DESCRIPTION,
            ),
        };
        let call_duration = mode.stable().then(|| {
            meter
                .f64_histogram(duration_name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build()
        });
        let legacy = mode.legacy().then(|| {
            let h = |name: &str, unit: &'static str, description: &'static str| {
                meter
                    .u64_histogram(format!("{prefix}.{name}"))
                    .with_unit(unit)
                    .with_description(description)
                    .build()
            };
            LegacyInstruments {
                duration: h("duration", "ms", LEGACY_DURATION_DESCRIPTION),
                request_size: h("request.size", "By", LEGACY_REQUEST_SIZE_DESCRIPTION),
                response_size: h("response.size", "By", LEGACY_RESPONSE_SIZE_DESCRIPTION),
                requests_per_rpc: h("requests_per_rpc", "1", LEGACY_PER_RPC_DESCRIPTION),
                responses_per_rpc: h("responses_per_rpc", "1", LEGACY_PER_RPC_DESCRIPTION),
            }
        });
        SideInstruments {
            call_duration,
            legacy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ip_values_are_the_addresses_whatever_was_seen_before() {
        let addrs: Vec<SocketAddr> = [
            "10.0.0.1:1",
            "[2001:db8::1]:2",
            "10.0.0.2:3",
            "[::ffff:10.0.0.3]:4",
            "127.0.0.1:5",
            "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:6",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        // More addresses than are kept, in an order that mixes hits,
        // evictions and re-formatting.
        for round in 0..3 {
            for (i, addr) in addrs.iter().enumerate() {
                for repeat in 0..=(i + round) % 3 {
                    assert_eq!(
                        peer_ip(addr).as_str(),
                        addr.ip().to_string(),
                        "round {round}, address {i}, repeat {repeat}"
                    );
                }
            }
        }
    }

    #[test]
    fn opt_in_parsing() {
        assert_eq!(Semconv::from_opt_in(None), Semconv::Stable);
        assert_eq!(Semconv::from_opt_in(Some("rpc")), Semconv::Stable);
        assert_eq!(Semconv::from_opt_in(Some("http,rpc/old")), Semconv::Legacy);
        assert_eq!(
            Semconv::from_opt_in(Some("rpc/old, rpc/dup")),
            Semconv::Both
        );
        assert_eq!(Semconv::from_opt_in(Some("rpc/dup,rpc")), Semconv::Both);
        assert_eq!(Semconv::from_opt_in(Some("database")), Semconv::Stable);
    }

    #[test]
    fn server_error_table() {
        let errors: Vec<Code> = Code::ALL
            .into_iter()
            .filter(|c| c.is_server_error())
            .collect();
        assert_eq!(
            errors,
            [
                Code::Unknown,
                Code::DeadlineExceeded,
                Code::Unimplemented,
                Code::Internal,
                Code::Unavailable,
                Code::DataLoss
            ]
        );
    }
}
