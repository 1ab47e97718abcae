//! Engine tests for gRPC and gRPC-Web over real hyper servers and clients.

mod support;

use std::sync::Arc;

use http::Response;
use opentelemetry::trace::SpanKind;
use otel_tower::Code;
use otel_tower::semconv::keys::DURATION_BUCKETS;
use support::*;
use tower::{Service, ServiceBuilder, ServiceExt};

const GREETER: &str = "/helloworld.Greeter/SayHello";

fn greeting() -> Response<Scripted> {
    grpc_ok_response(&[&envelope(0, b"world")])
}

#[tokio::test]
async fn grpc_unary_success_spans_metrics_and_parentage() {
    let t = Telemetry::new();
    let otel = t.instrumentation();
    let addr = serve(otel.server_layer(), Arc::new(|_| greeting())).await;
    let mut client = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h2_client());
    let response = client
        .ready()
        .await
        .unwrap()
        .call(grpc_request(addr, GREETER, "application/grpc"))
        .await
        .unwrap();
    let (_, body, trailers) = read_all(response).await;
    assert_eq!(body, envelope(0, b"world"), "body passes through unchanged");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");

    t.wait_spans(2).await;
    let server = t.span(SpanKind::Server);
    let client_span = t.span(SpanKind::Client);
    assert_eq!(server.name, "helloworld.Greeter/SayHello");
    assert_eq!(client_span.name, "helloworld.Greeter/SayHello");
    assert_eq!(
        server.span_context.trace_id(),
        client_span.span_context.trace_id()
    );
    assert_eq!(server.parent_span_id, client_span.span_context.span_id());
    assert!(server.parent_span_is_remote);
    assert!(!is_error(&server) && !is_error(&client_span));
    assert_eq!(server.instrumentation_scope.name(), "otel-tower");
    assert_eq!(
        server.instrumentation_scope.schema_url(),
        Some("https://opentelemetry.io/schemas/1.45.0")
    );

    let port = addr.port().to_string();
    let mut server_attrs = attrs(&server);
    let peer_port = server_attrs.remove("network.peer.port").expect("peer port");
    assert!(peer_port.parse::<u16>().unwrap() > 0);
    assert_eq!(
        server_attrs,
        map(&[
            ("rpc.system.name", "grpc"),
            ("rpc.method", "helloworld.Greeter/SayHello"),
            ("server.address", "127.0.0.1"),
            ("server.port", &port),
            ("network.peer.address", "127.0.0.1"),
            ("rpc.status_code", "OK"),
        ])
    );
    assert_eq!(
        attrs(&client_span),
        map(&[
            ("rpc.system.name", "grpc"),
            ("rpc.method", "helloworld.Greeter/SayHello"),
            ("server.address", "127.0.0.1"),
            ("server.port", &port),
            ("rpc.status_code", "OK"),
        ])
    );

    let server_metric = t.histogram("rpc.server.call.duration");
    assert_eq!(server_metric.len(), 1);
    let m = &server_metric[0];
    assert_eq!((m.unit.as_str(), m.count), ("s", 1));
    assert_eq!(
        m.description,
        "Measures the duration of an incoming Remote Procedure Call (RPC)."
    );
    assert_eq!(m.bounds, DURATION_BUCKETS.to_vec());
    assert_eq!(
        m.attributes,
        map(&[
            ("rpc.system.name", "grpc"),
            ("rpc.method", "helloworld.Greeter/SayHello"),
            ("rpc.status_code", "OK")
        ])
    );
    let expected_duration = server
        .end_time
        .duration_since(server.start_time)
        .unwrap()
        .as_secs_f64();
    assert!(
        (m.sum - expected_duration).abs() < 1e-9,
        "metric equals span duration"
    );
    let client_metric = t.histogram("rpc.client.call.duration");
    assert_eq!(client_metric.len(), 1);
    assert_eq!(
        client_metric[0].attributes,
        map(&[
            ("rpc.system.name", "grpc"),
            ("rpc.method", "helloworld.Greeter/SayHello"),
            ("rpc.status_code", "OK"),
            ("server.address", "127.0.0.1"),
            ("server.port", &port),
        ])
    );
}

