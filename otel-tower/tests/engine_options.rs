//! Engine tests for the options: semconv modes, trust, filters, header capture,
//! peer attributes, known methods, rpc system, signals on/off.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer, TracerProvider};
use otel_tower::semconv::Semconv;
use otel_tower::{Instrumentation, RpcSystem};
use support::*;
use tower::{ServiceBuilder, ServiceExt};

const PING: &str = "/observability.ping.v1.PingService/Ping";

fn ping_server_response(req: &Request<hyper::body::Incoming>) -> Response<Scripted> {
    match req.uri().path() {
        "/observability.ping.v1.PingService/Fail" => Response::builder()
            .status(500)
            .header("content-type", "application/json")
            .header("x-trace-me", "resp-value")
            .body(Scripted::data(&[
                br#"{"code":"data_loss","message":"oops"}"#,
            ]))
            .unwrap(),
        "/observability.ping.v1.PingService/Unimplemented" => Response::builder()
            .status(501)
            .header("content-type", "application/json")
            .body(Scripted::data(&[br#"{"code":"unimplemented"}"#]))
            .unwrap(),
        "/observability.ping.v1.PingService/GrpcFail" => Response::builder()
            .header("content-type", "application/grpc")
            .body(Scripted::data_then_trailers(
                &[],
                trailers(&[("grpc-status", "15")]),
            ))
            .unwrap(),
        "/observability.ping.v1.PingService/GrpcOk" => Response::builder()
            .header("content-type", "application/grpc")
            .body(Scripted::data_then_trailers(
                &[&envelope(0, b"ok")],
                trailers(&[("grpc-status", "0")]),
            ))
            .unwrap(),
        _ => Response::builder()
            .header("content-type", "application/proto")
            .header("x-trace-me", "resp-value")
            .body(Scripted::data(&[b"\x08\x01"]))
            .unwrap(),
    }
}

fn connect_request(addr: std::net::SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/proto")
        .header("connect-protocol-version", "1")
        .header("x-trace-me", "req-value")
        .body(Full::new(Bytes::from_static(b"\x08\x01")))
        .unwrap()
}

async fn call_once(otel: &Instrumentation, _addr: std::net::SocketAddr, req: Request<Full<Bytes>>) {
    let client = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h1_client());
    read_all(client.oneshot(req).await.unwrap()).await;
}

fn event_attrs(
    span: &opentelemetry_sdk::trace::SpanData,
) -> Vec<(String, std::collections::BTreeMap<String, String>)> {
    span.events
        .iter()
        .map(|e| {
            (
                e.name.to_string(),
                e.attributes
                    .iter()
                    .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                    .collect(),
            )
        })
        .collect()
}

#[tokio::test]
async fn legacy_mode_reproduces_otelconnect_go_reference_data() {
    let t = Telemetry::new();
    let otel = t.instrumentation_with(Semconv::Legacy);
    let addr = serve(otel.server_layer(), Arc::new(ping_server_response)).await;
    let port = addr.port().to_string();

    // client unary success
    call_once(&otel, addr, connect_request(addr, PING)).await;
    t.wait_spans(2).await;
    let client = t.span(SpanKind::Client);
    assert_eq!(client.name, "observability.ping.v1.PingService/Ping");
    assert!(!is_error(&client));
    assert_eq!(
        attrs(&client),
        map(&[
            ("net.peer.name", "127.0.0.1"),
            ("net.peer.port", &port),
            ("rpc.system", "connect_rpc"),
            ("rpc.service", "observability.ping.v1.PingService"),
            ("rpc.method", "Ping"),
        ])
    );
    let events = event_attrs(&client);
    assert_eq!(
        events,
        vec![
            (
                "message".to_string(),
                map(&[
                    ("message.type", "SENT"),
                    ("message.id", "1"),
                    ("message.uncompressed_size", "2")
                ])
            ),
            (
                "message".to_string(),
                map(&[
                    ("message.type", "RECEIVED"),
                    ("message.id", "1"),
                    ("message.uncompressed_size", "2")
                ])
            ),
        ]
    );
    let server = t.span(SpanKind::Server);
    let server_attrs = attrs(&server);
    assert_eq!(
        server_attrs["net.peer.name"], "127.0.0.1",
        "server: the client's socket IP"
    );
    assert_ne!(
        server_attrs["net.peer.port"], port,
        "server: the client's ephemeral port"
    );
    assert_eq!(
        event_attrs(&server)
            .iter()
            .map(|(_, a)| a["message.type"].clone())
            .collect::<Vec<_>>(),
        ["RECEIVED", "SENT"]
    );

    // client unary error (unimplemented): error code, status Error, RECEIVED size 0
    t.spans.reset();
    call_once(
        &otel,
        addr,
        connect_request(addr, "/observability.ping.v1.PingService/Unimplemented"),
    )
    .await;
    t.wait_spans(2).await;
    let client = t.span(SpanKind::Client);
    assert!(is_error(&client));
    assert_eq!(
        attrs(&client)["rpc.connect_rpc.error_code"],
        "unimplemented"
    );
    let events = event_attrs(&client);
    assert_eq!(events[1].1["message.type"], "RECEIVED");
    assert_eq!(events[1].1["message.uncompressed_size"], "0");

    // server unary error data_loss
    t.spans.reset();
    call_once(
        &otel,
        addr,
        connect_request(addr, "/observability.ping.v1.PingService/Fail"),
    )
    .await;
    t.wait_spans(2).await;
    let server = t.span(SpanKind::Server);
    assert!(is_error(&server));
    assert_eq!(attrs(&server)["rpc.connect_rpc.error_code"], "data_loss");

    // over gRPC: rpc.system grpc and the numeric status code, 0 on success
    for (path, code) in [
        ("/observability.ping.v1.PingService/GrpcFail", "15"),
        ("/observability.ping.v1.PingService/GrpcOk", "0"),
    ] {
        t.spans.reset();
        let client = ServiceBuilder::new()
            .layer(otel.client_layer())
            .service(h2_client());
        read_all(
            client
                .oneshot(grpc_request(addr, path, "application/grpc"))
                .await
                .unwrap(),
        )
        .await;
        t.wait_spans(2).await;
        let server = t.span(SpanKind::Server);
        assert_eq!(attrs(&server)["rpc.system"], "grpc");
        assert_eq!(attrs(&server)["rpc.grpc.status_code"], code);
        assert!(
            !attrs(&server).contains_key("rpc.system.name"),
            "no stable names in Legacy"
        );
    }

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
        expected.push((
            format!("rpc.{side}.duration"),
            "ms".to_string(),
            "Measures the duration of inbound RPC.".to_string(),
        ));
        expected.push((
            format!("rpc.{side}.request.size"),
            "By".to_string(),
            "Measures size of RPC request messages (uncompressed).".to_string(),
        ));
        expected.push((
            format!("rpc.{side}.requests_per_rpc"),
            "1".to_string(),
            per_rpc.to_string(),
        ));
        expected.push((
            format!("rpc.{side}.response.size"),
            "By".to_string(),
            "Measures size of RPC response messages (uncompressed).".to_string(),
        ));
        expected.push((
            format!("rpc.{side}.responses_per_rpc"),
            "1".to_string(),
            per_rpc.to_string(),
        ));
    }
    expected.sort();
    assert_eq!(names, expected);
    let client_duration: Vec<_> = points
        .iter()
        .filter(|p| p.name == "rpc.client.duration")
        .collect();
    let ping = client_duration
        .iter()
        .find(|p| p.attributes.get("rpc.method").map(String::as_str) == Some("Ping"))
        .unwrap();
    assert_eq!(
        ping.attributes,
        map(&[
            ("net.peer.name", "127.0.0.1"),
            ("net.peer.port", &port),
            ("rpc.system", "connect_rpc"),
            ("rpc.service", "observability.ping.v1.PingService"),
            ("rpc.method", "Ping"),
        ])
    );
    assert!(
        points.iter().all(|p| !p.name.contains("call.duration")),
        "no stable metrics in Legacy"
    );
}

#[tokio::test]
async fn both_mode_unions_attributes_and_records_both_metric_families() {
    let t = Telemetry::new();
    let otel = t.instrumentation_with(Semconv::Both).without_trace_events();
    let addr = serve(otel.server_layer(), Arc::new(ping_server_response)).await;
    call_once(
        &otel,
        addr,
        connect_request(addr, "/observability.ping.v1.PingService/Fail"),
    )
    .await;
    t.wait_spans(2).await;
    let server = attrs(&t.span(SpanKind::Server));
    assert_eq!(
        server["rpc.method"], "observability.ping.v1.PingService/Fail",
        "stable value wins"
    );
    assert_eq!(server["rpc.service"], "observability.ping.v1.PingService");
    assert_eq!(server["rpc.system"], "connect_rpc");
    assert_eq!(server["rpc.system.name"], "connectrpc");
    assert_eq!(server["rpc.status_code"], "data_loss");
    assert_eq!(server["rpc.connect_rpc.error_code"], "data_loss");
    let stable = t.histogram("rpc.server.call.duration");
    let legacy = t.histogram("rpc.server.duration");
    assert_eq!(stable.len(), 1);
    assert_eq!(legacy.len(), 1);
    assert_eq!(
        stable[0].attributes["rpc.method"],
        "observability.ping.v1.PingService/Fail"
    );
    assert_eq!(
        legacy[0].attributes["rpc.method"], "Fail",
        "legacy series keep the short name"
    );
    assert!(t.span(SpanKind::Server).events.is_empty());
}

/// Legacy keys turn `-` into `_`: `x-trace-me` and `x_trace_me` share one
/// Legacy attribute (values of both), and keep their own Stable ones.
#[tokio::test]
async fn headers_sharing_a_legacy_key_are_one_attribute() {
    let t = Telemetry::new();
    let otel = t
        .instrumentation_with(Semconv::Both)
        .with_trace_request_header(["x-trace-me", "x_trace_me"]);
    let addr = serve(otel.server_layer(), Arc::new(ping_server_response)).await;
    let mut req = connect_request(addr, PING);
    req.headers_mut()
        .insert("x_trace_me", "underscored".parse().unwrap());
    call_once(&otel, addr, req).await;
    t.wait_spans(2).await;
    for kind in [SpanKind::Server, SpanKind::Client] {
        // `attrs` also checks that no key is set twice.
        let a = attrs(&t.span(kind.clone()));
        assert_eq!(a["rpc.request.metadata.x-trace-me"], "[\"req-value\"]");
        assert_eq!(a["rpc.request.metadata.x_trace_me"], "[\"underscored\"]");
        assert_eq!(
            a["rpc.connect_rpc.request.metadata.x_trace_me"], "[\"req-value\",\"underscored\"]",
            "{kind:?}"
        );
    }
}

#[tokio::test]
async fn header_capture_is_on_spans_only() {
    let t = Telemetry::new();
    let otel = t
        .instrumentation()
        // Listed twice, in two cases: still one attribute (`attrs` checks).
        .with_trace_request_header(["X-Trace-Me", "x-trace-me"])
        .with_trace_request_header(["x-TRACE-me"])
        .with_trace_response_header(["x-trace-me"]);
    let addr = serve(otel.server_layer(), Arc::new(ping_server_response)).await;
    call_once(&otel, addr, connect_request(addr, PING)).await;
    t.wait_spans(2).await;
    for kind in [SpanKind::Server, SpanKind::Client] {
        let span = t.span(kind);
        assert_eq!(
            attr(&span, "rpc.request.metadata.x-trace-me").unwrap(),
            opentelemetry::Value::Array(vec![opentelemetry::StringValue::from("req-value")].into())
        );
        assert_eq!(
            attrs(&span)["rpc.response.metadata.x-trace-me"],
            "[\"resp-value\"]"
        );
    }
    let points = t.histograms();
    assert!(!points.is_empty(), "metrics were recorded");
    for p in points {
        assert!(
            p.attributes.keys().all(|k| !k.contains("metadata")),
            "{p:?}"
        );
    }
}

#[test]
#[should_panic(expected = "not a valid HTTP header name")]
fn invalid_header_name_is_a_configuration_error() {
    let _ = Instrumentation::new().with_trace_request_header(["bad header"]);
}

#[tokio::test]
async fn without_server_peer_attributes_and_attribute_filter() {
    let t = Telemetry::new();
    let otel = t
        .instrumentation_with(Semconv::Both)
        .without_server_peer_attributes()
        .with_attribute_filter(|_, kv| kv.key.as_str() != "server.port");
    let addr = serve(otel.server_layer(), Arc::new(ping_server_response)).await;
    call_once(&otel, addr, connect_request(addr, PING)).await;
    t.wait_spans(2).await;
    let server = attrs(&t.span(SpanKind::Server));
    for k in [
        "network.peer.address",
        "network.peer.port",
        "net.peer.name",
        "net.peer.port",
        "server.port",
    ] {
        assert!(!server.contains_key(k), "{k} on server span");
    }
    let client = attrs(&t.span(SpanKind::Client));
    assert_eq!(
        client["net.peer.name"], "127.0.0.1",
        "client side untouched by the peer switch"
    );
    assert!(
        !client.contains_key("server.port"),
        "attribute filter applies to the client too"
    );
    let points = t.histograms();
    assert!(!points.is_empty(), "metrics were recorded");
    for p in points {
        assert!(
            !p.attributes.contains_key("server.port"),
            "filter applies to metrics: {p:?}"
        );
        if p.name.starts_with("rpc.server") {
            assert!(!p.attributes.contains_key("net.peer.name"), "{p:?}");
        }
    }
}

#[tokio::test]
async fn public_endpoint_starts_new_trace_with_link_and_trusted_is_child() {
    for public in [false, true] {
        let t = Telemetry::new();
        let mut otel = t.instrumentation();
        if public {
            otel = otel.with_public_endpoint();
        }
        let addr = serve(otel.server_layer(), Arc::new(ping_server_response)).await;
        call_once(&otel, addr, connect_request(addr, PING)).await;
        t.wait_spans(2).await;
        let server = t.span(SpanKind::Server);
        let client = t.span(SpanKind::Client);
        if public {
            assert_ne!(
                server.span_context.trace_id(),
                client.span_context.trace_id()
            );
            assert_eq!(server.parent_span_id, opentelemetry::trace::SpanId::INVALID);
            let links: Vec<_> = server.links.iter().collect();
            assert_eq!(links.len(), 1);
            assert_eq!(
                links[0].span_context.span_id(),
                client.span_context.span_id()
            );
        } else {
            assert_eq!(
                server.span_context.trace_id(),
                client.span_context.trace_id()
            );
            assert_eq!(server.parent_span_id, client.span_context.span_id());
            assert_eq!(server.links.iter().count(), 0);
        }
    }
}

/// Without a span of ours (tracing off), a public endpoint still keeps the
/// caller's span from parenting the handler's work: the handler's current
/// context and the request's context extension carry no span, while
/// baggage still arrives. Trusted, the handler continues the caller's trace.
#[tokio::test]
async fn public_endpoint_without_tracing_leaves_the_callers_span_out() {
    use opentelemetry::Context;
    use opentelemetry::baggage::BaggageExt;
    let t = Telemetry::new();
    let caller = t.instrumentation();
    for (public, metrics) in [(true, true), (true, false), (false, true)] {
        let mut otel = t.instrumentation().without_tracing();
        if public {
            otel = otel.with_public_endpoint();
        }
        if !metrics {
            otel = otel.without_metrics();
        }
        type Seen = (Option<String>, Option<String>, Option<String>);
        let seen: Arc<std::sync::Mutex<Option<Seen>>> = Arc::default();
        let seen2 = seen.clone();
        let addr = serve(
            otel.server_layer(),
            Arc::new(move |req| {
                let valid_trace = |cx: &Context| {
                    let sc = cx.span().span_context().clone();
                    sc.is_valid().then(|| sc.trace_id().to_string())
                };
                let current = Context::current();
                *seen2.lock().unwrap() = Some((
                    valid_trace(&current),
                    req.extensions().get::<Context>().and_then(valid_trace),
                    current.baggage().get("k").map(|v| v.to_string()),
                ));
                ping_server_response(req)
            }),
        )
        .await;
        t.spans.reset();
        let mut req = connect_request(addr, PING);
        req.extensions_mut()
            .insert(Context::new().with_baggage([opentelemetry::KeyValue::new("k", "v")]));
        call_once(&caller, addr, req).await;
        let client = t.wait_spans(1).await.remove(0);
        let caller_trace = client.span_context.trace_id().to_string();
        let (current, extension, baggage) = seen.lock().unwrap().take().unwrap();
        let at = format!("public={public} metrics={metrics}");
        let expected = (!public).then_some(caller_trace);
        assert_eq!(current, expected, "{at}: current");
        assert_eq!(extension, expected, "{at}: extension");
        assert_eq!(baggage.as_deref(), Some("v"), "{at}: baggage");
    }
}

#[tokio::test]
async fn response_header_propagation_and_handler_sees_no_injected_header() {
    let t = Telemetry::new();
    let otel = t.instrumentation().with_propagate_response_header();
    let seen = Arc::new(std::sync::Mutex::new(None));
    let seen2 = seen.clone();
    let addr = serve(
        otel.server_layer(),
        Arc::new(move |req| {
            *seen2.lock().unwrap() = Some(req.headers().clone());
            ping_server_response(req)
        }),
    )
    .await;
    let client = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h1_client());
    let response = client.oneshot(connect_request(addr, PING)).await.unwrap();
    let (head, _, _) = read_all(response).await;
    t.wait_spans(2).await;
    let server = t.span(SpanKind::Server);
    let traceparent = head.headers["traceparent"].to_str().unwrap().to_string();
    assert!(traceparent.contains(&server.span_context.span_id().to_string()));
    // The handler sees what the client sent: the client span's context only.
    let client = t.span(SpanKind::Client);
    let handler_tp = seen.lock().unwrap().as_ref().unwrap()["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(handler_tp.contains(&client.span_context.span_id().to_string()));
}

#[tokio::test]
async fn existing_span_in_extensions_is_the_parent_without_extraction() {
    let t = Telemetry::new();
    let otel = t.instrumentation();
    let tracer = t.tracer_provider.tracer("outer");
    let outer_cx = opentelemetry::Context::new().with_span(tracer.start("outer-layer"));
    let outer_id = outer_cx.span().span_context().span_id();
    let inject = outer_cx.clone();
    let addr = serve(
        (
            tower::layer::layer_fn(move |inner| {
                let cx = inject.clone();
                tower::ServiceBuilder::new()
                    .map_request(move |mut req: Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(cx.clone());
                        req
                    })
                    .service(inner)
            }),
            otel.server_layer(),
        ),
        Arc::new(ping_server_response),
    )
    .await;
    // The request also carries a traceparent from another trace: it must be ignored.
    let mut req = connect_request(addr, PING);
    req.headers_mut().insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            .parse()
            .unwrap(),
    );
    let client = h1_client();
    read_all(client.oneshot(req).await.unwrap()).await;
    t.wait_spans(1).await;
    let server = t.span(SpanKind::Server);
    assert_eq!(server.parent_span_id, outer_id);
    assert_eq!(
        server.span_context.trace_id(),
        outer_cx.span().span_context().trace_id()
    );
}

