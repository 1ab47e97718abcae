//! A real connectrpc server (behind axum, and once through hyper-util) and
//! real connectrpc clients through `OtelTransport`, on 127.0.0.1: every
//! protocol (Connect unary POST proto/JSON, Connect GET, Connect streaming,
//! gRPC, gRPC-Web) and every RPC shape, successes and errors, with the exact
//! span and metric expectations of semconv.md (Stable mode) on both sides;
//! gzip, deadlines and client-side cancellation.

mod connect_support;

use std::time::Duration;

use connect_support::*;
use connectrpc::client::{CallOptions, ClientTransport, HttpClient};
use connectrpc::{ConnectError, ErrorCode, Protocol};
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::SpanData;
use otel_connect::OtelTransport;
use otel_integration_tests::{Telemetry, attrs, is_error};
use otel_tower::Instrumentation;

fn instrumentation(t: &Telemetry) -> Instrumentation {
    otel_connect::new_interceptor()
        .with_tracer_provider(t.tracer_provider.clone())
        .with_meter_provider(t.meter_provider.clone())
        .with_propagator(otel_tower::propagation::CompositePropagator::w3c())
        .with_semconv(otel_tower::Semconv::Stable)
}

/// One RPC shape, with its outcome.
#[derive(Clone, Copy, Debug)]
enum Shape {
    UnaryOk,
    UnaryFail(i32),
    ServerStreamOk,
    ServerStreamFail(i32),
    ClientStreamOk,
    ClientStreamFail,
    BidiOk,
    BidiFail,
}

impl Shape {
    const ALL: [Shape; 9] = [
        Shape::UnaryOk,
        Shape::UnaryFail(5),
        Shape::UnaryFail(15),
        Shape::ServerStreamOk,
        Shape::ServerStreamFail(9),
        Shape::ClientStreamOk,
        Shape::ClientStreamFail,
        Shape::BidiOk,
        Shape::BidiFail,
    ];

    fn method(self) -> &'static str {
        match self {
            Shape::UnaryOk => PING,
            Shape::UnaryFail(_) => FAIL,
            Shape::ServerStreamOk | Shape::ServerStreamFail(_) => COUNT_UP,
            Shape::ClientStreamOk | Shape::ClientStreamFail => SUM,
            Shape::BidiOk | Shape::BidiFail => PING_STREAM,
        }
    }

    /// The error code the call ends with, if any.
    fn code(self) -> Option<ErrorCode> {
        match self {
            Shape::UnaryFail(n) | Shape::ServerStreamFail(n) => ErrorCode::from_grpc_code(n as u32),
            Shape::ClientStreamFail => Some(ErrorCode::InvalidArgument),
            Shape::BidiFail => Some(ErrorCode::DataLoss),
            _ => None,
        }
    }
}

