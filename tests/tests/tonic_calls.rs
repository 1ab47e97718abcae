//! tonic end to end on 127.0.0.1: unary, server-streaming, client-streaming
//! and bidi calls between a generated client over `otel_tonic` client layer
//! and a generated service behind the server layer, each succeeding and
//! failing (status in the trailers, and trailers-only), with the exact spans
//! and metric points of semconv.md on both sides.

mod tonic_support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::SpanKind;
use otel_integration_tests::{Telemetry, attrs};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_support::*;

const SAY_HELLO: &str = "helloworld.Greeter/SayHello";
const SERVER_STREAM: &str = "helloworld.Greeter/ServerStream";
const CLIENT_STREAM: &str = "helloworld.Greeter/ClientStream";
const BIDI: &str = "helloworld.Greeter/Bidi";

#[tokio::test]
async fn unary_success() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let mut client = greeter_client(&otel, server.addr).await;
    let reply = within(client.say_hello(hello("world"))).await.unwrap();
    assert_eq!(reply.into_inner().message, "Hello world");
    let e = Expect {
        method: SAY_HELLO,
        code: "OK",
        message: "",
    };
    expect_call(&t, server.addr, e).await;
}

/// A unary handler's immediate `Err(Status)`: tonic answers trailers-only
/// (see `unary_error_is_trailers_only_on_the_wire`). NOT_FOUND is an error for
/// the client only.
#[tokio::test]
async fn unary_not_found_trailers_only() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let mut client = greeter_client(&otel, server.addr).await;
    let status = within(client.say_hello(hello("fail:5"))).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let e = Expect {
        method: SAY_HELLO,
        code: "NOT_FOUND",
        message: "failed on purpose (NotFound)",
    };
    expect_call(&t, server.addr, e).await;
}

#[tokio::test]
async fn unary_internal_trailers_only() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let mut client = greeter_client(&otel, server.addr).await;
    let status = within(client.say_hello(hello("fail:13")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    let e = Expect {
        method: SAY_HELLO,
        code: "INTERNAL",
        message: "failed on purpose (Internal)",
    };
    expect_call(&t, server.addr, e).await;
}

#[tokio::test]
async fn server_streaming_success() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let mut client = greeter_client(&otel, server.addr).await;
    let mut stream = within(client.server_stream(hello("count:3")))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(msg) = within(stream.next()).await {
        got.push(msg.unwrap().message);
    }
    assert_eq!(got, ["reply 0", "reply 1", "reply 2"]);
    let e = Expect {
        method: SERVER_STREAM,
        code: "OK",
        message: "",
    };
    let (client_span, server_span) = expect_call(&t, server.addr, e).await;
    // The spans last the whole stream, not just until the response headers.
    assert!(server_span.end_time >= server_span.start_time);
    assert!(client_span.end_time >= server_span.end_time);
}

/// Two messages, then the status in the trailers.
#[tokio::test]
async fn server_streaming_error_in_trailers() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let mut client = greeter_client(&otel, server.addr).await;
    let mut stream = within(client.server_stream(hello("count:2:fail:13")))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    let status = loop {
        match within(stream.next()).await {
            Some(Ok(msg)) => got.push(msg.message),
            Some(Err(status)) => break status,
            None => panic!("stream ended without the status"),
        }
    };
    assert_eq!(got, ["reply 0", "reply 1"]);
    assert_eq!(status.code(), Code::Internal);
    let e = Expect {
        method: SERVER_STREAM,
        code: "INTERNAL",
        message: "failed on purpose (Internal)",
    };
    expect_call(&t, server.addr, e).await;
}

/// A client-side status from the trailers that is not an error on the server.
#[tokio::test]
async fn server_streaming_out_of_range_in_trailers() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let mut client = greeter_client(&otel, server.addr).await;
    let mut stream = within(client.server_stream(hello("count:1:fail:11")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        within(stream.next()).await.unwrap().unwrap().message,
        "reply 0"
    );
    let status = within(stream.next()).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    let e = Expect {
        method: SERVER_STREAM,
        code: "OUT_OF_RANGE",
        message: "failed on purpose (OutOfRange)",
    };
    expect_call(&t, server.addr, e).await;
}

