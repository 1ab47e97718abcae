//! Edge cases of outcome classification: gRPC-Web trailer blocks without a
//! status or compressed, body errors after the terminal message, buffers
//! that cannot be read in one piece, and trust with local parents.

mod support;

use std::convert::Infallible;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer, TracerProvider};
use support::*;
use tower::{ServiceBuilder, ServiceExt};

fn request(content_type: &str) -> Request<Full<Bytes>> {
    Request::post("http://127.0.0.1:1/pkg.Svc/M")
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(envelope(0, b"q"))))
        .unwrap()
}

/// Runs one in-process call with `response` through the layer of `side`
/// (the server's or the client's), and reads the response body.
async fn call_on<B>(
    t: &Telemetry,
    side: SpanKind,
    content_type: &str,
    response: impl Fn() -> Response<B> + Clone + Send + 'static,
) where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: std::fmt::Debug,
{
    let svc = tower::service_fn(move |_req: Request<Full<Bytes>>| {
        let r = response.clone();
        async move { Ok::<_, Infallible>(r()) }
    });
    let otel = t.instrumentation();
    let req = request(content_type);
    let response = if side == SpanKind::Server {
        let server = ServiceBuilder::new().layer(otel.server_layer());
        server.service(svc).oneshot(req).await
    } else {
        let client = ServiceBuilder::new().layer(otel.client_layer());
        client.service(svc).oneshot(req).await
    };
    let _ = response.unwrap().into_body().collect().await;
}

#[tokio::test]
async fn grpc_web_trailer_block_without_status_falls_back_to_headers() {
    let t = Telemetry::new();
    call_on(&t, SpanKind::Client, "application/grpc-web+proto", || {
        Response::builder()
            .header("content-type", "application/grpc-web+proto")
            .header("grpc-status", "9")
            .body(Full::new(Bytes::from(envelope(0x80, b"x-other: 1\r\n"))))
            .unwrap()
    })
    .await;
    assert_eq!(
        attrs(&t.span(SpanKind::Client))["rpc.status_code"],
        "FAILED_PRECONDITION"
    );
}

#[tokio::test]
async fn compressed_grpc_web_trailer_block_is_decoded() {
    let t = Telemetry::new();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"grpc-status: 8\r\ngrpc-message: slow%20down\r\n")
        .unwrap();
    let block = gz.finish().unwrap();
    call_on(
        &t,
        SpanKind::Client,
        "application/grpc-web+proto",
        move || {
            Response::builder()
                .header("content-type", "application/grpc-web+proto")
                .header("grpc-encoding", "gzip")
                .body(Full::new(Bytes::from(envelope(0x81, &block))))
                .unwrap()
        },
    )
    .await;
    let span = t.span(SpanKind::Client);
    assert_eq!(attrs(&span)["rpc.status_code"], "RESOURCE_EXHAUSTED");
    assert_eq!(
        span.status,
        opentelemetry::trace::Status::error("slow down")
    );
}

/// A body that yields its frames, then fails.
struct ThenFail(Vec<Bytes>);

impl Body for ThenFail {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.0.is_empty() {
            return Poll::Ready(Some(Err(std::io::Error::other("reset"))));
        }
        Poll::Ready(Some(Ok(Frame::data(self.0.remove(0)))))
    }
}