/// Makes the call of `shape` and returns its error code, if any.
async fn run<T>(client: &PingServiceClient<T>, shape: Shape) -> Option<ErrorCode>
where
    T: ClientTransport,
    T::ResponseBody: Unpin + Send,
    <T::ResponseBody as http_body::Body>::Error: std::fmt::Display,
{
    let result: Result<(), ConnectError> = async {
        match shape {
            Shape::UnaryOk => {
                let r = client.ping(ping_request(7)).await?.into_owned();
                assert_eq!(r.id, 7);
            }
            Shape::UnaryFail(code) => {
                client
                    .fail(FailRequest {
                        code,
                        ..Default::default()
                    })
                    .await?;
                panic!("Fail succeeded");
            }
            Shape::ServerStreamOk | Shape::ServerStreamFail(_) => {
                let fail_code = match shape {
                    Shape::ServerStreamFail(n) => n,
                    _ => 0,
                };
                let mut stream = client
                    .count_up(CountUpRequest {
                        number: 3,
                        fail_code,
                        ..Default::default()
                    })
                    .await?;
                let mut got = Vec::new();
                while let Some(m) = stream.message().await? {
                    got.push(m.to_owned_message().number);
                }
                assert_eq!(got, [1, 2, 3]);
            }
            Shape::ClientStreamOk | Shape::ClientStreamFail => {
                let numbers: Vec<i64> = match shape {
                    Shape::ClientStreamOk => vec![1, 2, 3],
                    _ => vec![1, -1],
                };
                let requests = numbers.into_iter().map(|number| SumRequest {
                    number,
                    ..Default::default()
                });
                let r = client
                    .sum(connectrpc::client::stream_iter(requests))
                    .await?
                    .into_owned();
                assert_eq!(r.sum, 6);
            }
            Shape::BidiOk | Shape::BidiFail => {
                let mut stream = client.ping_stream().await?;
                let data: &[&[u8]] = match shape {
                    Shape::BidiOk => &[b"a", b"b"],
                    _ => &[b"fail"],
                };
                for d in data {
                    stream
                        .send(PingStreamRequest {
                            data: d.to_vec(),
                            ..Default::default()
                        })
                        .await?;
                }
                stream.close_send();
                let mut got = Vec::new();
                while let Some(m) = stream.message().await? {
                    got.push(m.to_owned_message().data);
                }
                assert_eq!(got, [b"a".to_vec(), b"b".to_vec()]);
            }
        }
        Ok(())
    }
    .await;
    result.err().map(|e| e.code)
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    /// `HttpClient::plaintext()` (HTTP/1.1), or HTTP/2-only for gRPC.
    Http,
    /// `Http2Connection::shared`.
    H2,
}

async fn case(protocol: Protocol, transport: Transport, json: bool, shape: Shape) {
    let t = Telemetry::new();
    let otel = instrumentation(&t);
    let server = serve_axum(&otel, ServerOptions::default()).await;
    let mut cfg = config(&server, protocol);
    if json {
        cfg = cfg.json();
    }
    let code = match transport {
        Transport::Http => bounded(run(&http_client(&otel, cfg), shape)).await,
        Transport::H2 => bounded(run(&h2_client(&otel, cfg).await, shape)).await,
    };
    assert_eq!(code, shape.code(), "{protocol:?} {transport:?} {shape:?}");
    let system = match protocol {
        Protocol::Connect => "connectrpc",
        _ => "grpc",
    };
    check(
        &t,
        &server,
        &Expect {
            system,
            method: shape.method(),
            code: shape.code(),
            server_code: None,
        },
    )
    .await;
}

fn half_duplex_ok(transport: Transport, shape: Shape) -> bool {
    // Bidi needs HTTP/2 (full duplex).
    !matches!(
        (transport, shape),
        (Transport::Http, Shape::BidiOk | Shape::BidiFail)
    )
}

#[tokio::test]
async fn connect_protocol_every_shape_http1_and_h2() {
    for transport in [Transport::Http, Transport::H2] {
        for shape in Shape::ALL {
            if half_duplex_ok(transport, shape) {
                case(Protocol::Connect, transport, false, shape).await;
            }
        }
    }
}

#[tokio::test]
async fn connect_protocol_json_codec() {
    for shape in Shape::ALL {
        case(Protocol::Connect, Transport::H2, true, shape).await;
    }
    case(Protocol::Connect, Transport::Http, true, Shape::UnaryOk).await;
    case(
        Protocol::Connect,
        Transport::Http,
        true,
        Shape::UnaryFail(7),
    )
    .await;
}

#[tokio::test]
async fn grpc_every_shape() {
    for transport in [Transport::Http, Transport::H2] {
        for shape in Shape::ALL {
            case(Protocol::Grpc, transport, false, shape).await;
        }
    }
}

#[tokio::test]
async fn grpc_web_every_shape() {
    for transport in [Transport::Http, Transport::H2] {
        for shape in Shape::ALL {
            if half_duplex_ok(transport, shape) {
                case(Protocol::GrpcWeb, transport, false, shape).await;
            }
        }
    }
}