#[tokio::test]
async fn every_grpc_code_in_trailers_on_both_sides() {
    let t = Telemetry::new();
    let otel = t.instrumentation();
    let addr = serve(
        otel.server_layer(),
        Arc::new(|req| {
            let code = req.headers()["x-code"].to_str().unwrap().to_string();
            Response::builder()
                .header("content-type", "application/grpc")
                .body(Scripted::data_then_trailers(
                    &[],
                    trailers(&[("grpc-status", &code), ("grpc-message", "went%20wrong")]),
                ))
                .unwrap()
        }),
    )
    .await;
    let client = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h2_client());
    for code in Code::ALL {
        t.spans.reset();
        let unimplemented = code == Code::Unimplemented;
        // UNIMPLEMENTED from a method never seen answering is an unknown
        // method (`_OTHER`); `/pkg.Svc/Method` has answered by then.
        let path = if unimplemented {
            "/pkg.Svc/Missing"
        } else {
            "/pkg.Svc/Method"
        };
        let mut req = grpc_request(addr, path, "application/grpc");
        req.headers_mut()
            .insert("x-code", code.as_i32().to_string().parse().unwrap());
        let response = client.clone().oneshot(req).await.unwrap();
        read_all(response).await;
        t.wait_spans(2).await;
        let server = t.span(SpanKind::Server);
        let client_span = t.span(SpanKind::Client);
        let name = code.grpc_name();
        for span in [&server, &client_span] {
            assert_eq!(attrs(span)["rpc.status_code"], name, "{name}");
        }
        let expected_method = if unimplemented {
            "_OTHER"
        } else {
            "pkg.Svc/Method"
        };
        assert_eq!(attrs(&server)["rpc.method"], expected_method, "{name}");
        if unimplemented {
            assert_eq!(server.name, "grpc");
            assert_eq!(attrs(&server)["rpc.method_original"], "pkg.Svc/Missing");
        }
        let client_error = code != Code::Ok;
        let server_error = code.is_server_error();
        assert_eq!(is_error(&client_span), client_error, "client {name}");
        assert_eq!(is_error(&server), server_error, "server {name}");
        assert_eq!(
            attrs(&client_span).get("error.type").map(String::as_str),
            client_error.then_some(name)
        );
        assert_eq!(
            attrs(&server).get("error.type").map(String::as_str),
            server_error.then_some(name)
        );
        if client_error {
            assert_eq!(
                client_span.status,
                opentelemetry::trace::Status::error("went wrong"),
                "description is the decoded message"
            );
        }
    }
    // 17 calls, one series per (method, code) on each side; UNIMPLEMENTED under _OTHER.
    let server_points = t.histogram("rpc.server.call.duration");
    assert_eq!(server_points.len(), 17);
    assert_eq!(server_points.iter().map(|p| p.count).sum::<u64>(), 17);
    let other = server_points
        .iter()
        .find(|p| p.attributes["rpc.method"] == "_OTHER")
        .unwrap();
    assert_eq!(other.attributes["rpc.status_code"], "UNIMPLEMENTED");
    assert_eq!(other.attributes["error.type"], "UNIMPLEMENTED");
    assert!(!other.attributes.contains_key("rpc.method_original"));
}

