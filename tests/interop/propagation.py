#!/usr/bin/env python3
"""Propagation interop: otel_tower::propagation against Python's opentelemetry.

(a) what our propagators inject is parsed by Python's propagators
    (opentelemetry-api TraceContext and W3C Baggage, opentelemetry-propagator-b3
    B3SingleFormat / B3MultiFormat), which must see the same trace id, span id,
    flags (sampled) and baggage;
(b) what Python's propagators inject is extracted by ours (through the
    `propagation-interop` binary), with the same checks;
(c) the same raw headers are given to both, where both specifications agree
    on the outcome.

Usage: propagation.py PATH/TO/propagation-interop
Prints one line per check and a final line `N passed, N failed`; exits 1 on
any failure.

Where Python's implementation deviates from the specification (W3C Trace
Context Level 2, W3C Baggage, B3 as in shared/spec/propagation.md), the
script says so in a comment and asserts only what both agree on:

- Baggage (Python `W3CBaggagePropagator`) encodes with `urllib.parse.quote_plus`
  and decodes with `unquote_plus` (HTML form encoding): it sends a space as
  `+` and reads a literal `+` as a space. W3C Baggage percent-encodes, and a
  `+` is a `+`. So no value with a space goes Python -> us, and no value with
  a `+` goes us -> Python. Python also strips leading/trailing spaces of
  decoded values, and reads only the first `baggage` header.
- Trace Context (Python `TraceContextTextMapPropagator`) takes the first of
  two `traceparent` headers instead of rejecting both, and its tracestate
  keys follow Level 1 (one `@`, a system of at most 14 characters), so Level 2
  keys such as `foo@@bar` are not sent across.
- B3 (`opentelemetry-propagator-b3`): B3SingleFormat injects only `b3`
  (correct); B3MultiFormat injects x-b3-traceid/spanid/sampled and never
  `x-b3-parentspanid` (correct). On extract it reads a sampling state of `d`
  or `x-b3-flags: 1` as sampled but does not keep "debug", so it re-sends
  debug as `1`; ids without a sampling state ("deferred") become sampled; a
  bare `b3: 0`/`1`/`d` is dropped; hex is matched case-insensitively.
  None of these are asserted.
"""

import json
import logging
import subprocess
import sys

from opentelemetry import baggage as otel_baggage
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

# Python's propagators log each header they reject; the cases below send
# invalid headers on purpose.
logging.getLogger("opentelemetry").setLevel(logging.ERROR)

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/debug/propagation-interop"

PY = {
    "tracecontext": TraceContextTextMapPropagator(),
    "baggage": W3CBaggagePropagator(),
    "b3": B3SingleFormat(),
    "b3multi": B3MultiFormat(),
}

T = "4bf92f3577b34da6a3ce929d0e0e4736"
S = "00f067aa0ba902b7"
T2 = "0af7651916cd43dd8448eb211c80319c"
S2 = "b7ad6b7169203331"
T64 = "0000000000000000463ac35c9f6413ad"

passed = 0
failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"PASS {name}")
    else:
        failed += 1
        print(f"FAIL {name}: {detail}")


