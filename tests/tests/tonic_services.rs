//! tonic's ecosystem behind the server layer: gRPC-Web through `tonic-web`
//! over HTTP/1.1, the health and reflection services (and the health-check
//! filter), tonic services in an axum `Router` next to a plain HTTP route,
//! and the microservice case (a handler calling a second tonic service
//! through the client layer).

mod tonic_support;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::{SpanKind, Status as SpanStatus};
use opentelemetry_sdk::trace::SpanData;
use otel_integration_tests::{Telemetry, attrs, is_error, map};
use otel_tower::Instrumentation;
use prost::Message;
use tokio_stream::StreamExt;
use tonic_support::*;

fn h1_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Splits a gRPC-Web response body into its messages and its trailer block.
fn grpc_web_frames(mut body: &[u8]) -> (Vec<Vec<u8>>, Option<String>) {
    let mut messages = Vec::new();
    let mut trailers = None;
    while body.len() >= 5 {
        let flags = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let payload = body[5..5 + len].to_vec();
        body = &body[5 + len..];
        if flags & 0x80 != 0 {
            trailers = Some(String::from_utf8(payload).unwrap().to_ascii_lowercase());
        } else {
            messages.push(payload);
        }
    }
    assert!(body.is_empty(), "no partial frame left");
    (messages, trailers)
}

/// A tonic server accepting HTTP/1.1 with `tonic_web::GrpcWebLayer`, the
/// server layer outside it (it sees the gRPC-Web wire) or inside it (it sees
/// the translated gRPC call).
fn serve_grpc_web(otel: &Instrumentation, otel_outside: bool) -> Served {
    let (incoming, addr) = incoming();
    let greeter = GreeterServer::new(TestGreeter { backend: None });
    if otel_outside {
        let router = tonic::transport::Server::builder()
            .accept_http1(true)
            .layer(otel.server_layer())
            .layer(tonic_web::GrpcWebLayer::new())
            .add_service(greeter);
        spawn_server(addr, router.serve_with_incoming(incoming))
    } else {
        let router = tonic::transport::Server::builder()
            .accept_http1(true)
            .layer(tonic_web::GrpcWebLayer::new())
            .layer(otel.server_layer())
            .add_service(greeter);
        spawn_server(addr, router.serve_with_incoming(incoming))
    }
}

/// A gRPC-Web call over HTTP/1.1 through the client layer (which accepts any
/// HTTP client), returning (HTTP/1.1 response head, body bytes).
async fn grpc_web_call(
    otel: &Instrumentation,
    addr: SocketAddr,
    method: &str,
    content_type: &str,
    body: Bytes,
) -> (http::response::Parts, Bytes) {
    use tower::ServiceExt;
    let client = tower::ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h1_client());
    let req = http::Request::post(format!("http://{addr}/{method}"))
        .header("content-type", content_type)
        .header("x-grpc-web", "1")
        .body(Full::new(body))
        .unwrap();
    let res = within(client.oneshot(req)).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_11);
    let (head, body) = res.into_parts();
    let bytes = within(body.collect()).await.unwrap().to_bytes();
    (head, bytes)
}

/// Server and client spans of a gRPC-Web call: same checks as gRPC, the
/// system is `grpc`.
async fn expect_grpc_web(t: &Telemetry, addr: SocketAddr, method: &str, code: &str) {
    let spans = settled(t, 2).await;
    let port = addr.port().to_string();
    let server = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Server)
        .unwrap();
    let client = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Client)
        .unwrap();
    assert_eq!(server.parent_span_id, client.span_context.span_id());
    let mut server_attrs = attrs(server);
    assert!(server_attrs.remove("network.peer.port").is_some());
    let mut expected = map(&[
        ("rpc.system.name", "grpc"),
        ("rpc.method", method),
        ("server.address", "127.0.0.1"),
        ("server.port", &port),
        ("network.peer.address", "127.0.0.1"),
        ("rpc.status_code", code),
    ]);
    if server_error(code) {
        expected.insert("error.type".into(), code.into());
    }
    assert_eq!(server_attrs, expected);
    let mut expected = map(&[
        ("rpc.system.name", "grpc"),
        ("rpc.method", method),
        ("server.address", "127.0.0.1"),
        ("server.port", &port),
        ("rpc.status_code", code),
    ]);
    if code != "OK" {
        expected.insert("error.type".into(), code.into());
    }
    assert_eq!(attrs(client), expected);
    assert_eq!(is_error(server), server_error(code));
    assert_eq!(is_error(client), code != "OK");
}

