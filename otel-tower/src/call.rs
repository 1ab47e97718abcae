//! One RPC in flight: watches the response, decides the outcome, and finishes
//! the span and metrics exactly once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{HeaderMap, HeaderValue};
use opentelemetry::global::ObjectSafeSpan;
use opentelemetry::metrics::Histogram;
use opentelemetry::trace::{Link, SpanKind, SpanRef, Status, TraceContextExt};
use opentelemetry::{Context, KeyValue, StringValue, Value};

use crate::instrumentation::{CapturedHeader, Config, OwnedSpan, SpanStart, StartSpan, host_port};
use crate::request::RpcRequest;
use crate::semconv::series::{Series, Target};
use crate::semconv::{AttrSink, Attrs, Ending, Facts, MethodRef, Rename, Semconv, Side, keys};
use crate::wire::connect_error::{self, ERROR_BODY_CAP};
use crate::wire::envelope::{self, Base64Stream, EnvelopeEvent, EnvelopeParser};
use crate::wire::timeout::request_timeout;
use crate::wire::{Code, Protocol, RpcSystem, decode_grpc_message, grpc_web};

/// Longest status message kept as a span status description (bytes); longer
/// messages are cut at a character boundary.
pub const MAX_STATUS_MESSAGE: usize = 1024;

/// Longest captured header value kept as a span attribute (bytes).
pub const MAX_CAPTURED_VALUE: usize = 1024;

/// How the response body is read.
enum Reader {
    /// Response head not seen yet.
    Pending,
    /// Enveloped body (gRPC, gRPC-Web, Connect streaming).
    Envelopes(EnvelopeParser, Option<Base64Stream>),
    /// Connect unary: one message, or an error body to classify.
    Unary,
    /// Only the byte count matters.
    Bytes,
}

/// Where the call's span lives.
enum CallSpan {
    /// The call is not traced.
    Untraced,
    /// In the call's context: a server's handlers reach it from there.
    /// Whether it records is kept here, so that asking costs no lock.
    InContext { recording: bool },
    /// Owned by the call: a client's span is reached by nothing else, and a
    /// context would box it a second time, behind an `Arc` and a lock.
    Owned(OwnedSpan),
}

/// The call's span, wherever it lives.
enum SpanHandle<'a> {
    Shared(SpanRef<'a>),
    Owned(&'a mut (dyn ObjectSafeSpan + Send + Sync)),
}

impl SpanHandle<'_> {
    fn set_attributes(&mut self, attrs: impl IntoIterator<Item = KeyValue>) {
        match self {
            SpanHandle::Shared(s) => s.set_attributes(attrs),
            SpanHandle::Owned(s) => attrs.into_iter().for_each(|kv| s.set_attribute(kv)),
        }
    }

    fn set_status(&mut self, status: Status) {
        match self {
            SpanHandle::Shared(s) => s.set_status(status),
            SpanHandle::Owned(s) => s.set_status(status),
        }
    }

    fn update_name(&mut self, name: &'static str) {
        match self {
            SpanHandle::Shared(s) => s.update_name(name),
            SpanHandle::Owned(s) => s.update_name(name.into()),
        }
    }

    fn add_event(&mut self, name: &'static str, attrs: Vec<KeyValue>) {
        match self {
            SpanHandle::Shared(s) => s.add_event(name, attrs),
            SpanHandle::Owned(s) => {
                s.add_event_with_timestamp(name.into(), SystemTime::now(), attrs)
            }
        }
    }

    fn end_with_timestamp(&mut self, time: SystemTime) {
        match self {
            SpanHandle::Shared(s) => s.end_with_timestamp(time),
            SpanHandle::Owned(s) => s.end_with_timestamp(time),
        }
    }
}

/// The per-call state.
pub(crate) struct Call {
    pub config: Arc<Config>,
    pub side: Side,
    pub protocol: Protocol,
    pub system: RpcSystem,
    pub method: MethodRef,
    /// The path to intern when the call shows the method exists.
    pub admit_path: Option<Box<str>>,
    /// Where the method is in the configuration's table of methods known
    /// to exist, if it was there when the call began (it has succeeded
    /// before, or is configured): its name is then final.
    known: Option<usize>,
    /// The context of the call: the parent, with the span when it lives
    /// there (see `CallSpan`).
    pub cx: Context,
    span: CallSpan,
    pub start: Instant,
    pub start_time: SystemTime,
    pub deadline: Option<Instant>,
    pub server_address: Option<StringValue>,
    pub server_port: Option<u16>,
    pub peer: Option<SocketAddr>,
    /// Size of a unary request body, when known.
    pub request_size: Option<u64>,
    /// Head of the request, kept only for the attribute filter.
    pub filter_parts: Option<Box<http::request::Parts>>,
    reader: Reader,
    http_status: u16,
    /// The outcome seen so far: trailers-only headers, then trailers or the
    /// terminal message, which win.
    ending: Option<Ending>,
    end_stream_seen: bool,
    /// Envelope parsing stopped (see `lose_sync`).
    desynced: bool,
    /// The body's (or end-stream message's) content encoding, by name.
    content_encoding: Option<&'static [u8]>,
    error_body: Option<Vec<u8>>,
    error_body_truncated: bool,
    body_bytes: u64,
    messages: u64,
    legacy_base: Option<Vec<KeyValue>>,
    /// Captured response header values so far (headers, then trailers).
    response_values: Vec<Vec<StringValue>>,
    done: bool,
}