def ours(request):
    """Runs one request through the Rust binary."""
    proc = subprocess.run(
        [BIN],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{BIN} failed ({proc.returncode}): {proc.stdout} {proc.stderr}")
    return json.loads(proc.stdout)


def carrier_of(headers):
    """Header pairs as a Python carrier: name -> list of values (repeats kept)."""
    carrier = {}
    for name, value in headers:
        carrier.setdefault(name.lower(), []).append(value)
    return carrier


def py_span(ctx):
    sc = trace.get_current_span(ctx).get_span_context()
    if not sc.is_valid:
        return None
    return {
        "trace_id": f"{sc.trace_id:032x}",
        "span_id": f"{sc.span_id:016x}",
        "flags": int(sc.trace_flags),
        "sampled": sc.trace_flags.sampled,
        "tracestate": sc.trace_state.to_header(),
    }


def py_context(trace_id, span_id, flags, tracestate=None, bag=None):
    ctx = Context()
    if trace_id is not None:
        state = trace.TraceState.from_header([tracestate]) if tracestate else trace.TraceState()
        sc = trace.SpanContext(
            trace_id=int(trace_id, 16),
            span_id=int(span_id, 16),
            is_remote=True,
            trace_flags=trace.TraceFlags(flags),
            trace_state=state,
        )
        ctx = trace.set_span_in_context(trace.NonRecordingSpan(sc), ctx)
    for key, value in (bag or {}).items():
        ctx = otel_baggage.set_baggage(key, value, context=ctx)
    return ctx


def same(name, got, want):
    check(name, got == want, f"got {got!r}, want {want!r}")


# ---------------------------------------------------------------------------
# (a) we inject, Python extracts


def we_inject(propagator, **fields):
    answer = ours({"mode": "inject", "propagator": propagator, **fields})
    return answer["headers"]


def a_tracecontext():
    cases = [
        ("sampled", T, S, 1, None),
        ("not sampled", T, S, 0, None),
        ("random bit 03", T, S, 3, None),
        ("random bit 02", T2, S2, 2, None),
        ("tracestate", T, S, 1, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        ("tracestate tenant@vendor", T2, S2, 1, "tenant@vendor=v 1,k=!#$%&"),
    ]
    for what, t, s, flags, state in cases:
        fields = {"trace_id": t, "span_id": s, "flags": flags}
        if state:
            fields["tracestate"] = state
        headers = we_inject("tracecontext", **fields)
        names = sorted(n for n, _ in headers)
        same(f"a/tracecontext/{what}: headers", names, ["traceparent", "tracestate"] if state else ["traceparent"])
        got = py_span(PY["tracecontext"].extract(carrier_of(headers)))
        want = {"trace_id": t, "span_id": s, "flags": flags, "sampled": bool(flags & 1), "tracestate": state or ""}
        same(f"a/tracecontext/{what}: python reads", got, want)


BAGGAGE_SPECIAL = {
    "user": "Jane Doe",
    "expr": "a=b=c",
    "pct": "100% sure, 50%25",
    "uni": "café ☕ 日本語",
    "punct": "a,b;c\"d\\e/f?g",
    "emoji": "😀",
    "tilde-and_dot.": "~x.y_z-",
}


def a_baggage():
    headers = we_inject("baggage", baggage=BAGGAGE_SPECIAL)
    same("a/baggage: one header", [n for n, _ in headers], ["baggage"])
    value = headers[0][1]
    check("a/baggage: % is encoded", "100%25" in value and "%2525" in value, value)
    check("a/baggage: no raw space", " " not in value, value)
    ctx = PY["baggage"].extract(carrier_of(headers))
    same("a/baggage: python reads special characters", dict(otel_baggage.get_all(ctx)), BAGGAGE_SPECIAL)
    # Together with a trace, through a composite.
    headers = we_inject("tracecontext,baggage", trace_id=T, span_id=S, flags=1, baggage={"k": "v w"})
    carrier = carrier_of(headers)
    ctx = PY["baggage"].extract(carrier, context=PY["tracecontext"].extract(carrier))
    same("a/composite: python reads baggage", dict(otel_baggage.get_all(ctx)), {"k": "v w"})
    same("a/composite: python reads trace", (py_span(ctx) or {}).get("trace_id"), T)


def a_b3():
    for prop, mode in [("b3", "single"), ("b3multi", "multi")]:
        for what, flags, debug in [("sampled", 1, False), ("not sampled", 0, False), ("debug", 1, True)]:
            headers = we_inject(prop, trace_id=T, span_id=S, flags=flags, b3_debug=debug)
            names = sorted(n for n, _ in headers)
            if prop == "b3":
                want_names = ["b3"]
            elif debug:
                want_names = ["x-b3-flags", "x-b3-spanid", "x-b3-traceid"]
            else:
                want_names = ["x-b3-sampled", "x-b3-spanid", "x-b3-traceid"]
            same(f"a/b3 {mode}/{what}: headers", names, want_names)
            # Python's B3MultiFormat.extract reads the single header first,
            # then the multi headers, like ours.
            got = py_span(PY["b3multi"].extract(carrier_of(headers)))
            got = got and {k: got[k] for k in ("trace_id", "span_id", "sampled")}
            # debug implies sampled in both specifications
            same(f"a/b3 {mode}/{what}: python reads", got, {"trace_id": T, "span_id": S, "sampled": bool(flags)})
    # A 64-bit trace id is sent padded to 32 hex digits.
    headers = we_inject("b3", trace_id=T64, span_id=S, flags=1)
    same("a/b3 single/64-bit id padded", headers, [["b3", f"{T64}-{S}-1"]])
    got = py_span(PY["b3"].extract(carrier_of(headers)))
    same("a/b3 single/64-bit id: python reads", got and got["trace_id"], T64)
    # No span context: neither side sends anything.
    for prop in ("tracecontext", "b3", "b3multi"):
        same(f"a/{prop}/no span context: nothing", we_inject(prop), [])
        carrier = {}
        PY[prop].inject(carrier, context=Context())
        same(f"a/{prop}/no span context: python sends nothing either", carrier, {})


# ---------------------------------------------------------------------------
# (b) Python injects, we extract


def we_extract(propagator, headers):
    return ours({"mode": "extract", "propagator": propagator, "headers": headers})


def py_inject(prop, ctx):
    carrier = {}
    PY[prop].inject(carrier, context=ctx)
    return [[k, v] for k, v in carrier.items()]


def b_tracecontext():
    cases = [
        ("sampled", T, S, 1, None),
        ("not sampled", T, S, 0, None),
        ("random bit 03", T2, S2, 3, None),
        ("tracestate", T, S, 1, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        ("tracestate tenant@vendor", T, S2, 1, "tenant@vendor=x,a=b c"),
    ]
    for what, t, s, flags, state in cases:
        headers = py_inject("tracecontext", py_context(t, s, flags, state))
        got = we_extract("tracecontext", headers)
        got = {k: got.get(k) for k in ("valid", "trace_id", "span_id", "flags", "sampled", "remote", "tracestate")}
        want = {
            "valid": True,
            "trace_id": t,
            "span_id": s,
            "flags": flags,
            "sampled": bool(flags & 1),
            "remote": True,
            "tracestate": state or "",
        }
        same(f"b/tracecontext/{what}: we read", got, want)


def b_baggage():
    # No spaces: Python sends them as "+" (form encoding, not W3C); see above.
    bag = {k: v for k, v in BAGGAGE_SPECIAL.items() if " " not in v}
    bag["plus"] = "1+1=2"
    bag["pct"] = "%41literal"
    bag["uni"] = "日本語☕"
    headers = py_inject("baggage", py_context(None, None, 0, bag=bag))
    got = we_extract("baggage", headers)
    same("b/baggage: we read special characters", got["baggage"], bag)
    check("b/baggage: no span context", got["valid"] is False, got)
    # With a trace, through our composite.
    ctx = py_context(T, S, 1, bag={"k": "v"})
    headers = py_inject("tracecontext", ctx) + py_inject("baggage", ctx)
    got = we_extract("tracecontext,baggage", headers)
    same("b/composite: we read trace and baggage", (got.get("trace_id"), got["baggage"]), (T, {"k": "v"}))


def b_b3():
    for prop in ("b3", "b3multi"):
        for flags in (0, 1):
            headers = py_inject(prop, py_context(T, S, flags))
            names = sorted(n for n, _ in headers)
            want_names = ["b3"] if prop == "b3" else ["x-b3-sampled", "x-b3-spanid", "x-b3-traceid"]
            same(f"b/{prop}/flags {flags}: python headers", names, want_names)
            got = we_extract(prop, headers)
            got = {k: got.get(k) for k in ("valid", "trace_id", "span_id", "sampled")}
            same(
                f"b/{prop}/flags {flags}: we read",
                got,
                {"valid": True, "trace_id": T, "span_id": S, "sampled": bool(flags)},
            )
            # and send it onward in our own encoding
            again = we_extract(prop, headers)["reinjected"]
            same(f"b/{prop}/flags {flags}: we re-send", sorted(n for n, _ in again), want_names)


# ---------------------------------------------------------------------------
# (c) the same raw headers to both


def both_extract(what, prop, headers, expect_valid):
    mine = we_extract(prop, headers)
    theirs = py_span(PY[prop].extract(carrier_of(headers)))
    mine_view = mine["valid"] and {
        "trace_id": mine["trace_id"],
        "span_id": mine["span_id"],
        "sampled": mine["sampled"],
    }
    theirs_view = theirs and {k: theirs[k] for k in ("trace_id", "span_id", "sampled")}
    check(f"c/{prop}/{what}: validity", bool(mine["valid"]) == expect_valid, mine)
    same(f"c/{prop}/{what}: same result", mine_view or None, theirs_view or None)
    return mine, theirs


def c_tracecontext():
    valid = [
        ("basic", f"00-{T}-{S}-01"),
        ("flags 03", f"00-{T}-{S}-03"),
        ("OWS", f"  00-{T}-{S}-01\t"),
        ("higher version", f"cc-{T}-{S}-01-what-ever"),
    ]
    invalid = [
        ("version ff", f"ff-{T}-{S}-01"),
        ("00 with suffix", f"00-{T}-{S}-01-x"),
        ("uppercase", f"00-{T.upper()}-{S}-01"),
        ("zero trace id", f"00-{'0' * 32}-{S}-01"),
        ("zero span id", f"00-{T}-{'0' * 16}-01"),
        ("short trace id", f"00-{T[1:]}-{S}-01"),
        ("short span id", f"00-{T}-{S[1:]}-01"),
        ("flags 1", f"00-{T}-{S}-1"),
        ("flags 001", f"00-{T}-{S}-001"),
        ("version 0", f"0-{T}-{S}-01"),
        ("version CC", f"CC-{T}-{S}-01"),
    ]
    for what, value in valid + invalid:
        mine, theirs = both_extract(what, "tracecontext", [["traceparent", value]], (what, value) in valid)
        if mine["valid"] and theirs:
            same(f"c/tracecontext/{what}: same flags", mine["flags"], theirs["flags"])
    # Several tracestate headers are combined, in order, by both.
    headers = [
        ["traceparent", f"00-{T}-{S}-01"],
        ["tracestate", "rojo=00f067aa0ba902b7"],
        ["tracestate", "congo=t61rcWkgMzE, a=1"],
    ]
    mine, theirs = both_extract("several tracestate headers", "tracecontext", headers, True)
    same("c/tracecontext/several tracestate headers: combined", mine.get("tracestate"), theirs and theirs["tracestate"])
    # 33 members: both discard the tracestate (the traceparent stays).
    state = ",".join(f"k{i}=v{i}" for i in range(33))
    headers = [["traceparent", f"00-{T}-{S}-01"], ["tracestate", state]]
    mine, theirs = both_extract("33 tracestate members", "tracecontext", headers, True)
    same("c/tracecontext/33 tracestate members: discarded", (mine.get("tracestate"), theirs and theirs["tracestate"]), ("", ""))


def c_baggage():
    cases = [
        ("value with =", "k=a=b", {"k": "a=b"}),
        ("percent escapes", "k=a%20b%25,u=caf%C3%A9", {"k": "a b%", "u": "café"}),
        ("invalid UTF-8", "k=%FFx", {"k": "\ufffdx"}),
        ("OWS", " a = 1 ,\tb=2", {"a": "1", "b": "2"}),
    ]
    for what, value, want in cases:
        mine = we_extract("baggage", [["baggage", value]])["baggage"]
        theirs = dict(otel_baggage.get_all(PY["baggage"].extract({"baggage": [value]})))
        same(f"c/baggage/{what}: ours", mine, want)
        same(f"c/baggage/{what}: python agrees", theirs, want)


def c_b3():
    cases = [
        ("single sampled", [["b3", f"{T}-{S}-1"]], True),
        ("single not sampled", [["b3", f"{T}-{S}-0"]], True),
        ("single debug", [["b3", f"{T}-{S}-d"]], True),
        ("single with parent", [["b3", f"{T}-{S}-1-{S2}"]], True),
        ("single 64-bit", [["b3", f"{T64[16:]}-{S}-1"]], True),
        ("multi sampled", [["x-b3-traceid", T], ["x-b3-spanid", S], ["x-b3-sampled", "1"]], True),
        ("multi true", [["x-b3-traceid", T], ["x-b3-spanid", S], ["x-b3-sampled", "true"]], True),
        ("multi not sampled", [["x-b3-traceid", T], ["x-b3-spanid", S], ["x-b3-sampled", "0"]], True),
        ("multi debug", [["x-b3-traceid", T], ["x-b3-spanid", S], ["x-b3-flags", "1"]], True),
        ("single wins over multi", [["b3", f"{T}-{S}-1"], ["x-b3-traceid", T2], ["x-b3-spanid", S2]], True),
        ("zero trace id", [["b3", f"{'0' * 32}-{S}-1"]], False),
        ("short span id", [["b3", f"{T}-{S[1:]}-1"]], False),
        ("no span id", [["x-b3-traceid", T], ["x-b3-sampled", "1"]], False),
    ]
    for what, headers, valid in cases:
        both_extract(what, "b3multi", headers, valid)
    # A bare decision carries no ids: no span context on either side; ours
    # keeps the decision for the local sampler (Python drops it).
    for decision in ("0", "1", "d"):
        mine, theirs = both_extract(f"bare {decision}", "b3", [["b3", decision]], False)
        same(f"c/b3/bare {decision}: decision kept", mine["b3_decision"], decision)


def main():
    for step in (a_tracecontext, a_baggage, a_b3, b_tracecontext, b_baggage, b_b3, c_tracecontext, c_baggage, c_b3):
        try:
            step()
        except Exception as error:  # a crash is a failure, not an abort
            check(step.__name__, False, f"{type(error).__name__}: {error}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