#[tokio::test]
async fn body_error_after_the_end_stream_message_keeps_its_outcome() {
    let t = Telemetry::new();
    call_on(&t, SpanKind::Client, "application/connect+proto", || {
        let end = envelope(0x02, br#"{"error":{"code":"aborted"}}"#);
        Response::builder()
            .header("content-type", "application/connect+proto")
            .body(ThenFail(vec![
                Bytes::from(envelope(0, b"m")),
                Bytes::from(end),
            ]))
            .unwrap()
    })
    .await;
    assert_eq!(
        attrs(&t.span(SpanKind::Client))["rpc.status_code"],
        "aborted"
    );
}

/// A buffer in two pieces that only lends its first through
/// `chunks_vectored` (the trait's default).
struct TwoPieces(Bytes, Bytes);

impl Buf for TwoPieces {
    fn remaining(&self) -> usize {
        self.0.len() + self.1.len()
    }
    fn chunk(&self) -> &[u8] {
        if self.0.is_empty() { &self.1 } else { &self.0 }
    }
    fn advance(&mut self, mut cnt: usize) {
        let first = cnt.min(self.0.len());
        self.0.advance(first);
        cnt -= first;
        self.1.advance(cnt);
    }
}

struct Pieces(Option<TwoPieces>);

impl Body for Pieces {
    type Data = TwoPieces;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<TwoPieces>, Infallible>>> {
        Poll::Ready(self.0.take().map(|d| Ok(Frame::data(d))))
    }
}

#[tokio::test]
async fn unreadable_buffers_stop_parsing_instead_of_misparsing() {
    let t = Telemetry::new();
    call_on(&t, SpanKind::Client, "application/connect+proto", || {
        // The end-stream message sits in the piece the layer cannot borrow.
        let first = Bytes::from(envelope(0, b"m"));
        let second = Bytes::from(envelope(0x02, b"{}"));
        Response::builder()
            .header("content-type", "application/connect+proto")
            .body(Pieces(Some(TwoPieces(first, second))))
            .unwrap()
    })
    .await;
    // Not a made-up `internal` from a parser out of step: unknown.
    assert_eq!(
        attrs(&t.span(SpanKind::Client))["rpc.status_code"],
        "unknown"
    );
}

#[tokio::test]
async fn public_endpoint_keeps_a_local_parent() {
    let t = Telemetry::new();
    let otel = t.instrumentation().with_public_endpoint();
    let tracer = t.tracer_provider.tracer("outer");
    let outer = opentelemetry::Context::new().with_span(tracer.start("outer-layer"));
    let outer_id = outer.span().span_context().span_id();
    let svc = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header("content-type", "application/proto")
                .body(Full::new(Bytes::from_static(b"ok")))
                .unwrap(),
        )
    });
    let server = ServiceBuilder::new()
        .layer(otel.server_layer())
        .service(svc);
    let mut req = request("application/proto");
    req.extensions_mut().insert(outer.clone());
    let response = server.oneshot(req).await.unwrap();
    let _ = response.into_body().collect().await;
    let span = t.span(SpanKind::Server);
    assert_eq!(
        span.parent_span_id, outer_id,
        "a local span from another layer is trusted"
    );
    assert_eq!(span.links.iter().count(), 0);
}

#[tokio::test]
async fn b3_do_not_sample_without_ids_records_no_span_but_metrics() {
    let t = Telemetry::new();
    let otel = t
        .instrumentation()
        .with_propagator(otel_tower::propagation::B3::single());
    let svc = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header("content-type", "application/proto")
                .body(Full::new(Bytes::from_static(b"ok")))
                .unwrap(),
        )
    });
    let server = ServiceBuilder::new()
        .layer(otel.server_layer())
        .service(svc);
    for (b3, spans) in [("0", 0), ("1", 1)] {
        t.spans.reset();
        let mut req = request("application/proto");
        req.headers_mut().insert("b3", b3.parse().unwrap());
        let response = server.clone().oneshot(req).await.unwrap();
        let _ = response.into_body().collect().await;
        assert_eq!(t.finished_spans().len(), spans, "b3: {b3}");
    }
    let points = t.histogram("rpc.server.call.duration");
    assert_eq!(
        points.iter().map(|p| p.count).sum::<u64>(),
        2,
        "metrics for both calls"
    );
}

/// A body of one data frame and then trailers.
struct WithTrailers(Option<Bytes>, Option<http::HeaderMap>);

impl Body for WithTrailers {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.0.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.1.take().map(|t| Ok(Frame::trailers(t))))
    }
}

#[tokio::test]
async fn captured_response_headers_and_trailers_join_in_one_attribute() {
    let t = Telemetry::new();
    let svc = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header("content-type", "application/grpc")
                .header("x-h", "from-headers")
                .body(WithTrailers(
                    Some(Bytes::from(envelope(0, b"m"))),
                    Some(trailers(&[("grpc-status", "0"), ("x-h", "from-trailers")])),
                ))
                .unwrap(),
        )
    });
    let client = ServiceBuilder::new()
        .layer(
            t.instrumentation()
                .with_trace_response_header(["x-h"])
                .client_layer(),
        )
        .service(svc);
    let response = client.oneshot(request("application/grpc")).await.unwrap();
    let _ = response.into_body().collect().await;
    let span = t.span(SpanKind::Client);
    assert_eq!(
        attrs(&span)["rpc.response.metadata.x-h"],
        r#"["from-headers","from-trailers"]"#
    );
}

