//! Interop driver for `otel_tower::propagation`, used by
//! `tests/interop/propagation.py` to check our propagators against an
//! independent implementation (Python's opentelemetry).
//!
//! Reads one JSON request (or an array of them) from stdin and writes the
//! answer (or an array of answers) to stdout as JSON.
//!
//! `propagator` is `tracecontext`, `baggage`, `b3` (single header), `b3multi`,
//! or a comma-separated list of them, read like `OTEL_PROPAGATORS`.
//!
//! Inject:
//! ```json
//! {"mode": "inject", "propagator": "tracecontext",
//!  "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
//!  "flags": 1, "tracestate": "congo=t61rcWkgMzE", "baggage": {"k": "v"},
//!  "b3_debug": false}
//! ```
//! answers `{"headers": [["traceparent", "00-…"], …]}`. `trace_id`/`span_id`
//! may be omitted (no span context: only baggage is sent); `b3_debug` marks
//! the trace as a B3 debug trace, as if it had arrived with `b3: …-d`.
//!
//! Extract:
//! ```json
//! {"mode": "extract", "propagator": "b3", "headers": [["b3", "…"], ["tracestate", "a=1"], ["tracestate", "b=2"]]}
//! ```
//! (names may repeat) answers `{"valid", "trace_id", "span_id", "flags",
//! "sampled", "remote", "tracestate", "baggage", "b3_decision", "reinjected"}`,
//! where `reinjected` is what the same propagator sends onward.
//!
//! A malformed request answers `{"error": "…"}` and the process exits with 2.

use std::collections::BTreeMap;
use std::io::Read;
use std::str::FromStr;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use otel_tower::propagation::{
    B3, B3Decision, CompositePropagator, HeaderExtractor, HeaderInjector, from_env_value,
};
use serde_json::{Map, Value, json};

const KNOWN: [&str; 4] = ["tracecontext", "baggage", "b3", "b3multi"];

fn propagator(request: &Value) -> Result<CompositePropagator, String> {
    let name = request
        .get("propagator")
        .and_then(Value::as_str)
        .ok_or("missing \"propagator\"")?;
    for part in name.split(',') {
        let part = part.trim().to_ascii_lowercase();
        if !KNOWN.contains(&part.as_str()) {
            return Err(format!("unknown propagator {part:?}"));
        }
    }
    Ok(from_env_value(Some(name)))
}

fn headers_json(map: &HeaderMap) -> Value {
    Value::Array(
        map.iter()
            .map(|(k, v)| json!([k.as_str(), String::from_utf8_lossy(v.as_bytes())]))
            .collect(),
    )
}

fn inject(request: &Value) -> Result<Value, String> {
    let propagator = propagator(request)?;
    let str_field = |name: &str| request.get(name).and_then(Value::as_str);
    let mut cx = Context::new();
    if let (Some(trace), Some(span)) = (str_field("trace_id"), str_field("span_id")) {
        let trace_id = TraceId::from_hex(trace).map_err(|e| format!("trace_id: {e}"))?;
        let span_id = SpanId::from_hex(span).map_err(|e| format!("span_id: {e}"))?;
        let flags = request.get("flags").and_then(Value::as_u64).unwrap_or(0);
        let flags = u8::try_from(flags).map_err(|_| "flags: not a byte".to_string())?;
        let state = match str_field("tracestate") {
            Some(s) => TraceState::from_str(s).map_err(|e| format!("tracestate: {e}"))?,
            None => TraceState::NONE,
        };
        if request.get("b3_debug").and_then(Value::as_bool) == Some(true) {
            // The only way into a B3 debug trace is to receive one.
            let mut incoming = HeaderMap::new();
            let value = format!("{trace}-{span}-d");
            incoming.insert(
                "b3",
                HeaderValue::from_str(&value).map_err(|e| e.to_string())?,
            );
            cx = B3::single().extract(&HeaderExtractor(&incoming));
        } else {
            let sc = SpanContext::new(trace_id, span_id, TraceFlags::new(flags), true, state);
            cx = cx.with_remote_span_context(sc);
        }
    }
    if let Some(baggage) = request.get("baggage").and_then(Value::as_object) {
        let mut entries = Vec::new();
        for (k, v) in baggage {
            let v = v
                .as_str()
                .ok_or_else(|| format!("baggage {k:?}: not a string"))?;
            entries.push(KeyValue::new(k.clone(), v.to_string()));
        }
        cx = cx.with_baggage(entries);
    }
    let mut map = HeaderMap::new();
    propagator.inject_context(&cx, &mut HeaderInjector(&mut map));
    Ok(json!({ "headers": headers_json(&map) }))
}

fn extract(request: &Value) -> Result<Value, String> {
    let propagator = propagator(request)?;
    let list = request
        .get("headers")
        .and_then(Value::as_array)
        .ok_or("missing \"headers\"")?;
    let mut map = HeaderMap::new();
    for pair in list {
        let (Some(name), Some(value)) = (
            pair.get(0).and_then(Value::as_str),
            pair.get(1).and_then(Value::as_str),
        ) else {
            return Err(format!("header {pair}: expected [name, value]"));
        };
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("{name:?}: {e}"))?;
        let value = HeaderValue::from_str(value).map_err(|e| format!("{value:?}: {e}"))?;
        map.append(name, value);
    }
    let cx = propagator.extract(&HeaderExtractor(&map));
    let span = cx.span();
    let sc = span.span_context();
    let baggage: BTreeMap<String, String> = cx
        .baggage()
        .iter()
        .map(|(k, (v, _))| (k.as_str().to_string(), v.as_str().to_string()))
        .collect();
    let decision = cx.get::<B3Decision>().map(|d| match d {
        B3Decision::NotSampled => "0",
        B3Decision::Sampled => "1",
        B3Decision::Debug => "d",
    });
    let mut reinjected = HeaderMap::new();
    propagator.inject_context(&cx, &mut HeaderInjector(&mut reinjected));
    let mut out = Map::new();
    out.insert("valid".into(), json!(sc.is_valid()));
    if sc.is_valid() {
        out.insert("trace_id".into(), json!(sc.trace_id().to_string()));
        out.insert("span_id".into(), json!(sc.span_id().to_string()));
        out.insert("flags".into(), json!(sc.trace_flags().to_u8()));
        out.insert("sampled".into(), json!(sc.is_sampled()));
        out.insert("remote".into(), json!(sc.is_remote()));
        out.insert("tracestate".into(), json!(sc.trace_state().header()));
    }
    out.insert("baggage".into(), json!(baggage));
    out.insert("b3_decision".into(), json!(decision));
    out.insert("reinjected".into(), headers_json(&reinjected));
    Ok(Value::Object(out))
}

fn answer(request: &Value) -> Result<Value, String> {
    match request.get("mode").and_then(Value::as_str) {
        Some("inject") => inject(request),
        Some("extract") => extract(request),
        other => Err(format!("unknown mode {other:?} (inject | extract)")),
    }
}

fn main() {
    let mut input = String::new();
    let parsed = std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_str::<Value>(&input).map_err(|e| format!("stdin: {e}")));
    let result = parsed.and_then(|request| match &request {
        Value::Array(list) => list
            .iter()
            .map(answer)
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        single => answer(single),
    });
    match result {
        Ok(value) => println!("{value}"),
        Err(error) => {
            println!("{}", json!({ "error": error }));
            std::process::exit(2);
        }
    }
}
