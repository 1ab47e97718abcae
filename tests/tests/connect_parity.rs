//! The scenarios of otelconnect-go's test suite (otelconnect-parity.md),
//! ported to a real connectrpc server and client: options, propagation,
//! statuses for every code, and the Legacy-mode reference data.

mod connect_support;

use std::time::Duration;

use connect_support::*;
use connectrpc::client::{CallOptions, ClientTransport, HttpClient};
use connectrpc::{ConnectError, ErrorCode, Protocol};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::context::FutureExt;
use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::SpanData;
use otel_connect::OtelTransport;
use otel_integration_tests::{Telemetry, attr, attrs, is_error, map};
use otel_tower::{Instrumentation, RpcSystem, Semconv};

fn instrumentation(t: &Telemetry) -> Instrumentation {
    otel_connect::new_interceptor()
        .with_tracer_provider(t.tracer_provider.clone())
        .with_meter_provider(t.meter_provider.clone())
        .with_propagator(otel_tower::propagation::CompositePropagator::w3c())
        .with_semconv(Semconv::Stable)
}

fn legacy(t: &Telemetry) -> Instrumentation {
    instrumentation(t).with_semconv(Semconv::Legacy)
}

/// A context with an active span of the test's own tracer and baggage
/// `k=v`, as an application would have around an outgoing call.
fn outer_context(t: &Telemetry) -> Context {
    let tracer = t.tracer_provider.tracer("app");
    let span = tracer.start("outer");
    Context::current_with_span(span).with_baggage(vec![KeyValue::new("k", "v")])
}

fn traceparent(span: &SpanData) -> String {
    let sc = &span.span_context;
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

async fn count_up<T>(
    client: &PingServiceClient<T>,
    number: i64,
    fail_code: i32,
) -> Option<ErrorCode>
where
    T: ClientTransport,
    T::ResponseBody: Unpin + Send,
    <T::ResponseBody as http_body::Body>::Error: std::fmt::Display,
{
    let result = async {
        let mut stream = client
            .count_up(CountUpRequest {
                number,
                fail_code,
                ..Default::default()
            })
            .await?;
        while stream.message().await?.is_some() {}
        Ok::<_, ConnectError>(())
    }
    .await;
    result.err().map(|e| e.code)
}

async fn fail<T>(client: &PingServiceClient<T>, code: i32) -> ErrorCode
where
    T: ClientTransport,
    <T::ResponseBody as http_body::Body>::Error: std::fmt::Display,
{
    client
        .fail(FailRequest {
            code,
            ..Default::default()
        })
        .await
        .unwrap_err()
        .code
}

fn system(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Connect => "connectrpc",
        _ => "grpc",
    }
}

const PROTOCOLS: [Protocol; 3] = [Protocol::Connect, Protocol::Grpc, Protocol::GrpcWeb];

#[tokio::test]
async fn status_for_all_16_codes_unary_and_streaming_both_sides() {
    for protocol in PROTOCOLS {
        for (n, name) in all_error_codes() {
            let code = ErrorCode::from_grpc_code(n as u32).unwrap();
            assert_eq!(code.as_str(), name);

            // Unary.
            let t = Telemetry::new();
            let otel = instrumentation(&t);
            let server = serve_axum(&otel, ServerOptions::default()).await;
            let client = h2_client(&otel, config(&server, protocol)).await;
            assert_eq!(bounded(fail(&client, n)).await, code);
            check(
                &t,
                &server,
                &Expect::new(system(protocol), FAIL, Some(code)),
            )
            .await;

            // Server streaming: fails before its first message.
            let t = Telemetry::new();
            let otel = instrumentation(&t);
            let server = serve_axum(&otel, ServerOptions::default()).await;
            let client = h2_client(&otel, config(&server, protocol)).await;
            assert_eq!(bounded(count_up(&client, 0, n)).await, Some(code));
            check(
                &t,
                &server,
                &Expect::new(system(protocol), COUNT_UP, Some(code)),
            )
            .await;

            // Bidi: fails on the first message.
            let t = Telemetry::new();
            let otel = instrumentation(&t);
            let server = serve_axum(&otel, ServerOptions::default()).await;
            let client = h2_client(&otel, config(&server, protocol)).await;
            let got = bounded(async {
                let mut stream = client.ping_stream().await?;
                stream
                    .send(PingStreamRequest {
                        data: format!("code:{n}").into_bytes(),
                        ..Default::default()
                    })
                    .await?;
                stream.close_send();
                while stream.message().await?.is_some() {}
                Ok::<_, ConnectError>(())
            })
            .await;
            assert_eq!(got.unwrap_err().code, code);
            check(
                &t,
                &server,
                &Expect::new(system(protocol), PING_STREAM, Some(code)),
            )
            .await;
        }
    }
}

