#!/usr/bin/env python3
"""gRPC interop: otel_tonic against Python's grpcio instrumented with
opentelemetry-instrumentation-grpc (an independent implementation).

(1) A grpcio client instrumented with GrpcInstrumentorClient calls our tonic
    server (`tonic-interop serve`): our server span must be the child of the
    Python client span (same trace id, parent = its span id, remote parent),
    keep the incoming trace flags `03` (sampled + W3C Level 2 random) for what
    it sends onward, and classify success (OK) and NOT_FOUND (server span
    Unset, rpc.status_code NOT_FOUND, no error.type) and INTERNAL (server span
    Error).
(2) Our tonic client (`tonic-interop call PORT NAME`) calls a grpcio server
    instrumented with GrpcInstrumentorServer: the Python server span must be
    the child of our client span; grpcio's trailers-only errors
    (`context.abort`) must be classified on our client span (NOT_FOUND,
    UNAVAILABLE: Error, error.type, status description = the message).

Message classes are built at run time from a FileDescriptorProto; no codegen.

Usage: grpcio_interop.py PATH/TO/tonic-interop
Prints one line per check and a final line `N passed, N failed`; exits 1 on
any failure.
"""

import json
import logging
import subprocess
import sys
from concurrent import futures

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient, GrpcInstrumentorServer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

logging.getLogger("opentelemetry").setLevel(logging.ERROR)

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/debug/tonic-interop"
METHOD = "/helloworld.Greeter/SayHello"
RPC_METHOD = "helloworld.Greeter/SayHello"

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