#[tokio::test]
async fn connect_get_success_and_error() {
    // GET of the side-effect-free Ping.
    let t = Telemetry::new();
    let otel = instrumentation(&t);
    let server = serve_axum(&otel, ServerOptions::default()).await;
    let cfg = config(&server, Protocol::Connect);
    let transport = OtelTransport::new(HttpClient::plaintext(), &otel);
    let r = bounded(ping_get(
        &transport,
        &cfg,
        ping_request(3),
        CallOptions::default(),
    ))
    .await
    .unwrap();
    assert_eq!(r.id, 3);
    check(
        &t,
        &server,
        &Expect {
            system: "connectrpc",
            method: PING,
            code: None,
            server_code: None,
        },
    )
    .await;
    assert_eq!(server.seen.last().method, "Ping");

    // GET of Fail (not side-effect free): connectrpc answers a bare 405,
    // which both sides classify from the HTTP status as `unknown`.
    let t = Telemetry::new();
    let otel = otel_connect::new_interceptor()
        .with_tracer_provider(t.tracer_provider.clone())
        .with_meter_provider(t.meter_provider.clone());
    let server = serve_axum(&otel, ServerOptions::default()).await;
    let cfg = config(&server, Protocol::Connect);
    let transport = OtelTransport::new(HttpClient::plaintext(), &otel);
    let err = bounded(connectrpc::client::call_unary_get::<
        _,
        _,
        FailResponseView<'static>,
    >(
        &transport,
        &cfg,
        PING_SERVICE_FAIL_SPEC.with_origin(connectrpc::SpecOrigin::Client),
        FailRequest {
            code: 5,
            ..Default::default()
        },
        CallOptions::default(),
    ))
    .await
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unknown);
    check(
        &t,
        &server,
        &Expect {
            system: "connectrpc",
            method: FAIL,
            code: Some(ErrorCode::Unknown),
            server_code: None,
        },
    )
    .await;

    // Deadline over GET.
    let t = Telemetry::new();
    let otel = instrumentation(&t);
    let server = serve_axum(&otel, ServerOptions::default()).await;
    let cfg = config(&server, Protocol::Connect);
    let transport = OtelTransport::new(HttpClient::plaintext(), &otel);
    let err = bounded(ping_get(
        &transport,
        &cfg,
        PingRequest {
            id: 1,
            sleep_ms: 3000,
            ..Default::default()
        },
        CallOptions::default().with_timeout(Duration::from_millis(150)),
    ))
    .await
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::DeadlineExceeded);
    check(
        &t,
        &server,
        &Expect {
            system: "connectrpc",
            method: PING,
            code: Some(ErrorCode::DeadlineExceeded),
            server_code: None,
        },
    )
    .await;
}

#[tokio::test]
async fn hyper_util_server_with_peer_addr() {
    for (protocol, shape) in [
        (Protocol::Connect, Shape::UnaryOk),
        (Protocol::Connect, Shape::ServerStreamFail(3)),
        (Protocol::Grpc, Shape::UnaryFail(13)),
        (Protocol::Grpc, Shape::BidiOk),
        (Protocol::GrpcWeb, Shape::ClientStreamOk),
    ] {
        let t = Telemetry::new();
        let otel = instrumentation(&t);
        let server = serve_hyper(&otel).await;
        let cfg = config(&server, protocol);
        let code = bounded(run(&h2_client(&otel, cfg).await, shape)).await;
        assert_eq!(code, shape.code());
        let system = if protocol == Protocol::Connect {
            "connectrpc"
        } else {
            "grpc"
        };
        check(
            &t,
            &server,
            &Expect {
                system,
                method: shape.method(),
                code: shape.code(),
                server_code: None,
            },
        )
        .await;
    }
}

/// How a deadline is set on a call.
#[derive(Clone, Copy, Debug)]
enum Deadline {
    /// `CallOptions::with_timeout`: the client sends the timeout header and
    /// gives up itself when it passes.
    Client,
    /// Only the timeout header (`connect-timeout-ms` / `grpc-timeout`), so
    /// the server enforces it and reports `deadline_exceeded` on the wire.
    HeaderOnly,
}

fn deadline_options(protocol: Protocol, deadline: Deadline, millis: u64) -> CallOptions {
    match (deadline, protocol) {
        (Deadline::Client, _) => CallOptions::default().with_timeout(Duration::from_millis(millis)),
        (Deadline::HeaderOnly, Protocol::Connect) => {
            CallOptions::default().with_header("connect-timeout-ms", millis.to_string())
        }
        (Deadline::HeaderOnly, _) => {
            CallOptions::default().with_header("grpc-timeout", format!("{millis}m"))
        }
    }
}