#[tokio::test]
async fn trailers_only_and_headers_plus_trailers() {
    let t = Telemetry::new();
    let otel = t.instrumentation();
    let addr = serve(
        otel.server_layer(),
        Arc::new(|req| match req.uri().path() {
            "/pkg.Svc/TrailersOnly" => Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "5")
                .header("grpc-message", "no%20such%20thing")
                .body(Scripted::empty())
                .unwrap(),
            _ => Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "13")
                .body(Scripted::data_then_trailers(
                    &[],
                    trailers(&[("grpc-status", "7")]),
                ))
                .unwrap(),
        }),
    )
    .await;
    let client = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h2_client());

    let response = client
        .clone()
        .oneshot(grpc_request(
            addr,
            "/pkg.Svc/TrailersOnly",
            "application/grpc",
        ))
        .await
        .unwrap();
    let (head, body, _) = read_all(response).await;
    assert_eq!(head.headers["grpc-status"], "5");
    assert!(body.is_empty());
    t.wait_spans(2).await;
    let server = t.span(SpanKind::Server);
    let client_span = t.span(SpanKind::Client);
    assert_eq!(attrs(&server)["rpc.status_code"], "NOT_FOUND");
    assert!(!is_error(&server), "NOT_FOUND is the caller's problem");
    assert!(!attrs(&server).contains_key("error.type"));
    assert_eq!(attrs(&client_span)["error.type"], "NOT_FOUND");
    assert_eq!(
        client_span.status,
        opentelemetry::trace::Status::error("no such thing")
    );

    t.spans.reset();
    let response = client
        .clone()
        .oneshot(grpc_request(addr, "/pkg.Svc/Both", "application/grpc"))
        .await
        .unwrap();
    read_all(response).await;
    t.wait_spans(2).await;
    for kind in [SpanKind::Server, SpanKind::Client] {
        assert_eq!(
            attrs(&t.span(kind))["rpc.status_code"],
            "PERMISSION_DENIED",
            "trailers win"
        );
    }
}

#[tokio::test]
async fn garbage_grpc_status_is_unknown_and_missing_status_is_unknown() {
    let t = Telemetry::new();
    let otel = t.instrumentation();
    let addr = serve(
        otel.server_layer(),
        Arc::new(|req| {
            let status = req
                .headers()
                .get("x-status")
                .map(|v| v.to_str().unwrap().to_string());
            let body = match status {
                Some(s) => Scripted::data_then_trailers(&[], trailers(&[("grpc-status", &s)])),
                None => Scripted::data(&[&envelope(0, b"x")]),
            };
            Response::builder()
                .header("content-type", "application/grpc")
                .body(body)
                .unwrap()
        }),
    )
    .await;
    let client = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h2_client());
    for status in [Some("99"), Some("-1"), Some("abc"), None] {
        t.spans.reset();
        let mut req = grpc_request(addr, "/pkg.Svc/M", "application/grpc");
        if let Some(s) = status {
            req.headers_mut().insert("x-status", s.parse().unwrap());
        }
        read_all(client.clone().oneshot(req).await.unwrap()).await;
        t.wait_spans(2).await;
        for kind in [SpanKind::Server, SpanKind::Client] {
            assert_eq!(
                attrs(&t.span(kind))["rpc.status_code"],
                "UNKNOWN",
                "{status:?}"
            );
        }
    }
}

fn grpc_web_body(status: &str, text: bool, split: bool) -> Scripted {
    let mut bytes = envelope(0, b"first");
    bytes.extend(envelope(0, b"second"));
    bytes.extend(envelope(
        0x80,
        format!("grpc-status: {status}\r\ngrpc-message: bad%20thing\r\n").as_bytes(),
    ));
    let bytes = if text {
        use std::fmt::Write;
        // Encode each envelope group separately, as servers flush them, so
        // padding appears mid-stream.
        let engine = |b: &[u8]| {
            let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut s = String::new();
            for chunk in b.chunks(3) {
                let n = chunk.len();
                let v = (u32::from(chunk[0]) << 16)
                    | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
                    | u32::from(*chunk.get(2).unwrap_or(&0));
                for i in 0..4 {
                    if i <= n {
                        s.write_char(table[((v >> (18 - 6 * i)) & 63) as usize] as char)
                            .unwrap();
                    } else {
                        s.push('=');
                    }
                }
            }
            s
        };
        let first = envelope(0, b"first");
        let rest = &bytes[first.len()..];
        format!("{}{}", engine(&first), engine(rest)).into_bytes()
    } else {
        bytes
    };
    if split {
        let chunks: Vec<&[u8]> = bytes.chunks(3).collect();
        Scripted::data(&chunks)
    } else {
        Scripted::data(&[&bytes])
    }
}

