//! tonic end to end, the unhappy endings: deadlines (`grpc-timeout`)
//! expiring on the server and on the client, the client dropping a call or
//! a stream mid-way, and handlers panicking. Every span ends exactly once,
//! with the status semconv.md asks for.

mod tonic_support;

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use opentelemetry::trace::{SpanKind, Status as SpanStatus};
use otel_integration_tests::{Telemetry, attrs, is_error, map};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_support::*;

fn kind(
    spans: &[opentelemetry_sdk::trace::SpanData],
    kind: SpanKind,
) -> opentelemetry_sdk::trace::SpanData {
    let mut matching: Vec<_> = spans
        .iter()
        .filter(|s| s.span_kind == kind)
        .cloned()
        .collect();
    assert_eq!(matching.len(), 1, "one {kind:?} span");
    matching.pop().unwrap()
}

/// `rpc.status_code` and `error.type` of a span.
fn outcome(span: &opentelemetry_sdk::trace::SpanData) -> (Option<String>, Option<String>) {
    let a = attrs(span);
    (
        a.get("rpc.status_code").cloned(),
        a.get("error.type").cloned(),
    )
}

fn some(code: &str) -> Option<String> {
    Some(code.to_owned())
}

/// The server enforces the deadline: tonic drops the handler once
/// `grpc-timeout` has passed. The client here is plain hyper (it does not
/// enforce anything), so only the server decides. The server span is
/// DEADLINE_EXCEEDED (an error on the server); what tonic puts on the wire
/// for it is its own choice (a trailers-only CANCELLED "Timeout expired").
#[tokio::test]
async fn deadline_expires_on_the_server() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let req = http::Request::post(format!(
        "http://{}/helloworld.Greeter/SayHello",
        server.addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("grpc-timeout", "100m")
    .body(Full::new(grpc_frame(&hello("sleep:3000"))))
    .unwrap();
    let started = std::time::Instant::now();
    let res = within(raw_h2_client().request(req)).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the handler was cut short"
    );
    assert_eq!(res.headers()["grpc-status"], "1", "tonic answers CANCELLED");
    let _ = within(res.into_body().collect()).await;

    let spans = settled(&t, 1).await;
    let server_span = kind(&spans, SpanKind::Server);
    assert_eq!(server_span.name, "helloworld.Greeter/SayHello");
    assert_eq!(
        outcome(&server_span),
        (some("DEADLINE_EXCEEDED"), some("DEADLINE_EXCEEDED"))
    );
    assert!(is_error(&server_span));
    let d = server_span
        .end_time
        .duration_since(server_span.start_time)
        .unwrap();
    assert!(
        d >= Duration::from_millis(100) && d < Duration::from_secs(2),
        "{d:?}"
    );
    let points = t.histogram("rpc.server.call.duration");
    assert_eq!(
        points[0].attributes,
        map(&[
            ("rpc.system.name", "grpc"),
            ("rpc.method", "helloworld.Greeter/SayHello"),
            ("rpc.status_code", "DEADLINE_EXCEEDED"),
            ("error.type", "DEADLINE_EXCEEDED"),
        ])
    );
}

/// A tonic client with `Request::set_timeout` against a slow unary handler:
/// tonic's Channel gives up at the deadline (an error from the inner service)
/// and the server drops the handler at its own copy of the deadline. Both
/// spans are DEADLINE_EXCEEDED, in one trace.
#[tokio::test]
async fn unary_deadline_with_tonic_on_both_sides() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let mut client = greeter_client(&otel, server.addr).await;
    let mut req = tonic::Request::new(hello("sleep:3000"));
    req.set_timeout(Duration::from_millis(100));
    let status = within(client.say_hello(req)).await.unwrap_err();
    // tonic reports its own client-side timeout as CANCELLED "Timeout expired".
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");

    let spans = settled(&t, 2).await;
    let client_span = kind(&spans, SpanKind::Client);
    let server_span = kind(&spans, SpanKind::Server);
    assert_eq!(
        server_span.parent_span_id,
        client_span.span_context.span_id()
    );
    for span in [&client_span, &server_span] {
        assert_eq!(
            outcome(span),
            (some("DEADLINE_EXCEEDED"), some("DEADLINE_EXCEEDED")),
            "{:?}",
            span.span_kind
        );
        assert!(is_error(span));
    }
    let points = t.histogram("rpc.client.call.duration");
    assert_eq!(points[0].attributes["rpc.status_code"], "DEADLINE_EXCEEDED");
}

/// The client enforces the deadline: the server answered the headers and one
/// message in time, then stalls; the client stops reading at its deadline and
/// drops the stream. Both spans are DEADLINE_EXCEEDED (the server sees the
/// stream reset after its copy of the deadline passed).
#[tokio::test]
async fn deadline_expires_on_the_client_mid_stream() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let mut client = greeter_client(&otel, server.addr).await;
    let mut req = tonic::Request::new(hello("stall:1"));
    req.set_timeout(Duration::from_millis(150));
    let mut stream = within(client.server_stream(req))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        within(stream.next()).await.unwrap().unwrap().message,
        "reply 0"
    );
    let waited = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(waited.is_err(), "the server stalls");
    drop(stream);

    let spans = settled(&t, 2).await;
    let client_span = kind(&spans, SpanKind::Client);
    let server_span = kind(&spans, SpanKind::Server);
    for span in [&client_span, &server_span] {
        assert_eq!(
            outcome(span),
            (some("DEADLINE_EXCEEDED"), some("DEADLINE_EXCEEDED")),
            "{:?}",
            span.span_kind
        );
        assert!(is_error(span));
    }
}