#[tokio::test]
async fn server_streaming_error_trailers_only() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let mut client = greeter_client(&otel, server.addr).await;
    let status = within(client.server_stream(hello("fail:7")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let e = Expect {
        method: SERVER_STREAM,
        code: "PERMISSION_DENIED",
        message: "failed on purpose (PermissionDenied)",
    };
    expect_call(&t, server.addr, e).await;
}

#[tokio::test]
async fn client_streaming_success() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let mut client = greeter_client(&otel, server.addr).await;
    let reply = within(client.client_stream(requests(&["a", "b", "c"])))
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "3 messages");
    let e = Expect {
        method: CLIENT_STREAM,
        code: "OK",
        message: "",
    };
    expect_call(&t, server.addr, e).await;
}

/// The handler reads the whole request stream, then fails: trailers-only.
#[tokio::test]
async fn client_streaming_error() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let mut client = greeter_client(&otel, server.addr).await;
    let status = within(client.client_stream(requests(&["a", "fail:3", "c"])))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let e = Expect {
        method: CLIENT_STREAM,
        code: "INVALID_ARGUMENT",
        message: "failed on purpose (InvalidArgument)",
    };
    expect_call(&t, server.addr, e).await;
}

#[tokio::test]
async fn bidi_success() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let mut client = greeter_client(&otel, server.addr).await;
    let mut stream = within(client.bidi(requests(&["a", "b"])))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(msg) = within(stream.next()).await {
        got.push(msg.unwrap().message);
    }
    assert_eq!(got, ["echo a", "echo b"]);
    let e = Expect {
        method: BIDI,
        code: "OK",
        message: "",
    };
    expect_call(&t, server.addr, e).await;
}

/// One echo, then UNAVAILABLE in the trailers.
#[tokio::test]
async fn bidi_error_in_trailers() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let mut client = greeter_client(&otel, server.addr).await;
    let mut stream = within(client.bidi(requests(&["a", "fail:14", "never"])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        within(stream.next()).await.unwrap().unwrap().message,
        "echo a"
    );
    let status = within(stream.next()).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let e = Expect {
        method: BIDI,
        code: "UNAVAILABLE",
        message: "failed on purpose (Unavailable)",
    };
    expect_call(&t, server.addr, e).await;
}

/// Bidi failing before it reads or sends anything: trailers-only.
#[tokio::test]
async fn bidi_error_trailers_only() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let mut client = greeter_client(&otel, server.addr).await;
    let mut request = tonic::Request::new(requests(&["a"]));
    request
        .metadata_mut()
        .insert("x-fail", "16".parse().unwrap());
    let status = within(client.bidi(request)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let e = Expect {
        method: BIDI,
        code: "UNAUTHENTICATED",
        message: "failed on purpose (Unauthenticated)",
    };
    expect_call(&t, server.addr, e).await;
}

/// Message events (opt-in in Stable mode): one `rpc.message` event per
/// streamed response message, SENT on the server and RECEIVED on the
/// client, numbered from 1; unary calls get none.
#[tokio::test]
async fn stream_message_events_when_enabled() {
    let t = Telemetry::new();
    let otel = otel(&t).with_trace_events();
    let server = serve_greeter(&otel, None);
    let mut client = greeter_client(&otel, server.addr).await;
    let mut stream = within(client.server_stream(hello("count:3")))
        .await
        .unwrap()
        .into_inner();
    while within(stream.next()).await.is_some() {}
    t.wait_spans(2).await;
    for (kind, direction) in [(SpanKind::Server, "SENT"), (SpanKind::Client, "RECEIVED")] {
        let span = t.span(kind.clone());
        let events: Vec<_> = span.events.iter().collect();
        assert_eq!(events.len(), 3, "{kind:?}: {events:?}");
        for (i, event) in events.iter().enumerate() {
            assert_eq!(event.name, "rpc.message");
            let a: std::collections::BTreeMap<String, String> = event
                .attributes
                .iter()
                .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                .collect();
            assert_eq!(a["rpc.message.type"], direction);
            assert_eq!(a["rpc.message.id"], (i + 1).to_string());
            // "reply N" encoded: tag, length, 7 bytes.
            assert_eq!(a["rpc.message.uncompressed_size"], "9");
        }
    }
    // gRPC frames unary and streaming calls alike, so a layer that reads only
    // HTTP cannot tell a unary call from a one-message stream: a unary gRPC
    // call gets one event per side too (semconv.md's "unary calls SHOULD
    // NOT" can only be honoured for Connect unary, which has no envelopes).
    t.spans.reset();
    within(client.say_hello(hello("unary"))).await.unwrap();
    t.wait_spans(2).await;
    for (kind, direction) in [(SpanKind::Server, "SENT"), (SpanKind::Client, "RECEIVED")] {
        let span = t.span(kind.clone());
        let types: Vec<String> = span
            .events
            .iter()
            .map(|e| {
                e.attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == "rpc.message.type")
                    .map(|kv| kv.value.to_string())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(types, [direction], "{kind:?}");
    }
}

/// Bidi with messages interleaved: the client sends the next message only
/// after it got the echo of the previous one; the spans cover it all.
#[tokio::test]
async fn bidi_interleaved() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let mut client = greeter_client(&otel, server.addr).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(hello("one")).await.unwrap();
    let mut stream = within(client.bidi(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        within(stream.next()).await.unwrap().unwrap().message,
        "echo one"
    );
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    assert!(
        t.finished_spans().is_empty(),
        "spans last while the stream is open"
    );
    tx.send(hello("two")).await.unwrap();
    assert_eq!(
        within(stream.next()).await.unwrap().unwrap().message,
        "echo two"
    );
    drop(tx);
    assert!(within(stream.next()).await.is_none());
    let e = Expect {
        method: BIDI,
        code: "OK",
        message: "",
    };
    let (client_span, server_span) = expect_call(&t, server.addr, e).await;
    for span in [client_span, server_span] {
        let d = span.end_time.duration_since(span.start_time).unwrap();
        assert!(d >= std::time::Duration::from_millis(30), "{d:?}");
    }
}

/// The handler sees the server span as its current context and in the request
/// extensions (otel_tower's contract, through tonic's generated service).
#[tokio::test]
async fn handler_sees_server_span_context() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let mut client = greeter_client(&otel, server.addr).await;
    let reply = within(client.say_hello(hello("context"))).await.unwrap();
    t.wait_spans(2).await;
    let server_span = t.span(SpanKind::Server);
    let (current, ext) = parse_context_report(&reply.into_inner().message);
    assert_eq!(current, span_ids(&server_span));
    assert_eq!(ext, span_ids(&server_span));
}

