//! Property tests for the propagators: inject → extract round-trips any valid
//! span context and any baggage, and no header content makes extraction panic.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use otel_tower::propagation::{
    B3, Baggage, CompositePropagator, HeaderExtractor, HeaderInjector, TraceContext, from_env_value,
};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn inject(p: &dyn TextMapPropagator, cx: &Context) -> HeaderMap {
    let mut map = HeaderMap::new();
    p.inject_context(cx, &mut HeaderInjector(&mut map));
    map
}

/// A tracestate key the W3C grammar and `opentelemetry::trace::TraceState`
/// both accept: `key` or `tenant@system` (system up to 13 characters).
fn tracestate_key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9][a-z0-9_*/-]{0,30}",
        "[a-z0-9][a-z0-9_*/-]{0,10}@[a-z0-9][a-z0-9_*/-]{0,12}",
    ]
}

/// A tracestate value: printable ASCII except `,` and `=`, not ending in a
/// space (and, as a header travels trimmed, not starting with one either).
fn tracestate_value() -> impl Strategy<Value = String> {
    r"[\x21-\x2b\x2d-\x3c\x3e-\x7e]([\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,40}[\x21-\x2b\x2d-\x3c\x3e-\x7e])?"
}

fn tracestate() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::btree_map(tracestate_key(), tracestate_value(), 0..=32)
        .prop_map(|m| m.into_iter().collect())
        .prop_shuffle()
}

/// An RFC 7230 token: what a baggage key may be.
fn token() -> impl Strategy<Value = String> {
    "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,20}"
}

/// Header names the propagators read, plus a few others.
fn header_name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "traceparent",
        "tracestate",
        "baggage",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
        "content-type",
    ])
}

/// Any bytes `HeaderValue::from_bytes` accepts: visible ASCII, space, tab
/// and obs-text (0x80-0xff).
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => 0x20u8..=0x7e,
        1 => Just(b'\t'),
        1 => 0x80u8..=0xff,
        // the characters the grammars care about, more often
        4 => prop::sample::select(b"0123456789abcdefABCDEF-,;=%@ d".to_vec()),
    ];
    proptest::collection::vec(byte, 0..120)
}

/// A valid header value mutated at one position: close to the accepted
/// grammar, where parsers are most likely to slip.
fn near_valid() -> impl Strategy<Value = Vec<u8>> {
    let seeds = vec![
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz",
        "congo=t61rcWkgMzE,foo@@bar=1,rojo=00f067aa0ba902b7",
        "k=a%20b;p=1,x=%E2%82%AC,y=a=b",
        "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-d-b7ad6b7169203331",
        "463ac35c9f6413ad-0020000000000001-1",
        "d",
    ];
    (
        prop::sample::select(seeds),
        any::<prop::sample::Index>(),
        any::<u8>(),
        0..3u8,
    )
        .prop_map(|(seed, at, byte, op)| {
            let mut bytes = seed.as_bytes().to_vec();
            let i = at.index(bytes.len());
            let byte = if byte == 0x7f || (byte < 0x20 && byte != b'\t') {
                b'%'
            } else {
                byte
            };
            match op {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => {
                    bytes.remove(i);
                }
            }
            bytes
        })
}

fn header_list() -> impl Strategy<Value = Vec<(&'static str, Vec<u8>)>> {
    proptest::collection::vec(
        (header_name(), prop_oneof![header_bytes(), near_valid()]),
        0..8,
    )
}