/// connectrpc's procedure paths carry a leading `/`: the same method.
#[tokio::test]
async fn known_methods_accept_a_leading_slash() {
    let t = Telemetry::new();
    let otel = t
        .instrumentation()
        .with_known_methods(["/observability.ping.v1.PingService/Ping"]);
    let addr = serve(otel.server_layer(), Arc::new(ping_server_response)).await;
    call_once(&otel, addr, connect_request(addr, PING)).await;
    t.wait_spans(2).await;
    for kind in [SpanKind::Server, SpanKind::Client] {
        let span = t.span(kind.clone());
        assert_eq!(
            span.name, "observability.ping.v1.PingService/Ping",
            "{kind:?}"
        );
        assert_eq!(
            attrs(&span)["rpc.method"],
            "observability.ping.v1.PingService/Ping"
        );
    }
}

#[test]
fn known_methods_that_could_never_match_are_refused_at_configuration() {
    for bad in ["pkg.Svc.M", "/pkg.Svc/", "pkg.Svc/", "/M", "a/b/c", ""] {
        let result = std::panic::catch_unwind(|| {
            otel_tower::Instrumentation::new().with_known_methods([bad])
        });
        assert!(result.is_err(), "{bad:?} accepted");
    }
    // And good ones are kept.
    let _ = otel_tower::Instrumentation::new().with_known_methods(["pkg.Svc/M", "/pkg.Svc/N"]);
}