/// Checks a deadline-exceeded call. When the client gave up itself, the
/// server sees the call dropped a moment before (or after) its own copy of
/// the deadline passes, so it reports `deadline_exceeded` or `canceled`.
async fn check_deadline(
    t: &Telemetry,
    server: &TestServer,
    system: &'static str,
    method: &'static str,
    deadline: Deadline,
) {
    let spans = t.wait_spans(2).await;
    let s = find(&spans, SpanKind::Server, method);
    let server_code = match (deadline, attrs(s)["rpc.status_code"].as_str()) {
        (Deadline::Client, "canceled" | "CANCELLED") => Some(ErrorCode::Canceled),
        _ => Some(ErrorCode::DeadlineExceeded),
    };
    check(
        t,
        server,
        &Expect {
            system,
            method,
            code: Some(ErrorCode::DeadlineExceeded),
            server_code: Some(server_code),
        },
    )
    .await;
}

#[tokio::test]
async fn deadlines_from_the_timeout_header() {
    for deadline in [Deadline::Client, Deadline::HeaderOnly] {
        for (protocol, transport) in [
            (Protocol::Connect, Transport::Http),
            (Protocol::Connect, Transport::H2),
            (Protocol::Grpc, Transport::H2),
            (Protocol::GrpcWeb, Transport::Http),
        ] {
            let system = if protocol == Protocol::Connect {
                "connectrpc"
            } else {
                "grpc"
            };
            // Unary: the handler sleeps past the deadline.
            let t = Telemetry::new();
            let otel = instrumentation(&t);
            let server = serve_axum(&otel, ServerOptions::default()).await;
            let cfg = config(&server, protocol);
            let options = deadline_options(protocol, deadline, 150);
            let request = PingRequest {
                id: 1,
                sleep_ms: 3000,
                ..Default::default()
            };
            let err = match transport {
                Transport::Http => {
                    bounded(http_client(&otel, cfg).ping_with_options(request, options)).await
                }
                Transport::H2 => {
                    bounded(
                        h2_client(&otel, cfg)
                            .await
                            .ping_with_options(request, options),
                    )
                    .await
                }
            }
            .unwrap_err();
            assert_eq!(
                err.code,
                ErrorCode::DeadlineExceeded,
                "{protocol:?} {deadline:?}"
            );
            check_deadline(&t, &server, system, PING, deadline).await;

            // Server streaming: responses come slower than the deadline.
            // (connectrpc's server does not cut a response stream at the
            // deadline, so only the client's own deadline applies here.)
            if let Deadline::HeaderOnly = deadline {
                continue;
            }
            let t = Telemetry::new();
            let otel = instrumentation(&t);
            let server = serve_axum(&otel, ServerOptions::default()).await;
            let client = h2_client(&otel, config(&server, protocol)).await;
            let result = bounded(async {
                let mut stream = client
                    .count_up_with_options(
                        CountUpRequest {
                            number: 20,
                            delay_ms: 100,
                            ..Default::default()
                        },
                        deadline_options(protocol, deadline, 350),
                    )
                    .await?;
                while stream.message().await?.is_some() {}
                Ok::<_, ConnectError>(())
            })
            .await;
            assert_eq!(
                result.unwrap_err().code,
                ErrorCode::DeadlineExceeded,
                "{protocol:?} {deadline:?}"
            );
            check_deadline(&t, &server, system, COUNT_UP, deadline).await;
        }
    }
}

