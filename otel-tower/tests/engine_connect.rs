//! Engine tests for Connect unary (POST and GET) and Connect streaming.

mod support;

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use opentelemetry::trace::{SpanKind, Status};
use support::*;
use tower::{ServiceBuilder, ServiceExt};

fn connect_unary(addr: std::net::SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/proto")
        .header("connect-protocol-version", "1")
        .body(Full::new(Bytes::from_static(b"\x0a\x02hi")))
        .unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// A unary error response: status, body, optional content-encoding.
fn unary_error(status: u16, body: Vec<u8>, encoding: Option<&str>) -> Response<Scripted> {
    let mut b = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    if let Some(e) = encoding {
        b = b.header("content-encoding", e);
    }
    let chunks: Vec<&[u8]> = body.chunks(7).collect();
    b.body(Scripted::data(&chunks)).unwrap()
}

#[tokio::test]
async fn connect_unary_success_and_error_bodies() {
    let t = Telemetry::new();
    let otel = t.instrumentation();
    let addr = serve(
        otel.server_layer(),
        Arc::new(|req| {
            let json = br#"{"code":"not_found","message":"no user 7","details":[]}"#.to_vec();
            match req.uri().path() {
                "/pkg.Svc/Ok" => Response::builder()
                    .header("content-type", "application/proto")
                    .body(Scripted::data(&[b"\x0a\x03abc"]))
                    .unwrap(),
                "/pkg.Svc/Plain" => unary_error(404, json, None),
                "/pkg.Svc/Gzip" => unary_error(404, gzip(&json), Some("gzip")),
                // Content-codings are case-insensitive.
                "/pkg.Svc/GzipUpper" => unary_error(404, gzip(&json), Some("GZIP")),
                // A proxy's 431: `internal` is gRPC's mapping, Connect's is `unknown`.
                "/pkg.Svc/HeadersTooLarge" => {
                    unary_error(431, b"<html>Too large</html>".to_vec(), None)
                }
                "/pkg.Svc/Truncated" => unary_error(409, br#"{"code":"already_exi"#.to_vec(), None),
                "/pkg.Svc/NotJson" => {
                    unary_error(503, b"<html>Service Unavailable</html>".to_vec(), None)
                }
                "/pkg.Svc/Oversized" => {
                    let mut big = br#"{"code":"not_found","message":""#.to_vec();
                    big.extend(std::iter::repeat_n(b'x', 70 * 1024));
                    big.extend(br#""}"#);
                    unary_error(400, big, None)
                }
                _ => unary_error(500, br#"{"code":"data_loss"}"#.to_vec(), None),
            }
        }),
    )
    .await;
    let client = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h1_client());
    // (path, expected code on both sides, description, server error?)
    let cases = [
        ("/pkg.Svc/Ok", None, None, false),
        (
            "/pkg.Svc/Plain",
            Some("not_found"),
            Some("no user 7"),
            false,
        ),
        ("/pkg.Svc/Gzip", Some("not_found"), Some("no user 7"), false),
        (
            "/pkg.Svc/GzipUpper",
            Some("not_found"),
            Some("no user 7"),
            false,
        ),
        ("/pkg.Svc/HeadersTooLarge", Some("unknown"), None, true),
        ("/pkg.Svc/Truncated", Some("unknown"), None, true),
        ("/pkg.Svc/NotJson", Some("unavailable"), None, true),
        ("/pkg.Svc/Oversized", Some("internal"), None, true),
        ("/pkg.Svc/DataLoss", Some("data_loss"), None, true),
    ];
    for (path, code, message, server_error) in cases {
        t.spans.reset();
        let response = client
            .clone()
            .oneshot(connect_unary(addr, path))
            .await
            .unwrap();
        read_all(response).await;
        t.wait_spans(2).await;
        let server = t.span(SpanKind::Server);
        let client_span = t.span(SpanKind::Client);
        for span in [&server, &client_span] {
            let a = attrs(span);
            assert_eq!(a["rpc.system.name"], "connectrpc", "{path}");
            assert_eq!(a.get("rpc.status_code").map(String::as_str), code, "{path}");
        }
        assert_eq!(
            attrs(&client_span).get("error.type").map(String::as_str),
            code,
            "{path}"
        );
        assert_eq!(is_error(&client_span), code.is_some(), "{path}");
        assert_eq!(is_error(&server), server_error, "{path}");
        if let Some(m) = message {
            assert_eq!(client_span.status, Status::error(m), "{path}");
        }
    }
}

#[tokio::test]
async fn connect_get_and_not_modified() {
    let t = Telemetry::new();
    let otel = t.instrumentation();
    let addr = serve(
        otel.server_layer(),
        Arc::new(|req| {
            let status = if req.headers().contains_key("if-none-match") {
                304
            } else {
                200
            };
            Response::builder()
                .status(status)
                .body(Scripted::data(&[b"\x0a\x01x"]))
                .unwrap()
        }),
    )
    .await;
    let client = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h1_client());
    for conditional in [false, true] {
        t.spans.reset();
        let mut req = Request::get(format!(
            "http://{addr}/pkg.Svc/Get?encoding=proto&message=CgJoaQ&base64=1&connect=v1"
        ));
        if conditional {
            req = req.header("if-none-match", "\"abc\"");
        }
        let response = client
            .clone()
            .oneshot(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        read_all(response).await;
        t.wait_spans(2).await;
        for kind in [SpanKind::Server, SpanKind::Client] {
            let span = t.span(kind);
            assert_eq!(attrs(&span)["rpc.method"], "pkg.Svc/Get");
            assert!(
                !attrs(&span).contains_key("rpc.status_code"),
                "success has no Connect code: {conditional} {:?}",
                attrs(&span)
            );
            assert!(!is_error(&span), "304 is not an error");
        }
    }
}

/// A Connect stream: `messages` messages, then `end` (compressed under the
/// encoding name `compressed_end`, if given: zstd for `zstd`, else gzip).
fn connect_stream_response(
    messages: usize,
    end: Option<&[u8]>,
    compressed_end: Option<&str>,
) -> Response<Scripted> {
    let mut bytes = Vec::new();
    for i in 0..messages {
        bytes.extend(envelope(0, format!("message {i}").as_bytes()));
    }
    let mut builder = Response::builder().header("content-type", "application/connect+proto");
    if let Some(end) = end {
        if let Some(encoding) = compressed_end {
            let compressed = match encoding {
                #[cfg(feature = "zstd")]
                "zstd" => zstd::bulk::compress(end, 3).unwrap(),
                _ => gzip(end),
            };
            bytes.extend(envelope(0x03, &compressed));
            builder = builder.header("connect-content-encoding", encoding);
        } else {
            bytes.extend(envelope(0x02, end));
        }
    }
    // Split so headers and payloads straddle frames.
    let chunks: Vec<&[u8]> = bytes.chunks(4).collect();
    builder.body(Scripted::data(&chunks)).unwrap()
}

#[tokio::test]
async fn connect_streaming_end_stream_success_error_missing() {
    let t = Telemetry::new();
    let otel = t.instrumentation().with_trace_events();
    let addr = serve(
        otel.server_layer(),
        Arc::new(|req| match req.uri().path() {
            "/pkg.Svc/Ok" => connect_stream_response(3, Some(b"{}"), None),
            "/pkg.Svc/OkMeta" => {
                connect_stream_response(0, Some(br#"{"metadata":{"x":["y"]}}"#), None)
            }
            "/pkg.Svc/Err" => connect_stream_response(
                1,
                Some(br#"{"error":{"code":"resource_exhausted","message":"slow down"}}"#),
                None,
            ),
            "/pkg.Svc/GzErr" => connect_stream_response(
                2,
                Some(br#"{"error":{"code":"internal","message":"boom"}}"#),
                Some("gzip"),
            ),
            "/pkg.Svc/GzOkUpper" => connect_stream_response(1, Some(b"{}"), Some("GZip")),
            // zstd, the other encoding connectrpc negotiates by default.
            #[cfg(feature = "zstd")]
            "/pkg.Svc/ZstdErr" => connect_stream_response(
                2,
                Some(br#"{"error":{"code":"unavailable","message":"later"},"metadata":{"a":["bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"]}}"#),
                Some("zstd"),
            ),
            #[cfg(feature = "zstd")]
            "/pkg.Svc/ZstdOk" => connect_stream_response(1, Some(b"{}"), Some("zstd")),
            // Past the 64 KiB cap: classified from the error read before the cut.
            "/pkg.Svc/ErrBigMetadata" => {
                let mut end =
                    br#"{"error":{"code":"resource_exhausted"},"metadata":{"x":[""#.to_vec();
                end.extend(std::iter::repeat_n(b'y', 70 * 1024));
                end.extend(br#""]}}"#);
                connect_stream_response(1, Some(&end), None)
            }
            _ => connect_stream_response(2, None, None),
        }),
    )
    .await;
    let client = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h2_client());
    let cases = [
        ("/pkg.Svc/Ok", 3, None),
        ("/pkg.Svc/OkMeta", 0, None),
        ("/pkg.Svc/Err", 1, Some("resource_exhausted")),
        ("/pkg.Svc/GzErr", 2, Some("internal")),
        ("/pkg.Svc/GzOkUpper", 1, None),
        ("/pkg.Svc/ErrBigMetadata", 1, Some("resource_exhausted")),
        ("/pkg.Svc/Missing", 2, Some("internal")),
    ];
    // zstd is read with the feature of that name.
    let zstd = [
        ("/pkg.Svc/ZstdErr", 2, Some("unavailable")),
        ("/pkg.Svc/ZstdOk", 1, None),
    ];
    let zstd = if cfg!(feature = "zstd") {
        &zstd[..]
    } else {
        &[]
    };
    for (path, messages, code) in cases.into_iter().chain(zstd.iter().copied()) {
        t.spans.reset();
        let req = Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/connect+proto")
            .body(Full::new(Bytes::from(envelope(0, b"req"))))
            .unwrap();
        let response = client.clone().oneshot(req).await.unwrap();
        read_all(response).await;
        t.wait_spans(2).await;
        for kind in [SpanKind::Server, SpanKind::Client] {
            let span = t.span(kind.clone());
            assert_eq!(
                attrs(&span).get("rpc.status_code").map(String::as_str),
                code,
                "{path} {kind:?}"
            );
            let events: Vec<_> = span.events.iter().collect();
            assert_eq!(
                events.len(),
                messages,
                "{path} {kind:?}: one event per message"
            );
            for (i, e) in events.iter().enumerate() {
                let a: std::collections::BTreeMap<String, String> = e
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                    .collect();
                let expected_type = if kind == SpanKind::Server {
                    "SENT"
                } else {
                    "RECEIVED"
                };
                assert_eq!(a["rpc.message.type"], expected_type);
                assert_eq!(a["rpc.message.id"], (i + 1).to_string());
                assert_eq!(
                    a["rpc.message.uncompressed_size"],
                    format!("message {i}").len().to_string()
                );
            }
        }
    }
}

/// A Connect unary request's size comes from its `Content-Length`; a claim
/// no message can have (over 4 GiB) is not recorded as one: a few such
/// records would overflow the histogram's sum.
#[tokio::test]
async fn an_impossible_content_length_is_no_request_size() {
    let t = Telemetry::new();
    let otel = t.instrumentation_with(otel_tower::Semconv::Legacy);
    let svc = ServiceBuilder::new()
        .layer(otel.server_layer())
        .service(tower::service_fn(
            |_req: http::Request<Full<Bytes>>| async {
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .header("content-type", "application/proto")
                        .body(Full::new(Bytes::from_static(b"ok")))
                        .unwrap(),
                )
            },
        ));
    for length in ["18446744073709551613", "4294967296", "1234"] {
        let req = http::Request::post("http://127.0.0.1:1/pkg.Svc/M")
            .header("content-type", "application/proto")
            .header("content-length", length)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = svc.clone().oneshot(req).await.unwrap();
        let _ = response.into_body().collect().await;
    }
    let sizes = t.histogram("rpc.server.request.size");
    assert_eq!(sizes.iter().map(|p| p.count).sum::<u64>(), 3);
    assert_eq!(sizes.iter().map(|p| p.sum).sum::<f64>(), 1234.0);
}

/// A server that answers every call `304 Not Modified`, and a client.
async fn serve_not_modified(
    otel: &otel_tower::Instrumentation,
) -> (
    std::net::SocketAddr,
    impl tower::Service<
        Request<Full<Bytes>>,
        Response = Response<otel_tower::ResponseBody<hyper::body::Incoming>>,
        Error = impl std::fmt::Debug,
    > + Clone,
) {
    let addr = serve(
        otel.server_layer(),
        Arc::new(|_| {
            Response::builder()
                .status(304)
                .body(Scripted::empty())
                .unwrap()
        }),
    )
    .await;
    let client = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h1_client());
    (addr, client)
}

/// Legacy records a Connect GET answered 304 as otelconnect-go does:
/// `http.status_code=304` on the span and on every Legacy metric, no error
/// code, so the cached answers keep a series of their own.
#[tokio::test]
async fn legacy_not_modified_is_on_the_span_and_the_metrics() {
    for mode in [otel_tower::Semconv::Legacy, otel_tower::Semconv::Both] {
        legacy_not_modified(mode).await;
    }
}

async fn legacy_not_modified(mode: otel_tower::Semconv) {
    let t = Telemetry::new();
    let otel = t.instrumentation_with(mode);
    let (addr, client) = serve_not_modified(&otel).await;
    let req = Request::get(format!(
        "http://{addr}/pkg.Svc/Get?encoding=proto&message=CgJoaQ&base64=1&connect=v1"
    ))
    .header("if-none-match", "\"abc\"")
    .body(Full::new(Bytes::new()))
    .unwrap();
    read_all(client.oneshot(req).await.unwrap()).await;
    t.wait_spans(2).await;
    for kind in [SpanKind::Server, SpanKind::Client] {
        let span = t.span(kind.clone());
        let a = attrs(&span);
        assert_eq!(a["http.status_code"], "304", "{kind:?}");
        assert!(!a.contains_key("rpc.connect_rpc.error_code"), "{kind:?}");
        assert!(!is_error(&span), "{kind:?}");
    }
    for side in ["server", "client"] {
        for metric in [
            "duration",
            "request.size",
            "response.size",
            "responses_per_rpc",
        ] {
            let name = format!("rpc.{side}.{metric}");
            let points = t.histogram(&name);
            assert!(!points.is_empty(), "{name}");
            for p in points {
                assert_eq!(p.attributes["http.status_code"], "304", "{name}");
                assert!(!p.attributes.contains_key("rpc.connect_rpc.error_code"));
            }
        }
        // Both: the Stable series keep Stable's attributes only.
        for p in t.histogram(&format!("rpc.{side}.call.duration")) {
            assert!(!p.attributes.contains_key("http.status_code"), "{p:?}");
        }
        if mode.stable() {
            assert_eq!(t.histogram(&format!("rpc.{side}.call.duration")).len(), 1);
        }
    }
}

/// A failure without a status code (here the client's transport error:
/// nothing listens) is `unknown` in Legacy, as otelconnect-go's
/// `connect.CodeOf` reports such an error: `rpc.connect_rpc.error_code` or
/// `rpc.grpc.status_code=2` on the span and the metrics. Stable keeps
/// `error.type=_OTHER` and no `rpc.status_code`.
#[tokio::test]
async fn a_failure_without_a_code_is_unknown_in_legacy() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    for (content_type, key, value) in [
        (
            "application/connect+proto",
            "rpc.connect_rpc.error_code",
            "unknown",
        ),
        ("application/grpc", "rpc.grpc.status_code", "2"),
    ] {
        let t = Telemetry::new();
        let otel = t.instrumentation_with(otel_tower::Semconv::Both);
        let client = ServiceBuilder::new()
            .layer(otel.client_layer())
            .service(h2_client());
        let result = client
            .oneshot(grpc_request(closed, "/pkg.Svc/M", content_type))
            .await;
        assert!(result.is_err(), "nothing listens on {closed}");
        let span = t.span(SpanKind::Client);
        let a = attrs(&span);
        assert_eq!(a[key], value, "{content_type}: {a:?}");
        assert_eq!(a["error.type"], "_OTHER", "{content_type}");
        assert!(!a.contains_key("rpc.status_code"), "{content_type}");
        let legacy = t.histogram("rpc.client.duration");
        assert_eq!(legacy.len(), 1, "{legacy:?}");
        assert_eq!(legacy[0].attributes[key], value, "{content_type}");
        let stable = t.histogram("rpc.client.call.duration");
        assert_eq!(stable.len(), 1, "{stable:?}");
        assert!(!stable[0].attributes.contains_key("rpc.status_code"));
    }
}

/// `304 Not Modified` answers a conditional GET. To a Connect unary POST
/// it is no Connect answer and goes through the HTTP table: `unknown`.
#[tokio::test]
async fn not_modified_to_a_post_is_no_connect_answer() {
    let t = Telemetry::new();
    let otel = t.instrumentation();
    let (addr, client) = serve_not_modified(&otel).await;
    let response = client
        .oneshot(connect_unary(addr, "/pkg.Svc/Post"))
        .await
        .unwrap();
    assert_eq!(response.status(), 304);
    read_all(response).await;
    t.wait_spans(2).await;
    for kind in [SpanKind::Server, SpanKind::Client] {
        let span = t.span(kind.clone());
        assert_eq!(attrs(&span)["rpc.status_code"], "unknown", "{kind:?}");
        assert!(is_error(&span), "{kind:?}");
    }
}