/// What a layer knows about a call as it begins.
pub(crate) struct Begin<'a> {
    pub config: &'a Arc<Config>,
    pub side: Side,
    pub protocol: Protocol,
    pub system: RpcSystem,
    pub method: MethodRef,
    /// Where `method` is in the configuration's table of methods known to
    /// exist, if it is there.
    pub known: Option<usize>,
    pub parts: &'a http::request::Parts,
    /// The tracer, when this call gets a span.
    pub tracer: Option<&'a dyn StartSpan>,
    pub parent: Context,
    /// Server: the client's socket address, when peer attributes are on.
    pub peer: Option<SocketAddr>,
    /// Server: the caller is not trusted (new trace with a link).
    pub public: bool,
    /// Connect unary: the request body size, when known.
    pub request_size: Option<u64>,
    pub start: Instant,
    pub start_time: SystemTime,
}

/// Whether a call's method name is decided when it begins: it is already
/// `_OTHER`, the configuration lists its methods, or it is known to exist
/// (it has succeeded before, and a later UNIMPLEMENTED is its handler's
/// answer). Otherwise an UNIMPLEMENTED answer makes it `_OTHER` when the
/// call ends.
fn method_final(method: &MethodRef, known: bool, config: &Config) -> bool {
    method.other || known || config.methods.has_known_methods()
}

/// Whether Legacy reports the call as gRPC-Web (`grpc_web`): it came as
/// gRPC-Web and no single system was configured.
fn legacy_grpc_web(protocol: Protocol, config: &Config) -> bool {
    config.rpc_system.is_none() && matches!(protocol, Protocol::GrpcWeb | Protocol::GrpcWebText)
}

/// Host and port of the authority the request addresses: the URI's
/// authority (`:authority` in HTTP/2) or the `Host` header.
fn authority_host_port(parts: &http::request::Parts) -> Option<(StringValue, Option<u16>)> {
    if let Some(authority) = parts.uri.authority() {
        return host_port(authority);
    }
    let parsed = crate::wire::headers::get(&parts.headers, &http::header::HOST)?
        .to_str()
        .ok()?
        .parse::<http::uri::Authority>()
        .ok()?;
    host_port(&parsed)
}

