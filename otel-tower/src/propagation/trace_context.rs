//! W3C Trace Context (Level 1 and Level 2): `traceparent` and `tracestate`.

use opentelemetry::Context;
use opentelemetry::propagation::{
    Extractor, Injector, TextMapPropagator, text_map_propagator::FieldIter,
};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

use super::Source;
use super::hex;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";
const TRACEPARENT_NAME: http::HeaderName = http::HeaderName::from_static(TRACEPARENT);
const TRACESTATE_NAME: http::HeaderName = http::HeaderName::from_static(TRACESTATE);
const MAX_MEMBERS: usize = 32;
const MAX_KEY_LEN: usize = 256;
const MAX_VALUE_LEN: usize = 256;

/// The W3C Trace Context propagator (`traceparent` + `tracestate`).
///
/// Parsing is strict where the specification is strict (lowercase hex, exact
/// field lengths, version `00` is exactly 55 characters, `ff` is invalid, no
/// all-zero ids, a single `traceparent` header) and forward compatible where
/// it asks to be (a higher version is parsed by its first four fields). The
/// trace flags byte is carried unchanged, so the Level 2 `random` bit
/// (`0x02`) survives a hop. Several `tracestate` headers are combined; a list
/// with an invalid member or more than 32 members is discarded as a whole; an
/// empty `tracestate` is never sent.
///
/// ```
/// use opentelemetry::propagation::TextMapPropagator;
/// use opentelemetry::trace::TraceContextExt;
/// use std::collections::HashMap;
///
/// let propagator = otel_tower::propagation::TraceContext::new();
/// let mut headers = HashMap::new();
/// headers.insert(
///     "traceparent".to_string(),
///     "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03".to_string(),
/// );
/// let cx = propagator.extract(&headers);
/// let span = cx.span();
/// assert!(span.span_context().is_remote());
/// assert_eq!(span.span_context().trace_flags().to_u8(), 0x03);
/// ```
#[derive(Debug, Clone)]
pub struct TraceContext {
    fields: [String; 2],
}

impl Default for TraceContext {
    fn default() -> Self {
        Self::new()
    }
}

impl TraceContext {
    /// Creates the propagator.
    pub fn new() -> Self {
        TraceContext {
            fields: [TRACEPARENT.to_string(), TRACESTATE.to_string()],
        }
    }
}

/// A `tracestate` that is valid by the W3C grammar but that
/// [`opentelemetry::trace::TraceState`] cannot hold (its key check predates
/// Level 2 and rejects e.g. `foo@@bar`). It rides in the [`Context`] next to
/// the span context of the same trace, so it is still sent onward.
#[derive(Debug, Clone)]
struct VerbatimTraceState {
    trace_id: TraceId,
    header: String,
}

/// Parses a `traceparent` value (surrounding whitespace allowed).
pub(crate) fn parse_traceparent(value: &[u8]) -> Option<(TraceId, SpanId, TraceFlags)> {
    let value = trim_ows(value);
    if value.len() < 55 {
        return None;
    }
    let [version] = hex::decode::<1>(&value[0..2])?;
    match version {
        0xff => return None,
        0x00 if value.len() != 55 => return None,
        _ if value.len() > 55 && value[55] != b'-' => return None,
        _ => {}
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = TraceId::from_bytes(hex::decode::<16>(&value[3..35])?);
    let span_id = SpanId::from_bytes(hex::decode::<8>(&value[36..52])?);
    let [flags] = hex::decode::<1>(&value[53..55])?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    Some((trace_id, span_id, TraceFlags::new(flags)))
}

/// `value` without the spaces and tabs around it.
fn trim_ows(value: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !ows(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    &value[start..end]
}

fn valid_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    let Some(&first) = bytes.first() else {
        return false;
    };
    bytes.len() <= MAX_KEY_LEN
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && bytes[1..].iter().all(|&b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'_' | b'-' | b'*' | b'/' | b'@')
        })
}

fn valid_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_VALUE_LEN
        && bytes.last() != Some(&b' ')
        && bytes
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
}

/// Parses the combined `tracestate` list; `None` means "discard all of it".
pub(crate) fn parse_tracestate<'a>(
    headers: impl IntoIterator<Item = &'a str>,
) -> Option<Vec<(&'a str, &'a str)>> {
    let mut members: Vec<(&str, &str)> = Vec::new();
    for header in headers {
        for member in header.split(',') {
            let member = member.trim_matches([' ', '\t']);
            if member.is_empty() {
                continue;
            }
            let (key, value) = member.split_once('=')?;
            if !valid_key(key) || !valid_value(value) || members.iter().any(|(k, _)| *k == key) {
                return None;
            }
            if members.len() == MAX_MEMBERS {
                return None;
            }
            members.push((key, value));
        }
    }
    Some(members)
}