#[tokio::test]
async fn grpc_web_unary_over_http1() {
    for otel_outside in [true, false] {
        let t = Telemetry::new();
        let otel = otel(&t);
        let server = serve_grpc_web(&otel, otel_outside);
        let (head, body) = grpc_web_call(
            &otel,
            server.addr,
            "helloworld.Greeter/SayHello",
            "application/grpc-web+proto",
            grpc_frame(&hello("web")),
        )
        .await;
        assert_eq!(head.status, 200);
        let (messages, trailers) = grpc_web_frames(&body);
        assert_eq!(messages.len(), 1);
        assert_eq!(
            HelloReply::decode(&messages[0][..]).unwrap().message,
            "Hello web"
        );
        assert!(trailers.unwrap().contains("grpc-status:0"));
        expect_grpc_web(&t, server.addr, "helloworld.Greeter/SayHello", "OK").await;
    }
}

/// Two messages, then INTERNAL in the gRPC-Web trailer frame.
#[tokio::test]
async fn grpc_web_stream_error_in_trailer_frame() {
    for otel_outside in [true, false] {
        let t = Telemetry::new();
        let otel = otel(&t);
        let server = serve_grpc_web(&otel, otel_outside);
        let (_, body) = grpc_web_call(
            &otel,
            server.addr,
            "helloworld.Greeter/ServerStream",
            "application/grpc-web+proto",
            grpc_frame(&hello("count:2:fail:13")),
        )
        .await;
        let (messages, trailers) = grpc_web_frames(&body);
        assert_eq!(messages.len(), 2);
        assert!(trailers.unwrap().contains("grpc-status:13"));
        expect_grpc_web(
            &t,
            server.addr,
            "helloworld.Greeter/ServerStream",
            "INTERNAL",
        )
        .await;
    }
}

/// A trailers-only error over gRPC-Web: the status is in the HTTP/1.1
/// response headers.
#[tokio::test]
async fn grpc_web_trailers_only_error() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_grpc_web(&otel, true);
    let (head, body) = grpc_web_call(
        &otel,
        server.addr,
        "helloworld.Greeter/SayHello",
        "application/grpc-web+proto",
        grpc_frame(&hello("fail:5")),
    )
    .await;
    assert_eq!(head.headers["grpc-status"], "5");
    assert!(body.is_empty());
    expect_grpc_web(&t, server.addr, "helloworld.Greeter/SayHello", "NOT_FOUND").await;
}

/// gRPC-Web text mode (base64 bodies).
#[tokio::test]
async fn grpc_web_text() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_grpc_web(&otel, true);
    let body = base64_encode(&grpc_frame(&hello("fail:14")));
    let (head, _) = grpc_web_call(
        &otel,
        server.addr,
        "helloworld.Greeter/SayHello",
        "application/grpc-web-text",
        body.into(),
    )
    .await;
    assert_eq!(head.status, 200);
    expect_grpc_web(
        &t,
        server.addr,
        "helloworld.Greeter/SayHello",
        "UNAVAILABLE",
    )
    .await;
}