/// How long after the call started its deadline counts as passed: the
/// timeout less a small grace (a twentieth, at most 20 ms), because the
/// peer's clock started earlier (server) or gives up at the same instant
/// (client) and a cancel arriving just before our copy of the deadline is
/// still the deadline.
fn deadline_with_grace(timeout: std::time::Duration) -> std::time::Duration {
    let grace = (timeout / 20).min(std::time::Duration::from_millis(20));
    timeout - grace
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn header_ending(headers: &HeaderMap) -> Option<Ending> {
    let status = crate::wire::headers::get(headers, &crate::wire::names::GRPC_STATUS)?;
    let code = Code::from_grpc_status(status.as_bytes()).unwrap_or(Code::Unknown);
    // Only an error's message is reported.
    let message = (code != Code::Ok)
        .then(|| crate::wire::headers::get(headers, &crate::wire::names::GRPC_MESSAGE))
        .flatten()
        .map(|m| truncate(decode_grpc_message(m.as_bytes()), MAX_STATUS_MESSAGE))
        .filter(|m| !m.is_empty());
    Some(Ending::with_message(Some(code), message))
}

impl Call {
    /// Starts a call: its span (when traced) as a child of `b.parent`, and
    /// the state that watches the response. The span context is `call.cx`.
    pub fn begin(b: Begin<'_>) -> Self {
        let config = b.config;
        let (server_address, server_port) = match authority_host_port(b.parts) {
            Some((host, port)) => (Some(host), port),
            None => (None, None),
        };
        let (cx, span) = match b.tracer {
            Some(tracer) => {
                let facts = Facts {
                    mode: config.mode,
                    side: b.side,
                    system: b.system,
                    grpc_web: legacy_grpc_web(b.protocol, config),
                    method: &b.method,
                    method_final: method_final(&b.method, b.known.is_some(), config),
                    server_address: server_address.as_ref(),
                    server_port: server_port.map(i64::from),
                    peer: b.peer,
                };
                // Room for the attributes added when the call ends.
                let mut attributes = Vec::with_capacity(12 + config.request_headers.len());
                facts.start_attributes(&mut attributes);
                if !config.request_headers.is_empty() {
                    let mut values = Vec::new();
                    Call::collect_captured(&b.parts.headers, &config.request_headers, &mut values);
                    Call::captured_attributes(
                        values,
                        &config.request_headers,
                        b.system,
                        facts.grpc_web,
                        config.mode,
                        &mut attributes,
                    );
                }
                if let Some(filter) = &config.attribute_filter {
                    let view = RpcRequest::new(b.parts, b.protocol, b.system, &b.method, b.side);
                    attributes.retain(|kv| filter(&view, kv));
                }
                let mut start = SpanStart {
                    name: facts.span_name(),
                    kind: match b.side {
                        Side::Server => SpanKind::Server,
                        Side::Client => SpanKind::Client,
                    },
                    start_time: b.start_time,
                    attributes,
                    links: None,
                };
                // Only the server's span must be reachable from a context
                // (handlers find it there); the client's is the call's alone.
                if b.side == Side::Client {
                    let span = tracer.start_owned(start, &b.parent);
                    (b.parent, CallSpan::Owned(span))
                } else {
                    // An untrusted caller's (remote) span becomes a link of a
                    // new trace; a local parent made by another layer stays
                    // the parent.
                    let parent_sc = b.parent.span().span_context().clone();
                    let (cx, recording) =
                        if b.public && parent_sc.is_valid() && parent_sc.is_remote() {
                            start.links = Some(vec![Link::with_context(parent_sc)]);
                            tracer.start(start, &Context::new(), &b.parent)
                        } else {
                            tracer.start(start, &b.parent, &b.parent)
                        };
                    (cx, CallSpan::InContext { recording })
                }
            }
            None => (b.parent, CallSpan::Untraced),
        };
        Call {
            config: config.clone(),
            side: b.side,
            protocol: b.protocol,
            system: b.system,
            admit_path: b.known.is_none().then(|| b.parts.uri.path().into()),
            known: b.known,
            method: b.method,
            cx,
            span,
            start: b.start,
            start_time: b.start_time,
            deadline: request_timeout(&b.parts.headers, b.protocol)
                .and_then(|t| b.start.checked_add(deadline_with_grace(t))),
            server_address,
            server_port,
            peer: b.peer,
            request_size: b.request_size,
            filter_parts: config
                .attribute_filter
                .as_ref()
                .map(|_| Box::new(b.parts.clone())),
            reader: Reader::Pending,
            http_status: 0,
            ending: None,
            end_stream_seen: false,
            desynced: false,
            content_encoding: None,
            error_body: None,
            error_body_truncated: false,
            body_bytes: 0,
            messages: 0,
            legacy_base: None,
            response_values: Vec::new(),
            done: false,
        }
    }

    fn traced(&self) -> bool {
        !matches!(self.span, CallSpan::Untraced)
    }

    fn recording(&self) -> bool {
        match &self.span {
            CallSpan::Untraced => false,
            CallSpan::InContext { recording } => *recording,
            CallSpan::Owned(span) => span.is_recording(),
        }
    }

    /// The call's span, when traced.
    fn span(&mut self) -> Option<SpanHandle<'_>> {
        match &mut self.span {
            CallSpan::Untraced => None,
            CallSpan::InContext { .. } => Some(SpanHandle::Shared(self.cx.span())),
            CallSpan::Owned(span) => Some(SpanHandle::Owned(&mut **span)),
        }
    }

    /// Injects the call's span (or the parent when untraced) into `headers`.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let propagator = &self.config.propagator;
        match &self.span {
            CallSpan::Owned(span) => {
                propagator.inject_span(&self.cx, span.span_context(), headers, self.start)
            }
            CallSpan::InContext { .. } | CallSpan::Untraced => {
                propagator.inject(&self.cx, headers, self.start)
            }
        }
    }

    /// Whether Legacy names this call gRPC-Web (see `legacy_grpc_web`).
    fn is_legacy_grpc_web(&self) -> bool {
        legacy_grpc_web(self.protocol, &self.config)
    }

    fn facts(&self) -> Facts<'_> {
        Facts {
            mode: self.config.mode,
            side: self.side,
            system: self.system,
            grpc_web: self.is_legacy_grpc_web(),
            method: &self.method,
            method_final: method_final(&self.method, self.known.is_some(), &self.config),
            server_address: self.server_address.as_ref(),
            server_port: self.server_port.map(i64::from),
            peer: self.peer,
        }
    }

    /// Part of a frame could not be read (a non-contiguous buffer with more
    /// pieces than can be borrowed): envelope parsing stops, the outcome comes
    /// from trailers, headers or the HTTP status.
    pub fn lose_sync(&mut self) {
        self.reader = Reader::Bytes;
        self.desynced = true;
    }

    /// Whether the call has finished.
    #[inline]
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether this call records message events.
    fn events(&self) -> bool {
        self.config.trace_events && self.recording()
    }

    /// Adds the values of each captured header found in `headers` to
    /// `values` (one list per captured name, in `captured`'s order), one
    /// string per header value.
    fn collect_captured(
        headers: &HeaderMap,
        captured: &[CapturedHeader],
        values: &mut Vec<Vec<StringValue>>,
    ) {
        values.resize(captured.len(), Vec::new());
        for (h, values) in captured.iter().zip(values.iter_mut()) {
            values.extend(headers.get_all(&h.name).iter().map(|v| {
                StringValue::from(truncate(
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    MAX_CAPTURED_VALUE,
                ))
            }));
        }
    }

    /// One attribute per captured header that had values, under the key of
    /// each mode in use.
    fn captured_attributes(
        values: Vec<Vec<StringValue>>,
        captured: &[CapturedHeader],
        system: RpcSystem,
        grpc_web: bool,
        mode: Semconv,
        out: &mut impl AttrSink,
    ) {
        // Legacy keys turn `-` into `_`, so two headers (`x-a`, `x_a`) can
        // share one: their values are one attribute.
        let mut legacy: Vec<(&opentelemetry::Key, Vec<StringValue>)> = Vec::new();
        for (h, values) in captured.iter().zip(values) {
            if values.is_empty() {
                continue;
            }
            if mode.legacy() {
                let key = h.legacy_key(system, grpc_web);
                match legacy.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, merged)) => merged.extend(values.iter().cloned()),
                    None => legacy.push((key, values.clone())),
                }
            }
            if mode.stable() {
                let array = opentelemetry::Array::String(values);
                out.push_with(|| KeyValue::new(h.stable.clone(), Value::Array(array)));
            }
        }
        for (key, values) in legacy {
            let array = opentelemetry::Array::String(values);
            out.push_with(|| KeyValue::new(key.clone(), Value::Array(array)));
        }
    }

    /// Collects the captured response headers (or trailers) in `headers`:
    /// headers and trailers are one list of values per name, set on the
    /// span once, when it ends (the SDK appends attributes, it never
    /// replaces one).
    fn capture_response(&mut self, headers: &HeaderMap) {
        if !self.captures_response() {
            return;
        }
        Call::collect_captured(
            headers,
            &self.config.response_headers,
            &mut self.response_values,
        );
    }

    /// Applies the attribute filter, if any.
    pub fn filter_attributes(&self, attrs: &mut Attrs) {
        let (Some(filter), Some(parts)) = (&self.config.attribute_filter, &self.filter_parts)
        else {
            return;
        };
        let req = RpcRequest::new(parts, self.protocol, self.system, &self.method, self.side);
        attrs.retain(|kv| filter(&req, kv));
    }

    /// The response head arrived.
    pub fn on_response(&mut self, status: http::StatusCode, headers: &mut HeaderMap) {
        self.http_status = status.as_u16();
        if self.protocol.is_grpc() {
            self.ending = header_ending(headers);
        }
        let encoding = match self.protocol {
            Protocol::ConnectUnary | Protocol::ConnectGet => {
                crate::wire::headers::get(headers, &http::header::CONTENT_ENCODING)
            }
            Protocol::ConnectStream => {
                crate::wire::headers::get(headers, &crate::wire::names::CONNECT_CONTENT_ENCODING)
            }
            Protocol::GrpcWeb | Protocol::GrpcWebText => {
                crate::wire::headers::get(headers, &crate::wire::names::GRPC_ENCODING)
            }
            Protocol::Grpc => None,
        };
        // Only names matter: gzip (and, with the `zstd` feature, zstd) is
        // decoded, identity passes, anything else is unsupported and
        // classified from the HTTP status.
        // Content-codings are case-insensitive.
        self.content_encoding = encoding.map(|v| match v.as_bytes().trim_ascii() {
            name if name.eq_ignore_ascii_case(b"gzip") => &b"gzip"[..],
            name if name.eq_ignore_ascii_case(b"zstd") => &b"zstd"[..],
            name if name.is_empty() || name.eq_ignore_ascii_case(b"identity") => &b"identity"[..],
            _ => &b"unsupported"[..],
        });
        self.reader = match self.protocol {
            Protocol::ConnectUnary | Protocol::ConnectGet => {
                if self.http_status != 200 && self.http_status != 304 {
                    self.error_body = Some(Vec::new());
                }
                Reader::Unary
            }
            // A non-200 answer to an enveloped protocol comes from a router
            // or a proxy (an HTML page, a JSON error): not a message stream.
            _ if self.http_status != 200 => Reader::Bytes,
            // gRPC's outcome is in the trailers: envelopes are parsed only
            // when something per message is recorded.
            Protocol::Grpc
                if !self.events()
                    && self
                        .config
                        .instruments(self.side)
                        .is_none_or(|i| i.legacy.is_none()) =>
            {
                Reader::Bytes
            }
            Protocol::Grpc => Reader::Envelopes(EnvelopeParser::new(0), None),
            Protocol::GrpcWeb => {
                Reader::Envelopes(EnvelopeParser::new(envelope::FLAG_TRAILERS), None)
            }
            Protocol::GrpcWebText => Reader::Envelopes(
                EnvelopeParser::new(envelope::FLAG_TRAILERS),
                Some(Base64Stream::default()),
            ),
            Protocol::ConnectStream => {
                Reader::Envelopes(EnvelopeParser::new(envelope::FLAG_END_STREAM), None)
            }
        };
        if self.captures_response() {
            self.capture_response_head(headers);
        }
        if self.side == Side::Server && self.traced() && self.config.propagate_response_header {
            self.inject(headers);
        }
    }

    /// Bytes that passed without being read (see `lose_sync`).
    pub fn on_data_len(&mut self, len: usize) {
        self.body_bytes += len as u64;
    }

    /// A chunk of response body passed through.
    #[inline]
    pub fn on_data(&mut self, data: &[u8]) {
        if self.done {
            return;
        }
        self.body_bytes += data.len() as u64;
        // Most frames are only counted (gRPC without message events): that
        // path stays inline, in the body's poll.
        if !matches!(self.reader, Reader::Pending | Reader::Bytes) {
            self.read_data(data);
        }
    }

    /// A chunk of response body whose bytes are read: a Connect unary
    /// error body, or envelopes.
    #[inline(never)]
    fn read_data(&mut self, data: &[u8]) {
        match &mut self.reader {
            Reader::Pending | Reader::Bytes => return,
            Reader::Unary => {
                if let Some(buf) = self.error_body.as_mut() {
                    let room = ERROR_BODY_CAP - buf.len();
                    buf.extend_from_slice(&data[..room.min(data.len())]);
                    self.error_body_truncated |= data.len() > room;
                }
                return;
            }
            Reader::Envelopes(..) => {}
        }
        // The parser reports into `self`, so it is taken out while it runs.
        let mut reader = std::mem::replace(&mut self.reader, Reader::Pending);
        if let Reader::Envelopes(parser, base64) = &mut reader {
            let mut on_event = |e: EnvelopeEvent<'_>| self.on_envelope(e);
            match base64 {
                Some(decoder) => decoder.feed(data, &mut |bytes| parser.feed(bytes, &mut on_event)),
                None => parser.feed(data, &mut on_event),
            }
        }
        self.reader = reader;
        // The terminal envelope told the outcome, and nothing after it is
        // read: the call is over. Peers need not poll further (connectrpc's
        // streaming clients stop reading there and keep the body until the
        // stream is dropped).
        if self.end_stream_seen {
            self.on_end();
        }
    }

    fn on_envelope(&mut self, event: EnvelopeEvent<'_>) {
        // The terminal envelope is the last: whatever follows it is no
        // message, and another "terminal" must not be read (each would add
        // captured values; gzip makes them cheap to send).
        if self.end_stream_seen {
            return;
        }
        match event {
            EnvelopeEvent::Message { flags, len } => {
                self.messages += 1;
                self.on_message(flags, len);
            }
            EnvelopeEvent::Terminal {
                flags,
                payload,
                truncated,
            } => {
                self.end_stream_seen = true;
                self.ending = Some(if flags & envelope::FLAG_TRAILERS != 0 {
                    let decompressed;
                    let (block, complete) = if flags & envelope::FLAG_COMPRESSED != 0 {
                        match connect_error::decompress_prefix(
                            payload,
                            self.content_encoding,
                            envelope::TERMINAL_CAP,
                        ) {
                            Some((out, complete)) => {
                                decompressed = out;
                                (&decompressed[..], complete && !truncated)
                            }
                            // An encoding this crate cannot read: no block
                            // (its bytes are no text to find lines in).
                            None => (&[][..], false),
                        }
                    } else {
                        (payload, !truncated)
                    };
                    // A block cut short (past the cap, or broken) is read up
                    // to its last whole line: a cut line's value is not the
                    // value sent (`grpc-status: 1` of `grpc-status: 14`).
                    let block = if complete {
                        block
                    } else {
                        grpc_web::whole_lines(block)
                    };
                    self.capture_trailer_pairs(grpc_web::trailer_lines(block));
                    self.grpc_web_trailers(block)
                } else {
                    self.connect_end_stream(flags, payload, truncated)
                });
            }
        }
    }

    /// Captures the response headers, and Connect unary's trailers, which
    /// travel among them as `trailer-<name>`. Out of line: most
    /// configurations capture nothing.
    #[inline(never)]
    fn capture_response_head(&mut self, headers: &HeaderMap) {
        self.capture_response(headers);
        if matches!(self.protocol, Protocol::ConnectUnary | Protocol::ConnectGet) {
            self.capture_trailer_pairs(headers.iter().filter_map(|(name, value)| {
                let name = name
                    .as_str()
                    .strip_prefix(crate::wire::names::CONNECT_UNARY_TRAILER_PREFIX)?;
                Some((name, value))
            }));
        }
    }

    /// Whether response headers and trailers are captured on this call.
    fn captures_response(&self) -> bool {
        self.recording() && !self.config.response_headers.is_empty()
    }

    /// Captures trailers that do not travel as HTTP trailers: gRPC-Web's
    /// trailer block, Connect unary's `trailer-` headers and Connect
    /// streaming's end-of-stream metadata. Names that are not valid header
    /// names (in any case) and invalid values are skipped.
    fn capture_trailer_pairs<N, V>(&mut self, pairs: impl IntoIterator<Item = (N, V)>)
    where
        N: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        if !self.captures_response() {
            return;
        }
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_ref()),
                HeaderValue::from_bytes(value.as_ref()),
            ) {
                map.append(n, v);
            }
        }
        self.capture_response(&map);
    }

    fn grpc_web_trailers(&mut self, block: &[u8]) -> Ending {
        let Some(status) = grpc_web::trailer(block, "grpc-status") else {
            // Trailers win, otherwise headers, otherwise UNKNOWN.
            return self.ending.take().unwrap_or(Ending::code(Code::Unknown));
        };
        let code = Code::from_grpc_status(status).unwrap_or(Code::Unknown);
        let message = grpc_web::trailer(block, "grpc-message")
            .map(|m| truncate(decode_grpc_message(m), MAX_STATUS_MESSAGE))
            .filter(|m| !m.is_empty());
        Ending::with_message(Some(code), message)
    }

    fn connect_end_stream(&mut self, flags: u8, payload: &[u8], truncated: bool) -> Ending {
        let decompressed;
        let (json, complete) = if flags & envelope::FLAG_COMPRESSED != 0 {
            match connect_error::decompress_prefix(payload, self.content_encoding, ERROR_BODY_CAP) {
                Some((out, complete)) => {
                    decompressed = out;
                    (Some(&decompressed[..]), complete && !truncated)
                }
                None => (None, false),
            }
        } else {
            (Some(payload), !truncated)
        };
        if let Some(json) = json.filter(|_| complete && self.captures_response()) {
            self.capture_trailer_pairs(connect_error::end_stream_metadata(json));
        }
        // A message cut short (past the cap) is classified from what was
        // read: an error that came whole before the cut.
        let parsed = json.and_then(|json| {
            connect_error::parse_end_stream(json).or_else(|| {
                (!complete)
                    .then(|| connect_error::parse_end_stream_prefix(json))?
                    .map(Some)
            })
        });
        match parsed {
            Some(None) => Ending::code(Code::Ok),
            Some(Some(err)) => Ending::with_message(
                Some(err.code.unwrap_or(Code::Unknown)),
                err.message.map(|m| truncate(m, MAX_STATUS_MESSAGE)),
            ),
            None => Ending::code(Code::Unknown),
        }
    }

    /// One response message: an event and, in Legacy, a size record.
    fn on_message(&mut self, flags: u8, len: u32) {
        let sent = self.side == Side::Server;
        if self.events() {
            let id = self.messages as i64;
            self.add_message_event(sent, id, flags, u64::from(len));
        }
        if let Some(legacy) = self
            .config
            .instruments(self.side)
            .and_then(|i| i.legacy.as_ref())
        {
            if self.legacy_base.is_none() {
                let mut base = Attrs::new();
                self.facts()
                    .legacy_metric_base(self.method.other, &mut base);
                self.filter_attributes(&mut base);
                self.legacy_base = Some(base.into_vec());
            }
            let attrs = self.legacy_base.as_deref().unwrap_or_default();
            legacy.response_size.record(u64::from(len), attrs);
        }
    }

    fn add_message_event(&mut self, sent: bool, id: i64, flags: u8, size: u64) {
        let kind = if sent { "SENT" } else { "RECEIVED" };
        let size = size as i64;
        let legacy = self.config.mode.legacy();
        let Some(mut span) = self.span() else {
            return;
        };
        if legacy {
            span.add_event(
                "message",
                vec![
                    KeyValue::new(keys::MESSAGE_TYPE, kind),
                    KeyValue::new(keys::MESSAGE_ID, id),
                    KeyValue::new(keys::MESSAGE_UNCOMPRESSED_SIZE, size),
                ],
            );
        } else {
            let size_key = if flags & envelope::FLAG_COMPRESSED != 0 {
                keys::RPC_MESSAGE_COMPRESSED_SIZE
            } else {
                keys::RPC_MESSAGE_UNCOMPRESSED_SIZE
            };
            span.add_event(
                "rpc.message",
                vec![
                    KeyValue::new(keys::RPC_MESSAGE_TYPE, kind),
                    KeyValue::new(keys::RPC_MESSAGE_ID, id),
                    KeyValue::new(size_key, size),
                ],
            );
        }
    }

    /// The trailers frame arrived: the outcome is known.
    pub fn on_trailers(&mut self, trailers: &HeaderMap) {
        if self.done {
            return;
        }
        self.capture_response(trailers);
        if self.protocol.is_grpc()
            && let Some(ending) = header_ending(trailers)
        {
            self.ending = Some(ending);
        }
        self.on_end();
    }

    /// The response body ended: finish with the best outcome available.
    pub fn on_end(&mut self) {
        if self.done {
            return;
        }
        let ending = self.outcome();
        self.finish(ending);
    }

    fn outcome(&mut self) -> Ending {
        let from_http = |status: u16| Ending::code(Code::from_http_status(status, self.protocol));
        match self.protocol {
            Protocol::Grpc | Protocol::GrpcWeb | Protocol::GrpcWebText => {
                if let Some(e) = self.ending.take() {
                    e
                } else if self.http_status == 200 {
                    Ending::code(Code::Unknown)
                } else {
                    from_http(self.http_status)
                }
            }
            Protocol::ConnectStream => {
                if self.http_status != 200 {
                    from_http(self.http_status)
                } else {
                    let code = if self.desynced {
                        Code::Unknown
                    } else {
                        Code::Internal
                    };
                    self.ending.take().unwrap_or(Ending::with_message(
                        Some(code),
                        Some("stream ended without an end-stream message".into()),
                    ))
                }
            }
            Protocol::ConnectUnary | Protocol::ConnectGet => match self.http_status {
                200 => Ending::code(Code::Ok),
                // Not Modified answers a conditional GET; to a POST it is
                // no Connect answer (the HTTP table: unknown).
                304 if self.protocol == Protocol::ConnectGet => Ending {
                    not_modified: true,
                    ..Ending::code(Code::Ok)
                },
                status => {
                    let body = self.error_body.take().unwrap_or_default();
                    let parsed = if self.error_body_truncated {
                        None
                    } else {
                        connect_error::decompress(&body, self.content_encoding, ERROR_BODY_CAP)
                            .and_then(|json| connect_error::parse_unary_error(&json))
                    };
                    match parsed {
                        Some(err) if err.code.is_some() => Ending::with_message(
                            err.code,
                            err.message.map(|m| truncate(m, MAX_STATUS_MESSAGE)),
                        ),
                        _ => from_http(status),
                    }
                }
            },
        }
    }

    /// Whether the terminal message already told the outcome: a Connect
    /// end-stream message or gRPC-Web trailers were read, or a gRPC
    /// trailers-only status came in the headers with no body at all.
    fn terminal_seen(&self) -> bool {
        let trailers_only =
            self.protocol.is_grpc() && self.ending.is_some() && self.body_bytes == 0;
        self.end_stream_seen || trailers_only
    }

    /// The response future or body was dropped before the body ended.
    ///
    /// A call whose outcome is already known ends with it: after its
    /// terminal message, or after a non-200 head answering gRPC, gRPC-Web or
    /// Connect streaming (a router's or proxy's answer, classified by its
    /// status; clients drop such a body unread). Otherwise the call was
    /// cancelled: CANCELLED, or DEADLINE_EXCEEDED once the request's
    /// deadline has passed. That includes a Connect unary response whose
    /// body did not all arrive: its one message is the body (and an error's
    /// code is in the body; the HTTP status alone is a lossy guess at it).
    pub fn on_abandoned(&mut self) {
        if self.done {
            return;
        }
        if self.outcome_known() {
            self.on_end();
            return;
        }
        self.finish(Ending::code(self.cancelled()));
    }

    /// Whether the outcome no longer depends on the rest of the body: the
    /// terminal message was read, or the head was a non-200 answer to
    /// gRPC, gRPC-Web or Connect streaming (a router's or proxy's page,
    /// classified by its status whatever its body does).
    fn outcome_known(&self) -> bool {
        let not_an_rpc_answer =
            self.protocol.is_enveloped() && !matches!(self.http_status, 0 | 200);
        self.terminal_seen() || not_an_rpc_answer
    }

    /// The response body failed before its terminal message.
    ///
    /// On the client that is the server (or the connection) resetting the
    /// stream: a cancellation, as for a drop. On the server the response
    /// body is the service's own, so its failure is the service failing:
    /// an error without a code, unless the deadline has passed. Either way
    /// an outcome already known (see `outcome_known`) stands, as for a drop.
    pub fn on_body_error(&mut self) {
        if self.done {
            return;
        }
        if self.outcome_known() {
            self.on_end();
        } else if self.side == Side::Client {
            self.finish(Ending::code(self.cancelled()));
        } else {
            self.on_service_error("response body failed".to_string());
        }
    }

    /// CANCELLED, or DEADLINE_EXCEEDED once the request's deadline has
    /// passed.
    fn cancelled(&self) -> Code {
        match self.deadline {
            Some(deadline) if Instant::now() >= deadline => Code::DeadlineExceeded,
            _ => Code::Cancelled,
        }
    }

    /// The inner service or body panicked: an error without a code, on both
    /// sides (the peer only sees a reset).
    pub fn on_panic(&mut self) {
        self.finish(Ending::with_message(None, Some("panicked".to_string())));
    }

    /// The inner service failed before a response (transport error): no code,
    /// unless the request's deadline has passed: a client that enforces the
    /// deadline itself (tonic's `Channel` does) fails the call that way, and
    /// that is DEADLINE_EXCEEDED, as for a drop or a body error.
    pub fn on_service_error(&mut self, message: String) {
        let ending = match self.cancelled() {
            Code::DeadlineExceeded => Ending::code(Code::DeadlineExceeded),
            _ => Ending::with_message(None, Some(truncate(message, MAX_STATUS_MESSAGE))),
        };
        self.finish(ending);
    }

    /// The series of a successful call of a method known to exist (its
    /// attributes are the same on every such call), for `histogram`, the
    /// Stable duration histogram of this call's side.
    fn ok_series(&self, histogram: &Histogram<f64>) -> Option<&Series> {
        let known = self.config.methods.known(self.known?)?;
        let attrs = || {
            let mut attrs = Vec::new();
            let ok = Ending::code(Code::Ok);
            self.facts()
                .stable_metric_attributes(&ok, self.method.other, &mut attrs);
            attrs
        };
        match self.side {
            Side::Server => Some(known.ok_series.server(self.system, histogram, attrs)),
            Side::Client => {
                let target = Target {
                    system: self.system,
                    server_address: self.server_address.as_ref(),
                    server_port: self.server_port,
                };
                known.ok_series.client(&target, histogram, attrs)
            }
        }
    }

    /// Ends the span and records the metrics. Runs at most once.
    fn finish(&mut self, ending: Ending) {
        if self.done {
            return;
        }
        self.done = true;
        let elapsed = self.start.elapsed();
        let end_time = self.start_time + elapsed;
        let unimplemented = ending.code == Some(Code::Unimplemented);
        let rename = Rename::new(
            self.config.mode,
            self.side,
            unimplemented && !method_final(&self.method, self.known.is_some(), &self.config),
        );
        let unary = matches!(self.protocol, Protocol::ConnectUnary | Protocol::ConnectGet);

        if self.traced() {
            if self.recording() {
                if unary && self.events() {
                    let response_size = if ending.code == Some(Code::Ok) {
                        self.body_bytes
                    } else {
                        0
                    };
                    let request_size = self.request_size.unwrap_or(0);
                    let server = self.side == Side::Server;
                    if self.config.mode.legacy() {
                        // Request first: received by the server, sent by the client.
                        self.add_message_event(!server, 1, 0, request_size);
                        self.add_message_event(server, 1, 0, response_size);
                    }
                }
                let facts = self.facts();
                let mut attrs = Attrs::new();
                facts.end_attributes(&ending, rename, &mut attrs);
                let status = facts.span_status(&ending);
                let system_name = facts.system_span_name();
                let values = std::mem::take(&mut self.response_values);
                Call::captured_attributes(
                    values,
                    &self.config.response_headers,
                    self.system,
                    self.is_legacy_grpc_web(),
                    self.config.mode,
                    &mut attrs,
                );
                self.filter_attributes(&mut attrs);
                let new_name = rename.span_name(self.config.mode).then_some(system_name);
                if let Some(mut span) = self.span() {
                    if let Some(name) = new_name {
                        span.update_name(name);
                    }
                    // Drained rather than moved: `Attrs` keeps its items inline.
                    span.set_attributes(attrs.drain(..));
                    if status != Status::Unset {
                        span.set_status(status);
                    }
                }
            }
            if let Some(mut span) = self.span() {
                span.end_with_timestamp(end_time);
            }
        }

        if let Some(instruments) = self.config.instruments(self.side) {
            let facts = self.facts();
            if let Some(h) = &instruments.call_duration {
                let ok_series = (ending.code == Some(Code::Ok)
                    && self.config.attribute_filter.is_none())
                .then(|| self.ok_series(h))
                .flatten();
                match ok_series {
                    Some(series) => series.record(h, elapsed.as_secs_f64()),
                    None => {
                        let mut attrs = Attrs::new();
                        let other = self.method.other || rename.stable;
                        facts.stable_metric_attributes(&ending, other, &mut attrs);
                        self.filter_attributes(&mut attrs);
                        h.record(elapsed.as_secs_f64(), &attrs);
                    }
                }
            }
            if let Some(legacy) = &instruments.legacy {
                let mut attrs = Attrs::new();
                let other = self.method.other || rename.legacy;
                facts.legacy_metric_attributes(&ending, other, &mut attrs);
                self.filter_attributes(&mut attrs);
                legacy.duration.record(elapsed.as_millis() as u64, &attrs);
                if unary {
                    let response_size = if ending.code == Some(Code::Ok) {
                        self.body_bytes
                    } else {
                        0
                    };
                    legacy
                        .request_size
                        .record(self.request_size.unwrap_or(0), &attrs);
                    legacy.response_size.record(response_size, &attrs);
                    legacy.requests_per_rpc.record(1, &attrs);
                    legacy.responses_per_rpc.record(1, &attrs);
                } else {
                    legacy.responses_per_rpc.record(self.messages, &attrs);
                }
            }
        }

        // A method that succeeded exists. Nothing else proves it: a call
        // cancelled before any answer, an UNIMPLEMENTED, or an error from a
        // layer in front of the handlers (authentication, say) could come
        // from any path, and must not let random paths in.
        if !self.method.other
            && ending.code == Some(Code::Ok)
            && let Some(path) = self.admit_path.take()
        {
            self.config.methods.admit(&path);
        }
    }
}