#[tokio::test]
async fn unimplemented_keeps_the_method_with_known_methods() {
    let t = Telemetry::new();
    let otel = instrumentation(&t).with_known_methods([PING, FAIL, PING_STREAM, COUNT_UP, SUM]);
    let server = serve_axum(&otel, ServerOptions::default()).await;
    let client = h2_client(&otel, config(&server, Protocol::Grpc)).await;
    assert_eq!(bounded(fail(&client, 12)).await, ErrorCode::Unimplemented);
    let spans = t.wait_spans(2).await;
    for kind in [SpanKind::Client, SpanKind::Server] {
        let span = find(&spans, kind, FAIL);
        assert_eq!(attrs(span)["rpc.method"], FAIL);
        assert!(!attrs(span).contains_key("rpc.method_original"));
        assert!(is_error(span));
    }
}

#[tokio::test]
async fn trusted_by_default_and_public_endpoint_links_unary_and_streaming() {
    for public in [false, true] {
        for streaming in [false, true] {
            let t = Telemetry::new();
            let server_otel = if public {
                instrumentation(&t).with_public_endpoint()
            } else {
                instrumentation(&t)
            };
            let server = serve_axum(&server_otel, ServerOptions::default()).await;
            let client = h2_client(&instrumentation(&t), config(&server, Protocol::Connect)).await;
            let outer = outer_context(&t);
            bounded(
                async {
                    if streaming {
                        assert_eq!(count_up(&client, 2, 0).await, None);
                    } else {
                        client.ping(ping_request(1)).await.unwrap();
                    }
                }
                .with_context(outer.clone()),
            )
            .await;
            let method = if streaming { COUNT_UP } else { PING };
            let spans = t.wait_spans(2).await;
            let c = find(&spans, SpanKind::Client, method);
            let s = find(&spans, SpanKind::Server, method);
            assert_eq!(c.parent_span_id, outer.span().span_context().span_id());
            if public {
                // Go's default: a new root, linked to the caller's span.
                assert_eq!(s.parent_span_id, SpanId::INVALID);
                assert_ne!(s.span_context.trace_id(), c.span_context.trace_id());
                assert_eq!(s.links.links.len(), 1);
                let linked = &s.links.links[0].span_context;
                assert_eq!(
                    (linked.trace_id(), linked.span_id(), linked.is_remote()),
                    (c.span_context.trace_id(), c.span_context.span_id(), true)
                );
            } else {
                assert_eq!(s.parent_span_id, c.span_context.span_id());
                assert_eq!(s.span_context.trace_id(), c.span_context.trace_id());
                assert!(s.links.links.is_empty());
            }
            // Baggage reaches the handler either way.
            let seen = server.seen.last();
            assert_eq!(seen.baggage, [("k".to_string(), "v".to_string())]);
            assert_eq!(seen.extension_span.as_ref(), Some(&s.span_context));
        }
    }
}

