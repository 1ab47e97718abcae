#!/usr/bin/env python3
"""otel-connect against Python `connectrpc` (an independent implementation).

Python's connectrpc client gzip-compresses every request message by default
(compressed envelopes, `content-encoding` / `connect-content-encoding` /
`grpc-encoding: gzip`). It calls our server (connectrpc + the otel_connect
layer, run by the `connect-interop` binary) over Connect (HTTP/1.1 and
HTTP/2, GET too), gRPC (HTTP/2) and gRPC-Web (HTTP/1.1 and HTTP/2), each
call with its own `traceparent`. Checked for every call:

- the request really was compressed (what the server received);
- the server span continues the trace, names the method, and classifies the
  outcome as the client saw it (`rpc.status_code`, span status,
  `error.type`);
- streams: one `rpc.message` SENT event per response message, with
  `rpc.message.compressed_size` exactly when the envelope was compressed
  (our server compresses responses of 1 KiB and more).

Message types are built at run time from the descriptor set the binary
writes (protobuf-py's registry), no code generation.

Usage: connect_python.py PATH/TO/connect-interop
Prints one line per check and a final `N passed, N failed`; exits 1 on any
failure.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import subprocess
import sys
import tempfile
import threading
import time

from connectrpc.client import ConnectClientSync
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from connectrpc.protocol import ProtocolType
from protobuf.wkt import FileDescriptorSet
from pyqwest import HTTPVersion, SyncClient, SyncHTTPTransport

FQ = "observability.ping.v1.PingService"
# Codes whose server span is an Error (semconv.md).
SERVER_ERRORS = {
    "unknown",
    "deadline_exceeded",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
}
GRPC_NAMES = {"canceled": "CANCELLED"}

passed = 0
failed = 0


def check(name: str, ok: bool, detail: object = "") -> None:
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {detail}")


class Server:
    """The connect-interop server, its REQUEST and SPAN lines."""

    def __init__(self, binary: str) -> None:
        self.proc = subprocess.Popen(
            [binary, "server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.spans: list[dict] = []
        self.requests: list[dict] = []
        # The LISTEN line, within a bound (run.sh also bounds the suite).
        ready = select.select([self.proc.stdout], [], [], 60)[0]
        assert ready, "the server printed no LISTEN line within 60 s"
        line = self.proc.stdout.readline()
        assert line.startswith("LISTEN "), line
        self.url = line.split()[1]
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            kind, _, payload = line.partition(" ")
            if kind == "SPAN":
                self.spans.append(json.loads(payload))
            elif kind == "REQUEST":
                self.requests.append(json.loads(payload))

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)
        self.reader.join(timeout=10)


def methods(binary: str) -> dict[str, MethodInfo]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ping.binpb")
        subprocess.run([binary, "descriptor", path], check=True)
        with open(path, "rb") as f:
            registry = FileDescriptorSet.from_binary(f.read()).to_registry()
    service = registry.service(FQ)
    kinds = {
        "unary": StreamType.UNARY,
        "server_streaming": StreamType.SERVER_STREAM,
        "client_streaming": StreamType.CLIENT_STREAM,
        "bidi_streaming": StreamType.BIDI_STREAM,
    }
    out = {}
    for m in service.methods:
        out[m.name] = MethodInfo(
            name=m.name,
            service_name=FQ,
            input=m.input.type,
            output=m.output.type,
            idempotency_level=IdempotencyLevel.NO_SIDE_EFFECTS
            if str(m.idempotency) == "NO_SIDE_EFFECTS"
            else IdempotencyLevel.UNKNOWN,
            stream_type=kinds[str(m.method_kind)],
        )
    return out


def main() -> int:
    binary = sys.argv[1]
    m = methods(binary)
    server = Server(binary)
    big = b"x" * 4096
    outcomes = []

    variants = [
        ("connect", ProtocolType.CONNECT, HTTPVersion.HTTP1),
        ("connect", ProtocolType.CONNECT, HTTPVersion.HTTP2),
        ("grpc", ProtocolType.GRPC, HTTPVersion.HTTP2),
        ("grpc-web", ProtocolType.GRPC_WEB, HTTPVersion.HTTP1),
        ("grpc-web", ProtocolType.GRPC_WEB, HTTPVersion.HTTP2),
    ]
    for protocol_name, protocol, http_version in variants:
        http = "http/2" if http_version == HTTPVersion.HTTP2 else "http/1.1"
        http_client = SyncClient(SyncHTTPTransport(http_version=http_version))
        client = ConnectClientSync(server.url, protocol=protocol, http_client=http_client)

        def msg(name: str, **fields):
            return m[name].input(**fields)

        # (label, call, the code our server answers with: None for success,
        # and what a successful call must return).
        calls = [
            ("Ping", lambda h: client.execute_unary(
                request=msg("Ping", id=7, data=big), method=m["Ping"], headers=h).id,
             None, 7),
            ("Fail", lambda h: client.execute_unary(
                request=msg("Fail", code=5), method=m["Fail"], headers=h),
             "not_found", None),
            ("Fail", lambda h: client.execute_unary(
                request=msg("Fail", code=14), method=m["Fail"], headers=h),
             "unavailable", None),
            ("CountUp", lambda h: [r.number for r in client.execute_server_stream(
                request=msg("CountUp", number=3), method=m["CountUp"], headers=h)],
             None, [1, 2, 3]),
            ("CountUp", lambda h: list(client.execute_server_stream(
                request=msg("CountUp", number=2, fail_code=9), method=m["CountUp"], headers=h)),
             "failed_precondition", None),
        ]
        if protocol == ProtocolType.CONNECT and http_version == HTTPVersion.HTTP1:
            calls.append(("Ping GET", lambda h: client.execute_unary(
                request=msg("Ping", id=8), method=m["Ping"], headers=h, use_get=True).id,
                None, 8))
        if http_version == HTTPVersion.HTTP2:
            calls.append(("Sum", lambda h: client.execute_client_stream(
                request=iter([msg("Sum", number=1), msg("Sum", number=2)]),
                method=m["Sum"], headers=h).sum, None, 3))
            calls.append(("Sum", lambda h: client.execute_client_stream(
                request=iter([msg("Sum", number=-1)]), method=m["Sum"], headers=h),
                "invalid_argument", None))
            calls.append(("PingStream", lambda h: len(list(client.execute_bidi_stream(
                request=iter([msg("PingStream", data=big), msg("PingStream", data=big)]),
                method=m["PingStream"], headers=h))), None, 2))
            calls.append(("PingStream", lambda h: list(client.execute_bidi_stream(
                request=iter([msg("PingStream", data=b"fail")]),
                method=m["PingStream"], headers=h)), "data_loss", None))

        for label, call, expected_code, expected_result in calls:
            trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
            headers = {"traceparent": f"00-{trace_id}-{span_id}-01"}
            code, result = None, None
            try:
                result = call(headers)
            except ConnectError as e:
                code = e.code.value
            where = f"python {protocol_name} {http} {label}"
            check(f"{where}: the call's outcome", code == expected_code, (code, expected_code))
            if expected_code is None:
                check(f"{where}: the reply", result == expected_result, (result, expected_result))
            outcomes.append(dict(
                protocol=protocol_name, http=http, label=label,
                method=label.split()[0], code=code,
                trace_id=trace_id, span_id=span_id,
            ))
        close = getattr(http_client, "close", None)
        if close is not None:
            close()

    for _ in range(200):
        if len(server.spans) >= len(outcomes):
            break
        time.sleep(0.02)
    server.stop()

    for o in outcomes:
        name = f"python {o['protocol']} {o['http']} {o['label']} -> our server ({o['code'] or 'ok'})"
        request = next((r for r in server.requests if o["span_id"] in r["traceparent"]), None)
        if request is None:
            check(f"{name}: request reached the server", False)
            continue
        get = o["label"].endswith("GET")
        check(f"{name}: sent as {'GET' if get else 'POST'}",
              request["method"] == ("GET" if get else "POST"), request["method"])
        if not get:
            if o["protocol"] == "connect" and o["method"] in ("Ping", "Fail"):
                encoding = request["content_encoding"]
            elif o["protocol"] == "connect":
                encoding = request["connect_content_encoding"]
            else:
                encoding = request["grpc_encoding"]
            check(f"{name}: request compressed with gzip", encoding == "gzip", request)
        span = next((s for s in server.spans
                     if s["kind"] == "server" and s["parent_span_id"] == o["span_id"]), None)
        if span is None:
            check(f"{name}: server span continues the trace", False, "no span with the sent parent")
            continue
        check(f"{name}: server span continues the trace", span["trace_id"] == o["trace_id"])
        a = span["attributes"]
        system = "connectrpc" if o["protocol"] == "connect" else "grpc"
        check(f"{name}: rpc.system.name", a.get("rpc.system.name") == system, a.get("rpc.system.name"))
        full = f"{FQ}/{o['method']}"
        check(f"{name}: method", a.get("rpc.method") == full and span["name"] == full, span["name"])
        code = o["code"]
        if code is None:
            status = "OK" if system == "grpc" else None
        elif system == "grpc":
            status = GRPC_NAMES.get(code, code.upper())
        else:
            status = code
        check(f"{name}: rpc.status_code as the client saw it",
              a.get("rpc.status_code") == status, (a.get("rpc.status_code"), status))
        server_error = code in SERVER_ERRORS
        check(f"{name}: span status", span["status"] == ("error" if server_error else "unset"), span["status"])
        check(f"{name}: error.type", a.get("error.type") == (status if server_error else None), a.get("error.type"))
        if o["method"] in ("CountUp", "PingStream"):
            sent = [e["attributes"] for e in span["events"]
                    if e["name"] == "rpc.message" and e["attributes"]["rpc.message.type"] == "SENT"]
            if o["method"] == "CountUp":
                want, compressed = (3 if code is None else 2), False
            else:
                want, compressed = (2 if code is None else 0), True
            check(f"{name}: {want} SENT events", len(sent) == want, len(sent))
            sizes_ok = all(("rpc.message.compressed_size" in e) == compressed
                           and ("rpc.message.uncompressed_size" in e) == (not compressed)
                           for e in sent)
            check(f"{name}: envelope sizes classified {'compressed' if compressed else 'uncompressed'}",
                  sizes_ok, sent)
            if compressed:
                check(f"{name}: compressed size below the message size",
                      all(e["rpc.message.compressed_size"] < len(big) for e in sent), sent)

    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
