//! Table-driven tests for every rule of `propagation.md`: W3C traceparent,
//! tracestate, W3C Baggage, B3, the composite propagator and
//! `OTEL_PROPAGATORS` parsing, including each listed deviation of the
//! opentelemetry 0.33 propagators that ours must get right.
//!
//! Headers go through a real `http::HeaderMap` (so repeated headers are real)
//! with `HeaderExtractor` / `HeaderInjector`; span contexts are built by hand.
//! Nothing here touches the opentelemetry globals: the global rule has its own
//! test binary (`propagation_global.rs`).

use std::collections::{BTreeMap, BTreeSet};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use otel_tower::propagation::{
    B3, B3Decision, BAGGAGE_MAX_BYTES, BAGGAGE_MAX_MEMBERS, Baggage, CompositePropagator,
    HeaderExtractor, HeaderInjector, TraceContext, from_env_value,
};

const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const S: &str = "00f067aa0ba902b7";
const T2: &str = "0af7651916cd43dd8448eb211c80319c";
const S2: &str = "b7ad6b7169203331";

// ---------------------------------------------------------------------------
// helpers

/// One row of a table: description, input, expected outcome.
type Case<'a, I, E> = (&'a str, I, E);
/// A header (name, value).
type Pair<'a> = (&'a str, &'a str);
/// Expected traceparent extraction: trace id, span id, flags.
type TraceExpect<'a> = (&'a str, &'a str, u8);
/// Expected B3 extraction: trace id, span id, sampled, debug.
type B3Expect<'a> = (&'a str, &'a str, bool, bool);

/// A header map with every pair appended, so repeated names are real repeats.
fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
            HeaderValue::from_str(value).expect("test header value"),
        );
    }
    map
}

fn extract(p: &dyn TextMapPropagator, pairs: &[(&str, &str)]) -> Context {
    p.extract(&HeaderExtractor(&headers(pairs)))
}

fn span_context(cx: &Context) -> SpanContext {
    cx.span().span_context().clone()
}

fn inject(p: &dyn TextMapPropagator, cx: &Context) -> HeaderMap {
    let mut map = HeaderMap::new();
    p.inject_context(cx, &mut HeaderInjector(&mut map));
    map
}

/// All injected headers, sorted, each repeated value listed.
fn dump(map: &HeaderMap) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = map
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap().to_string()))
        .collect();
    out.sort();
    out
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = list
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    out.sort();
    out
}

fn sc(trace: &str, span: &str, flags: u8, state: TraceState) -> SpanContext {
    SpanContext::new(
        TraceId::from_hex(trace).unwrap(),
        SpanId::from_hex(span).unwrap(),
        TraceFlags::new(flags),
        true,
        state,
    )
}

fn remote(trace: &str, span: &str, flags: u8) -> Context {
    Context::new().with_remote_span_context(sc(trace, span, flags, TraceState::NONE))
}

fn hex_ids(sc: &SpanContext) -> (String, String, u8) {
    (
        sc.trace_id().to_string(),
        sc.span_id().to_string(),
        sc.trace_flags().to_u8(),
    )
}

fn baggage_map(cx: &Context) -> BTreeMap<String, String> {
    cx.baggage()
        .iter()
        .map(|(k, (v, _))| (k.as_str().to_string(), v.as_str().to_string()))
        .collect()
}

fn field_set(p: &dyn TextMapPropagator) -> BTreeSet<String> {
    p.fields().map(str::to_string).collect()
}

fn field_list(p: &dyn TextMapPropagator) -> Vec<String> {
    p.fields().map(str::to_string).collect()
}

// ---------------------------------------------------------------------------
// W3C traceparent

#[test]
fn traceparent_table() {
    let tp = TraceContext::new();
    let t31 = &T[1..];
    let s15 = &S[1..];
    let upper_t = T.to_uppercase();
    let zeros_t = "0".repeat(32);
    let zeros_s = "0".repeat(16);
    let t16 = &T[..16];
    // (description, value, expected (trace, span, flags) or None = invalid)
    let cases: Vec<Case<String, Option<TraceExpect>>> = vec![
        (
            "basic sampled",
            format!("00-{T}-{S}-01"),
            Some((T, S, 0x01)),
        ),
        ("not sampled", format!("00-{T}-{S}-00"), Some((T, S, 0x00))),
        (
            "level 2 random bit kept",
            format!("00-{T}-{S}-03"),
            Some((T, S, 0x03)),
        ),
        (
            "random bit alone",
            format!("00-{T}-{S}-02"),
            Some((T, S, 0x02)),
        ),
        (
            "unknown flag bits kept",
            format!("00-{T}-{S}-09"),
            Some((T, S, 0x09)),
        ),
        (
            "OWS spaces",
            format!("  00-{T}-{S}-01  "),
            Some((T, S, 0x01)),
        ),
        ("OWS tabs", format!("\t00-{T}-{S}-01\t"), Some((T, S, 0x01))),
        (
            "higher version, exactly 55",
            format!("cc-{T}-{S}-01"),
            Some((T, S, 0x01)),
        ),
        (
            "higher version, extra fields",
            format!("cc-{T}-{S}-01-whatever"),
            Some((T, S, 0x01)),
        ),
        (
            "higher version, trailing dash",
            format!("01-{T}-{S}-00-"),
            Some((T, S, 0x00)),
        ),
        (
            "version fe",
            format!("fe-{T}-{S}-01-x-y"),
            Some((T, S, 0x01)),
        ),
        // invalid versions (opentelemetry 0.33 accepts 0, 000, +0, CC)
        ("version ff", format!("ff-{T}-{S}-01"), None),
        ("version ff with suffix", format!("ff-{T}-{S}-01-x"), None),
        ("version 0", format!("0-{T}-{S}-01"), None),
        ("version 000", format!("000-{T}-{S}-01"), None),
        ("version +0", format!("+0-{T}-{S}-01"), None),
        ("version CC", format!("CC-{T}-{S}-01"), None),
        ("version Cc", format!("Cc-{T}-{S}-01"), None),
        ("version non-hex", format!("0g-{T}-{S}-01"), None),
        // version 00 is exactly 55 characters
        ("00 trailing dash", format!("00-{T}-{S}-01-"), None),
        ("00 trailing dot", format!("00-{T}-{S}-01."), None),
        ("00 trailing field", format!("00-{T}-{S}-01-x"), None),
        (
            "higher version, no dash after flags",
            format!("cc-{T}-{S}-01.x"),
            None,
        ),
        (
            "higher version, 3-char flags",
            format!("cc-{T}-{S}-001"),
            None,
        ),
        ("higher version, too short", format!("cc-{T}-{S}-1"), None),
        // field lengths (opentelemetry 0.33 pads 31/16-char trace ids)
        ("31-char trace id", format!("00-{t31}-{S}-01"), None),
        ("16-char trace id", format!("00-{t16}-{S}-01"), None),
        ("33-char trace id", format!("00-{T}0-{S}-01"), None),
        ("15-char parent id", format!("00-{T}-{s15}-01"), None),
        ("17-char parent id", format!("00-{T}-{S}0-01"), None),
        ("1-char flags", format!("00-{T}-{S}-1"), None),
        ("3-char flags", format!("00-{T}-{S}-001"), None),
        // character rules
        ("uppercase trace id", format!("00-{upper_t}-{S}-01"), None),
        (
            "uppercase parent id",
            format!("00-{T}-{}-01", S.to_uppercase().replace("00", "0A")),
            None,
        ),
        ("uppercase flags", format!("00-{T}-{S}-0A"), None),
        ("non-hex trace id", format!("00-{}g-{S}-01", &T[..31]), None),
        ("non-hex flags", format!("00-{T}-{S}-0x"), None),
        (
            "leading + in trace id",
            format!("00-+{}-{S}-01", &T[1..]),
            None,
        ),
        ("leading + in flags", format!("00-{T}-{S}-+1"), None),
        (
            "space inside trace id",
            format!("00- {}-{S}-01", &T[1..]),
            None,
        ),
        (
            "space inside parent id",
            format!("00-{T}- {}-01", &S[1..]),
            None,
        ),
        ("space inside flags", format!("00-{T}-{S}- 1"), None),
        ("all-zero trace id", format!("00-{zeros_t}-{S}-01"), None),
        ("all-zero parent id", format!("00-{T}-{zeros_s}-01"), None),
        ("wrong separators", format!("00_{T}_{S}_01"), None),
        ("empty", String::new(), None),
        ("garbage", "not a traceparent".to_string(), None),
    ];
    for (what, value, expected) in cases {
        let cx = extract(&tp, &[("traceparent", &value)]);
        let got = span_context(&cx);
        match expected {
            Some((t, s, f)) => {
                assert!(got.is_valid(), "{what}: {value:?} should be valid");
                assert!(got.is_remote(), "{what}: extracted context must be remote");
                assert_eq!(
                    hex_ids(&got),
                    (t.to_string(), s.to_string(), f),
                    "{what}: {value:?}"
                );
            }
            None => assert!(
                !got.is_valid(),
                "{what}: {value:?} must be rejected, got {got:?}"
            ),
        }
    }
}

