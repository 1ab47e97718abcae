#!/usr/bin/env python3
"""otel-connect's server layer under load from h2load (nghttp2's HTTP/2 load
generator, an independent HTTP/2 client).

h2load sends thousands of concurrent calls over several HTTP/2 connections,
many streams in flight on each (and over HTTP/1.1 keep-alive connections), to the `connect-interop load-server` (the
Ping service behind axum with the otel_connect layer). The request bodies are
written here, byte by byte: Connect unary JSON, Connect streaming (enveloped
JSON), gRPC and gRPC-Web (enveloped protobuf). For each case the load
generator must see every call answered as the protocol prescribes, and the
server must have recorded, for exactly those calls:

- one server span per call, each with its own span id, all of them ended;
- the trace the caller sent continued (trace id, parent span id) when it
  sent a sampled `traceparent`; no span at all when it sent an unsampled one;
  a new trace per call when it sent none;
- the outcome as the protocol carries it (HTTP status, gRPC trailers, the
  gRPC-Web trailer frame, the Connect end-of-stream message):
  `rpc.status_code`, span status and `error.type` per semconv.md;
- one `rpc.server.call.duration` series, with the semconv attributes only,
  counting every call (sampled or not).

Usage: h2load.py PATH/TO/connect-interop
Prints one line per check and a final `N passed, N failed`; exits 1 on any
failure.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile

FQ = "observability.ping.v1.PingService"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
ROOT_PARENT = "0000000000000000"
# Codes whose server span is an Error (semconv.md).
SERVER_ERRORS = {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL",
                 "UNAVAILABLE", "DATA_LOSS", "unknown", "deadline_exceeded",
                 "unimplemented", "internal", "unavailable", "data_loss"}

passed = 0
failed = 0


def check(name: str, ok: bool, detail: object = "") -> None:
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {str(detail)[:2000]}")


def envelope(message: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(message)) + message


def varint_field(number: int, value: int) -> bytes:
    """A protobuf varint field (small non-negative values only)."""
    assert 0 <= value < 128
    return bytes([number << 3, value])


class Server:
    """The load-server: `summary` on stdin, one SUMMARY line back."""

    def __init__(self, binary: str) -> None:
        self.proc = subprocess.Popen([binary, "load-server"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self._line(60)
        assert line.startswith("LISTEN "), line
        self.url = line.split()[1]

    def _line(self, timeout: float) -> str:
        ready = select.select([self.proc.stdout], [], [], timeout)[0]
        assert ready, f"the server printed nothing within {timeout} s"
        return self.proc.stdout.readline()

    def summary(self) -> dict:
        self.proc.stdin.write("summary\n")
        self.proc.stdin.flush()
        line = self._line(30)
        assert line.startswith("SUMMARY "), line
        return json.loads(line.partition(" ")[2])

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def h2load(url: str, body: str, headers: list[str], n: int, h1: bool) -> dict:
    """Runs h2load (4 connections; over HTTP/2 16 streams in flight on each,
    over HTTP/1.1 one request at a time on each) and returns its request
    counters and status code classes."""
    args = ["h2load", "-n", str(n), "-c", "4", "-m", "1" if h1 else "16", "-t", "1", "-d", body]
    if h1:
        args.append("--h1")
    for h in headers:
        args += ["-H", h]
    out = subprocess.run(args + [url], capture_output=True, text=True, timeout=120).stdout
    got: dict = {"output": out[-1500:]}
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    if m:
        got.update(zip(["total", "started", "done", "succeeded", "failed", "errored", "timeout"],
                       map(int, m.groups())))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m:
        got.update(zip(["2xx", "3xx", "4xx", "5xx"], map(int, m.groups())))
    return got


def main() -> int:
    binary = sys.argv[1]
    if shutil.which("h2load") is None:
        print("h2load is not installed (Debian package nghttp2-client)")
        print("0 passed, 1 failed")
        return 1
    tmp = tempfile.mkdtemp()
    sampled = f"traceparent: 00-{TRACE_ID}-{PARENT_ID}-01"
    unsampled = f"traceparent: 00-{TRACE_ID}-{PARENT_ID}-00"
    connect_unary = ["content-type: application/json", "connect-protocol-version: 1"]
    connect_stream = ["content-type: application/connect+json", "connect-protocol-version: 1"]
    grpc = ["content-type: application/grpc", "te: trailers"]
    grpc_web = ["content-type: application/grpc-web+proto", "x-grpc-web: 1"]
    # PingRequest{id: 7}; FailRequest{code}; CountUpRequest{number: 3, fail_code}.
    ping_proto = varint_field(1, 7)
    # (name, method, body, headers, calls, expected HTTP class, system,
    #  rpc.status_code or None, traceparent kind); HTTP/2 unless the name
    # says HTTP/1.1.
    cases = [
        ("connect unary ok over HTTP/1.1", "Ping", b'{"id":"7","data":"aGk="}',
         connect_unary + [sampled], 2000, "2xx", "connectrpc", None, "sampled"),
        ("grpc-web stream failed_precondition over HTTP/1.1", "CountUp",
         envelope(varint_field(1, 3) + varint_field(2, 9)), grpc_web + [sampled],
         1000, "2xx", "grpc", "FAILED_PRECONDITION", "sampled"),
        ("connect unary ok", "Ping", b'{"id":"7","data":"aGk="}', connect_unary + [sampled],
         4000, "2xx", "connectrpc", None, "sampled"),
        ("connect unary internal", "Fail", b'{"code":13}', connect_unary + [sampled],
         2000, "5xx", "connectrpc", "internal", "sampled"),
        ("connect unary not_found", "Fail", b'{"code":5}', connect_unary + [sampled],
         2000, "4xx", "connectrpc", "not_found", "sampled"),
        ("connect stream ok", "CountUp", envelope(b'{"number":"3"}'), connect_stream + [sampled],
         2000, "2xx", "connectrpc", None, "sampled"),
        ("grpc ok", "Ping", envelope(ping_proto), grpc + [sampled],
         4000, "2xx", "grpc", "OK", "sampled"),
        ("grpc not_found", "Fail", envelope(varint_field(1, 5)), grpc + [sampled],
         2000, "2xx", "grpc", "NOT_FOUND", "sampled"),
        ("grpc-web stream failed_precondition", "CountUp",
         envelope(varint_field(1, 3) + varint_field(2, 9)), grpc_web + [sampled],
         2000, "2xx", "grpc", "FAILED_PRECONDITION", "sampled"),
        ("grpc ok, unsampled caller", "Ping", envelope(ping_proto), grpc + [unsampled],
         2000, "2xx", "grpc", "OK", "unsampled"),
        ("grpc ok, no caller context", "Ping", envelope(ping_proto), grpc,
         1000, "2xx", "grpc", "OK", "none"),
    ]
    server = Server(binary)
    try:
        for (name, method, body, headers, n, http_class, system, code, caller) in cases:
            path = os.path.join(tmp, "body")
            with open(path, "wb") as f:
                f.write(body)
            load = h2load(f"{server.url}/{FQ}/{method}", path, headers, n, "HTTP/1.1" in name)
            check(f"{name}: h2load completed all {n} calls",
                  load.get("done") == n and load.get("errored") == 0
                  and load.get("timeout") == 0, load)
            check(f"{name}: every answer {http_class}", load.get(http_class) == n, load)
            s = server.summary()
            check(f"{name}: the server saw {n} requests", s["requests"] == n, s["requests"])

            error = code in SERVER_ERRORS
            spans = s["spans"]
            want_spans = 0 if caller == "unsampled" else n
            check(f"{name}: {want_spans} server spans ended",
                  sum(g["count"] for g in spans) == want_spans and s["distinct_span_ids"] == want_spans,
                  (sum(g["count"] for g in spans), s["distinct_span_ids"]))
            shape = {(g["kind"], g["name"], g["status"], g["code"], g["error_type"]) for g in spans}
            want_shape = {("server", f"{FQ}/{method}", "error" if error else "unset",
                           code, code if error else None)}
            check(f"{name}: every span named, classified as {code or 'success'}",
                  shape == (want_shape if want_spans else set()), shape)
            if caller == "sampled":
                parents = {(g["trace_id"], g["parent_span_id"]) for g in spans}
                check(f"{name}: every span continues the caller's trace",
                      parents == {(TRACE_ID, PARENT_ID)}, parents)
            elif caller == "none":
                check(f"{name}: every span is the root of its own trace",
                      len(spans) == n and all(g["parent_span_id"] == ROOT_PARENT for g in spans),
                      len(spans))

            attributes = {"rpc.system.name": system, "rpc.method": f"{FQ}/{method}"}
            if code is not None:
                attributes["rpc.status_code"] = code
            if error:
                attributes["error.type"] = code
            metrics = [(m["name"], m["attributes"], m["count"]) for m in s["metrics"]]
            check(f"{name}: one duration series counting all {n} calls",
                  metrics == [("rpc.server.call.duration", attributes, n)], metrics)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