/// The `traceparent` value of a span context (version `00`).
fn traceparent(sc: &SpanContext) -> [u8; 55] {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex::encode_to_slice(&sc.trace_id().to_bytes(), &mut out[3..35]);
    hex::encode_to_slice(&sc.span_id().to_bytes(), &mut out[36..52]);
    hex::encode_to_slice(&[sc.trace_flags().to_u8()], &mut out[53..55]);
    out
}

/// The `tracestate` to send with `cx`'s span context, if any.
fn tracestate(cx: &Context, sc: &SpanContext) -> Option<String> {
    let state = sc.trace_state().header();
    if !state.is_empty() {
        return Some(state);
    }
    cx.get::<VerbatimTraceState>()
        .filter(|v| v.trace_id == sc.trace_id())
        .map(|v| v.header.clone())
}

/// Injects straight into a `HeaderMap` (the layers' path: no `String` for
/// `traceparent`, names parsed once).
/// `sc` is the span to continue; `cx` supplies the verbatim `tracestate`.
/// A `traceparent` the map already had is replaced, and its `tracestate`
/// with it.
pub(crate) fn inject_into(cx: &Context, sc: &SpanContext, headers: &mut http::HeaderMap) {
    if !sc.is_valid() {
        return;
    }
    let bytes = bytes::Bytes::copy_from_slice(&traceparent(sc));
    // SAFETY: `traceparent` writes only hex digits and dashes, all valid in
    // a header value; checking them again costs as much as writing them.
    let mut value = unsafe { http::HeaderValue::from_maybe_shared_unchecked(bytes) };
    super::carrier::mark_unique(&mut value);
    let replaced = headers.insert(TRACEPARENT_NAME, value).is_some();
    match tracestate(cx, sc).and_then(|state| http::HeaderValue::try_from(state).ok()) {
        Some(value) => {
            headers.insert(TRACESTATE_NAME, value);
        }
        // The `tracestate` that came with a replaced `traceparent` belongs
        // to that other trace: sent beside the new one, it would carry one
        // trace's vendor state into another. (Asking `insert` costs
        // nothing; looking the name up on every call would.)
        None if replaced => {
            headers.remove(TRACESTATE_NAME);
        }
        None => {}
    }
}

impl TextMapPropagator for TraceContext {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        // Only ASCII was written.
        let traceparent = String::from_utf8_lossy(&traceparent(sc)).into_owned();
        injector.set(TRACEPARENT, traceparent);
        if let Some(state) = tracestate(cx, sc) {
            injector.set(TRACESTATE, state);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        extract_from(cx, &extractor)
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}

/// Extracts from any header source (the layers read the `HeaderMap` directly,
/// without the allocations of the `Extractor` interface).
pub(crate) fn extract_from<'a>(cx: &Context, source: &'a impl Source<'a>) -> Context {
    let mut parents = 0;
    let mut traceparent = None;
    source.each(&TRACEPARENT_NAME, &mut |v| {
        parents += 1;
        traceparent = Some(v);
    });
    let (1, Some(traceparent)) = (parents, traceparent) else {
        return cx.clone();
    };
    let Some((trace_id, span_id, flags)) = parse_traceparent(traceparent) else {
        return cx.clone();
    };
    let mut states: smallvec::SmallVec<[&str; 2]> = smallvec::SmallVec::new();
    source.each(&TRACESTATE_NAME, &mut |v| states.push(super::text(v)));
    let (trace_state, verbatim) = if states.is_empty() {
        (TraceState::NONE, None)
    } else {
        let members = parse_tracestate(states.iter().copied()).unwrap_or_default();
        match TraceState::from_key_value(members.iter().copied()) {
            Ok(state) => (state, None),
            Err(_) => {
                let header = members
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",");
                (
                    TraceState::NONE,
                    Some(VerbatimTraceState { trace_id, header }),
                )
            }
        }
    };
    let sc = SpanContext::new(trace_id, span_id, flags, true, trace_state);
    let cx = cx.with_remote_span_context(sc);
    match verbatim {
        Some(v) => cx.with_value(v),
        None => cx,
    }
}