def message_classes():
    """helloworld.HelloRequest / HelloReply, built at run time."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="helloworld_interop.proto", package="helloworld", syntax="proto3"
    )
    for msg, field in (("HelloRequest", "name"), ("HelloReply", "message")):
        m = fdp.message_type.add(name=msg)
        m.field.add(
            name=field,
            number=1,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("helloworld.HelloRequest")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("helloworld.HelloReply")),
    )


HelloRequest, HelloReply = message_classes()

# One SDK for the Python side; both instrumentors use the global provider and
# must be installed before channels and servers are created.
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
GrpcInstrumentorClient().instrument()
GrpcInstrumentorServer().instrument()


def hexid(n, width):
    return format(n, f"0{width}x")


def python_spans(kind):
    return [s for s in exporter.get_finished_spans() if s.kind == kind]


# ---------------------------------------------------------------- (1)


def grpcio_client_to_tonic_server():
    proc = subprocess.Popen(
        [BIN, "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        port = json.loads(proc.stdout.readline())["port"]
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        say_hello = channel.unary_unary(
            METHOD,
            request_serializer=HelloRequest.SerializeToString,
            response_deserializer=HelloReply.FromString,
        )

        def our_spans(n):
            proc.stdin.write(f"spans {n}\n")
            proc.stdin.flush()
            return json.loads(proc.stdout.readline())["spans"]

        cases = [
            ("ok", "world", grpc.StatusCode.OK, "OK", False),
            ("not_found", "fail:5", grpc.StatusCode.NOT_FOUND, "NOT_FOUND", False),
            ("internal", "fail:13", grpc.StatusCode.INTERNAL, "INTERNAL", True),
        ]
        for label, name, py_code, code, server_error in cases:
            exporter.clear()
            try:
                reply = say_hello(HelloRequest(name=name), timeout=5)
                got_code, reply_text = grpc.StatusCode.OK, reply.message
            except grpc.RpcError as e:
                got_code, reply_text = e.code(), ""
            check(f"(1) {label}: grpcio sees {py_code.name}", got_code == py_code, got_code)
            if py_code == grpc.StatusCode.OK:
                check(f"(1) {label}: reply", reply_text == "Hello world", reply_text)

            py_clients = python_spans(trace.SpanKind.CLIENT)
            ours = our_spans(1)
            if len(py_clients) != 1 or len(ours) != 1:
                check(
                    f"(1) {label}: one span each side",
                    False,
                    f"python {len(py_clients)}, ours {len(ours)}",
                )
                continue
            py, srv = py_clients[0].context, ours[0]
            attrs = srv["attributes"]
            check(f"(1) {label}: our span is a SERVER span", srv["kind"] == "server", srv["kind"])
            check(f"(1) {label}: span name", srv["name"] == RPC_METHOD, srv["name"])
            check(
                f"(1) {label}: same trace id",
                srv["trace_id"] == hexid(py.trace_id, 32),
                (srv["trace_id"], hexid(py.trace_id, 32)),
            )
            check(
                f"(1) {label}: parent is the Python client span",
                srv["parent_span_id"] == hexid(py.span_id, 16) and srv["parent_is_remote"],
                (srv["parent_span_id"], hexid(py.span_id, 16)),
            )
            check(
                f"(1) {label}: Python sent flags 03",
                int(py.trace_flags) == 0x03,
                hex(int(py.trace_flags)),
            )
            check(f"(1) {label}: our span keeps flags 03", srv["flags"] == "03", srv["flags"])
            check(
                f"(1) {label}: rpc.system.name / rpc.method",
                attrs.get("rpc.system.name") == "grpc" and attrs.get("rpc.method") == RPC_METHOD,
                attrs,
            )
            check(
                f"(1) {label}: rpc.status_code {code}",
                attrs.get("rpc.status_code") == code,
                attrs.get("rpc.status_code"),
            )
            want_status = "error" if server_error else "unset"
            check(
                f"(1) {label}: server span status {want_status}",
                srv["status"] == want_status,
                srv["status"],
            )
            check(
                f"(1) {label}: error.type",
                attrs.get("error.type") == (code if server_error else None),
                attrs.get("error.type"),
            )
            check(
                f"(1) {label}: peer address from TcpConnectInfo",
                attrs.get("network.peer.address") == "127.0.0.1",
                attrs,
            )
            check(f"(1) {label}: scope otel-tonic", srv["scope"] == "otel-tonic", srv["scope"])

        # What the server's handler would send onward continues the trace
        # with the incoming flags unchanged.
        exporter.clear()
        onward = say_hello(HelloRequest(name="traceparent"), timeout=5).message
        py = python_spans(trace.SpanKind.CLIENT)[0].context
        srv = our_spans(1)[0]
        parts = onward.split("-")
        check(
            "(1) onward traceparent: version 00, same trace, our span, flags 03",
            len(parts) == 4
            and parts[0] == "00"
            and parts[1] == hexid(py.trace_id, 32)
            and parts[2] == srv["span_id"]
            and parts[3] == "03",
            (onward, srv["span_id"]),
        )
        channel.close()
    finally:
        try:
            proc.stdin.write("quit\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


# ---------------------------------------------------------------- (2)


def say_hello_handler(request, context):
    name = request.name
    if name == "abort-not-found":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such greeting")
    if name == "abort-unavailable":
        context.abort(grpc.StatusCode.UNAVAILABLE, "come back later")
    return HelloReply(message=f"Hello {name} from grpcio")


def tonic_client_to_grpcio_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "helloworld.Greeter",
        {
            "SayHello": grpc.unary_unary_rpc_method_handler(
                say_hello_handler,
                request_deserializer=HelloRequest.FromString,
                response_serializer=HelloReply.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        cases = [
            ("ok", "rust", 0, "OK", ""),
            ("trailers-only NOT_FOUND", "abort-not-found", 5, "NOT_FOUND", "no such greeting"),
            ("trailers-only UNAVAILABLE", "abort-unavailable", 14, "UNAVAILABLE", "come back later"),
        ]
        for label, name, code_num, code, message in cases:
            exporter.clear()
            out = subprocess.run(
                [BIN, "call", str(port), name], capture_output=True, text=True, timeout=30
            )
            if out.returncode != 0:
                check(f"(2) {label}: tonic-interop call", False, out.stderr[-2000:])
                continue
            result = json.loads(out.stdout)
            check(f"(2) {label}: tonic sees code {code_num}", result["code"] == code_num, result)
            check(
                f"(2) {label}: status {'in the headers (trailers-only)' if code_num else 'in trailers'}",
                result["status_in_headers"] == (code_num != 0),
                result["status_in_headers"],
            )
            if code_num == 0:
                check(
                    f"(2) {label}: reply",
                    result["reply"] == "Hello rust from grpcio",
                    result["reply"],
                )
            clients = [s for s in result["spans"] if s["kind"] == "client"]
            py_servers = python_spans(trace.SpanKind.SERVER)
            if len(clients) != 1 or len(py_servers) != 1:
                check(
                    f"(2) {label}: one span each side",
                    False,
                    f"ours {len(clients)}, python {len(py_servers)}",
                )
                continue
            ours, py = clients[0], py_servers[0]
            attrs = ours["attributes"]
            check(
                f"(2) {label}: Python server span in our trace",
                hexid(py.context.trace_id, 32) == ours["trace_id"],
                (hexid(py.context.trace_id, 32), ours["trace_id"]),
            )
            check(
                f"(2) {label}: Python server span's parent is our client span",
                py.parent is not None
                and py.parent.is_remote
                and hexid(py.parent.span_id, 16) == ours["span_id"],
                (py.parent, ours["span_id"]),
            )
            check(
                f"(2) {label}: our client span is a root",
                ours["parent_span_id"] == "0" * 16,
                ours["parent_span_id"],
            )
            check(
                f"(2) {label}: client attributes",
                attrs.get("rpc.system.name") == "grpc"
                and attrs.get("rpc.method") == RPC_METHOD
                and attrs.get("server.address") == "127.0.0.1"
                and attrs.get("server.port") == str(port),
                attrs,
            )
            check(
                f"(2) {label}: rpc.status_code {code}",
                attrs.get("rpc.status_code") == code,
                attrs.get("rpc.status_code"),
            )
            if code_num == 0:
                check(
                    f"(2) {label}: client span Unset, no error.type",
                    ours["status"] == "unset" and "error.type" not in attrs,
                    ours,
                )
            else:
                check(
                    f"(2) {label}: client span Error with the status message",
                    ours["status"] == "error" and ours["description"] == message,
                    (ours["status"], ours["description"]),
                )
                check(
                    f"(2) {label}: error.type {code}",
                    attrs.get("error.type") == code,
                    attrs.get("error.type"),
                )
    finally:
        server.stop(grace=None)


grpcio_client_to_tonic_server()
tonic_client_to_grpcio_server()
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