#[tokio::test]
async fn known_methods_rpc_system_and_signal_switches() {
    // Known methods: anything else is _OTHER from the start.
    let t = Telemetry::new();
    let otel = t
        .instrumentation()
        .with_known_methods(["observability.ping.v1.PingService/Ping"]);
    let addr = serve(otel.server_layer(), Arc::new(ping_server_response)).await;
    call_once(
        &otel,
        addr,
        connect_request(addr, "/scanner.Probe/Anything"),
    )
    .await;
    t.wait_spans(2).await;
    let server = t.span(SpanKind::Server);
    assert_eq!(server.name, "connectrpc");
    assert_eq!(attrs(&server)["rpc.method"], "_OTHER");
    assert_eq!(
        attrs(&server)["rpc.method_original"],
        "scanner.Probe/Anything"
    );

    // with_rpc_system: gRPC wire reported under the Connect convention.
    let t = Telemetry::new();
    let otel = t.instrumentation().with_rpc_system(RpcSystem::ConnectRpc);
    let addr = serve(otel.server_layer(), Arc::new(ping_server_response)).await;
    let client = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h2_client());
    read_all(
        client
            .oneshot(grpc_request(
                addr,
                "/observability.ping.v1.PingService/GrpcFail",
                "application/grpc",
            ))
            .await
            .unwrap(),
    )
    .await;
    t.wait_spans(2).await;
    let server = attrs(&t.span(SpanKind::Server));
    assert_eq!(server["rpc.system.name"], "connectrpc");
    assert_eq!(server["rpc.status_code"], "data_loss");

    // without_tracing: metrics only; without_metrics: spans only.
    let t = Telemetry::new();
    let otel = t.instrumentation().without_tracing();
    let addr = serve(otel.server_layer(), Arc::new(ping_server_response)).await;
    call_once(&otel, addr, connect_request(addr, PING)).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(t.finished_spans().is_empty());
    assert_eq!(t.histogram("rpc.server.call.duration").len(), 1);
    assert_eq!(t.histogram("rpc.client.call.duration").len(), 1);

    let t = Telemetry::new();
    let otel = t.instrumentation().without_metrics();
    let addr = serve(otel.server_layer(), Arc::new(ping_server_response)).await;
    call_once(&otel, addr, connect_request(addr, PING)).await;
    t.wait_spans(2).await;
    assert!(t.histograms().is_empty());
}

