//! B3 propagation (Zipkin): the single `b3` header and the `x-b3-*` headers.

use opentelemetry::Context;
use opentelemetry::propagation::{
    Extractor, Injector, TextMapPropagator, text_map_propagator::FieldIter,
};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

use super::hex;

const B3: &str = "b3";
const TRACE_ID: &str = "x-b3-traceid";
const SPAN_ID: &str = "x-b3-spanid";
/// Read only to check it; never sent.
const PARENT_SPAN_ID: &str = "x-b3-parentspanid";
const SAMPLED: &str = "x-b3-sampled";
const FLAGS: &str = "x-b3-flags";

/// A B3 sampling decision that arrived without trace and span ids
/// (`b3: 0`, `b3: 1`, `b3: d`, or `x-b3-sampled` alone).
///
/// With no ids there is no parent span, so the local sampler decides; the
/// decision is kept in the extracted [`Context`] for code that wants to honour
/// it (the `otel-tower` layers do not record a span for
/// [`B3Decision::NotSampled`]: neither the server layer for the call, nor a
/// client layer for the calls made while that context is current).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum B3Decision {
    /// `0`: the caller asks not to sample.
    NotSampled,
    /// `1`: the caller asks to sample.
    Sampled,
    /// `d`: debug, which implies sampled.
    Debug,
}

impl B3Decision {
    /// Whether `cx` holds a caller's "do not sample" that came without ids
    /// and no span to continue: the layers then record no span (metrics
    /// only), on the server for the call and on the client for the calls
    /// its handler makes, so the caller's choice holds in this service.
    pub(crate) fn declines(cx: &Context) -> bool {
        !cx.span().span_context().is_valid()
            && cx.get::<B3Decision>() == Some(&B3Decision::NotSampled)
    }
}

/// Marks a trace that arrived with the B3 debug flag, so it is sent onward as
/// debug. Kept beside the span context rather than in the trace flags, whose
/// bits 0x02 and up belong to W3C.
#[derive(Debug, Clone, Copy)]
struct B3Debug(TraceId);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Single,
    Multi,
    Both,
}

/// The B3 propagator.
///
/// Injects the single `b3` header by default ([`B3::single`]), the `x-b3-*`
/// headers with [`B3::multi`], or both with [`B3::single_and_multi`]; it never
/// sends `x-b3-parentspanid`, and with no valid span context it injects
/// nothing. Extraction tries the single header first and falls back to the
/// multi headers, whatever the injection setting; 64-bit trace ids are
/// left-padded to 128 bits; debug implies sampled.
///
/// ```
/// use opentelemetry::propagation::TextMapPropagator;
/// use opentelemetry::trace::TraceContextExt;
/// use std::collections::HashMap;
///
/// let mut headers = HashMap::new();
/// headers.insert("b3".to_string(), "463ac35c9f6413ad-0020000000000001-d".to_string());
/// let cx = otel_tower::propagation::B3::single().extract(&headers);
/// let span = cx.span();
/// let sc = span.span_context();
/// assert_eq!(sc.trace_id().to_string(), "0000000000000000463ac35c9f6413ad");
/// assert!(sc.is_sampled());
/// ```
#[derive(Debug, Clone)]
pub struct B3 {
    encoding: Encoding,
    fields: Vec<String>,
}

impl Default for B3 {
    fn default() -> Self {
        Self::single()
    }
}

impl B3 {
    fn with(encoding: Encoding) -> Self {
        let single = [B3];
        let multi = [TRACE_ID, SPAN_ID, SAMPLED, FLAGS];
        let fields: Vec<String> = match encoding {
            Encoding::Single => single.iter().map(|s| s.to_string()).collect(),
            Encoding::Multi => multi.iter().map(|s| s.to_string()).collect(),
            Encoding::Both => single
                .iter()
                .chain(multi.iter())
                .map(|s| s.to_string())
                .collect(),
        };
        B3 { encoding, fields }
    }

    /// Injects the single `b3` header (the default).
    pub fn single() -> Self {
        Self::with(Encoding::Single)
    }

    /// Injects `x-b3-traceid`, `x-b3-spanid` and `x-b3-sampled` or `x-b3-flags`.
    pub fn multi() -> Self {
        Self::with(Encoding::Multi)
    }

    /// Injects both the single header and the multi headers.
    pub fn single_and_multi() -> Self {
        Self::with(Encoding::Both)
    }
}

/// A trace id of 16 or 32 lowercase hex digits, padded to 128 bits.
fn parse_trace_id(s: &str) -> Option<TraceId> {
    let id = match s.len() {
        32 => TraceId::from_bytes(hex::decode::<16>(s.as_bytes())?),
        16 => {
            let low = hex::decode::<8>(s.as_bytes())?;
            let mut bytes = [0u8; 16];
            bytes[8..].copy_from_slice(&low);
            TraceId::from_bytes(bytes)
        }
        _ => return None,
    };
    (id != TraceId::INVALID).then_some(id)
}

fn parse_span_id(s: &str) -> Option<SpanId> {
    let id = SpanId::from_bytes(hex::decode::<8>(s.as_bytes())?);
    (id != SpanId::INVALID).then_some(id)
}