#[tokio::test]
async fn client_cancellation_mid_stream() {
    for protocol in [Protocol::Connect, Protocol::Grpc, Protocol::GrpcWeb] {
        let system = if protocol == Protocol::Connect {
            "connectrpc"
        } else {
            "grpc"
        };
        // Server streaming: read two messages, then drop the stream.
        let t = Telemetry::new();
        let otel = instrumentation(&t);
        let server = serve_axum(&otel, ServerOptions::default()).await;
        let client = h2_client(&otel, config(&server, protocol)).await;
        bounded(async {
            let mut stream = client
                .count_up(CountUpRequest {
                    number: 1000,
                    delay_ms: 10,
                    ..Default::default()
                })
                .await
                .unwrap();
            for want in 1..=2 {
                let m = stream.message().await.unwrap().unwrap();
                assert_eq!(m.to_owned_message().number, want);
            }
            drop(stream);
        })
        .await;
        check(
            &t,
            &server,
            &Expect {
                system,
                method: COUNT_UP,
                code: Some(ErrorCode::Canceled),
                server_code: None,
            },
        )
        .await;

        // Bidi: one exchange, then drop both halves.
        let t = Telemetry::new();
        let otel = instrumentation(&t);
        let server = serve_axum(&otel, ServerOptions::default()).await;
        let client = h2_client(&otel, config(&server, protocol)).await;
        bounded(async {
            let mut stream = client.ping_stream().await.unwrap();
            stream
                .send(PingStreamRequest {
                    data: b"x".to_vec(),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert!(stream.message().await.unwrap().is_some());
            drop(stream);
        })
        .await;
        check(
            &t,
            &server,
            &Expect {
                system,
                method: PING_STREAM,
                code: Some(ErrorCode::Canceled),
                server_code: None,
            },
        )
        .await;
    }
}

/// `rpc.message` events of a span as (type, id, size key).
fn message_events(span: &SpanData) -> Vec<(String, String, String)> {
    events(span)
        .into_iter()
        .filter(|(name, _)| name == "rpc.message")
        .map(|(_, a)| {
            let size_key = if a.contains_key("rpc.message.compressed_size") {
                "compressed"
            } else {
                "uncompressed"
            };
            (
                a["rpc.message.type"].clone(),
                a["rpc.message.id"].clone(),
                size_key.to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn gzip_compressed_messages() {
    let big = vec![b'x'; 8192];
    for protocol in [Protocol::Connect, Protocol::Grpc, Protocol::GrpcWeb] {
        let system = if protocol == Protocol::Connect {
            "connectrpc"
        } else {
            "grpc"
        };
        // Unary, compressed both ways.
        let t = Telemetry::new();
        let otel = instrumentation(&t).with_trace_events();
        let server = serve_axum(&otel, ServerOptions::default()).await;
        let client = h2_client(&otel, config(&server, protocol).compress_requests("gzip")).await;
        let r = bounded(client.ping(PingRequest {
            id: 9,
            data: big.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_owned();
        assert_eq!(r.data, big);
        let (c, s) = check(
            &t,
            &server,
            &Expect {
                system,
                method: PING,
                code: None,
                server_code: None,
            },
        )
        .await;
        if protocol == Protocol::Connect {
            // Unary calls get no message events in Stable mode.
            assert!(c.events.is_empty() && s.events.is_empty());
        }

        // Bidi with compressed envelopes: events carry the compressed size.
        let t = Telemetry::new();
        let otel = instrumentation(&t).with_trace_events();
        let server = serve_axum(&otel, ServerOptions::default()).await;
        let client = h2_client(&otel, config(&server, protocol).compress_requests("gzip")).await;
        bounded(async {
            let mut stream = client.ping_stream().await.unwrap();
            for _ in 0..2 {
                stream
                    .send(PingStreamRequest {
                        data: big.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
            stream.close_send();
            let mut n = 0;
            while let Some(m) = stream.message().await.unwrap() {
                assert_eq!(m.to_owned_message().data, big);
                n += 1;
            }
            assert_eq!(n, 2);
        })
        .await;
        let (c, s) = check(
            &t,
            &server,
            &Expect {
                system,
                method: PING_STREAM,
                code: None,
                server_code: None,
            },
        )
        .await;
        let sent: Vec<_> = message_events(&s)
            .into_iter()
            .filter(|(ty, _, _)| ty == "SENT")
            .collect();
        assert_eq!(
            sent,
            [
                ("SENT".into(), "1".into(), "compressed".into()),
                ("SENT".into(), "2".into(), "compressed".into())
            ],
            "{protocol:?}"
        );
        let received: Vec<_> = message_events(&c)
            .into_iter()
            .filter(|(ty, _, _)| ty == "RECEIVED")
            .collect();
        assert_eq!(
            received,
            [
                ("RECEIVED".into(), "1".into(), "compressed".into()),
                ("RECEIVED".into(), "2".into(), "compressed".into())
            ],
            "{protocol:?}"
        );
        for (_, a) in events(&s) {
            if let Some(size) = a.get("rpc.message.compressed_size") {
                assert!(size.parse::<usize>().unwrap() < big.len());
            }
        }
    }
}

#[tokio::test]
async fn spec_interceptor_adds_stream_type_and_idempotency() {
    let t = Telemetry::new();
    let otel = instrumentation(&t);
    let server = serve_axum(
        &otel,
        ServerOptions {
            spec_interceptor: true,
            ..Default::default()
        },
    )
    .await;
    let client = h2_client(&otel, config(&server, Protocol::Grpc)).await;
    for shape in [Shape::UnaryOk, Shape::ServerStreamOk, Shape::BidiOk] {
        assert_eq!(bounded(run(&client, shape)).await, None);
    }
    let spans = t.wait_spans(6).await;
    let server_attrs = |method| attrs(find(&spans, SpanKind::Server, method));
    let ping = server_attrs(PING);
    assert_eq!(ping[otel_connect::STREAM_TYPE], "unary");
    assert_eq!(ping[otel_connect::IDEMPOTENCY_LEVEL], "no_side_effects");
    let count = server_attrs(COUNT_UP);
    assert_eq!(count[otel_connect::STREAM_TYPE], "server_stream");
    assert!(!count.contains_key(otel_connect::IDEMPOTENCY_LEVEL));
    assert_eq!(
        server_attrs(PING_STREAM)[otel_connect::STREAM_TYPE],
        "bidi_stream"
    );
    // Span-only: never on metrics, never on client spans.
    assert!(!attrs(find(&spans, SpanKind::Client, PING)).contains_key(otel_connect::STREAM_TYPE));
    let points = t.histograms();
    assert!(!points.is_empty(), "metrics were recorded");
    for p in points {
        assert!(!p.attributes.contains_key(otel_connect::STREAM_TYPE));
    }
}

#[tokio::test]
async fn tower_transport_over_a_buffered_http2_connection() {
    // A tower stack whose error is a `Box<dyn Error>` (here a Buffer around
    // one Http2Connection) through `OtelTransport::from_service`.
    let t = Telemetry::new();
    let otel = instrumentation(&t);
    let server = serve_axum(&otel, ServerOptions::default()).await;
    let conn = connectrpc::client::Http2Connection::connect_plaintext(server.uri())
        .await
        .unwrap();
    let buffered = tower::buffer::Buffer::new(conn, 16);
    let client = PingServiceClient::new(
        OtelTransport::from_service(buffered, &otel),
        config(&server, Protocol::Grpc),
    );
    for shape in [Shape::UnaryOk, Shape::BidiFail] {
        assert_eq!(bounded(run(&client, shape)).await, shape.code());
    }
    t.wait_spans(4).await;
}

#[tokio::test]
async fn transport_failure_without_a_code() {
    // Nothing listens there: the transport fails before any response.
    let t = Telemetry::new();
    let otel = instrumentation(&t);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let cfg = connectrpc::client::ClientConfig::new(format!("http://{addr}").parse().unwrap());
    let client = http_client(&otel, cfg);
    let err = bounded(client.ping(ping_request(1))).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable, "connectrpc's own mapping");
    let spans = t.wait_spans(1).await;
    let c = find(&spans, SpanKind::Client, PING);
    assert!(is_error(c));
    let a = attrs(c);
    assert_eq!(a.get("error.type").map(String::as_str), Some("_OTHER"));
    assert!(!a.contains_key("rpc.status_code"), "no code came back");
    let points = t.histogram("rpc.client.call.duration");
    assert_eq!(points.len(), 1);
    assert_eq!(points[0].attributes["error.type"], "_OTHER");
}