#[tokio::test]
async fn grpc_web_trailer_frame_binary_and_text() {
    let t = Telemetry::new();
    let otel = t.instrumentation().with_trace_events();
    let addr = serve(
        otel.server_layer(),
        Arc::new(|req| {
            let text = req.headers()["content-type"]
                .to_str()
                .unwrap()
                .contains("text");
            let split = req.headers().contains_key("x-split");
            Response::builder()
                .header("content-type", req.headers()["content-type"].clone())
                .body(grpc_web_body("3", text, split))
                .unwrap()
        }),
    )
    .await;
    let client = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h1_client());
    for (content_type, split) in [
        ("application/grpc-web+proto", false),
        ("application/grpc-web+proto", true),
        ("application/grpc-web-text+proto", false),
        ("application/grpc-web-text+proto", true),
    ] {
        t.spans.reset();
        let mut req = grpc_request(addr, "/pkg.Svc/Web", content_type);
        if split {
            req.headers_mut().insert("x-split", "1".parse().unwrap());
        }
        let response = client.clone().oneshot(req).await.unwrap();
        let (_, body, _) = read_all(response).await;
        let text = content_type.contains("text");
        assert_eq!(body, grpc_web_body_bytes("3", text), "bytes unchanged");
        t.wait_spans(2).await;
        for kind in [SpanKind::Server, SpanKind::Client] {
            let span = t.span(kind.clone());
            assert_eq!(attrs(&span)["rpc.system.name"], "grpc", "{content_type}");
            assert_eq!(
                attrs(&span)["rpc.status_code"],
                "INVALID_ARGUMENT",
                "{content_type} split={split}"
            );
            // Two messages, each an rpc.message event; the trailer frame is not a message.
            let events: Vec<_> = span
                .events
                .iter()
                .filter(|e| e.name == "rpc.message")
                .collect();
            assert_eq!(events.len(), 2, "{content_type} split={split} {kind:?}");
        }
        assert_eq!(
            t.span(SpanKind::Client).status,
            opentelemetry::trace::Status::error("bad thing")
        );
    }
}

fn grpc_web_body_bytes(status: &str, text: bool) -> Vec<u8> {
    use http_body::Body;
    let mut body = grpc_web_body(status, text, false);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut out = Vec::new();
    while let std::task::Poll::Ready(Some(Ok(frame))) =
        std::pin::Pin::new(&mut body).poll_frame(&mut cx)
    {
        if let Ok(data) = frame.into_data() {
            out.extend_from_slice(&data);
        }
    }
    out
}

#[tokio::test]
async fn non_rpc_requests_pass_through_untouched() {
    let t = Telemetry::new();
    let otel = t.instrumentation();
    let addr = serve(
        otel.server_layer(),
        Arc::new(|_| {
            Response::builder()
                .header("content-type", "text/plain")
                .body(Scripted::data(&[b"hello"]))
                .unwrap()
        }),
    )
    .await;
    let client = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h1_client());
    let req = http::Request::post(format!("http://{addr}/pkg.Svc/M"))
        .header("content-type", "text/plain")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"hi")))
        .unwrap();
    let response = client.clone().oneshot(req).await.unwrap();
    let (head, body, _) = read_all(response).await;
    assert_eq!(body, b"hello");
    assert!(!head.headers.contains_key("traceparent"));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(t.finished_spans().is_empty(), "no span for plain HTTP");
    assert!(t.histograms().is_empty(), "no metric for plain HTTP");
}