#[test]
fn traceparent_header_name_is_case_insensitive_and_sent_lowercase() {
    let tp = TraceContext::new();
    let value = format!("00-{T}-{S}-01");
    for name in ["traceparent", "TraceParent", "TRACEPARENT"] {
        let cx = extract(&tp, &[(name, &value), ("TraceState", "a=1")]);
        assert!(span_context(&cx).is_valid(), "{name}");
        let out = inject(&tp, &cx);
        // HeaderMap would lowercase anyway; check the propagator's own keys too.
        let mut raw = std::collections::HashMap::new();
        tp.inject_context(&cx, &mut raw);
        assert_eq!(raw.get("traceparent"), Some(&value));
        assert_eq!(raw.get("tracestate").map(String::as_str), Some("a=1"));
        assert_eq!(
            dump(&out),
            pairs(&[("traceparent", &value), ("tracestate", "a=1")])
        );
    }
}

#[test]
fn two_traceparent_headers_are_invalid() {
    let tp = TraceContext::new();
    let a = format!("00-{T}-{S}-01");
    let b = format!("00-{T2}-{S2}-01");
    for (first, second) in [(&a, &a), (&a, &b)] {
        let cx = extract(
            &tp,
            &[
                ("traceparent", first),
                ("traceparent", second),
                ("tracestate", "k=v"),
            ],
        );
        assert!(!span_context(&cx).is_valid(), "{first} + {second}");
        assert!(inject(&tp, &cx).is_empty(), "nothing to continue");
    }
}

#[test]
fn a_binary_header_value_still_counts() {
    let tp = TraceContext::new();
    let valid = HeaderValue::from_str(&format!("00-{T}-{S}-01")).unwrap();
    let binary = HeaderValue::from_bytes(b"00-\xff\xfe").unwrap();
    // Two traceparent headers are invalid even when one is not ASCII.
    for order in [[&valid, &binary], [&binary, &valid]] {
        let mut map = HeaderMap::new();
        for v in order {
            map.append("traceparent", v.clone());
        }
        let cx = tp.extract(&HeaderExtractor(&map));
        assert!(!span_context(&cx).is_valid(), "{order:?}");
    }
    // A tracestate header that is not ASCII is an invalid member: the whole
    // tracestate goes, the traceparent stays.
    let mut map = HeaderMap::new();
    map.append("traceparent", valid.clone());
    map.append("tracestate", HeaderValue::from_static("a=1"));
    map.append("tracestate", HeaderValue::from_bytes(b"b=\xe9").unwrap());
    let cx = tp.extract(&HeaderExtractor(&map));
    assert!(span_context(&cx).is_valid());
    let out = inject(&tp, &cx);
    assert!(out.get("tracestate").is_none());
}

#[test]
fn invalid_traceparent_restarts_the_trace_and_keeps_the_base_context() {
    #[derive(Debug, PartialEq)]
    struct Marker(u32);
    let tp = TraceContext::new();
    let base = Context::new().with_value(Marker(7));
    let map = headers(&[("traceparent", "00-garbage"), ("tracestate", "a=1")]);
    let cx = tp.extract_with_context(&base, &HeaderExtractor(&map));
    assert!(!cx.has_active_span());
    assert_eq!(cx.get::<Marker>(), Some(&Marker(7)));
    assert!(inject(&tp, &cx).is_empty(), "no traceparent, no tracestate");
}

#[test]
fn higher_version_is_sent_onward_as_00() {
    let tp = TraceContext::new();
    for value in [format!("cc-{T}-{S}-01-whatever"), format!("cc-{T}-{S}-01")] {
        let cx = extract(&tp, &[("traceparent", &value)]);
        let out = inject(&tp, &cx);
        assert_eq!(
            dump(&out),
            pairs(&[("traceparent", &format!("00-{T}-{S}-01"))]),
            "{value}"
        );
    }
}

#[test]
fn trace_flags_round_trip_unchanged() {
    let tp = TraceContext::new();
    for flags in ["00", "01", "02", "03", "09", "ff"] {
        let value = format!("00-{T}-{S}-{flags}");
        let cx = extract(&tp, &[("traceparent", &value)]);
        let out = inject(&tp, &cx);
        assert_eq!(
            out["traceparent"],
            value.as_str(),
            "flags {flags} must survive a hop"
        );
    }
}

#[test]
fn traceparent_inject_format() {
    let tp = TraceContext::new();
    let cases = [(0x00u8, "00"), (0x01, "01"), (0x03, "03"), (0x80, "80")];
    for (flags, hex) in cases {
        let out = inject(&tp, &remote(T, S, flags));
        assert_eq!(
            dump(&out),
            pairs(&[("traceparent", &format!("00-{T}-{S}-{hex}"))])
        );
    }
    // A local (non-remote) span context is injected the same way.
    let local = SpanContext::new(
        TraceId::from_hex(T2).unwrap(),
        SpanId::from_hex(S2).unwrap(),
        TraceFlags::SAMPLED,
        false,
        TraceState::NONE,
    );
    let out = inject(&tp, &Context::new().with_remote_span_context(local));
    assert_eq!(out["traceparent"], format!("00-{T2}-{S2}-01").as_str());
}

