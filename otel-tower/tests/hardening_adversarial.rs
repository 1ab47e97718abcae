//! Adversarial peers against real servers and clients on 127.0.0.1: the
//! layers never panic, keep serving, pass bytes through unchanged and hold
//! bounded memory.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use opentelemetry::trace::SpanKind;
use support::*;
use tower::{ServiceBuilder, ServiceExt};

// A counting allocator: bytes currently allocated and the peak since reset.
struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Memory tests share the global counters: run them one at a time.
static MEMORY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn reset_peak() -> usize {
    let now = CURRENT.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    now
}

fn grpc_ok(_: &Request<hyper::body::Incoming>) -> Response<Scripted> {
    grpc_ok_response(&[&envelope(0, b"ok")])
}

/// A raw HTTP/2 client (h2), so requests can carry what hyper's client
/// would refuse or normalise.
async fn h2_connect(addr: std::net::SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.unwrap()
}

fn raw_request(addr: std::net::SocketAddr, headers: &[(&str, &[u8])]) -> Request<()> {
    let mut req = Request::post(format!("http://{addr}/pkg.Svc/Method"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(v).unwrap(),
        );
    }
    req
}

async fn read_h2(
    response: h2::client::ResponseFuture,
) -> (http::StatusCode, Vec<u8>, Option<http::HeaderMap>) {
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .unwrap()
        .unwrap();
    let status = response.status();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap();
    (status, bytes, trailers)
}