#[tokio::test]
async fn client_sends_traceparent_as_a_never_indexed_header() {
    // Each traceparent is unique: indexing it in HTTP/2's HPACK table would
    // evict the headers that repeat. The client layer marks it sensitive
    // (never indexed); the bytes are unchanged.
    let t = Telemetry::new();
    let seen = Arc::new(std::sync::Mutex::new(None));
    let seen2 = seen.clone();
    let inner = tower::service_fn(
        move |req: http::Request<http_body_util::Full<bytes::Bytes>>| {
            *seen2.lock().unwrap() = req.headers().get("traceparent").cloned();
            async { Ok::<_, std::convert::Infallible>(grpc_ok_response(&[])) }
        },
    );
    let client = ServiceBuilder::new()
        .layer(t.instrumentation().client_layer())
        .service(inner);
    let addr: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let response = client
        .oneshot(grpc_request(addr, "/pkg.Svc/Get", "application/grpc"))
        .await
        .unwrap();
    read_all(response).await;
    let span = t.wait_spans(1).await.remove(0);
    let header = seen.lock().unwrap().clone().expect("traceparent sent");
    assert!(header.is_sensitive());
    assert_eq!(
        header.to_str().unwrap(),
        format!(
            "00-{}-{}-01",
            span.span_context.trace_id(),
            span.span_context.span_id()
        )
    );
}

/// Legacy names a gRPC-Web call as otelconnect-go does: `rpc.system` is
/// `grpc_web` and its keys are `rpc.grpc_web.*` (Go builds them from the
/// system), on spans and metrics, on both sides, binary and text. With
/// `with_rpc_system(RpcSystem::Grpc)` every call is `grpc`.
#[tokio::test]
async fn legacy_grpc_web_is_grpc_web_unless_one_system_is_chosen() {
    for forced in [false, true] {
        let t = Telemetry::new();
        let mut otel = t
            .instrumentation_with(otel_tower::Semconv::Legacy)
            .with_trace_request_header(["x-tenant"])
            .with_trace_response_header(["x-cost"]);
        if forced {
            otel = otel.with_rpc_system(otel_tower::RpcSystem::Grpc);
        }
        let addr = serve(
            otel.server_layer(),
            Arc::new(|req| {
                Response::builder()
                    .header("content-type", req.headers()["content-type"].clone())
                    .header("x-cost", "7")
                    .body(grpc_web_body("3", false, false))
                    .unwrap()
            }),
        )
        .await;
        let client = ServiceBuilder::new()
            .layer(otel.client_layer())
            .service(h1_client());
        let mut req = grpc_request(addr, "/pkg.Svc/Web", "application/grpc-web+proto");
        req.headers_mut()
            .insert("x-tenant", "acme".parse().unwrap());
        let response = client.oneshot(req).await.unwrap();
        read_all(response).await;
        t.wait_spans(2).await;
        let (system, status_key, request_key, response_key) = if forced {
            (
                "grpc",
                "rpc.grpc.status_code",
                "rpc.grpc.request.metadata.x_tenant",
                "rpc.grpc.response.metadata.x_cost",
            )
        } else {
            (
                "grpc_web",
                "rpc.grpc_web.status_code",
                "rpc.grpc_web.request.metadata.x_tenant",
                "rpc.grpc_web.response.metadata.x_cost",
            )
        };
        for kind in [SpanKind::Server, SpanKind::Client] {
            let a = attrs(&t.span(kind.clone()));
            assert_eq!(a["rpc.system"], system, "forced={forced} {kind:?}");
            assert_eq!(a[status_key], "3", "forced={forced} {kind:?}: {a:?}");
            assert_eq!(a[request_key], "[\"acme\"]", "forced={forced} {kind:?}");
            assert_eq!(a[response_key], "[\"7\"]", "forced={forced} {kind:?}");
            let other_status = if forced {
                "rpc.grpc_web.status_code"
            } else {
                "rpc.grpc.status_code"
            };
            assert!(!a.contains_key(other_status), "forced={forced} {kind:?}");
        }
        for name in ["rpc.server.duration", "rpc.client.duration"] {
            let points = t.histogram(name);
            assert_eq!(points.len(), 1, "{name}: {points:?}");
            let p = &points[0].attributes;
            assert_eq!(p["rpc.system"], system, "forced={forced} {name}");
            assert_eq!(p[status_key], "3", "forced={forced} {name}");
        }
    }
}