/// An UNIMPLEMENTED answer from a method never seen succeeding makes it
/// `_OTHER`: in Stable on both sides (span name, `rpc.method` set once,
/// `rpc.method_original`, metrics); in Legacy on the server only (the
/// client keeps the names, as otelconnect-go's does); Both applies each
/// family's rule. A renamed span takes the name of its system: `rpc.system.name`
/// when Stable is on, Legacy's `rpc.system` alone.
#[tokio::test]
async fn unimplemented_is_other_in_stable_and_on_the_legacy_server() {
    let path = "/observability.ping.v1.PingService/Unimplemented";
    let original = "observability.ping.v1.PingService/Unimplemented";
    let service = "observability.ping.v1.PingService";
    for mode in [Semconv::Stable, Semconv::Legacy, Semconv::Both] {
        let t = Telemetry::new();
        let otel = t.instrumentation_with(mode).without_trace_events();
        let addr = serve(otel.server_layer(), Arc::new(ping_server_response)).await;
        call_once(&otel, addr, connect_request(addr, path)).await;
        t.wait_spans(2).await;
        for kind in [SpanKind::Server, SpanKind::Client] {
            let server = kind == SpanKind::Server;
            let legacy_other = mode.legacy() && server;
            let span = t.span(kind.clone());
            // `attrs` also checks that no key is set twice.
            let attributes = attrs(&span);
            let renamed = mode.stable() || legacy_other;
            // Renamed to the system attribute the span carries: Legacy
            // alone has only `rpc.system`.
            let name = match mode {
                _ if !renamed => original,
                Semconv::Legacy => "connect_rpc",
                _ => "connectrpc",
            };
            assert_eq!(span.name, name, "{mode:?} {kind:?}");
            let method = match mode {
                Semconv::Legacy if legacy_other => "_OTHER",
                Semconv::Legacy => "Unimplemented",
                _ => "_OTHER",
            };
            assert_eq!(attributes["rpc.method"], method, "{mode:?} {kind:?}");
            assert_eq!(
                attributes.get("rpc.method_original").map(String::as_str),
                mode.stable().then_some(original),
                "{mode:?} {kind:?}"
            );
            let legacy_service = if legacy_other { "_OTHER" } else { service };
            assert_eq!(
                attributes.get("rpc.service").map(String::as_str),
                mode.legacy().then_some(legacy_service),
                "{mode:?} {kind:?}"
            );
        }
        let points = t.histograms();
        assert!(!points.is_empty(), "metrics were recorded");
        for p in points {
            let method = if p.name.ends_with("call.duration") || p.name.starts_with("rpc.server") {
                "_OTHER"
            } else {
                "Unimplemented"
            };
            assert_eq!(
                p.attributes.get("rpc.method").map(String::as_str),
                Some(method),
                "{mode:?} {p:?}"
            );
        }
    }
}