/// What the tests above call "trailers-only" is that on the wire: a unary
/// `Err(Status)` from a tonic handler comes back as response headers with
/// `grpc-status`, an empty body and no trailers frame, unchanged by the
/// server layer; the server span still ends with the right code.
#[tokio::test]
async fn unary_error_is_trailers_only_on_the_wire() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    // helloworld.HelloRequest { name: "fail:5" }, enveloped.
    let mut msg = vec![0u8, 0, 0, 0, 8, 0x0a, 6];
    msg.extend_from_slice(b"fail:5");
    let req = http::Request::post(format!(
        "http://{}/helloworld.Greeter/SayHello",
        server.addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(Full::new(Bytes::from(msg)))
    .unwrap();
    let res = within(client.request(req)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "5");
    assert_eq!(
        res.headers()["grpc-message"],
        "failed%20on%20purpose%20(NotFound)"
    );
    let collected = within(res.into_body().collect()).await.unwrap();
    assert!(collected.trailers().is_none(), "no trailers frame");
    assert!(collected.to_bytes().is_empty(), "empty body");
    t.wait_spans(1).await;
    let server_span = t.span(SpanKind::Server);
    assert_eq!(attrs(&server_span)["rpc.status_code"], "NOT_FOUND");
    assert!(!attrs(&server_span).contains_key("error.type"));
}

/// Many calls over one channel, concurrently: one span pair per call, each
/// server span the child of its own client span.
#[tokio::test]
async fn concurrent_calls_keep_their_parents() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let client = greeter_client(&otel, server.addr).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let name = if i % 2 == 0 {
                "x".to_string()
            } else {
                "fail:5".into()
            };
            client
                .say_hello(hello(&name))
                .await
                .map(|_| ())
                .map_err(|s| s.code())
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(within(task).await.unwrap());
    }
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let not_found = results
        .iter()
        .filter(|r| **r == Err(tonic::Code::NotFound))
        .count();
    assert_eq!((ok, not_found), (10, 10), "{results:?}");
    let spans = t.wait_spans(40).await;
    let clients: Vec<_> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Client)
        .collect();
    let servers: Vec<_> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Server)
        .collect();
    assert_eq!((clients.len(), servers.len()), (20, 20));
    for s in &servers {
        let parent = clients
            .iter()
            .find(|c| c.span_context.span_id() == s.parent_span_id)
            .expect("server span's parent is one of the client spans");
        assert_eq!(parent.span_context.trace_id(), s.span_context.trace_id());
        assert_eq!(
            attrs(parent)["rpc.status_code"],
            attrs(s)["rpc.status_code"]
        );
    }
    let point = &t.histogram("rpc.client.call.duration");
    let total: u64 = point.iter().map(|p| p.count).sum();
    assert_eq!(total, 20);
}