fn parse_decision(s: &str) -> Option<B3Decision> {
    match s {
        "0" => Some(B3Decision::NotSampled),
        "1" => Some(B3Decision::Sampled),
        "d" => Some(B3Decision::Debug),
        _ => None,
    }
}

/// What one B3 encoding carried.
enum Extracted {
    Context(TraceId, SpanId, Option<B3Decision>),
    Decision(B3Decision),
}

fn extract_single(value: &str) -> Option<Extracted> {
    let value = value.trim_matches([' ', '\t']);
    if let Some(decision) = parse_decision(value) {
        return Some(Extracted::Decision(decision));
    }
    let mut parts = value.split('-');
    let trace_id = parse_trace_id(parts.next()?)?;
    let span_id = parse_span_id(parts.next()?)?;
    let decision = match parts.next() {
        Some(s) => Some(parse_decision(s)?),
        None => None,
    };
    if let Some(parent) = parts.next() {
        parse_span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Extracted::Context(trace_id, span_id, decision))
}

fn extract_multi(extractor: &dyn Extractor) -> Option<Extracted> {
    let debug = extractor.get(FLAGS).map(str::trim) == Some("1");
    let sampled = match extractor.get(SAMPLED).map(str::trim) {
        Some("1") | Some("true") => Some(B3Decision::Sampled),
        Some("0") | Some("false") => Some(B3Decision::NotSampled),
        Some(_) => return None,
        None => None,
    };
    let decision = if debug {
        Some(B3Decision::Debug)
    } else {
        sampled
    };
    match (extractor.get(TRACE_ID), extractor.get(SPAN_ID)) {
        (Some(t), Some(s)) => {
            let trace_id = parse_trace_id(t.trim())?;
            let span_id = parse_span_id(s.trim())?;
            if let Some(parent) = extractor.get(PARENT_SPAN_ID) {
                parse_span_id(parent.trim())?;
            }
            Some(Extracted::Context(trace_id, span_id, decision))
        }
        (None, None) => decision.map(Extracted::Decision),
        _ => None,
    }
}

/// Every header B3 reads or writes.
const ALL_HEADERS: [http::HeaderName; 6] = [
    http::HeaderName::from_static(B3),
    http::HeaderName::from_static(TRACE_ID),
    http::HeaderName::from_static(SPAN_ID),
    http::HeaderName::from_static(PARENT_SPAN_ID),
    http::HeaderName::from_static(SAMPLED),
    http::HeaderName::from_static(FLAGS),
];

impl B3 {
    /// Injects `sc` into a `HeaderMap` (the layers' path), replacing every
    /// B3 header the map already had. Those describe another span: left
    /// beside the new ones, an `x-b3-flags: 1` would turn the call into
    /// debug, an `x-b3-parentspanid` would name a parent that is not, and a
    /// reader of the other encoding would continue the other trace.
    pub(crate) fn inject_into(
        &self,
        cx: &Context,
        sc: &SpanContext,
        headers: &mut http::HeaderMap,
    ) {
        if !sc.is_valid() {
            return;
        }
        let stale = headers
            .keys()
            .any(|name| name.as_str() == B3 || name.as_str().starts_with("x-b3-"));
        if stale {
            for name in &ALL_HEADERS {
                headers.remove(name);
            }
        }
        self.inject_span(cx, sc, &mut super::HeaderInjector(headers));
    }

    /// Injects `sc`, with the debug flag taken from `cx`.
    pub(crate) fn inject_span(&self, cx: &Context, sc: &SpanContext, injector: &mut dyn Injector) {
        if !sc.is_valid() {
            return;
        }
        let debug = cx.get::<B3Debug>().is_some_and(|d| d.0 == sc.trace_id());
        let mut trace_id = String::with_capacity(32);
        hex::encode_into(&sc.trace_id().to_bytes(), &mut trace_id);
        let mut span_id = String::with_capacity(16);
        hex::encode_into(&sc.span_id().to_bytes(), &mut span_id);
        let state = if debug {
            "d"
        } else if sc.is_sampled() {
            "1"
        } else {
            "0"
        };
        if matches!(self.encoding, Encoding::Single | Encoding::Both) {
            injector.set(B3, format!("{trace_id}-{span_id}-{state}"));
        }
        if matches!(self.encoding, Encoding::Multi | Encoding::Both) {
            injector.set(TRACE_ID, trace_id);
            injector.set(SPAN_ID, span_id);
            if debug {
                injector.set(FLAGS, "1".to_string());
            } else {
                injector.set(SAMPLED, state.to_string());
            }
        }
    }
}

impl TextMapPropagator for B3 {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        self.inject_span(cx, cx.span().span_context(), injector);
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let extracted = extractor
            .get(B3)
            .and_then(extract_single)
            .or_else(|| extract_multi(extractor));
        match extracted {
            Some(Extracted::Context(trace_id, span_id, decision)) => {
                let sampled = matches!(decision, Some(B3Decision::Sampled | B3Decision::Debug));
                let flags = if sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::NOT_SAMPLED
                };
                let sc = SpanContext::new(trace_id, span_id, flags, true, TraceState::NONE);
                let cx = cx.with_remote_span_context(sc);
                if decision == Some(B3Decision::Debug) {
                    cx.with_value(B3Debug(trace_id))
                } else {
                    cx
                }
            }
            Some(Extracted::Decision(decision)) => cx.with_value(decision),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}