/// A method that has answered (with anything but UNIMPLEMENTED) exists: a
/// later UNIMPLEMENTED is its handler's answer, and its name stays, on both
/// sides; `rpc.method` is still set once.
#[tokio::test]
async fn a_method_that_answered_before_keeps_its_name_on_unimplemented() {
    let t = Telemetry::new();
    let otel = t.instrumentation();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let served = calls.clone();
    let addr = serve(
        otel.server_layer(),
        Arc::new(move |_req| {
            let first = served.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            let (status, body): (u16, &[u8]) = if first {
                (200, b"\x08\x01")
            } else {
                (501, br#"{"code":"unimplemented"}"#)
            };
            Response::builder()
                .status(status)
                .header("content-type", "application/proto")
                .body(Scripted::data(&[body]))
                .unwrap()
        }),
    )
    .await;
    for expected in ["ok", "unimplemented"] {
        t.spans.reset();
        call_once(&otel, addr, connect_request(addr, PING)).await;
        t.wait_spans(2).await;
        for kind in [SpanKind::Server, SpanKind::Client] {
            let span = t.span(kind.clone());
            // `attrs` also checks that no key is set twice.
            let attributes = attrs(&span);
            assert_eq!(
                span.name,
                PING.trim_start_matches('/'),
                "{expected} {kind:?}"
            );
            assert_eq!(
                attributes["rpc.method"],
                PING.trim_start_matches('/'),
                "{expected} {kind:?}"
            );
            assert!(!attributes.contains_key("rpc.method_original"));
            let code = attributes.get("rpc.status_code").map(String::as_str);
            assert_eq!(code, (expected != "ok").then_some(expected), "{kind:?}");
        }
    }
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// Successful server calls record one metric series per method and system,
/// whether their attributes were built for the call (before the method is
/// interned) or pre-built with the method (after); the attribute filter
/// applies to both.
#[tokio::test]
async fn server_metric_series_are_the_same_before_and_after_interning() {
    const GRPC_OK: &str = "/observability.ping.v1.PingService/GrpcOk";
    for filtered in [false, true] {
        let t = Telemetry::new();
        let mut otel = t.instrumentation().without_tracing();
        if filtered {
            otel = otel.with_attribute_filter(|_, kv| kv.key.as_str() != "rpc.method");
        }
        let addr = serve(otel.server_layer(), Arc::new(ping_server_response)).await;
        for _ in 0..3 {
            call_once(&otel, addr, connect_request(addr, PING)).await;
            call_once(&otel, addr, grpc_request(addr, GRPC_OK, "application/grpc")).await;
        }
        let server: Vec<HistPoint> = t
            .histograms()
            .into_iter()
            .filter(|p| p.name == "rpc.server.call.duration")
            .collect();
        assert_eq!(server.len(), 2, "one series per method: {server:?}");
        for p in &server {
            assert_eq!(p.count, 3, "{p:?}");
            assert_eq!(p.attributes.contains_key("rpc.method"), !filtered, "{p:?}");
        }
        let grpc = server
            .iter()
            .find(|p| p.attributes["rpc.system.name"] == "grpc")
            .unwrap();
        assert_eq!(grpc.attributes["rpc.status_code"], "OK");
        let connect = server
            .iter()
            .find(|p| p.attributes["rpc.system.name"] == "connectrpc")
            .unwrap();
        assert!(!connect.attributes.contains_key("rpc.status_code"));
        if !filtered {
            assert_eq!(grpc.attributes["rpc.method"], &GRPC_OK[1..]);
            assert_eq!(connect.attributes["rpc.method"], &PING[1..]);
        }
    }
}