/// A non-200 answer to gRPC, gRPC-Web or Connect streaming comes from a
/// router or a proxy: its body (an HTML page here) is not a sequence of
/// envelopes, so it yields no message events and no message sizes, on
/// either side. Read as envelopes, `<html>` would be one message of
/// 1,752,460,652 bytes.
#[tokio::test]
async fn a_proxy_error_page_is_not_a_message_stream() {
    const PAGE: &[u8] = b"<html><body>502 Bad Gateway</body></html>";
    let t = Telemetry::new();
    let otel = t.instrumentation_with(otel_tower::Semconv::Legacy);
    let addr = serve(
        otel.server_layer(),
        std::sync::Arc::new(|_| {
            Response::builder()
                .status(502)
                .header("content-type", "text/html")
                .body(Scripted::data(&[PAGE]))
                .unwrap()
        }),
    )
    .await;
    for (content_type, status_key, status) in [
        ("application/grpc", "rpc.grpc.status_code", "14"),
        (
            "application/grpc-web+proto",
            "rpc.grpc_web.status_code",
            "14",
        ),
        (
            "application/connect+proto",
            "rpc.connect_rpc.error_code",
            "unavailable",
        ),
    ] {
        t.spans.reset();
        let client = ServiceBuilder::new().layer(otel.client_layer());
        let req = grpc_request(addr, "/pkg.Svc/M", content_type);
        let response = if content_type == "application/grpc" {
            client.service(h2_client()).oneshot(req).await
        } else {
            client.service(h1_client()).oneshot(req).await
        }
        .unwrap();
        assert_eq!(response.status(), 502);
        let (_, body, _) = read_all(response).await;
        assert_eq!(body, PAGE, "bytes unchanged");
        t.wait_spans(2).await;
        for kind in [SpanKind::Server, SpanKind::Client] {
            let span = t.span(kind.clone());
            assert_eq!(attrs(&span)[status_key], status, "{content_type} {kind:?}");
            assert!(
                span.events.is_empty(),
                "{content_type} {kind:?}: {:?}",
                span.events
            );
        }
    }
    for side in ["server", "client"] {
        let sizes = t.histogram(&format!("rpc.{side}.response.size"));
        assert!(
            sizes.iter().all(|p| p.count == 0),
            "{side}: no response message: {sizes:?}"
        );
        let per_rpc = t.histogram(&format!("rpc.{side}.responses_per_rpc"));
        assert_eq!(per_rpc.iter().map(|p| p.count).sum::<u64>(), 3, "{side}");
        assert_eq!(per_rpc.iter().map(|p| p.sum).sum::<f64>(), 0.0, "{side}");
    }
}

/// The terminal envelope (gRPC-Web trailers, Connect end-of-stream) is the
/// last: anything after it is neither a message nor another outcome, and
/// adds no captured values (repeated, gzip would make each cost a peer a
/// few bytes and the client kilobytes).
#[tokio::test]
async fn nothing_after_the_terminal_envelope_is_read() {
    /// Content type, terminal flag, first and later terminal payloads, and
    /// the status the first one gives.
    type Case = (&'static str, u8, &'static [u8], &'static [u8], &'static str);
    let cases: [Case; 2] = [
        (
            "application/grpc-web+proto",
            0x80,
            b"grpc-status: 0\r\nx-cost: 1\r\n",
            b"grpc-status: 13\r\nx-cost: 2\r\n",
            "OK",
        ),
        (
            "application/connect+proto",
            0x02,
            br#"{"metadata":{"x-cost":["1"]}}"#,
            br#"{"error":{"code":"internal"},"metadata":{"x-cost":["2"]}}"#,
            "",
        ),
    ];
    for (content_type, flag, first, second, status) in cases {
        let t = Telemetry::new();
        let mut body = envelope(0, b"m");
        body.extend(envelope(flag, first));
        for _ in 0..3 {
            body.extend(envelope(flag, second));
            body.extend(envelope(0, b"late"));
        }
        let svc = tower::service_fn(move |_req: Request<Full<Bytes>>| {
            let body = body.clone();
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", content_type)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap(),
                )
            }
        });
        let client = ServiceBuilder::new()
            .layer(
                t.instrumentation()
                    .with_trace_events()
                    .with_trace_response_header(["x-cost"])
                    .client_layer(),
            )
            .service(svc);
        let response = client.oneshot(request(content_type)).await.unwrap();
        let _ = response.into_body().collect().await;
        let span = t.span(SpanKind::Client);
        let attrs = attrs(&span);
        assert_eq!(
            attrs["rpc.response.metadata.x-cost"], r#"["1"]"#,
            "{content_type}"
        );
        assert_eq!(
            attrs
                .get("rpc.status_code")
                .map(String::as_str)
                .unwrap_or(""),
            status,
            "{content_type}"
        );
        assert!(!is_error(&span), "{content_type}");
        assert_eq!(span.events.len(), 1, "{content_type}: {:?}", span.events);
    }
}

