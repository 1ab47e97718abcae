// otel-connect against @connectrpc/connect-node (an independent Connect,
// gRPC and gRPC-Web implementation), message types built at run time from
// the descriptor set of ping.proto (no code generation).
//
// (a) connect-node calls our server (connectrpc + otel_connect layer) over
//     Connect (HTTP/1.1 and HTTP/2, GET too), gRPC and gRPC-Web, with a
//     `traceparent` set in an interceptor: each server span must continue
//     that trace (parent = the sent span id) and classify the outcome as
//     connect-node reports it.
// (b) our instrumented connectrpc client calls a connect-node server (whose
//     gRPC errors live only in trailers, with a percent-encoded message):
//     codes and span statuses must be right, and the server must receive
//     the client span's `traceparent`.
//
// Usage: node interop.mjs PATH/TO/connect-interop
// Prints one line per check and a final `N passed, N failed`; exits 1 on
// any failure.

import { spawn, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync } from "node:fs";
import http2 from "node:http2";
import { tmpdir } from "node:os";
import { join } from "node:path";
import readline from "node:readline";

import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import {
  connectNodeAdapter,
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";

const bin = process.argv[2];
if (!bin) {
  console.error("usage: node interop.mjs PATH/TO/connect-interop");
  process.exit(2);
}

let passed = 0;
let failed = 0;
function check(name, ok, detail = "") {
  if (ok) {
    passed++;
    console.log(`ok   ${name}`);
  } else {
    failed++;
    console.log(`FAIL ${name} ${detail}`);
  }
}

// Message types from the descriptor set, at run time.
const dir = mkdtempSync(join(tmpdir(), "connect-interop-"));
const descriptorPath = join(dir, "ping.binpb");
execFileSync(bin, ["descriptor", descriptorPath]);
const registry = createFileRegistry(
  fromBinary(FileDescriptorSetSchema, readFileSync(descriptorPath)),
);
const PingService = registry.getService("observability.ping.v1.PingService");
const FQ = "observability.ping.v1.PingService";

const snake = (code) =>
  Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
const grpcName = (code) =>
  code === Code.Canceled ? "CANCELLED" : snake(code).toUpperCase();
// Codes whose server span is an Error (semconv.md).
const SERVER_ERRORS = new Set([
  Code.Unknown,
  Code.DeadlineExceeded,
  Code.Unimplemented,
  Code.Internal,
  Code.Unavailable,
  Code.DataLoss,
]);

/** Runs the binary in `mode`, collecting its SPAN/CALL lines. */
function runBinary(args) {
  const child = spawn(bin, args, { stdio: ["pipe", "pipe", "inherit"] });
  const lines = { spans: [], calls: [], requests: [], listen: null };
  let onListen;
  const listening = new Promise((resolve) => (onListen = resolve));
  readline.createInterface({ input: child.stdout }).on("line", (line) => {
    if (line.startsWith("LISTEN ")) {
      lines.listen = line.slice(7);
      onListen(lines.listen);
    } else if (line.startsWith("SPAN ")) {
      lines.spans.push(JSON.parse(line.slice(5)));
    } else if (line.startsWith("REQUEST ")) {
      lines.requests.push(JSON.parse(line.slice(8)));
    } else if (line.startsWith("CALL ")) {
      lines.calls.push(JSON.parse(line.slice(5)));
    }
  });
  const exited = new Promise((resolve) => child.on("exit", resolve));
  return { child, lines, listening, exited };
}

const hex = (n) => randomBytes(n).toString("hex");

// Waits for `promise` at most `ms`; past that the child is killed and the
// suite fails (run.sh also bounds the whole suite).
async function within(promise, child, what, ms = 60_000) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${what}: nothing within ${ms} ms`));
    }, ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------
// (a) connect-node client -> our server
// ---------------------------------------------------------------------------
async function clientToOurServer() {
  const server = runBinary(["server"]);
  const baseUrl = await within(server.listening, server.child, "our server's LISTEN line");
  const sent = [];
  let label = null;
  const traceparent = (next) => async (req) => {
    const traceId = hex(16);
    const spanId = hex(8);
    req.header.set("traceparent", `00-${traceId}-${spanId}-01`);
    sent.push({ ...label, traceId, spanId });
    return await next(req);
  };
  const interceptors = [traceparent];
  const transports = [
    ["connect", "http/1.1", createConnectTransport({ baseUrl, httpVersion: "1.1", interceptors })],
    ["connect", "http/1.1 GET", createConnectTransport({ baseUrl, httpVersion: "1.1", useHttpGet: true, interceptors })],
    ["connect", "http/2", createConnectTransport({ baseUrl, httpVersion: "2", interceptors })],
    ["grpc", "http/2", createGrpcTransport({ baseUrl, httpVersion: "2", interceptors })],
    ["grpc-web", "http/1.1", createGrpcWebTransport({ baseUrl, httpVersion: "1.1", interceptors })],
    ["grpc-web", "http/2", createGrpcWebTransport({ baseUrl, httpVersion: "2", interceptors })],
  ];
  const outcomes = [];
  for (const [protocol, http, transport] of transports) {
    const client = createClient(PingService, transport);
    const h2 = http === "http/2";
    let calls = [
      ["Ping", async () => {
        const r = await client.ping({ id: 7n });
        if (r.id !== 7n) throw new Error(`bad echo ${r.id}`);
      }],
      ["Fail", () => client.fail({ code: Code.NotFound }), Code.NotFound],
      ["Fail", () => client.fail({ code: Code.Internal }), Code.Internal],
      ["Fail", () => client.fail({ code: Code.PermissionDenied }), Code.PermissionDenied],
      ["CountUp", async () => {
        let n = 0;
        for await (const m of client.countUp({ number: 3n })) n = Number(m.number);
        if (n !== 3) throw new Error(`got ${n}`);
      }],
      ["CountUp", async () => {
        for await (const _ of client.countUp({ number: 2n, failCode: Code.FailedPrecondition }));
      }, Code.FailedPrecondition],
    ];
    if (h2) {
      calls.push(["Sum", async () => {
        const r = await client.sum((async function* () {
          yield { number: 1n };
          yield { number: 2n };
        })());
        if (r.sum !== 3n) throw new Error(`sum ${r.sum}`);
      }]);
      calls.push(["Sum", () => client.sum((async function* () {
        yield { number: -1n };
      })()), Code.InvalidArgument]);
      calls.push(["PingStream", async () => {
        const out = [];
        for await (const m of client.pingStream((async function* () {
          yield { data: new TextEncoder().encode("a") };
          yield { data: new TextEncoder().encode("b") };
        })())) out.push(m);
        if (out.length !== 2) throw new Error(`got ${out.length}`);
      }]);
      calls.push(["PingStream", async () => {
        for await (const _ of client.pingStream((async function* () {
          yield { data: new TextEncoder().encode("fail") };
        })()));
      }, Code.DataLoss]);
    }
    if (http.endsWith("GET")) calls = calls.slice(0, 1);
    // Each call: the method, the call (which checks a successful reply
    // itself), and the code our server answers with (none: success).
    for (const [method, call, expected = null] of calls) {
      label = { protocol, http, method };
      let code = null;
      try {
        await call();
      } catch (e) {
        code = ConnectError.from(e).code;
      }
      check(
        `node ${protocol} ${http} ${method}: the call's outcome`,
        code === expected,
        `${code === null ? "ok" : Code[code]} vs ${expected === null ? "ok" : Code[expected]}`,
      );
      outcomes.push({ ...label, code, sent: sent[sent.length - 1] });
    }
  }
  // Let the last spans end and print, then stop the server.
  const expected = outcomes.length;
  for (let i = 0; i < 200 && server.lines.spans.length < expected; i++) {
    await new Promise((r) => setTimeout(r, 20));
  }
  server.child.stdin.end();
  await within(server.exited, server.child, "our server's exit");

  for (const o of outcomes) {
    const name = `node ${o.protocol} ${o.http} ${o.method} -> our server (${o.code === null ? "ok" : Code[o.code]})`;
    const span = server.lines.spans.find(
      (s) => s.kind === "server" && s.parent_span_id === o.sent.spanId,
    );
    if (!span) {
      check(`${name}: server span continues the trace`, false, "no span with the sent parent");
      continue;
    }
    check(`${name}: server span continues the trace`, span.trace_id === o.sent.traceId);
    const request = server.lines.requests.find((r) => r.traceparent.includes(o.sent.spanId));
    const verb = o.http.endsWith("GET") ? "GET" : "POST";
    check(`${name}: sent as ${verb}`, request && request.method === verb, request && request.method);
    const a = span.attributes;
    const system = o.protocol === "connect" ? "connectrpc" : "grpc";
    check(`${name}: rpc.system.name`, a["rpc.system.name"] === system, a["rpc.system.name"]);
    check(`${name}: rpc.method`, a["rpc.method"] === `${FQ}/${o.method}` && span.name === `${FQ}/${o.method}`, span.name);
    let status;
    if (o.code === null) status = system === "grpc" ? "OK" : undefined;
    else status = system === "grpc" ? grpcName(o.code) : snake(o.code);
    check(`${name}: rpc.status_code as the client saw it`, a["rpc.status_code"] === status, `${a["rpc.status_code"]} vs ${status}`);
    const serverError = o.code !== null && SERVER_ERRORS.has(o.code);
    check(`${name}: span status`, span.status === (serverError ? "error" : "unset"), span.status);
    check(`${name}: error.type`, a["error.type"] === (serverError ? status : undefined), a["error.type"]);
    if (o.method === "CountUp" || o.method === "PingStream") {
      const sentEvents = span.events.filter(
        (e) => e.name === "rpc.message" && e.attributes["rpc.message.type"] === "SENT",
      ).length;
      const want = o.method === "CountUp" ? (o.code === null ? 3 : 2) : o.code === null ? 2 : 0;
      check(`${name}: one SENT event per response message`, sentEvents === want, `${sentEvents} vs ${want}`);
    }
  }
}