#[test]
fn no_injection_without_a_valid_span_context() {
    let invalid = Context::new().with_remote_span_context(SpanContext::NONE);
    let with_baggage_only =
        Context::new().with_baggage(vec![opentelemetry::KeyValue::new("k", "v")]);
    let trace_propagators: Vec<(&str, Box<dyn TextMapPropagator>)> = vec![
        ("tracecontext", Box::new(TraceContext::new())),
        ("b3 single", Box::new(B3::single())),
        ("b3 multi", Box::new(B3::multi())),
        ("b3 both", Box::new(B3::single_and_multi())),
        ("b3 default", Box::new(B3::default())),
    ];
    for (name, p) in &trace_propagators {
        for cx in [&Context::new(), &invalid, &with_baggage_only] {
            assert!(
                inject(p.as_ref(), cx).is_empty(),
                "{name} injected without a span context"
            );
        }
    }
    // A B3 decision without ids is not injected either.
    let decision = extract(&B3::single(), &[("b3", "0")]);
    assert!(inject(&B3::single(), &decision).is_empty());
    assert!(inject(&B3::multi(), &decision).is_empty());
    assert!(inject(&Baggage::new(), &Context::new()).is_empty());
}

// ---------------------------------------------------------------------------
// W3C tracestate

fn members(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("k{i}=v{i}")).collect()
}