/// Runs `f`, a step of the inner service (its `call`, a poll of its future
/// or body): if it panics, the call (if any) is recorded as failed while
/// the panic goes on its way.
pub(crate) fn fail_on_panic<T>(call: Option<&mut Call>, f: impl FnOnce() -> T) -> T {
    // A guard rather than `catch_unwind`: the step's output (a response, a
    // frame) is returned where it is made instead of being moved through
    // the unwinding machinery, three copies per call on the hot path.
    let guard = FailOnUnwind(call);
    let out = f();
    std::mem::forget(guard);
    out
}

/// Records its call as failed when dropped, which only unwinding does.
struct FailOnUnwind<'a>(Option<&'a mut Call>);

impl Drop for FailOnUnwind<'_> {
    fn drop(&mut self) {
        if let Some(call) = self.0.take() {
            record_in_destructor(|| call.on_panic());
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // A finished call (the common case) skips the unwinding guard.
        if !self.done {
            // A body dropped after its terminal message ended normally, even
            // if nobody polled it to the end.
            record_in_destructor(|| self.on_abandoned());
        }
    }
}

/// Records from a destructor. Recording runs user code (span processors,
/// an attribute filter); a panic from it escaping a destructor while
/// another panic unwinds would abort the process, so it is dropped (the
/// panic hook has reported it).
fn record_in_destructor(record: impl FnOnce()) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(record));
}