/// A proxy's non-200 page whose body then fails (the stream reset, the
/// connection closed mid-page) is classified by its status, as the same
/// page dropped unread is: UNAVAILABLE for a 502, not CANCELLED (client)
/// or an error without a code (server).
#[tokio::test]
async fn a_body_error_after_a_proxy_page_is_classified_by_its_status() {
    let page = || {
        Response::builder()
            .status(502)
            .header("content-type", "text/html")
            .body(ThenFail(vec![Bytes::from_static(b"<html>502 Bad")]))
            .unwrap()
    };
    for content_type in [
        "application/grpc",
        "application/grpc-web+proto",
        "application/connect+proto",
    ] {
        for kind in [SpanKind::Client, SpanKind::Server] {
            let t = Telemetry::new();
            call_on(&t, kind.clone(), content_type, page).await;
            let span = t.span(kind.clone());
            let expected = if content_type.contains("connect") {
                "unavailable"
            } else {
                "UNAVAILABLE"
            };
            assert_eq!(
                attrs(&span)["rpc.status_code"],
                expected,
                "{content_type} {kind:?}"
            );
        }
    }
}

/// A gRPC-Web trailer block compressed in an encoding this crate does not
/// read is no block: its bytes are not text to find a status in. The call
/// falls back to the status in the headers, else UNKNOWN.
#[tokio::test]
async fn a_trailer_block_in_an_unknown_encoding_is_not_read() {
    for (header_status, expected) in [(None, "UNKNOWN"), (Some("9"), "FAILED_PRECONDITION")] {
        let t = Telemetry::new();
        call_on(
            &t,
            SpanKind::Client,
            "application/grpc-web+proto",
            move || {
                let mut builder = Response::builder()
                    .header("content-type", "application/grpc-web+proto")
                    .header("grpc-encoding", "snappy");
                if let Some(status) = header_status {
                    builder = builder.header("grpc-status", status);
                }
                // Flagged compressed, yet readable as a block: not to be read.
                let block = envelope(0x81, b"grpc-status: 0\r\n");
                builder.body(Full::new(Bytes::from(block))).unwrap()
            },
        )
        .await;
        assert_eq!(
            attrs(&t.span(SpanKind::Client))["rpc.status_code"],
            expected,
            "grpc-status header {header_status:?}"
        );
    }
}

/// A gRPC-Web trailer block longer than the engine reads (64 KiB) is read
/// up to its last whole line: a `grpc-status: 14` line cut after its first
/// digit is no `grpc-status: 1`. The bytes still pass through whole. Plain
/// and gzip-compressed.
#[tokio::test]
async fn a_grpc_web_trailer_block_cut_at_the_cap_keeps_its_whole_lines() {
    const CAP: usize = 64 * 1024;
    let status_line = b"grpc-status: 14\r\n";
    // The padding line ends so that the cut falls after "grpc-status: 1".
    let pad_len = CAP - "grpc-status: 1".len() - "x-pad: ".len() - 2;
    let mut block = format!("x-pad: {}\r\n", "a".repeat(pad_len)).into_bytes();
    block.extend_from_slice(status_line);
    assert_eq!(&block[CAP - 14..CAP], b"grpc-status: 1");
    for compressed in [false, true] {
        let t = Telemetry::new();
        let payload = if compressed {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&block).unwrap();
            gz.finish().unwrap()
        } else {
            block.clone()
        };
        let flags = if compressed { 0x81 } else { 0x80 };
        let sent = envelope(flags, &payload);
        let svc = {
            let sent = sent.clone();
            tower::service_fn(move |_req: Request<Full<Bytes>>| {
                let mut builder =
                    Response::builder().header("content-type", "application/grpc-web+proto");
                if compressed {
                    builder = builder.header("grpc-encoding", "gzip");
                }
                let response = builder.body(Full::new(Bytes::from(sent.clone()))).unwrap();
                async move { Ok::<_, Infallible>(response) }
            })
        };
        let client = ServiceBuilder::new()
            .layer(t.instrumentation().client_layer())
            .service(svc);
        let response = client
            .oneshot(request("application/grpc-web+proto"))
            .await
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, sent, "bytes unchanged");
        let span = t.span(SpanKind::Client);
        assert_eq!(
            attrs(&span)["rpc.status_code"],
            "UNKNOWN",
            "compressed={compressed}: no whole status line was read"
        );
    }
}