#[test]
fn tracestate_table() {
    let tp = TraceContext::new();
    let traceparent = format!("00-{T}-{S}-01");
    let m32 = members(32).join(",");
    let m33 = members(33).join(",");
    let m32_head = members(16).join(",");
    let m32_tail = (16..32)
        .map(|i| format!("k{i}=v{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let m33_tail = (16..33)
        .map(|i| format!("k{i}=v{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let m32_with_empties = format!(",{}, ,\t,", members(32).join(" , "));
    let key256 = format!("a{}", "b".repeat(255));
    let key257 = format!("a{}", "b".repeat(256));
    let val256 = "v".repeat(256);
    let val257 = "v".repeat(257);
    let long_ok = format!("{key256}={val256}");
    let key_too_long = format!("{key257}=v");
    let value_too_long = format!("k={val257}");
    let system14 = "tenant@abcdefghijklmn=1";
    let system14_mixed = "congo=t61rcWkgMzE,tenant@abcdefghijklmn=1,rojo=00f067aa0ba902b7";
    // (description, tracestate headers, expected re-injected tracestate or None)
    let cases: Vec<(&str, Vec<&str>, Option<&str>)> = vec![
        (
            "single member",
            vec!["congo=t61rcWkgMzE"],
            Some("congo=t61rcWkgMzE"),
        ),
        (
            "two members",
            vec!["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"],
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ),
        (
            "several headers are combined in order",
            vec!["rojo=00f067aa0ba902b7", "congo=t61rcWkgMzE", "a=1,b=2"],
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,a=1,b=2"),
        ),
        (
            "empty members and OWS are allowed",
            vec![" a=1 ,, \t b=2\t,", ",c=3"],
            Some("a=1,b=2,c=3"),
        ),
        ("value with inner spaces", vec!["a=x y z"], Some("a=x y z")),
        (
            "value with printable punctuation",
            vec!["a=!\"#$%&'()*+-./:;<>?@[\\]^_`{|}~"],
            Some("a=!\"#$%&'()*+-./:;<>?@[\\]^_`{|}~"),
        ),
        ("digit-first key", vec!["0a=1"], Some("0a=1")),
        ("key special chars", vec!["a_-*/b=1"], Some("a_-*/b=1")),
        (
            "tenant@system key",
            vec!["tenant@vendor=1"],
            Some("tenant@vendor=1"),
        ),
        (
            "Level 2: several @ (foo@@bar)",
            vec!["foo@@bar=1"],
            Some("foo@@bar=1"),
        ),
        (
            "Level 2: foo@@bar among others",
            vec!["a=1,foo@@bar=2", "b=3"],
            Some("a=1,foo@@bar=2,b=3"),
        ),
        (
            "14-character system after @",
            vec![system14],
            Some(system14),
        ),
        (
            "14-character system among others",
            vec![system14_mixed],
            Some(system14_mixed),
        ),
        ("32 members kept", vec![m32.as_str()], Some(m32.as_str())),
        (
            "32 members over two headers",
            vec![m32_head.as_str(), m32_tail.as_str()],
            Some(m32.as_str()),
        ),
        (
            "32 members plus empty members",
            vec![m32_with_empties.as_str()],
            Some(m32.as_str()),
        ),
        (
            "256-char key and value",
            vec![long_ok.as_str()],
            Some(long_ok.as_str()),
        ),
        // discarded entirely
        ("33 members discarded entirely", vec![m33.as_str()], None),
        (
            "33 members over two headers",
            vec![m32_head.as_str(), m33_tail.as_str()],
            None,
        ),
        ("empty value foo=", vec!["foo="], None),
        ("foo==bar", vec!["foo==bar"], None),
        ("foo= with valid members", vec!["a=1,foo=,b=2"], None),
        ("foo==bar in a second header", vec!["a=1", "foo==bar"], None),
        ("member without =", vec!["a=1,foo"], None),
        ("key starting with @", vec!["@foo=1"], None),
        ("uppercase key", vec!["Foo=1"], None),
        ("key with dot", vec!["a.b=1"], None),
        ("key starting with _", vec!["_a=1"], None),
        ("empty key", vec!["=1"], None),
        ("257-char key", vec![key_too_long.as_str()], None),
        ("257-char value", vec![value_too_long.as_str()], None),
        ("duplicate keys", vec!["a=1,a=2"], None),
        ("duplicate keys over two headers", vec!["a=1", "a=2"], None),
        // never inject an empty tracestate
        ("empty header", vec![""], None),
        ("only separators", vec![" , ,\t"], None),
    ];
    for (what, states, expected) in cases {
        let mut list: Vec<(&str, &str)> = vec![("traceparent", traceparent.as_str())];
        list.extend(states.iter().map(|s| ("tracestate", *s)));
        let cx = extract(&tp, &list);
        assert!(
            span_context(&cx).is_valid(),
            "{what}: the traceparent stays valid"
        );
        let out = inject(&tp, &cx);
        assert_eq!(out["traceparent"], traceparent.as_str(), "{what}");
        let got: Vec<&str> = out
            .get_all("tracestate")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        match expected {
            Some(state) => assert_eq!(got, vec![state], "{what}"),
            None => assert!(
                got.is_empty(),
                "{what}: expected no tracestate, got {got:?}"
            ),
        }
    }
}

#[test]
fn tracestate_is_readable_from_the_span_context_when_the_api_can_hold_it() {
    let tp = TraceContext::new();
    let cx = extract(
        &tp,
        &[
            ("traceparent", &format!("00-{T}-{S}-01")),
            ("tracestate", "rojo=00f067aa0ba902b7"),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    );
    let sc = span_context(&cx);
    assert_eq!(sc.trace_state().get("rojo"), Some("00f067aa0ba902b7"));
    assert_eq!(sc.trace_state().get("congo"), Some("t61rcWkgMzE"));
}

#[test]
fn tracestate_propagates_at_least_512_characters() {
    let tp = TraceContext::new();
    let state = (0..32)
        .map(|i| format!("key{i}={}", "x".repeat(200)))
        .collect::<Vec<_>>()
        .join(",");
    assert!(state.len() > 512);
    let cx = extract(
        &tp,
        &[
            ("traceparent", &format!("00-{T}-{S}-01")),
            ("tracestate", &state),
        ],
    );
    assert_eq!(inject(&tp, &cx)["tracestate"], state.as_str());
}

#[test]
fn tracestate_without_traceparent_is_discarded() {
    let tp = TraceContext::new();
    for parent in [None, Some("00-bad"), Some(&*format!("ff-{T}-{S}-01"))] {
        let mut list = vec![("tracestate", "a=1")];
        if let Some(p) = parent {
            list.push(("traceparent", p));
        }
        let cx = extract(&tp, &list);
        assert!(!span_context(&cx).is_valid());
        assert!(inject(&tp, &cx).is_empty(), "{parent:?}");
    }
}

#[test]
fn tracestate_inject_from_a_hand_built_span_context() {
    let tp = TraceContext::new();
    // Empty TraceState: no tracestate header at all (opentelemetry 0.33 sends an empty one).
    let out = inject(&tp, &remote(T, S, 1));
    assert!(out.get("tracestate").is_none());
    assert_eq!(out.len(), 1);

    let state =
        TraceState::from_key_value([("rojo", "00f067aa0ba902b7"), ("congo", "t61rcWkgMzE")])
            .unwrap();
    let cx = Context::new().with_remote_span_context(sc(T, S, 1, state));
    let out = inject(&tp, &cx);
    assert_eq!(
        dump(&out),
        pairs(&[
            ("traceparent", &format!("00-{T}-{S}-01")),
            ("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ])
    );
}

#[test]
fn level2_tracestate_follows_its_trace_only() {
    let tp = TraceContext::new();
    let cx = extract(
        &tp,
        &[
            ("traceparent", &format!("00-{T}-{S}-01")),
            ("tracestate", "foo@@bar=1,tenant@abcdefghijklmn=2"),
        ],
    );
    // A child span of the same trace (same trace id, new span id) still sends it.
    let child = cx.with_remote_span_context(sc(T, S2, 1, TraceState::NONE));
    assert_eq!(
        inject(&tp, &child)["tracestate"],
        "foo@@bar=1,tenant@abcdefghijklmn=2"
    );
    // A different trace does not inherit it.
    let other = cx.with_remote_span_context(sc(T2, S2, 1, TraceState::NONE));
    let out = inject(&tp, &other);
    assert_eq!(out["traceparent"], format!("00-{T2}-{S2}-01").as_str());
    assert!(out.get("tracestate").is_none());
}

// ---------------------------------------------------------------------------
// W3C Baggage

#[test]
fn baggage_extract_table() {
    let b = Baggage::new();
    // (description, baggage headers, expected map)
    let cases: Vec<Case<Vec<&str>, Vec<Pair>>> = vec![
        ("simple", vec!["k=v"], vec![("k", "v")]),
        ("value may contain =", vec!["k=a=b"], vec![("k", "a=b")]),
        (
            "value may end with =",
            vec!["k=abc=="],
            vec![("k", "abc==")],
        ),
        ("percent-decoded space", vec!["k=a%20b"], vec![("k", "a b")]),
        ("percent-decoded %", vec!["k=100%25"], vec![("k", "100%")]),
        (
            "percent-decoded comma and semicolon",
            vec!["k=a%2Cb%3Bc"],
            vec![("k", "a,b;c")],
        ),
        ("lowercase escapes", vec!["k=%c3%a9"], vec![("k", "é")]),
        ("UTF-8", vec!["k=%E2%82%AC%F0%9F%98%80"], vec![("k", "€😀")]),
        (
            "invalid UTF-8 becomes U+FFFD",
            vec!["k=%FF"],
            vec![("k", "\u{FFFD}")],
        ),
        (
            "truncated UTF-8 becomes U+FFFD",
            vec!["k=a%E2%82b"],
            vec![("k", "a\u{FFFD}b")],
        ),
        (
            "lone continuation byte",
            vec!["k=%80x"],
            vec![("k", "\u{FFFD}x")],
        ),
        ("+ is a literal plus", vec!["k=a+b"], vec![("k", "a+b")]),
        (
            "OWS around members, keys and values",
            vec![" a = 1 ,\tb\t=\t2\t, c=3 "],
            vec![("a", "1"), ("b", "2"), ("c", "3")],
        ),
        (
            "properties are not part of the value",
            vec!["k=v;p=1;flag"],
            vec![("k", "v")],
        ),
        (
            "all baggage headers are read",
            vec!["a=1", "b=2,c=3", "d=4"],
            vec![("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")],
        ),
        (
            "token key chars",
            vec!["!#$%&'*+-.^_`|~Az09=v"],
            vec![("!#$%&'*+-.^_`|~Az09", "v")],
        ),
        ("empty value", vec!["k="], vec![("k", "")]),
        (
            "empty members are skipped",
            vec![",,a=1,,"],
            vec![("a", "1")],
        ),
        // invalid members are dropped, one by one
        (
            "member without =",
            vec!["a=1,bad,c=3"],
            vec![("a", "1"), ("c", "3")],
        ),
        ("empty key", vec!["a=1,=2"], vec![("a", "1")]),
        ("key with space", vec!["a=1,b c=2"], vec![("a", "1")]),
        (
            "key with separator",
            vec!["a=1,b/c=2,(d)=3"],
            vec![("a", "1")],
        ),
        (
            "value with inner space",
            vec!["a=1,b=x y"],
            vec![("a", "1")],
        ),
        ("value with dquote", vec!["a=1,b=\"q\""], vec![("a", "1")]),
        ("value with backslash", vec!["a=1,b=x\\y"], vec![("a", "1")]),
        ("only garbage", vec!["garbage"], vec![]),
        ("empty header", vec![""], vec![]),
    ];
    for (what, values, expected) in cases {
        let list: Vec<(&str, &str)> = values.iter().map(|v| ("baggage", *v)).collect();
        let cx = extract(&b, &list);
        let expected: BTreeMap<String, String> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(baggage_map(&cx), expected, "{what}: {values:?}");
        assert!(!cx.has_active_span(), "baggage alone has no span");
    }
}

/// Percent-encoding can make a value three times longer than it arrived
/// (a lone `%` is kept as is, and sent as `%25`): a member that would take
/// the header past 8192 bytes is left out whole, the others still go.
#[test]
fn injected_baggage_stays_within_the_limit() {
    let incoming = format!("k={},small=1", "%".repeat(8000));
    let cx = extract(&Baggage::new(), &[("baggage", incoming.as_str())]);
    assert_eq!(cx.baggage().len(), 2, "both members arrive");
    let out = inject(&Baggage::new(), &cx);
    let header = out["baggage"].to_str().unwrap();
    assert!(header.len() <= 8192, "{} bytes", header.len());
    assert_eq!(header, "small=1");
}

#[test]
fn baggage_properties_are_kept_as_metadata() {
    let cx = extract(&Baggage::new(), &[("baggage", "k=v;p=1;flag, other=x")]);
    let (value, metadata) = cx.baggage().get_with_metadata("k").unwrap();
    assert_eq!(value.as_str(), "v");
    assert_eq!(metadata.as_str(), "p=1;flag");
    let out = inject(&Baggage::new(), &cx);
    let header = out["baggage"].to_str().unwrap();
    let mut parts: Vec<&str> = header.split(',').collect();
    parts.sort();
    assert_eq!(parts, ["k=v;p=1;flag", "other=x"]);
}

#[test]
fn baggage_header_that_is_not_ascii_is_skipped_but_others_are_read() {
    let mut map = HeaderMap::new();
    map.append(
        "baggage",
        HeaderValue::from_bytes("a=\u{e9}".as_bytes()).unwrap(),
    );
    map.append("baggage", HeaderValue::from_static("b=2"));
    let cx = Baggage::new().extract(&HeaderExtractor(&map));
    assert_eq!(
        baggage_map(&cx),
        BTreeMap::from([("b".to_string(), "2".to_string())])
    );
}

#[test]
fn baggage_member_limit_drops_whole_members() {
    let b = Baggage::new();
    assert_eq!(BAGGAGE_MAX_MEMBERS, 64);
    let all: Vec<String> = (0..70).map(|i| format!("k{i}=v{i}")).collect();
    // One header with 70 members, and the same members spread over 3 headers.
    let one = all.join(",");
    let split = [
        all[..30].join(","),
        all[30..64].join(","),
        all[64..].join(","),
    ];
    for list in [
        vec![one.as_str()],
        split.iter().map(String::as_str).collect(),
    ] {
        let headers: Vec<(&str, &str)> = list.iter().map(|v| ("baggage", *v)).collect();
        let got = baggage_map(&extract(&b, &headers));
        assert_eq!(got.len(), 64);
        for i in 0..64 {
            assert_eq!(
                got.get(&format!("k{i}")).map(String::as_str),
                Some(&*format!("v{i}"))
            );
        }
        assert!(!got.contains_key("k64"));
    }
}

#[test]
fn baggage_byte_limit_drops_whole_members() {
    let b = Baggage::new();
    assert_eq!(BAGGAGE_MAX_BYTES, 8192);
    let big = "x".repeat(8000);
    let second = "y".repeat(300);
    let first = format!("a={big}");
    let overflow = format!("b={second}");
    for list in [
        vec![format!("{first},{overflow}")],
        vec![first.clone(), overflow.clone()],
    ] {
        let headers: Vec<(&str, &str)> = list.iter().map(|v| ("baggage", v.as_str())).collect();
        let got = baggage_map(&extract(&b, &headers));
        assert_eq!(got.get("a"), Some(&big), "the first member is kept whole");
        assert!(
            !got.contains_key("b"),
            "the member past 8192 bytes is dropped whole"
        );
        for (k, v) in &got {
            assert!(v == &big || !v.contains('y'), "no truncated member: {k}");
        }
        let total: usize = got.iter().map(|(k, v)| k.len() + 1 + v.len()).sum();
        assert!(total <= 8192, "kept {total} bytes");
    }
    // A single member over the limit is dropped, never cut.
    let huge = format!("h={}", "z".repeat(9000));
    let got = baggage_map(&extract(&b, &[("baggage", &huge), ("baggage", "small=1")]));
    assert!(!got.contains_key("h"));
    assert_eq!(got.get("small").map(String::as_str), Some("1"));
}

#[test]
fn baggage_inject_percent_encodes() {
    let b = Baggage::new();
    // (value, encoded)
    let cases = [
        ("plain", "plain"),
        ("a b", "a%20b"),
        ("100%", "100%25"),
        ("%20", "%2520"),
        ("a=b", "a=b"),
        ("a,b;c", "a%2Cb%3Bc"),
        ("q\"b\\s", "q%22b%5Cs"),
        ("é€", "%C3%A9%E2%82%AC"),
        ("tab\there", "tab%09here"),
        ("a+b", "a+b"),
        ("", ""),
    ];
    for (value, encoded) in cases {
        let cx =
            Context::new().with_baggage(vec![opentelemetry::KeyValue::new("k", value.to_string())]);
        let out = inject(&b, &cx);
        assert_eq!(out["baggage"], format!("k={encoded}").as_str(), "{value:?}");
        // and back
        assert_eq!(
            baggage_map(&extract(&b, &[("baggage", &format!("k={encoded}"))]))["k"],
            value
        );
    }
    assert!(
        inject(&b, &Context::new()).is_empty(),
        "no baggage, no header"
    );
}

#[test]
fn baggage_round_trip_with_special_characters() {
    let b = Baggage::new();
    let entries = [
        ("user", "Jane Doe"),
        ("expr", "x=1&y=2"),
        ("pct", "50% off, 100%25 sure"),
        ("unicode", "naïve café ☕ 日本"),
        ("semi", "a;b"),
        ("quote", "\"'"),
        ("ctrl", "\u{0}\u{1f}\u{7f}"),
    ];
    let cx = Context::new().with_baggage(
        entries
            .iter()
            .map(|(k, v)| opentelemetry::KeyValue::new(*k, v.to_string()))
            .collect::<Vec<_>>(),
    );
    let out = inject(&b, &cx);
    let header = out["baggage"].to_str().unwrap();
    assert!(!header.contains(' '));
    let back = baggage_map(&b.extract(&HeaderExtractor(&out)));
    let expected: BTreeMap<String, String> = entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(back, expected);
}

// ---------------------------------------------------------------------------
// B3

fn b3_debug_reinjected(cx: &Context) -> bool {
    inject(&B3::single(), cx)
        .get("b3")
        .is_some_and(|v| v.to_str().unwrap().ends_with("-d"))
}

#[test]
fn b3_single_extract_table() {
    let padded_t16 = format!("0000000000000000{}", &T[..16]);
    let t16 = &T[..16];
    // (description, b3 value, expected (trace, span, sampled, debug) or None)
    let cases: Vec<Case<String, Option<B3Expect>>> = vec![
        ("sampled", format!("{T}-{S}-1"), Some((T, S, true, false))),
        (
            "not sampled",
            format!("{T}-{S}-0"),
            Some((T, S, false, false)),
        ),
        (
            "debug (id-id-d) is accepted and sampled",
            format!("{T}-{S}-d"),
            Some((T, S, true, true)),
        ),
        (
            "with parent span id",
            format!("{T}-{S}-1-{S2}"),
            Some((T, S, true, false)),
        ),
        (
            "debug with parent span id",
            format!("{T}-{S}-d-{S2}"),
            Some((T, S, true, true)),
        ),
        (
            "64-bit trace id is padded",
            format!("{t16}-{S}-1"),
            Some((&padded_t16, S, true, false)),
        ),
        ("OWS", format!("  {T}-{S}-1 "), Some((T, S, true, false))),
        // invalid
        (
            "uppercase trace id",
            format!("{}-{S}-1", T.to_uppercase()),
            None,
        ),
        ("31-char trace id", format!("{}-{S}-1", &T[1..]), None),
        ("20-char trace id", format!("{}-{S}-1", &T[..20]), None),
        ("15-char span id", format!("{T}-{}-1", &S[1..]), None),
        ("32-char span id", format!("{T}-{T}-1"), None),
        (
            "all-zero trace id",
            format!("{}-{S}-1", "0".repeat(32)),
            None,
        ),
        (
            "all-zero span id",
            format!("{T}-{}-1", "0".repeat(16)),
            None,
        ),
        ("bad sampling state", format!("{T}-{S}-x"), None),
        (
            "true is not a single-header state",
            format!("{T}-{S}-true"),
            None,
        ),
        ("bad parent id", format!("{T}-{S}-1-xyz"), None),
        ("too many fields", format!("{T}-{S}-1-{S2}-x"), None),
        ("trace id only", T.to_string(), None),
        ("empty", String::new(), None),
        ("bare dash", "-".to_string(), None),
    ];
    for (what, value, expected) in cases {
        let cx = extract(&B3::single(), &[("b3", &value)]);
        let got = span_context(&cx);
        match expected {
            Some((t, s, sampled, debug)) => {
                assert!(got.is_valid(), "{what}: {value:?}");
                assert!(got.is_remote());
                assert_eq!(got.trace_id().to_string(), t, "{what}");
                assert_eq!(got.span_id().to_string(), s, "{what}");
                assert_eq!(got.is_sampled(), sampled, "{what}");
                assert_eq!(
                    got.trace_flags().to_u8() & !1,
                    0,
                    "{what}: B3 sets no W3C bits other than sampled"
                );
                assert_eq!(b3_debug_reinjected(&cx), debug, "{what}: debug");
                assert!(
                    cx.get::<B3Decision>().is_none(),
                    "{what}: ids present, no bare decision"
                );
            }
            None => {
                assert!(!got.is_valid(), "{what}: {value:?} must be rejected");
                assert!(cx.get::<B3Decision>().is_none(), "{what}");
            }
        }
    }
}

#[test]
fn b3_ids_without_sampling_state_are_accepted() {
    // Sampling state omitted ("deferred"): valid ids; the decision is left to
    // the receiver, so only the ids are checked here.
    let cx = extract(&B3::single(), &[("b3", &format!("{T}-{S}"))]);
    let got = span_context(&cx);
    assert!(got.is_valid());
    assert_eq!(
        (got.trace_id().to_string(), got.span_id().to_string()),
        (T.to_string(), S.to_string())
    );
}

#[test]
fn b3_decision_alone_is_kept_without_a_span_context() {
    // (headers, expected decision)
    let cases: Vec<(Vec<(&str, &str)>, B3Decision)> = vec![
        (vec![("b3", "0")], B3Decision::NotSampled),
        (vec![("b3", "1")], B3Decision::Sampled),
        (vec![("b3", "d")], B3Decision::Debug),
        (vec![("b3", " 0 ")], B3Decision::NotSampled),
        (vec![("x-b3-sampled", "0")], B3Decision::NotSampled),
        (vec![("x-b3-sampled", "false")], B3Decision::NotSampled),
        (vec![("x-b3-sampled", "1")], B3Decision::Sampled),
        (vec![("x-b3-sampled", "true")], B3Decision::Sampled),
        (vec![("x-b3-flags", "1")], B3Decision::Debug),
        (
            vec![("x-b3-flags", "1"), ("x-b3-sampled", "0")],
            B3Decision::Debug,
        ),
    ];
    for propagator in [B3::single(), B3::multi(), B3::single_and_multi()] {
        for (list, decision) in &cases {
            let cx = extract(&propagator, list);
            assert!(!cx.has_active_span(), "{list:?}: no ids, no span context");
            assert!(!span_context(&cx).is_valid(), "{list:?}");
            assert_eq!(cx.get::<B3Decision>(), Some(decision), "{list:?}");
        }
    }
}

#[test]
fn b3_multi_extract_table() {
    let upper_t = T.to_uppercase();
    let t16 = &T[..16];
    let padded = format!("0000000000000000{t16}");
    // (description, headers, expected (trace, span, sampled, debug) or None)
    let cases: Vec<Case<Vec<Pair>, Option<B3Expect>>> = vec![
        (
            "sampled 1",
            vec![
                ("x-b3-traceid", T),
                ("x-b3-spanid", S),
                ("x-b3-sampled", "1"),
            ],
            Some((T, S, true, false)),
        ),
        (
            "sampled 0",
            vec![
                ("x-b3-traceid", T),
                ("x-b3-spanid", S),
                ("x-b3-sampled", "0"),
            ],
            Some((T, S, false, false)),
        ),
        (
            "sampled true",
            vec![
                ("x-b3-traceid", T),
                ("x-b3-spanid", S),
                ("x-b3-sampled", "true"),
            ],
            Some((T, S, true, false)),
        ),
        (
            "sampled false",
            vec![
                ("x-b3-traceid", T),
                ("x-b3-spanid", S),
                ("x-b3-sampled", "false"),
            ],
            Some((T, S, false, false)),
        ),
        (
            "flags 1 is debug",
            vec![("x-b3-traceid", T), ("x-b3-spanid", S), ("x-b3-flags", "1")],
            Some((T, S, true, true)),
        ),
        (
            "debug implies sampled even with sampled 0",
            vec![
                ("x-b3-traceid", T),
                ("x-b3-spanid", S),
                ("x-b3-sampled", "0"),
                ("x-b3-flags", "1"),
            ],
            Some((T, S, true, true)),
        ),
        (
            "parent span id is accepted and ignored",
            vec![
                ("x-b3-traceid", T),
                ("x-b3-spanid", S),
                ("x-b3-parentspanid", S2),
                ("x-b3-sampled", "1"),
            ],
            Some((T, S, true, false)),
        ),
        (
            "64-bit trace id is padded",
            vec![
                ("x-b3-traceid", t16),
                ("x-b3-spanid", S),
                ("x-b3-sampled", "1"),
            ],
            Some((&padded, S, true, false)),
        ),
        (
            "header names are case-insensitive",
            vec![
                ("X-B3-TraceId", T),
                ("X-B3-SpanId", S),
                ("X-B3-Sampled", "1"),
            ],
            Some((T, S, true, false)),
        ),
        // invalid
        (
            "trace id only",
            vec![("x-b3-traceid", T), ("x-b3-sampled", "1")],
            None,
        ),
        (
            "span id only",
            vec![("x-b3-spanid", S), ("x-b3-sampled", "1")],
            None,
        ),
        (
            "uppercase trace id",
            vec![("x-b3-traceid", &upper_t), ("x-b3-spanid", S)],
            None,
        ),
        (
            "short span id",
            vec![("x-b3-traceid", T), ("x-b3-spanid", &S[1..])],
            None,
        ),
        (
            "bad sampled value",
            vec![
                ("x-b3-traceid", T),
                ("x-b3-spanid", S),
                ("x-b3-sampled", "yes"),
            ],
            None,
        ),
    ];
    for (what, list, expected) in cases {
        for propagator in [B3::single(), B3::multi()] {
            let cx = extract(&propagator, &list);
            let got = span_context(&cx);
            match expected {
                Some((t, s, sampled, debug)) => {
                    assert!(got.is_valid(), "{what}");
                    assert_eq!(got.trace_id().to_string(), t, "{what}");
                    assert_eq!(got.span_id().to_string(), s, "{what}");
                    assert_eq!(got.is_sampled(), sampled, "{what}");
                    assert_eq!(b3_debug_reinjected(&cx), debug, "{what}: debug");
                }
                None => assert!(!got.is_valid(), "{what} must be rejected"),
            }
        }
    }
}

#[test]
fn b3_single_header_wins_over_multi_and_falls_back() {
    let multi = [
        ("x-b3-traceid", T2),
        ("x-b3-spanid", S2),
        ("x-b3-sampled", "0"),
    ];
    let single = format!("{T}-{S}-1");
    let mut list = vec![("b3", single.as_str())];
    list.extend(multi);
    let got = span_context(&extract(&B3::multi(), &list));
    assert_eq!(
        got.trace_id().to_string(),
        T,
        "single first, whatever the injection setting"
    );
    assert!(got.is_sampled());

    let mut list = vec![("b3", "garbage")];
    list.extend(multi);
    let got = span_context(&extract(&B3::single(), &list));
    assert_eq!(
        got.trace_id().to_string(),
        T2,
        "invalid single header: fall back to multi"
    );
    assert!(!got.is_sampled());
}

#[test]
fn b3_inject_table() {
    let t16 = &T[..16];
    let padded = format!("0000000000000000{t16}");
    let sampled = remote(T, S, 0x01);
    let unsampled = remote(T, S, 0x00);
    let random_bit = remote(T, S, 0x03);
    let short_id = remote(&padded, S, 0x01);
    let debug = extract(&B3::single(), &[("b3", &format!("{T}-{S}-d"))]);
    let debug_multi = extract(
        &B3::multi(),
        &[("x-b3-traceid", T), ("x-b3-spanid", S), ("x-b3-flags", "1")],
    );
    let ts = |f: &str| format!("{T}-{S}-{f}");
    let (b3_1, b3_0, b3_d) = (ts("1"), ts("0"), ts("d"));
    let b3_short = format!("{padded}-{S}-1");
    let single = B3::single();
    let default = B3::default();
    let multi = B3::multi();
    let both = B3::single_and_multi();
    // (description, propagator, context, exact expected headers)
    let cases: Vec<(&str, &B3, &Context, Vec<Pair>)> = vec![
        ("single sampled", &single, &sampled, vec![("b3", &b3_1)]),
        ("default is single", &default, &sampled, vec![("b3", &b3_1)]),
        (
            "single not sampled",
            &single,
            &unsampled,
            vec![("b3", &b3_0)],
        ),
        (
            "single: only the sampled bit",
            &single,
            &random_bit,
            vec![("b3", &b3_1)],
        ),
        (
            "single debug is re-sent as d",
            &single,
            &debug,
            vec![("b3", &b3_d)],
        ),
        (
            "single debug from multi",
            &single,
            &debug_multi,
            vec![("b3", &b3_d)],
        ),
        (
            "single 64-bit id sent padded",
            &single,
            &short_id,
            vec![("b3", &b3_short)],
        ),
        (
            "multi sampled",
            &multi,
            &sampled,
            vec![
                ("x-b3-traceid", T),
                ("x-b3-spanid", S),
                ("x-b3-sampled", "1"),
            ],
        ),
        (
            "multi not sampled",
            &multi,
            &unsampled,
            vec![
                ("x-b3-traceid", T),
                ("x-b3-spanid", S),
                ("x-b3-sampled", "0"),
            ],
        ),
        (
            "multi debug: flags 1 and no sampled",
            &multi,
            &debug,
            vec![("x-b3-traceid", T), ("x-b3-spanid", S), ("x-b3-flags", "1")],
        ),
        (
            "both sampled",
            &both,
            &sampled,
            vec![
                ("b3", &b3_1),
                ("x-b3-traceid", T),
                ("x-b3-spanid", S),
                ("x-b3-sampled", "1"),
            ],
        ),
        (
            "both debug",
            &both,
            &debug,
            vec![
                ("b3", &b3_d),
                ("x-b3-traceid", T),
                ("x-b3-spanid", S),
                ("x-b3-flags", "1"),
            ],
        ),
    ];
    for (what, propagator, cx, expected) in cases {
        let out = inject(propagator, cx);
        assert_eq!(dump(&out), pairs(&expected), "{what}");
        assert!(
            out.get("x-b3-parentspanid").is_none(),
            "{what}: never parentspanid"
        );
    }
}

#[test]
fn b3_debug_does_not_leak_to_another_trace() {
    let debug = extract(&B3::single(), &[("b3", &format!("{T}-{S}-d"))]);
    let other = debug.with_remote_span_context(sc(T2, S2, 1, TraceState::NONE));
    assert_eq!(
        inject(&B3::single(), &other)["b3"],
        format!("{T2}-{S2}-1").as_str()
    );
    assert_eq!(
        dump(&inject(&B3::multi(), &other)),
        pairs(&[
            ("x-b3-traceid", T2),
            ("x-b3-spanid", S2),
            ("x-b3-sampled", "1")
        ])
    );
}

#[test]
fn b3_round_trips_through_its_own_headers() {
    for propagator in [B3::single(), B3::multi(), B3::single_and_multi()] {
        for (flags, debug) in [(0u8, false), (1, false), (1, true)] {
            let cx = if debug {
                extract(&B3::single(), &[("b3", &format!("{T}-{S}-d"))])
            } else {
                remote(T, S, flags)
            };
            let out = inject(&propagator, &cx);
            let back = propagator.extract(&HeaderExtractor(&out));
            let got = span_context(&back);
            assert_eq!(hex_ids(&got), (T.to_string(), S.to_string(), flags));
            assert_eq!(b3_debug_reinjected(&back), debug);
        }
    }
}

// ---------------------------------------------------------------------------
// fields()

#[test]
fn fields_equal_what_is_injected() {
    let state = TraceState::from_key_value([("a", "1")]).unwrap();
    let bag = || vec![opentelemetry::KeyValue::new("k", "v")];
    let contexts = vec![
        Context::new()
            .with_remote_span_context(sc(T, S, 1, state))
            .with_baggage(bag()),
        remote(T, S, 0),
        extract(&B3::single(), &[("b3", &format!("{T}-{S}-d"))]),
        Context::new().with_baggage(bag()),
    ];
    let mut propagators: Vec<(&str, Box<dyn TextMapPropagator>)> = vec![
        ("tracecontext", Box::new(TraceContext::new())),
        ("baggage", Box::new(Baggage::new())),
        ("b3 single", Box::new(B3::single())),
        ("b3 multi", Box::new(B3::multi())),
        ("b3 both", Box::new(B3::single_and_multi())),
        ("w3c", Box::new(CompositePropagator::w3c())),
    ];
    for value in [
        "tracecontext,baggage,b3,b3multi",
        "b3multi,tracecontext",
        "none",
    ] {
        propagators.push((value, Box::new(from_env_value(Some(value)))));
    }
    for (name, p) in &propagators {
        let fields = field_set(p.as_ref());
        let mut injected = BTreeSet::new();
        for cx in &contexts {
            let out = inject(p.as_ref(), cx);
            for key in out.keys() {
                assert!(
                    fields.contains(key.as_str()),
                    "{name}: injected {key} not in fields {fields:?}"
                );
                injected.insert(key.as_str().to_string());
            }
        }
        assert_eq!(
            injected, fields,
            "{name}: fields() must list exactly what is injected"
        );
    }
    assert_eq!(
        field_list(&TraceContext::new()),
        ["traceparent", "tracestate"]
    );
    assert_eq!(field_list(&Baggage::new()), ["baggage"]);
    assert_eq!(field_list(&B3::single()), ["b3"]);
    assert_eq!(field_list(&B3::default()), ["b3"]);
    assert_eq!(
        field_set(&B3::multi()),
        BTreeSet::from(
            ["x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags"].map(String::from)
        )
    );
    assert!(!field_set(&B3::single_and_multi()).contains("x-b3-parentspanid"));
}

// ---------------------------------------------------------------------------
// composite and OTEL_PROPAGATORS

#[test]
fn composite_later_valid_result_wins() {
    let tp_value = format!("00-{T}-{S}-01");
    let b3_value = format!("{T2}-{S2}-0");
    let both = [
        ("traceparent", tp_value.as_str()),
        ("tracestate", "a=1"),
        ("b3", b3_value.as_str()),
    ];

    let b3_then_w3c =
        CompositePropagator::new(vec![Box::new(B3::single()), Box::new(TraceContext::new())]);
    let w3c_then_b3 =
        CompositePropagator::new(vec![Box::new(TraceContext::new()), Box::new(B3::single())]);

    let got = span_context(&extract(&b3_then_w3c, &both));
    assert_eq!(hex_ids(&got), (T.to_string(), S.to_string(), 1));
    assert_eq!(got.trace_state().header(), "a=1");

    let got = span_context(&extract(&w3c_then_b3, &both));
    assert_eq!(hex_ids(&got), (T2.to_string(), S2.to_string(), 0));

    // A later propagator that finds nothing (or garbage) leaves the earlier result.
    let broken = [("traceparent", "00-garbage"), ("b3", b3_value.as_str())];
    let got = span_context(&extract(&b3_then_w3c, &broken));
    assert_eq!(hex_ids(&got), (T2.to_string(), S2.to_string(), 0));
    let got = span_context(&extract(
        &w3c_then_b3,
        &[("traceparent", tp_value.as_str()), ("b3", "garbage")],
    ));
    assert_eq!(hex_ids(&got), (T.to_string(), S.to_string(), 1));

    // Injection runs every propagator.
    let out = inject(&b3_then_w3c, &remote(T, S, 1));
    assert_eq!(
        dump(&out),
        pairs(&[("b3", &format!("{T}-{S}-1")), ("traceparent", &tp_value)])
    );
}

#[test]
fn composite_w3c_extracts_trace_and_baggage() {
    let cx = extract(
        &CompositePropagator::w3c(),
        &[
            ("traceparent", &format!("00-{T}-{S}-03")),
            ("baggage", "k=a%20b"),
            ("baggage", "x=y=z"),
        ],
    );
    assert_eq!(
        hex_ids(&span_context(&cx)),
        (T.to_string(), S.to_string(), 3)
    );
    assert_eq!(
        baggage_map(&cx),
        BTreeMap::from([
            ("k".to_string(), "a b".to_string()),
            ("x".to_string(), "y=z".to_string())
        ])
    );
    assert_eq!(
        field_list(&CompositePropagator::w3c()),
        ["traceparent", "tracestate", "baggage"]
    );
}

#[test]
fn from_env_value_table() {
    let w3c = vec!["traceparent", "tracestate", "baggage"];
    let multi = vec!["x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags"];
    // (value, expected fields in order)
    let cases: Vec<(Option<&str>, Vec<&str>)> = vec![
        (None, w3c.clone()),
        (Some(""), w3c.clone()),
        (Some("  "), w3c.clone()),
        (Some("tracecontext,baggage"), w3c.clone()),
        (Some("TraceContext,BAGGAGE"), w3c.clone()),
        (Some(" tracecontext , baggage "), w3c.clone()),
        (Some("tracecontext"), vec!["traceparent", "tracestate"]),
        (Some("baggage"), vec!["baggage"]),
        (Some("b3"), vec!["b3"]),
        (Some("B3"), vec!["b3"]),
        (Some("b3multi"), multi.clone()),
        (Some("B3Multi"), multi.clone()),
        (Some("b3,b3, B3 ,b3"), vec!["b3"]),
        (
            Some("tracecontext,TRACECONTEXT,baggage,tracecontext"),
            w3c.clone(),
        ),
        (
            Some("b3,tracecontext"),
            vec!["b3", "traceparent", "tracestate"],
        ),
        (
            Some("tracecontext,b3"),
            vec!["traceparent", "tracestate", "b3"],
        ),
        (Some("jaeger,b3multi"), multi.clone()),
        (Some("xray,ottrace,tracecontxt,baggage"), vec!["baggage"]),
        (Some("jaeger"), vec![]),
        (Some("none"), vec![]),
        (Some("NONE"), vec![]),
        (
            Some("b3,,tracecontext,"),
            vec!["b3", "traceparent", "tracestate"],
        ),
    ];
    for (value, expected) in cases {
        let p = from_env_value(value);
        assert_eq!(field_list(&p), expected, "{value:?}");
    }
}

#[test]
fn from_env_value_order_decides_which_valid_result_wins() {
    let both = [
        ("traceparent", format!("00-{T}-{S}-01")),
        ("b3", format!("{T2}-{S2}-1")),
    ];
    let list: Vec<(&str, &str)> = both.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let got = span_context(&extract(&from_env_value(Some("b3,tracecontext")), &list));
    assert_eq!(
        got.trace_id().to_string(),
        T,
        "tracecontext listed last wins"
    );
    let got = span_context(&extract(&from_env_value(Some("tracecontext,b3")), &list));
    assert_eq!(got.trace_id().to_string(), T2, "b3 listed last wins");
    // `none` propagates nothing.
    let none = from_env_value(Some("none"));
    assert!(!extract(&none, &list).has_active_span());
    assert!(inject(&none, &remote(T, S, 1)).is_empty());
    // Unknown names are ignored, never an error.
    let got = span_context(&extract(&from_env_value(Some("jaeger,xray,b3")), &list));
    assert_eq!(got.trace_id().to_string(), T2);
}

// ---------------------------------------------------------------------------
// HPACK: per-request ids are never indexed

#[test]
fn per_request_ids_are_marked_never_indexed() {
    let cx = remote(T, S, 1).with_baggage([opentelemetry::KeyValue::new("k", "v")]);
    let cx = {
        let sc = span_context(&cx);
        let state = TraceState::from_key_value([("vendor", "x")]).unwrap();
        cx.with_remote_span_context(SpanContext::new(
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags(),
            true,
            state,
        ))
    };
    let composite = CompositePropagator::new(vec![
        Box::new(TraceContext::new()),
        Box::new(Baggage::new()),
        Box::new(B3::single_and_multi()),
    ]);
    let map = inject(&composite, &cx);
    for unique in ["traceparent", "b3", "x-b3-traceid", "x-b3-spanid"] {
        let value = map
            .get(unique)
            .unwrap_or_else(|| panic!("{unique} injected"));
        assert!(value.is_sensitive(), "{unique} is never indexed");
    }
    // Values that repeat from request to request stay indexable.
    for repeated in ["tracestate", "baggage"] {
        let value = map
            .get(repeated)
            .unwrap_or_else(|| panic!("{repeated} injected"));
        assert!(!value.is_sensitive(), "{repeated} stays indexable");
    }
    // Marking changes nothing on the wire but the HPACK representation.
    assert_eq!(
        map.get("traceparent").unwrap(),
        &format!("00-{T}-{S}-01")[..]
    );
}