#[cfg(test)]
mod tests {
    /// A method is interned once it has succeeded; a call cancelled before
    /// any response, an UNIMPLEMENTED or an error from a layer in front of
    /// the handlers proves nothing (else random paths would fill the table).
    #[test]
    fn only_methods_that_succeeded_are_interned() {
        use std::convert::Infallible;
        use std::future::Future;
        use tower::{Layer, Service};

        // Paths of their own: the table is the process's.
        const HANGS: &str = "/interning.v1.Svc/Hangs";
        const MISSING: &str = "/interning.v1.Svc/Missing";
        const DENIED: &str = "/interning.v1.Svc/Denied";
        const SUCCEEDS: &str = "/interning.v1.Svc/Succeeds";
        type Empty = http_body_util::Empty<bytes::Bytes>;
        let otel = crate::Instrumentation::new()
            .with_tracer_provider(opentelemetry_sdk::trace::SdkTracerProvider::builder().build());
        let config = otel.config();
        let grpc = |status: &'static str| {
            http::Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", status)
                .body(Empty::new())
                .unwrap()
        };
        let mut svc =
            otel.server_layer()
                .layer(tower::service_fn(move |req: http::Request<Empty>| {
                    let path = req.uri().path().to_owned();
                    async move {
                        match path.as_str() {
                            HANGS => std::future::pending().await,
                            MISSING => Ok::<_, Infallible>(grpc("12")),
                            DENIED => Ok(grpc("16")),
                            _ => Ok(grpc("0")),
                        }
                    }
                }));
        let mut call = |path: &str| {
            let request = http::Request::post(format!("http://127.0.0.1:1{path}"))
                .header("content-type", "application/grpc")
                .body(Empty::new())
                .unwrap();
            let mut future = Box::pin(svc.call(request));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            // One poll: the answer, or a call still waiting that is then
            // dropped (cancelled before any response).
            let _ = future.as_mut().poll(&mut cx);
        };
        for path in [HANGS, MISSING, DENIED, SUCCEEDS] {
            assert!(
                config.methods.lookup(path).1.is_none(),
                "{path} starts unknown"
            );
            call(path);
        }
        assert!(config.methods.lookup(HANGS).1.is_none(), "cancelled");
        assert!(config.methods.lookup(MISSING).1.is_none(), "unimplemented");
        assert!(config.methods.lookup(DENIED).1.is_none(), "unauthenticated");
        assert!(config.methods.lookup(SUCCEEDS).1.is_some(), "succeeded");
        // Another configuration shares the names, but has not seen the
        // method succeed: not final there.
        let (names, known) = crate::Instrumentation::new()
            .config()
            .methods
            .lookup(SUCCEEDS);
        assert!(matches!(names, super::MethodRef::Interned(_)) && known.is_none());
    }

    #[test]
    fn call_state_stays_small() {
        // It is moved from the service into the future and then the body.
        let size = std::mem::size_of::<super::Call>();
        assert!(size <= 512, "Call is {size} bytes");
    }
}