fn base64_encode(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A server with the Greeter, tonic-health and tonic-reflection behind the
/// layer of `otel`.
async fn serve_all(otel: &Instrumentation) -> Served {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<GreeterServer<TestGreeter>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .unwrap();
    let (incoming, addr) = incoming();
    let router = tonic::transport::Server::builder()
        .layer(otel.server_layer())
        .add_service(health)
        .add_service(reflection)
        .add_service(GreeterServer::new(TestGreeter { backend: None }));
    // Keep the reporter alive with the server.
    spawn_server(addr, async move {
        let _reporter = reporter;
        router.serve_with_incoming(incoming).await
    })
}

async fn check_health(otel: &Instrumentation, addr: SocketAddr) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let mut health = HealthClient::with_origin(channel(otel, addr).await, origin(addr));
    let reply = within(health.check(HealthCheckRequest {
        service: "helloworld.Greeter".into(),
    }))
    .await
    .unwrap();
    assert_eq!(reply.into_inner().status(), ServingStatus::Serving);
    // Watch is server-streaming: read the first status, then hang up.
    let mut watch = within(health.watch(HealthCheckRequest {
        service: "helloworld.Greeter".into(),
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        within(watch.next()).await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
}

/// The health service works behind the layer and is instrumented like any
/// other service when nothing filters it.
#[tokio::test]
async fn health_service_without_filter_is_traced() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let server = serve_all(&otel).await;
    check_health(&otel, server.addr).await;
    let spans = settled(&t, 4).await;
    let mut names: Vec<_> = spans
        .iter()
        .map(|s| (s.name.to_string(), s.span_kind.clone()))
        .collect();
    names.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    assert_eq!(
        names,
        [
            ("grpc.health.v1.Health/Check".to_string(), SpanKind::Client),
            ("grpc.health.v1.Health/Check".to_string(), SpanKind::Server),
            ("grpc.health.v1.Health/Watch".to_string(), SpanKind::Client),
            ("grpc.health.v1.Health/Watch".to_string(), SpanKind::Server),
        ]
    );
}

/// `otel_tonic::skip_health_checks` on both sides: health checks make no
/// span and no metric point, other services still do.
#[tokio::test]
async fn health_filter_keeps_health_checks_out() {
    let t = Telemetry::new();
    let otel = otel(&t).with_filter(otel_tonic::skip_health_checks);
    let server = serve_all(&otel).await;
    check_health(&otel, server.addr).await;
    let mut greeter = greeter_client(&otel, server.addr).await;
    within(greeter.say_hello(hello("after health")))
        .await
        .unwrap();
    let spans = settled(&t, 2).await;
    assert!(
        spans
            .iter()
            .all(|s| s.name == "helloworld.Greeter/SayHello"),
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    for metric in ["rpc.server.call.duration", "rpc.client.call.duration"] {
        let points = t.histogram(metric);
        assert_eq!(points.len(), 1, "{points:?}");
        assert_eq!(
            points[0].attributes["rpc.method"],
            "helloworld.Greeter/SayHello"
        );
    }
}

/// The reflection service (a bidi stream) behind the layer.
#[tokio::test]
async fn reflection_service_is_traced() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let t = Telemetry::new();
    let otel = otel(&t).with_filter(otel_tonic::skip_health_checks);
    let server = serve_all(&otel).await;
    let mut client =
        ServerReflectionClient::with_origin(channel(&otel, server.addr).await, origin(server.addr));
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = within(client.server_reflection_info(tokio_stream::iter([request])))
        .await
        .unwrap()
        .into_inner();
    let first = within(responses.next()).await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("unexpected reflection answer {first:?}");
    };
    let services: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(services.contains(&"helloworld.Greeter"), "{services:?}");
    assert!(within(responses.next()).await.is_none());

    let spans = settled(&t, 2).await;
    for span in &spans {
        assert_eq!(
            span.name,
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        );
        assert_eq!(attrs(span)["rpc.status_code"], "OK");
        assert_eq!(span.status, SpanStatus::Unset);
    }
}

/// tonic services in an axum `Router` next to a plain HTTP route, the server
/// layer on the whole router (axum needs the layered service to be Clone,
/// Send and Sync). The gRPC call gets its span; the plain route gets none.
/// axum's `ConnectInfo` is read through `with_peer_addr_fn`.
#[tokio::test]
async fn axum_router_with_tonic_and_plain_routes() {
    use axum::extract::ConnectInfo;

    let t = Telemetry::new();
    let otel = otel(&t).with_peer_addr_fn(|ext| {
        otel_tonic::peer_addr(ext)
            .or_else(|| ext.get::<ConnectInfo<SocketAddr>>().map(|info| info.0))
    });
    let grpc = tonic::service::Routes::new(GreeterServer::new(TestGreeter { backend: None }))
        .into_axum_router();
    let app = axum::Router::new()
        .route("/plain", axum::routing::get(|| async { "plain text" }))
        .merge(grpc)
        .layer(otel.server_layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _server = spawn_server(
        addr,
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .into_future(),
    );

    let res = within(h1_client().get(format!("http://{addr}/plain").parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = within(res.into_body().collect()).await.unwrap().to_bytes();
    assert_eq!(&body[..], b"plain text");

    let mut client = greeter_client(&otel, addr).await;
    let reply = within(client.say_hello(hello("axum"))).await.unwrap();
    assert_eq!(reply.into_inner().message, "Hello axum");
    let status = within(client.say_hello(hello("fail:5"))).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    let spans = settled(&t, 4).await;
    assert!(
        spans
            .iter()
            .all(|s| s.name == "helloworld.Greeter/SayHello"),
        "the plain route has no span"
    );
    let servers: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Server)
        .collect();
    assert_eq!(servers.len(), 2);
    for s in &servers {
        assert_eq!(attrs(s)["network.peer.address"], "127.0.0.1");
        assert_eq!(attrs(s)["server.port"], addr.port().to_string());
    }
    let codes: Vec<String> = servers
        .iter()
        .map(|s| attrs(s)["rpc.status_code"].clone())
        .collect();
    assert!(codes.contains(&"OK".into()) && codes.contains(&"NOT_FOUND".into()));
    let points: u64 = t
        .histogram("rpc.server.call.duration")
        .iter()
        .map(|p| p.count)
        .sum();
    assert_eq!(points, 2, "no metric point for the plain route");
}

/// The microservice case: an uninstrumented caller calls the Greeter, whose
/// handler calls the Backend through the client layer. One trace, three
/// spans: Greeter server span (root) -> Backend client span -> Backend
/// server span.
#[tokio::test]
async fn handler_calls_second_service_one_trace_three_spans() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let backend = serve_backend(&otel);
    let backend_client = backend_client(&otel, backend.addr).await;
    let front = serve_greeter(&otel, Some(backend_client));

    // A plain tonic client: no client layer, no incoming context.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", front.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut caller = GreeterClient::new(channel);
    let reply = within(caller.say_hello(hello("call-backend")))
        .await
        .unwrap();
    assert_eq!(
        reply.into_inner().message,
        "greeter+backend saw from-greeter"
    );

    let spans = settled(&t, 3).await;
    let find = |name: &str, kind: SpanKind| {
        spans
            .iter()
            .find(|s| s.name == name && s.span_kind == kind)
            .unwrap_or_else(|| panic!("no {kind:?} span {name}"))
            .clone()
    };
    let front_server = find("helloworld.Greeter/SayHello", SpanKind::Server);
    let backend_client_span = find("helloworld.Backend/Lookup", SpanKind::Client);
    let backend_server = find("helloworld.Backend/Lookup", SpanKind::Server);
    let trace = front_server.span_context.trace_id();
    assert!(
        spans.iter().all(|s| s.span_context.trace_id() == trace),
        "one trace"
    );
    assert_eq!(
        front_server.parent_span_id,
        opentelemetry::trace::SpanId::INVALID
    );
    assert_eq!(
        backend_client_span.parent_span_id,
        front_server.span_context.span_id()
    );
    assert!(!backend_client_span.parent_span_is_remote);
    assert_eq!(
        backend_server.parent_span_id,
        backend_client_span.span_context.span_id()
    );
    assert!(backend_server.parent_span_is_remote);
    // The outbound call is inside the inbound one.
    assert!(backend_client_span.start_time >= front_server.start_time);
    assert!(backend_client_span.end_time <= front_server.end_time);
    assert_eq!(
        attrs(&backend_client_span)["server.port"],
        backend.addr.port().to_string()
    );
    for s in &spans {
        assert_eq!(attrs(s)["rpc.status_code"], "OK");
    }
}

/// The same chain with the Backend failing: NOT_FOUND travels back through
/// the Greeter handler (`?`), each span classified for its own side.
#[tokio::test]
async fn microservice_error_is_classified_per_side() {
    let t = Telemetry::new();
    let otel = otel(&t);
    let backend = serve_backend(&otel);
    let backend_client = backend_client(&otel, backend.addr).await;
    let front = serve_greeter(&otel, Some(backend_client));
    let mut caller = greeter_client(&otel, front.addr).await;

    let status = within(caller.say_hello(hello("call-backend:fail:5")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    let spans = settled(&t, 4).await;
    let trace = spans[0].span_context.trace_id();
    assert!(
        spans.iter().all(|s| s.span_context.trace_id() == trace),
        "one trace"
    );
    for s in &spans {
        let a = attrs(s);
        assert_eq!(a["rpc.status_code"], "NOT_FOUND", "{}", s.name);
        // NOT_FOUND is an error for clients only.
        assert_eq!(is_error(s), s.span_kind == SpanKind::Client, "{}", s.name);
    }
}