#[tokio::test]
async fn filter_on_server_only_and_on_both() {
    // Server only: the client span exists, the server has no span and no
    // metrics, and the handler still gets the caller's context.
    let t = Telemetry::new();
    let server_otel = instrumentation(&t).with_filter(|_| false);
    let server = serve_axum(&server_otel, ServerOptions::default()).await;
    let client = h2_client(&instrumentation(&t), config(&server, Protocol::Connect)).await;
    bounded(client.ping(ping_request(1))).await.unwrap();
    bounded(count_up(&client, 2, 0)).await;
    let spans = t.wait_spans(2).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let spans_now = t.finished_spans();
    assert_eq!(spans_now.len(), 2, "{spans:#?}");
    assert!(spans_now.iter().all(|s| s.span_kind == SpanKind::Client));
    assert!(t.histogram("rpc.server.call.duration").is_empty());
    assert_eq!(t.histogram("rpc.client.call.duration").len(), 2);
    let ping_client = find(&spans_now, SpanKind::Client, PING);
    let seen = server.seen.all();
    let propagated = seen[0].extension_span.clone().unwrap();
    assert_eq!(
        (propagated.trace_id(), propagated.span_id()),
        (
            ping_client.span_context.trace_id(),
            ping_client.span_context.span_id()
        ),
        "context propagated through the filtered hop"
    );

    // Both: no spans, no metrics; the outer trace still reaches the handler.
    let t = Telemetry::new();
    let otel = instrumentation(&t).with_filter(|r| r.method() != PING);
    let server = serve_axum(&otel, ServerOptions::default()).await;
    let client = h2_client(&otel, config(&server, Protocol::Connect)).await;
    let outer = outer_context(&t);
    bounded(client.ping(ping_request(1)).with_context(outer.clone()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(t.finished_spans().is_empty());
    assert!(t.histograms().is_empty());
    let seen = server.seen.last();
    assert_eq!(
        seen.extension_span.map(|s| s.trace_id()),
        Some(outer.span().span_context().trace_id())
    );
    // ...while other methods are still instrumented.
    bounded(count_up(&client, 1, 0)).await;
    t.wait_spans(2).await;
}

/// `Ping` then a one-message `CountUp`, both sending the `x-custom` header.
async fn ping_and_count_up_with_header<T>(client: &PingServiceClient<T>)
where
    T: ClientTransport,
    T::ResponseBody: Unpin + Send,
    <T::ResponseBody as http_body::Body>::Error: std::fmt::Display,
{
    let options = CallOptions::default()
        .with_header("x-custom", "one")
        .with_header("x-other", "ignored");
    bounded(client.ping_with_options(ping_request(1), options.clone()))
        .await
        .unwrap();
    bounded(async {
        let mut s = client
            .count_up_with_options(
                CountUpRequest {
                    number: 1,
                    ..Default::default()
                },
                options,
            )
            .await
            .unwrap();
        while s.message().await.unwrap().is_some() {}
    })
    .await;
}

/// Captured request headers, response headers and response trailers, on
/// every protocol: trailers travel as HTTP/2 trailers (gRPC), in the body's
/// trailer block (gRPC-Web), as `trailer-` headers (Connect unary) and in
/// the end-of-stream message's metadata (Connect streaming).
#[tokio::test]
async fn header_capture_on_spans_never_in_metrics() {
    for mode in [Semconv::Stable, Semconv::Legacy] {
        for (protocol, h2) in [
            (Protocol::Connect, true),
            (Protocol::Connect, false),
            (Protocol::Grpc, true),
            (Protocol::GrpcWeb, false),
        ] {
            let t = Telemetry::new();
            let otel = instrumentation(&t)
                .with_semconv(mode)
                .with_trace_request_header(["x-custom"])
                .with_trace_response_header([RESPONSE_HEADER, RESPONSE_TRAILER]);
            let server = serve_axum(&otel, ServerOptions::default()).await;
            if h2 {
                ping_and_count_up_with_header(&h2_client(&otel, config(&server, protocol)).await)
                    .await;
            } else {
                ping_and_count_up_with_header(&http_client(&otel, config(&server, protocol))).await;
            }
            let spans = t.wait_spans(4).await;
            // Legacy keys carry otelconnect-go's `rpc.system`: gRPC-Web is
            // `grpc_web` there.
            let system = match protocol {
                Protocol::Connect => "connect_rpc",
                Protocol::GrpcWeb => "grpc_web",
                _ => "grpc",
            };
            let keys = match mode {
                Semconv::Stable => [
                    "rpc.request.metadata.x-custom".to_string(),
                    "rpc.response.metadata.x-ping-response".to_string(),
                    "rpc.response.metadata.x-ping-cost".to_string(),
                ],
                _ => [
                    format!("rpc.{system}.request.metadata.x_custom"),
                    format!("rpc.{system}.response.metadata.x_ping_response"),
                    format!("rpc.{system}.response.metadata.x_ping_cost"),
                ],
            };
            for method in [PING, COUNT_UP] {
                for kind in [SpanKind::Client, SpanKind::Server] {
                    let span = find(&spans, kind.clone(), method);
                    let at = format!("{mode:?} {protocol:?} h2={h2} {kind:?} {method}");
                    for (key, value) in keys.iter().zip(["one", "pong", "1"]) {
                        assert_eq!(
                            attr(span, key),
                            Some(Value::Array(vec![StringValue::from(value)].into())),
                            "{at}: {key}"
                        );
                    }
                    assert!(!attrs(span).keys().any(|k| k.contains("x-other")), "{at}");
                }
            }
            let points = t.histograms();
            assert!(!points.is_empty(), "metrics were recorded");
            for p in points {
                assert!(
                    !p.attributes.keys().any(|k| k.contains("metadata")),
                    "{p:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn no_traceparent_added_to_handler_visible_headers() {
    // A plain connectrpc client (no instrumentation): the server layer adds
    // nothing to what the handler sees.
    let t = Telemetry::new();
    let otel = instrumentation(&t);
    let server = serve_axum(&otel, ServerOptions::default()).await;
    let plain = PingServiceClient::new(HttpClient::plaintext(), config(&server, Protocol::Connect));
    bounded(plain.ping(ping_request(1))).await.unwrap();
    let seen = server.seen.last();
    for name in ["traceparent", "tracestate", "baggage"] {
        assert!(!seen.headers.contains_key(name), "{name}");
    }
    t.wait_spans(1).await;

    // An instrumented client: the handler sees exactly the one traceparent
    // the client injected (its span's), unchanged.
    let client = h2_client(&otel, config(&server, Protocol::Connect)).await;
    bounded(client.ping(ping_request(2))).await.unwrap();
    let spans = t.wait_spans(3).await;
    let c = find(&spans, SpanKind::Client, PING);
    let seen = server.seen.last();
    let values: Vec<_> = seen.headers.get_all("traceparent").iter().collect();
    assert_eq!(values.len(), 1);
    assert_eq!(values[0].to_str().unwrap(), traceparent(c));
}

#[tokio::test]
async fn baggage_and_trace_context_propagation() {
    for protocol in PROTOCOLS {
        let t = Telemetry::new();
        let otel = instrumentation(&t);
        let server = serve_axum(&otel, ServerOptions::default()).await;
        let client = h2_client(&otel, config(&server, protocol)).await;
        let outer = outer_context(&t);
        bounded(client.ping(ping_request(1)).with_context(outer.clone()))
            .await
            .unwrap();
        let spans = t.wait_spans(2).await;
        let c = find(&spans, SpanKind::Client, PING);
        let s = find(&spans, SpanKind::Server, PING);
        let outer_sc = outer.span().span_context().clone();
        assert_eq!(c.parent_span_id, outer_sc.span_id());
        assert_eq!(c.span_context.trace_id(), outer_sc.trace_id());
        assert_eq!(s.parent_span_id, c.span_context.span_id());
        let seen = server.seen.last();
        assert_eq!(seen.baggage, [("k".to_string(), "v".to_string())]);
        assert_eq!(seen.headers["baggage"], "k=v");
        // The handler runs with the server span current and in extensions.
        assert_eq!(seen.current_span, s.span_context);
        assert_eq!(seen.extension_span.as_ref(), Some(&s.span_context));
    }
}

#[tokio::test]
async fn existing_span_in_request_extensions_is_the_parent() {
    let t = Telemetry::new();
    let otel = instrumentation(&t);
    let tracer = t.tracer_provider.tracer("outer-layer");
    let outer = Context::current_with_span(tracer.start("outer-layer"));
    let outer_sc = outer.span().span_context().clone();
    // Another layer, outside ours, already made a span for the request.
    let seen = Seen::default();
    let app = axum::Router::new()
        .fallback_service(connect_service(&seen, ServerOptions::default()))
        .layer(otel.server_layer())
        .layer(tower::util::MapRequestLayer::new(
            move |mut req: http::Request<axum::body::Body>| {
                req.extensions_mut().insert(outer.clone());
                req
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let cfg = connectrpc::client::ClientConfig::new(format!("http://{addr}").parse().unwrap());
    let client = http_client(&otel, cfg);
    bounded(client.ping(ping_request(1))).await.unwrap();
    let spans = t.wait_spans(2).await;
    let c = find(&spans, SpanKind::Client, PING);
    let s = find(&spans, SpanKind::Server, PING);
    assert_eq!(s.parent_span_id, outer_sc.span_id());
    assert_eq!(s.span_context.trace_id(), outer_sc.trace_id());
    assert_ne!(s.span_context.trace_id(), c.span_context.trace_id());
    task.abort();
}

#[tokio::test]
async fn response_header_propagation_unary_and_streaming() {
    for protocol in PROTOCOLS {
        let t = Telemetry::new();
        let server_otel = instrumentation(&t).with_propagate_response_header();
        let server = serve_axum(&server_otel, ServerOptions::default()).await;
        let client = h2_client(&instrumentation(&t), config(&server, protocol)).await;
        let unary = bounded(client.ping(ping_request(1))).await.unwrap();
        let unary_header = unary.headers()["traceparent"].to_str().unwrap().to_owned();
        let streamed = bounded(async {
            let mut stream = client
                .count_up(CountUpRequest {
                    number: 2,
                    ..Default::default()
                })
                .await
                .unwrap();
            let header = stream.headers()["traceparent"].to_str().unwrap().to_owned();
            while stream.message().await.unwrap().is_some() {}
            header
        })
        .await;
        let spans = t.wait_spans(4).await;
        assert_eq!(
            unary_header,
            traceparent(find(&spans, SpanKind::Server, PING))
        );
        assert_eq!(
            streamed,
            traceparent(find(&spans, SpanKind::Server, COUNT_UP))
        );
    }
}

#[tokio::test]
async fn with_rpc_system_across_connect_grpc_and_grpc_web_clients() {
    for forced in [RpcSystem::Grpc, RpcSystem::ConnectRpc] {
        for protocol in PROTOCOLS {
            let system = match forced {
                RpcSystem::Grpc => "grpc",
                _ => "connectrpc",
            };
            let t = Telemetry::new();
            let otel = instrumentation(&t).with_rpc_system(forced);
            let server = serve_axum(&otel, ServerOptions::default()).await;
            let client = h2_client(&otel, config(&server, protocol)).await;
            bounded(client.ping(ping_request(1))).await.unwrap();
            check(&t, &server, &Expect::new(system, PING, None)).await;

            let t = Telemetry::new();
            let otel = instrumentation(&t).with_rpc_system(forced);
            let server = serve_axum(&otel, ServerOptions::default()).await;
            let client = h2_client(&otel, config(&server, protocol)).await;
            assert_eq!(bounded(fail(&client, 5)).await, ErrorCode::NotFound);
            check(
                &t,
                &server,
                &Expect::new(system, FAIL, Some(ErrorCode::NotFound)),
            )
            .await;
        }
    }
}

#[tokio::test]
async fn connect_get_304_is_not_an_error() {
    for mode in [Semconv::Stable, Semconv::Legacy] {
        let t = Telemetry::new();
        let otel = instrumentation(&t).with_semconv(mode);
        let server = serve_axum(
            &otel,
            ServerOptions {
                not_modified: true,
                ..Default::default()
            },
        )
        .await;
        let transport = OtelTransport::new(HttpClient::plaintext(), &otel);
        let cfg = config(&server, Protocol::Connect);
        // connectrpc's client has no notion of a cached response; whatever
        // it returns, the telemetry must not call the 304 an error.
        let _ = bounded(ping_get(
            &transport,
            &cfg,
            ping_request(1),
            CallOptions::default().with_header("if-none-match", "\"v1\""),
        ))
        .await;
        let spans = t.wait_spans(2).await;
        for kind in [SpanKind::Client, SpanKind::Server] {
            let span = find(&spans, kind.clone(), PING);
            assert!(!is_error(span), "{mode:?} {kind:?}");
            let a = attrs(span);
            assert!(!a.contains_key("error.type"));
            assert!(!a.contains_key("rpc.status_code"));
            assert!(!a.contains_key("rpc.connect_rpc.error_code"));
            if mode == Semconv::Legacy {
                assert_eq!(a["http.status_code"], "304");
            }
        }
    }
}

#[tokio::test]
async fn streaming_client_cancellation_without_a_race() {
    let t = Telemetry::new();
    let otel = instrumentation(&t);
    let server = serve_axum(&otel, ServerOptions::default()).await;
    let client = h2_client(&otel, config(&server, Protocol::Connect)).await;
    const N: usize = 20;
    for i in 0..N {
        bounded(async {
            let mut stream = client.ping_stream().await.unwrap();
            if i % 2 == 0 {
                stream
                    .send(PingStreamRequest {
                        data: b"x".to_vec(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
            // Dropped without close_send and without reading.
        })
        .await;
    }
    let spans = t.wait_spans(N).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let spans_now = t.finished_spans();
    let clients: Vec<_> = spans_now
        .iter()
        .filter(|s| s.span_kind == SpanKind::Client)
        .collect();
    assert_eq!(clients.len(), N, "{spans:#?}");
    let ids: std::collections::HashSet<_> =
        clients.iter().map(|s| s.span_context.span_id()).collect();
    assert_eq!(ids.len(), N, "every client span ended exactly once");
    for c in clients {
        assert!(is_error(c));
        assert_eq!(attrs(c)["rpc.status_code"], "canceled");
    }
    let servers: Vec<_> = spans_now
        .iter()
        .filter(|s| s.span_kind == SpanKind::Server)
        .collect();
    // Whatever reached the server (connectrpc may cancel a stream before
    // its request went out) has its span.
    let reached = server.seen.all().len();
    assert!(servers.len() >= reached, "{} server spans", servers.len());
    let server_ids: std::collections::HashSet<_> =
        servers.iter().map(|s| s.span_context.span_id()).collect();
    assert_eq!(
        server_ids.len(),
        servers.len(),
        "no server span ended twice"
    );
    for s in servers {
        assert_eq!(attrs(s)["rpc.status_code"], "canceled");
        assert!(!is_error(s));
    }
}

#[tokio::test]
async fn attribute_filter_on_spans_and_metrics() {
    let t = Telemetry::new();
    let otel = instrumentation(&t).with_attribute_filter(|_, kv| kv.key.as_str() != "server.port");
    let server = serve_axum(&otel, ServerOptions::default()).await;
    let client = h2_client(&otel, config(&server, Protocol::Grpc)).await;
    bounded(client.ping(ping_request(1))).await.unwrap();
    assert_eq!(bounded(fail(&client, 3)).await, ErrorCode::InvalidArgument);
    let spans = t.wait_spans(4).await;
    for span in &spans {
        assert!(!attrs(span).contains_key("server.port"), "{:?}", span.name);
        assert!(attrs(span).contains_key("server.address"));
    }
    let points = t.histograms();
    assert_eq!(points.len(), 4);
    for p in points {
        assert!(!p.attributes.contains_key("server.port"));
    }
}

#[tokio::test]
async fn without_server_peer_attributes_in_every_mode() {
    for mode in [Semconv::Stable, Semconv::Legacy, Semconv::Both] {
        let t = Telemetry::new();
        let otel = instrumentation(&t)
            .with_semconv(mode)
            .without_server_peer_attributes();
        let server = serve_axum(&otel, ServerOptions::default()).await;
        let client = h2_client(&otel, config(&server, Protocol::Connect)).await;
        bounded(client.ping(ping_request(1))).await.unwrap();
        let spans = t.wait_spans(2).await;
        let s = attrs(find(&spans, SpanKind::Server, PING));
        let c = attrs(find(&spans, SpanKind::Client, PING));
        for key in [
            "network.peer.address",
            "network.peer.port",
            "net.peer.name",
            "net.peer.port",
        ] {
            assert!(!s.contains_key(key), "{mode:?} server {key}");
        }
        if mode.legacy() {
            assert_eq!(c["net.peer.name"], "127.0.0.1", "client untouched");
            assert_eq!(c["net.peer.port"], server.addr.port().to_string());
        }
        let points = t.histograms();
        assert!(!points.is_empty(), "metrics were recorded");
        for p in points {
            if p.name.starts_with("rpc.server") {
                assert!(!p.attributes.contains_key("net.peer.name"), "{p:?}");
                assert!(!p.attributes.contains_key("net.peer.port"), "{p:?}");
            } else if mode.legacy() && !p.name.contains("call.duration") {
                assert_eq!(p.attributes["net.peer.name"], "127.0.0.1", "{p:?}");
            }
        }
    }
}

#[tokio::test]
async fn without_metrics_and_without_tracing() {
    let t = Telemetry::new();
    let otel = instrumentation(&t).without_metrics();
    let server = serve_axum(&otel, ServerOptions::default()).await;
    let client = h2_client(&otel, config(&server, Protocol::Connect)).await;
    bounded(client.ping(ping_request(1))).await.unwrap();
    bounded(count_up(&client, 2, 0)).await;
    t.wait_spans(4).await;
    assert!(t.histograms().is_empty());

    let t = Telemetry::new();
    let otel = instrumentation(&t).without_tracing();
    let server = serve_axum(&otel, ServerOptions::default()).await;
    let client = h2_client(&otel, config(&server, Protocol::Connect)).await;
    let outer = outer_context(&t);
    bounded(client.ping(ping_request(1)).with_context(outer.clone()))
        .await
        .unwrap();
    bounded(count_up(&client, 2, 0)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(t.finished_spans().is_empty());
    assert_eq!(t.histogram("rpc.client.call.duration").len(), 2);
    assert_eq!(t.histogram("rpc.server.call.duration").len(), 2);
    // Context still propagates: the handler continues the outer trace.
    let seen = server.seen.all();
    assert_eq!(
        seen[0].extension_span.as_ref().map(|s| s.trace_id()),
        Some(outer.span().span_context().trace_id())
    );
}

/// `message` events of a span as (type, id, size).
fn legacy_events(span: &SpanData) -> Vec<(String, String, String)> {
    events(span)
        .into_iter()
        .map(|(name, a)| {
            assert_eq!(name, "message");
            (
                a["message.type"].clone(),
                a["message.id"].clone(),
                a["message.uncompressed_size"].clone(),
            )
        })
        .collect()
}

fn ev(ty: &str, id: &str, size: &str) -> (String, String, String) {
    (ty.into(), id.into(), size.into())
}

#[tokio::test]
async fn legacy_mode_reproduces_otelconnect_go_reference_data() {
    let t = Telemetry::new();
    let otel = legacy(&t);
    let server = serve_axum(&otel, ServerOptions::default()).await;
    let port = server.addr.port().to_string();
    let client = http_client(&otel, config(&server, Protocol::Connect));

    // Client unary success.
    bounded(client.ping(ping_request(1))).await.unwrap();
    let spans = t.wait_spans(2).await;
    let c = find(
        &spans,
        SpanKind::Client,
        "observability.ping.v1.PingService/Ping",
    );
    assert!(!is_error(c));
    assert_eq!(
        attrs(c),
        map(&[
            ("net.peer.name", "127.0.0.1"),
            ("net.peer.port", &port),
            ("rpc.system", "connect_rpc"),
            ("rpc.service", "observability.ping.v1.PingService"),
            ("rpc.method", "Ping"),
        ])
    );
    assert_eq!(
        legacy_events(c),
        [ev("SENT", "1", "2"), ev("RECEIVED", "1", "2")]
    );
    let s = find(&spans, SpanKind::Server, PING);
    let sa = attrs(s);
    assert_eq!(sa["net.peer.name"], "127.0.0.1", "the client's socket IP");
    assert_ne!(sa["net.peer.port"], port, "the client's ephemeral port");
    assert_eq!(
        legacy_events(s),
        [ev("RECEIVED", "1", "2"), ev("SENT", "1", "2")]
    );
    assert_eq!(s.instrumentation_scope.name(), "otel-connect");
    assert_eq!(s.instrumentation_scope.schema_url(), None);

    // Client unary error (unimplemented): a server without the method. Legacy
    // keeps the method's names, as Go does (no known methods needed).
    t.spans.reset();
    let empty = serve_empty(&legacy(&t)).await;
    let client_empty = http_client(
        &legacy(&t),
        connectrpc::client::ClientConfig::new(format!("http://{empty}").parse().unwrap()),
    );
    let err = bounded(client_empty.ping(ping_request(1)))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unimplemented);
    let spans = t.wait_spans(2).await;
    let c = find(&spans, SpanKind::Client, PING);
    assert!(is_error(c));
    assert_eq!(
        attrs(c),
        map(&[
            ("net.peer.name", "127.0.0.1"),
            ("net.peer.port", &empty.port().to_string()),
            ("rpc.system", "connect_rpc"),
            ("rpc.service", "observability.ping.v1.PingService"),
            ("rpc.method", "Ping"),
            ("rpc.connect_rpc.error_code", "unimplemented"),
        ])
    );
    assert_eq!(
        legacy_events(c),
        [ev("SENT", "1", "2"), ev("RECEIVED", "1", "0")]
    );

    // Server unary error data_loss over Connect.
    t.spans.reset();
    assert_eq!(bounded(fail(&client, 15)).await, ErrorCode::DataLoss);
    let spans = t.wait_spans(2).await;
    let s = find(&spans, SpanKind::Server, FAIL);
    assert!(is_error(s));
    assert_eq!(attrs(s)["rpc.connect_rpc.error_code"], "data_loss");
    assert_eq!(attrs(s)["rpc.system"], "connect_rpc");

    // Over gRPC: rpc.system grpc and the numeric code, 0 on success.
    let grpc = h2_client(&otel, config(&server, Protocol::Grpc)).await;
    t.spans.reset();
    assert_eq!(bounded(fail(&grpc, 15)).await, ErrorCode::DataLoss);
    let spans = t.wait_spans(2).await;
    let s = attrs(find(&spans, SpanKind::Server, FAIL));
    assert_eq!(s["rpc.system"], "grpc");
    assert_eq!(s["rpc.grpc.status_code"], "15");
    assert!(
        !s.contains_key("rpc.system.name"),
        "no stable names in Legacy"
    );
    t.spans.reset();
    bounded(grpc.ping(ping_request(1))).await.unwrap();
    let spans = t.wait_spans(2).await;
    assert_eq!(
        attrs(find(&spans, SpanKind::Server, PING))["rpc.grpc.status_code"],
        "0"
    );

    // Streaming: one size record per response message, the count per RPC.
    let stream_client = h2_client(&otel, config(&server, Protocol::Connect)).await;
    assert_eq!(bounded(count_up(&stream_client, 3, 0)).await, None);
    assert_eq!(
        bounded(count_up(&stream_client, 2, 9)).await,
        Some(ErrorCode::FailedPrecondition)
    );

    // Metrics: the ten histograms, exact names, units, descriptions.
    let points = t.histograms();
    let mut names: Vec<(String, String, String)> = points
        .iter()
        .map(|p| (p.name.clone(), p.unit.clone(), p.description.clone()))
        .collect();
    names.sort();
    names.dedup();
    let per_rpc =
        "Measures the number of messages received per RPC. Should be 1 for all non-streaming RPCs.";
    let mut expected = Vec::new();
    for side in ["client", "server"] {
        for (name, unit, description) in [
            ("duration", "ms", "Measures the duration of inbound RPC."),
            (
                "request.size",
                "By",
                "Measures size of RPC request messages (uncompressed).",
            ),
            ("requests_per_rpc", "1", per_rpc),
            (
                "response.size",
                "By",
                "Measures size of RPC response messages (uncompressed).",
            ),
            ("responses_per_rpc", "1", per_rpc),
        ] {
            expected.push((
                format!("rpc.{side}.{name}"),
                unit.to_string(),
                description.to_string(),
            ));
        }
    }
    expected.sort();
    assert_eq!(names, expected);
    let ping_duration = points
        .iter()
        .find(|p| {
            p.name == "rpc.client.duration"
                && p.attributes.get("rpc.method").map(String::as_str) == Some("Ping")
                && p.attributes.get("rpc.system").map(String::as_str) == Some("connect_rpc")
                && !p.attributes.contains_key("rpc.connect_rpc.error_code")
        })
        .unwrap();
    assert_eq!(
        ping_duration.attributes,
        map(&[
            ("net.peer.name", "127.0.0.1"),
            ("net.peer.port", &port),
            ("rpc.system", "connect_rpc"),
            ("rpc.service", "observability.ping.v1.PingService"),
            ("rpc.method", "Ping"),
        ])
    );
    for side in ["client", "server"] {
        let per_rpc: Vec<_> = points
            .iter()
            .filter(|p| {
                p.name == format!("rpc.{side}.responses_per_rpc")
                    && p.attributes["rpc.method"] == "CountUp"
            })
            .collect();
        let ok = per_rpc
            .iter()
            .find(|p| !p.attributes.contains_key("rpc.connect_rpc.error_code"))
            .unwrap();
        assert_eq!((ok.count, ok.sum), (1, 3.0), "{side}");
        let failed = per_rpc
            .iter()
            .find(|p| {
                p.attributes
                    .get("rpc.connect_rpc.error_code")
                    .map(String::as_str)
                    == Some("failed_precondition")
            })
            .unwrap();
        assert_eq!((failed.count, failed.sum), (1, 2.0), "{side}");
        let sizes: u64 = points
            .iter()
            .filter(|p| {
                p.name == format!("rpc.{side}.response.size")
                    && p.attributes["rpc.method"] == "CountUp"
            })
            .map(|p| p.count)
            .sum();
        assert_eq!(sizes, 5, "{side}: one record per response message");
    }
    assert!(
        points.iter().all(|p| !p.name.contains("call.duration")),
        "no stable metrics in Legacy"
    );
}

/// A connectrpc server with no services (every call is `unimplemented`).
async fn serve_empty(otel: &Instrumentation) -> std::net::SocketAddr {
    let app = axum::Router::new()
        .fallback_service(connectrpc::ConnectRpcService::new(connectrpc::Router::new()))
        .layer(otel.server_layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap()
    });
    addr
}

/// Reads a three-message CountUp to its end and, with the stream (and so
/// the response body) still held, expects the client span to have ended.
async fn count_up_ends_while_held<T>(t: &Telemetry, client: &PingServiceClient<T>, at: &str)
where
    T: ClientTransport,
    T::ResponseBody: Unpin + Send,
    <T::ResponseBody as http_body::Body>::Error: std::fmt::Display,
{
    let mut stream = bounded(client.count_up(CountUpRequest {
        number: 3,
        ..Default::default()
    }))
    .await
    .unwrap();
    let mut n = 0;
    while bounded(stream.message()).await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 3, "{at}");
    let spans = t.wait_spans(2).await;
    let client_span = find(&spans, SpanKind::Client, COUNT_UP);
    assert!(!is_error(client_span), "{at}");
    drop(stream);
}

/// connectrpc's streaming clients stop reading at the end-of-stream message
/// (Connect) or the trailer frame (gRPC-Web) and keep the body until the
/// stream is dropped: the client span ends at that message, not at the drop.
#[tokio::test]
async fn a_stream_read_to_its_end_ends_its_client_span_while_still_held() {
    for (protocol, h2) in [
        (Protocol::Connect, true),
        (Protocol::Connect, false),
        (Protocol::GrpcWeb, false),
    ] {
        let t = Telemetry::new();
        let otel = instrumentation(&t);
        let server = serve_axum(&otel, ServerOptions::default()).await;
        let cfg = config(&server, protocol);
        let at = format!("{protocol:?} h2={h2}");
        if h2 {
            count_up_ends_while_held(&t, &h2_client(&otel, cfg).await, &at).await;
        } else {
            count_up_ends_while_held(&t, &http_client(&otel, cfg), &at).await;
        }
    }
}