/// The client reads one message of a server stream, then drops it: both
/// spans end (once) as CANCELLED, an error only for the client.
#[tokio::test]
async fn client_drops_server_stream_midway() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let mut client = greeter_client(&otel, server.addr).await;
    let mut stream = within(client.server_stream(hello("stall:1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        within(stream.next()).await.unwrap().unwrap().message,
        "reply 0"
    );
    assert!(t.finished_spans().is_empty(), "the stream is still open");
    drop(stream);

    let spans = settled(&t, 2).await;
    let client_span = kind(&spans, SpanKind::Client);
    let server_span = kind(&spans, SpanKind::Server);
    assert_eq!(
        outcome(&client_span),
        (some("CANCELLED"), some("CANCELLED"))
    );
    assert!(is_error(&client_span));
    assert_eq!(outcome(&server_span), (some("CANCELLED"), None));
    assert_eq!(server_span.status, SpanStatus::Unset);
    assert_eq!(
        server_span.parent_span_id,
        client_span.span_context.span_id()
    );
}

/// Same for a bidi stream with the request side still open.
#[tokio::test]
async fn client_drops_bidi_midway() {
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
    drop(stream);
    drop(tx);

    let spans = settled(&t, 2).await;
    let client_span = kind(&spans, SpanKind::Client);
    let server_span = kind(&spans, SpanKind::Server);
    assert_eq!(
        outcome(&client_span),
        (some("CANCELLED"), some("CANCELLED"))
    );
    assert_eq!(outcome(&server_span), (some("CANCELLED"), None));
    assert!(!is_error(&server_span));
}

/// The client gives up on a unary call before any response (no deadline
/// header): both sides are CANCELLED.
#[tokio::test]
async fn client_drops_unary_call_before_the_response() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let mut client = greeter_client(&otel, server.addr).await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        client.say_hello(hello("sleep:3000")),
    )
    .await;
    assert!(gave_up.is_err());

    let spans = settled(&t, 2).await;
    let client_span = kind(&spans, SpanKind::Client);
    let server_span = kind(&spans, SpanKind::Server);
    assert_eq!(
        outcome(&client_span),
        (some("CANCELLED"), some("CANCELLED"))
    );
    assert_eq!(outcome(&server_span), (some("CANCELLED"), None));
}

/// tonic does not catch a panicking handler: the task serving the stream
/// dies and hyper resets the HTTP/2 stream (RST_STREAM CANCEL) before any
/// response. The layer sees the panic go through and ends the server span
/// once as an error without a code (`_OTHER`, "panicked"); the client's
/// Channel fails with the reset before a response, also `_OTHER`. The
/// server keeps serving.
#[tokio::test]
async fn handler_panic_resets_the_stream() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let mut client = greeter_client(&otel, server.addr).await;
    let status = within(client.say_hello(hello("panic"))).await.unwrap_err();
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");

    let spans = settled(&t, 2).await;
    let client_span = kind(&spans, SpanKind::Client);
    let server_span = kind(&spans, SpanKind::Server);
    assert_eq!(outcome(&server_span), (None, some("_OTHER")));
    assert_eq!(server_span.status, SpanStatus::error("panicked"));
    assert_eq!(outcome(&client_span), (None, some("_OTHER")));
    assert!(is_error(&client_span));

    let reply = within(client.say_hello(hello("again"))).await.unwrap();
    assert_eq!(reply.into_inner().message, "Hello again");
    settled(&t, 4).await;
}

/// A response stream that panics after two messages: the client got both,
/// then the reset as a body error (CANCELLED); the server span records the
/// panic as an error without a code. Both end once.
#[tokio::test]
async fn stream_panic_midway_resets_the_stream() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_greeter(&otel, None);
    let mut client = greeter_client(&otel, server.addr).await;
    let mut stream = within(client.server_stream(hello("panic-stream:2")))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    let status = loop {
        match within(stream.next()).await {
            Some(Ok(m)) => got.push(m.message),
            Some(Err(status)) => break status,
            None => panic!("the stream cannot end normally"),
        }
    };
    assert_eq!(got, ["reply 0", "reply 1"]);
    assert_eq!(status.code(), Code::Cancelled);
    drop(stream);

    let spans = settled(&t, 2).await;
    let client_span = kind(&spans, SpanKind::Client);
    let server_span = kind(&spans, SpanKind::Server);
    assert_eq!(
        outcome(&client_span),
        (some("CANCELLED"), some("CANCELLED"))
    );
    assert_eq!(outcome(&server_span), (None, some("_OTHER")));
    assert!(is_error(&server_span));
}

/// With a panic-catching layer inside the server layer (tower-http's
/// `CatchPanicLayer`, answering a gRPC INTERNAL status), a panic is a
/// regular trailers-only error: INTERNAL on both sides, an error on the
/// server too. (The layer's default HTTP 500 text response would make tonic
/// clients fail on decoding it instead.)
#[tokio::test]
async fn caught_panic_is_internal() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let (incoming, addr) = incoming();
    let catch_panic = tower_http::catch_panic::CatchPanicLayer::custom(|_| {
        tonic::Status::internal("handler panicked").into_http::<Full<bytes::Bytes>>()
    });
    let router = tonic::transport::Server::builder()
        .layer(otel.server_layer())
        .layer(catch_panic)
        .add_service(GreeterServer::new(TestGreeter { backend: None }));
    let _server = spawn_server(addr, router.serve_with_incoming(incoming));
    let mut client = greeter_client(&otel, addr).await;
    let status = within(client.say_hello(hello("panic"))).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");

    let spans = settled(&t, 2).await;
    for span in [
        kind(&spans, SpanKind::Client),
        kind(&spans, SpanKind::Server),
    ] {
        assert_eq!(outcome(&span), (some("INTERNAL"), some("INTERNAL")));
        assert_eq!(span.status, SpanStatus::error("handler panicked"));
    }
}