#[tokio::test]
async fn hostile_propagation_headers_are_ignored_and_the_server_keeps_serving() {
    let _m = MEMORY.lock().await;
    let t = Telemetry::new();
    let otel = t.instrumentation();
    let addr = serve(otel.server_layer(), Arc::new(grpc_ok)).await;
    let mut send = h2_connect(addr).await;

    let baseline = reset_peak();
    // A 1 MiB tracestate after a valid traceparent; 200 baggage headers.
    let huge_state = format!("a={}", "x".repeat(1 << 20));
    let baggage: Vec<String> = (0..200).map(|i| format!("k{i}=v{i}")).collect();
    let mut headers: Vec<(&str, &[u8])> = vec![
        (
            "traceparent",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("tracestate", huge_state.as_bytes()),
    ];
    for b in &baggage {
        headers.push(("baggage", b.as_bytes()));
    }
    let (response, mut stream) = send
        .send_request(raw_request(addr, &headers), false)
        .unwrap();
    // A request envelope declaring 4 GiB, followed by a little data and the end.
    stream
        .send_data(
            Bytes::from_static(&[0, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
            true,
        )
        .unwrap();
    let (status, body, trailers) = read_h2(response).await;
    assert_eq!(status, 200);
    assert_eq!(body, envelope(0, b"ok"));
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(baseline);
    // The 1 MiB header itself is held by h2 (a few copies); nothing of ours
    // grows with the declared 4 GiB.
    assert!(peak < 16 << 20, "peak {peak} bytes");

    let server = t.wait_spans(1).await.pop().unwrap();
    // The tracestate is invalid (one member of 1 MiB): the trace continues
    // from traceparent, tracestate discarded.
    assert_eq!(
        server.span_context.trace_id().to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(server.span_context.trace_state().header(), "");

    // Invalid UTF-8 and obs-text in a captured header value.
    let t2 = Telemetry::new();
    let otel2 = t2.instrumentation().with_trace_request_header(["x-weird"]);
    let addr2 = serve(otel2.server_layer(), Arc::new(grpc_ok)).await;
    let mut send2 = h2_connect(addr2).await;
    let (response, _) = send2
        .send_request(
            raw_request(addr2, &[("x-weird", b"caf\xc3\xa9 \xff\xfe end")]),
            true,
        )
        .unwrap();
    read_h2(response).await;
    let span = t2.wait_spans(1).await.pop().unwrap();
    let value = attrs(&span)["rpc.request.metadata.x-weird"].clone();
    assert!(value.contains("café"), "{value}");
    assert!(
        value.contains('\u{FFFD}'),
        "invalid bytes become U+FFFD: {value}"
    );

    // Still serving on the first connection.
    let (response, _) = send.send_request(raw_request(addr, &[]), true).unwrap();
    assert_eq!(read_h2(response).await.0, 200);
}

#[tokio::test]
async fn rst_stream_mid_body_and_a_client_that_stops_reading() {
    // Its allocations would show in the tests that measure peak memory.
    let _m = MEMORY.lock().await;
    let t = Telemetry::new();
    let otel = t.instrumentation();
    let addr = serve(
        otel.server_layer(),
        Arc::new(|_| {
            // A long stream the client will abandon.
            let (tx, body) = Scripted::channel();
            tokio::spawn(async move {
                for _ in 0..10_000 {
                    if tx
                        .send(Ok(Frame::data(Bytes::from(envelope(0, &[7u8; 1024])))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
            Response::builder()
                .header("content-type", "application/grpc")
                .body(body)
                .unwrap()
        }),
    )
    .await;
    let mut send = h2_connect(addr).await;
    // RST_STREAM after the first chunk.
    let (response, _) = send.send_request(raw_request(addr, &[]), true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .unwrap()
        .unwrap();
    let mut body = response.into_body();
    body.data().await.unwrap().unwrap();
    drop(body); // h2 sends RST_STREAM(CANCEL) for a dropped stream
    // A client that stops reading: never polls its body.
    let (response, _) = send.send_request(raw_request(addr, &[]), true).unwrap();
    let stalled = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Another client is still served while one stalls.
    let ok = serve(t.instrumentation().server_layer(), Arc::new(grpc_ok)).await;
    let client = ServiceBuilder::new()
        .layer(t.instrumentation().client_layer())
        .service(h2_client());
    let other = client
        .oneshot(grpc_request(ok, "/pkg.Svc/Method", "application/grpc"))
        .await
        .unwrap();
    let (_, body, _) = read_all(other).await;
    assert_eq!(body, envelope(0, b"ok"));

    drop(stalled);
    drop(send);
    let spans = t.wait_spans(4).await;
    let servers: Vec<_> = spans
        .iter()
        .filter(|s| {
            s.span_kind == SpanKind::Server && attrs(s)["server.port"] == addr.port().to_string()
        })
        .collect();
    assert_eq!(servers.len(), 2, "both abandoned calls ended exactly once");
    for s in servers {
        assert_eq!(attrs(s)["rpc.status_code"], "CANCELLED");
    }
}

/// A response body that never ends: `{"code":"not_found","message":"xxxx...`
/// forever (10 MiB, then it just stalls).
fn endless_error_body() -> Scripted {
    let (tx, body) = Scripted::channel();
    tokio::spawn(async move {
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(
                br#"{"code":"not_found","message":""#,
            ))))
            .await;
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        for _ in 0..160 {
            if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                return;
            }
        }
        std::future::pending::<()>().await;
    });
    body
}

#[tokio::test]
async fn hostile_responses_are_classified_and_passed_through() {
    let _m = MEMORY.lock().await;
    let t = Telemetry::new();
    let otel = t.instrumentation().with_trace_response_header(["x-evil"]);
    let addr = serve(
        tower::layer::util::Identity::new(),
        Arc::new(|req| match req.uri().path() {
            "/pkg.Svc/Endless" => Response::builder()
                .status(404)
                .header("content-type", "application/json")
                .body(endless_error_body())
                .unwrap(),
            "/pkg.Svc/Huge" => Response::builder()
                .header("content-type", "application/grpc")
                .body(Scripted::data_then_trailers(
                    &[&[0, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]],
                    trailers(&[("grpc-status", "0")]),
                ))
                .unwrap(),
            "/pkg.Svc/WebCrlf" => {
                let mut block = b"grpc-status: 3\r\ngrpc-message: a\r\nb\xff\xfe\r\nx-evil: 1\r\n\r\ninjected: yes\r\n".to_vec();
                block.extend_from_slice(&[0xff; 10]);
                Response::builder()
                    .header("content-type", "application/grpc-web+proto")
                    .body(Scripted::data(&[&envelope(0x80, &block)]))
                    .unwrap()
            }
            path => {
                let status = path.trim_start_matches("/pkg.Svc/Status");
                Response::builder()
                    .header("content-type", "application/grpc")
                    .header("x-evil", http::HeaderValue::from_bytes(b"\xff\xfe").unwrap())
                    .body(Scripted::data_then_trailers(
                        &[],
                        trailers(&[("grpc-status", status), ("grpc-message", "%ff%fe%0d%0ainjected%")]),
                    ))
                    .unwrap()
            }
        }),
    )
    .await;
    let client = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h2_client());

    // Garbage grpc-status values.
    for status in ["99", "-1", "abc"] {
        t.spans.reset();
        let req = grpc_request(
            addr,
            &format!("/pkg.Svc/Status{status}"),
            "application/grpc",
        );
        let (_, _, trailers) = read_all(client.clone().oneshot(req).await.unwrap()).await;
        assert_eq!(
            trailers.unwrap()["grpc-status"],
            status,
            "trailers unchanged"
        );
        let span = t.span(SpanKind::Client);
        assert_eq!(attrs(&span)["rpc.status_code"], "UNKNOWN");
        // The status message is a plain string: decoded leniently, no panic.
        let opentelemetry::trace::Status::Error { description } = &span.status else {
            panic!()
        };
        assert!(description.contains("injected"), "{description}");
        assert_eq!(
            attrs(&span)["rpc.response.metadata.x-evil"],
            "[\"\u{FFFD}\u{FFFD}\"]"
        );
    }

    // A declared 4 GiB envelope in a response: passed through, counted, no allocation.
    t.spans.reset();
    let baseline = reset_peak();
    let (_, body, _) = read_all(
        client
            .clone()
            .oneshot(grpc_request(addr, "/pkg.Svc/Huge", "application/grpc"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body, [0, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
    assert!(PEAK.load(Ordering::Relaxed) - baseline < 4 << 20);
    assert_eq!(attrs(&t.span(SpanKind::Client))["rpc.status_code"], "OK");

    // gRPC-Web trailer block with CR/LF tricks and invalid UTF-8.
    t.spans.reset();
    let h1 = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h1_client());
    read_all(
        h1.clone()
            .oneshot(grpc_request(
                addr,
                "/pkg.Svc/WebCrlf",
                "application/grpc-web+proto",
            ))
            .await
            .unwrap(),
    )
    .await;
    let span = t.span(SpanKind::Client);
    assert_eq!(attrs(&span)["rpc.status_code"], "INVALID_ARGUMENT");
    assert!(!attrs(&span).contains_key("rpc.response.metadata.injected"));

    // A Connect error body of 10 MiB that never ends: read 10 MiB, give up.
    t.spans.reset();
    let baseline = reset_peak();
    let req = Request::post(format!("http://{addr}/pkg.Svc/Endless"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let response = h1.clone().oneshot(req).await.unwrap();
    let mut body = response.into_body();
    let mut received = 0usize;
    while received < (10 << 20) {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(d) = frame.data_ref() {
            received += d.len();
        }
    }
    let peak = PEAK.load(Ordering::Relaxed) - baseline;
    assert!(
        peak < 4 << 20,
        "bounded while streaming 10 MiB: peak {peak}"
    );
    drop(body);
    let span = t.span(SpanKind::Client);
    assert_eq!(
        attrs(&span)["rpc.status_code"],
        "canceled",
        "abandoned before the body ended"
    );
}