// ---------------------------------------------------------------------------
// (b) our client -> connect-node server
// ---------------------------------------------------------------------------
const MESSAGE = "ping \u2713 failed 100%";

async function ourClientToNodeServer() {
  const received = [];
  const record = (ctx, method) => {
    received.push({
      method,
      contentType: ctx.requestHeader.get("content-type"),
      traceparent: ctx.requestHeader.get("traceparent"),
    });
  };
  const adapter = connectNodeAdapter({
    routes(router) {
      router.service(PingService, {
        async ping(req, ctx) {
          record(ctx, "Ping");
          return { id: req.id, data: req.data };
        },
        async fail(req, ctx) {
          record(ctx, "Fail");
          throw new ConnectError(MESSAGE, req.code);
        },
        async *countUp(req, ctx) {
          record(ctx, "CountUp");
          for (let i = 1n; i <= req.number; i++) yield { number: i };
          if (req.failCode) throw new ConnectError(MESSAGE, req.failCode);
        },
        async sum(reqs, ctx) {
          record(ctx, "Sum");
          let sum = 0n;
          for await (const r of reqs) sum += r.number;
          return { sum };
        },
        async *pingStream(reqs, ctx) {
          record(ctx, "PingStream");
          for await (const r of reqs) yield { data: r.data };
        },
      });
    },
  });
  const server = http2.createServer(adapter);
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const url = `http://127.0.0.1:${server.address().port}`;

  const run = runBinary(["client", url]);
  run.child.stdin.end();
  await within(run.exited, run.child, "our client's calls");
  server.close();

  const clientSpans = run.lines.spans.filter((s) => s.kind === "client");
  check("our client made every call", run.lines.calls.length === 15, `${run.lines.calls.length} calls`);
  check("one client span per call", clientSpans.length === run.lines.calls.length, `${clientSpans.length} spans`);
  for (const [i, call] of run.lines.calls.entries()) {
    const name = `our ${call.protocol} client ${call.method}(${call.requested}) -> node server`;
    const want = call.requested === 0 ? "ok" : snake(call.requested);
    check(`${name}: code`, call.code === want, `${call.code} vs ${want}`);
    if (call.code !== "ok") {
      check(`${name}: message decoded`, call.message === MESSAGE, JSON.stringify(call.message));
    }
    const span = clientSpans[i];
    if (!span) continue;
    const a = span.attributes;
    check(`${name}: span name`, span.name === `${FQ}/${call.method}`, span.name);
    const system = call.protocol === "connect" ? "connectrpc" : "grpc";
    check(`${name}: rpc.system.name`, a["rpc.system.name"] === system, a["rpc.system.name"]);
    let status;
    if (call.requested === 0) status = system === "grpc" ? "OK" : undefined;
    else status = system === "grpc" ? grpcName(call.requested) : snake(call.requested);
    check(`${name}: rpc.status_code`, a["rpc.status_code"] === status, `${a["rpc.status_code"]} vs ${status}`);
    check(`${name}: span status`, span.status === (call.requested === 0 ? "unset" : "error"), span.status);
    if (call.requested !== 0) {
      check(`${name}: status description is the decoded message`, span.description === MESSAGE, JSON.stringify(span.description));
    }
    const got = received[i];
    check(`${name}: node received our traceparent`, got && got.traceparent === span.traceparent, `${got && got.traceparent} vs ${span.traceparent}`);
  }
}

try {
  await clientToOurServer();
  await ourClientToNodeServer();
} catch (e) {
  failed++;
  console.log(`FAIL unexpected error: ${e && e.stack ? e.stack : e}`);
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