/// An independent reading of the traceparent grammar of propagation.md, as
/// an oracle: `Some((trace, span, flags))` when the value is valid.
fn oracle_traceparent(value: &str) -> Option<(String, String, u8)> {
    let v = value.trim_matches([' ', '\t']);
    let lowhex = |s: &str| !s.is_empty() && s.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
    if !v.is_ascii() || v.len() < 55 {
        return None;
    }
    let (version, trace, span, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    let dashes = &v[2..3] == "-" && &v[35..36] == "-" && &v[52..53] == "-";
    let rest = &v[55..];
    let rest_ok = if version == "00" {
        rest.is_empty()
    } else {
        rest.is_empty() || rest.starts_with('-')
    };
    let ok = dashes
        && rest_ok
        && [version, trace, span, flags].iter().all(|f| lowhex(f))
        && version != "ff"
        && trace != "0".repeat(32)
        && span != "0".repeat(16);
    ok.then(|| {
        (
            trace.to_string(),
            span.to_string(),
            u8::from_str_radix(flags, 16).unwrap(),
        )
    })
}

/// Traceparent-like strings: valid ones with one byte changed, inserted or
/// removed, with and without OWS and suffixes.
fn traceparent_like() -> impl Strategy<Value = String> {
    let version = prop_oneof!["00", "01", "cc", "fe", "ff", "[0-9a-fA-F+ ]{1,3}"];
    let trace = prop_oneof![Just("0".repeat(32)), "[0-9a-f]{32}", "[0-9a-fA-F]{30,33}"];
    let span = prop_oneof![Just("0".repeat(16)), "[0-9a-f]{16}", "[0-9a-fA-F]{15,17}"];
    let flags = prop_oneof!["[0-9a-f]{2}", "[0-9a-fA-F+ ]{1,3}"];
    let suffix = prop_oneof![
        Just(String::new()),
        Just("-".to_string()),
        "[-.][a-z0-9-]{0,8}"
    ];
    let ows = prop_oneof![Just(""), Just(" "), Just("\t"), Just("  ")];
    (ows.clone(), version, trace, span, flags, suffix, ows)
        .prop_map(|(a, v, t, s, f, x, b)| format!("{a}{v}-{t}-{s}-{f}{x}{b}"))
}

fn all_propagators() -> Vec<Box<dyn TextMapPropagator>> {
    vec![
        Box::new(TraceContext::new()),
        Box::new(Baggage::new()),
        Box::new(B3::single()),
        Box::new(B3::multi()),
        Box::new(B3::single_and_multi()),
        Box::new(CompositePropagator::w3c()),
        Box::new(from_env_value(Some("tracecontext,baggage,b3,b3multi"))),
        Box::new(from_env_value(Some("b3multi,b3,tracecontext"))),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn tracecontext_round_trips_any_valid_span_context(
        trace in 1u128..,
        span in 1u64..,
        flags in any::<u8>(),
        state in tracestate(),
    ) {
        let trace_state = TraceState::from_key_value(state.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .expect("generated tracestate is valid");
        let sc = SpanContext::new(TraceId::from(trace), SpanId::from(span), TraceFlags::new(flags), false, trace_state);
        let cx = Context::new().with_remote_span_context(sc.clone());
        let p = TraceContext::new();
        let map = inject(&p, &cx);
        prop_assert_eq!(map.get_all("traceparent").iter().count(), 1);
        prop_assert_eq!(map.get("tracestate").is_some(), !state.is_empty(), "never an empty tracestate");
        let back = p.extract(&HeaderExtractor(&map));
        let got = back.span().span_context().clone();
        prop_assert!(got.is_remote());
        prop_assert_eq!(got.trace_id(), sc.trace_id());
        prop_assert_eq!(got.span_id(), sc.span_id());
        prop_assert_eq!(got.trace_flags().to_u8(), flags);
        prop_assert_eq!(got.trace_state().header(), sc.trace_state().header());
        // and the next hop sends the same headers again
        prop_assert_eq!(inject(&p, &back), map);
    }

    #[test]
    fn tracecontext_round_trips_level2_tracestate(
        trace in 1u128..,
        span in 1u64..,
        tenant in "[a-z0-9][a-z0-9_*/-]{0,10}",
        system in "[a-z0-9][a-z0-9_*/@-]{0,20}",
        value in tracestate_value(),
        state in tracestate(),
    ) {
        // Keys opentelemetry's TraceState rejects (several `@`, long system)
        // still cross a hop unchanged.
        let mut members: Vec<String> = vec![format!("{tenant}@{system}={value}")];
        members.extend(state.iter().filter(|(k, _)| *k != format!("{tenant}@{system}")).take(31).map(|(k, v)| format!("{k}={v}")));
        let header = members.join(",");
        let traceparent = format!("00-{:032x}-{:016x}-01", trace, span);
        let mut map = HeaderMap::new();
        map.insert("traceparent", HeaderValue::from_str(&traceparent).unwrap());
        map.insert("tracestate", HeaderValue::from_str(&header).unwrap());
        let p = TraceContext::new();
        let out = inject(&p, &p.extract(&HeaderExtractor(&map)));
        prop_assert_eq!(out, map);
    }

    #[test]
    fn b3_round_trips_ids_and_sampled(
        trace in 1u128..,
        span in 1u64..,
        flags in any::<u8>(),
        encoding in 0..3u8,
    ) {
        let p = match encoding {
            0 => B3::single(),
            1 => B3::multi(),
            _ => B3::single_and_multi(),
        };
        let sc = SpanContext::new(TraceId::from(trace), SpanId::from(span), TraceFlags::new(flags), false, TraceState::NONE);
        let cx = Context::new().with_remote_span_context(sc.clone());
        let map = inject(&p, &cx);
        prop_assert!(map.get("x-b3-parentspanid").is_none());
        let fields: Vec<&str> = p.fields().collect();
        for key in map.keys() {
            prop_assert!(fields.contains(&key.as_str()));
        }
        let back = p.extract(&HeaderExtractor(&map));
        let got = back.span().span_context().clone();
        prop_assert!(got.is_remote());
        prop_assert_eq!(got.trace_id(), sc.trace_id());
        prop_assert_eq!(got.span_id(), sc.span_id());
        prop_assert_eq!(got.is_sampled(), sc.is_sampled());
        prop_assert_eq!(got.trace_flags().to_u8(), flags & 1, "B3 carries the sampled bit only");
    }

    #[test]
    fn baggage_round_trips_unicode_values_and_token_keys(
        entries in proptest::collection::btree_map(token(), any::<String>(), 0..20),
    ) {
        let cx = Context::new().with_baggage(
            entries.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect::<Vec<_>>(),
        );
        let p = Baggage::new();
        let map = inject(&p, &cx);
        prop_assert_eq!(map.get("baggage").is_some(), !entries.is_empty());
        if let Some(header) = map.get("baggage") {
            let header = header.to_str().expect("visible ASCII");
            prop_assert!(!header.contains(' '));
        }
        let back = p.extract(&HeaderExtractor(&map));
        let got: BTreeMap<String, String> = back
            .baggage()
            .iter()
            .map(|(k, (v, _))| (k.as_str().to_string(), v.as_str().to_string()))
            .collect();
        prop_assert_eq!(got, entries);
    }

    #[test]
    fn baggage_values_with_any_bytes_decode_without_panic(
        key in token(),
        raw in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        // Percent-encode arbitrary bytes (often invalid UTF-8): the value is
        // decoded lossily (U+FFFD), never dropped.
        let encoded: String = raw.iter().map(|b| format!("%{b:02X}")).collect();
        let mut map = HeaderMap::new();
        map.insert("baggage", HeaderValue::from_str(&format!("{key}={encoded}")).unwrap());
        let back = Baggage::new().extract(&HeaderExtractor(&map));
        let value = back.baggage().get(key.as_str()).map(|v| v.as_str().to_string());
        prop_assert_eq!(value, Some(String::from_utf8_lossy(&raw).into_owned()));
    }

    #[test]
    fn traceparent_acceptance_matches_the_grammar(value in traceparent_like()) {
        let mut map = HeaderMap::new();
        map.insert("traceparent", HeaderValue::from_str(&value).unwrap());
        let cx = TraceContext::new().extract(&HeaderExtractor(&map));
        let sc = cx.span().span_context().clone();
        let got = sc.is_valid().then(|| (sc.trace_id().to_string(), sc.span_id().to_string(), sc.trace_flags().to_u8()));
        prop_assert_eq!(got, oracle_traceparent(&value), "{:?}", value);
    }

    #[test]
    fn extraction_never_panics(headers in header_list()) {
        let mut map = HeaderMap::new();
        for (name, bytes) in &headers {
            let value = HeaderValue::from_bytes(bytes).expect("strategy yields valid header bytes");
            map.append(HeaderName::from_static(name), value);
        }
        for p in all_propagators() {
            let cx = p.extract(&HeaderExtractor(&map));
            // whatever came out can be sent onward without panicking, and
            // only into the propagator's own fields
            let out = inject(p.as_ref(), &cx);
            let fields: Vec<&str> = p.fields().collect();
            for key in out.keys() {
                prop_assert!(fields.contains(&key.as_str()), "{} not in {:?}", key, fields);
            }
            let sc = cx.span().span_context().clone();
            if sc.is_valid() {
                prop_assert!(sc.is_remote());
            }
        }
    }
}
