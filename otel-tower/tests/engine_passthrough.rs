//! Byte-for-byte: what passes through the layers is exactly what passes
//! without them (bodies, chunking aside, trailers and headers).

mod support;

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use support::*;
use tower::{ServiceBuilder, ServiceExt};

#[derive(Debug, Clone)]
struct Script {
    content_type: &'static str,
    status: u16,
    headers: Vec<(String, String)>,
    chunks: Vec<Vec<u8>>,
    trailers: Option<Vec<(String, String)>>,
}

fn script_strategy() -> impl Strategy<Value = Script> {
    let content_type = prop_oneof![
        Just("application/grpc"),
        Just("application/grpc-web+proto"),
        Just("application/grpc-web-text"),
        Just("application/connect+proto"),
        Just("application/proto"),
        Just("application/json"),
    ];
    let envelope_strategy = (
        any::<u8>(),
        prop::collection::vec(any::<u8>(), 0..40),
        any::<bool>(),
    )
        .prop_map(|(flags, payload, lie)| {
            let mut e = envelope(flags, &payload);
            if lie {
                // A lying length prefix: declares more than follows.
                e[1] = 0xff;
            }
            e
        });
    let body = prop::collection::vec(envelope_strategy, 0..6)
        .prop_flat_map(|envs| {
            let bytes: Vec<u8> = envs.concat();
            let len = bytes.len();
            (Just(bytes), prop::collection::vec(0..=len, 0..5))
        })
        .prop_map(|(bytes, mut cuts)| {
            cuts.sort();
            let mut chunks = Vec::new();
            let mut last = 0;
            for c in cuts {
                chunks.push(bytes[last..c].to_vec());
                last = c;
            }
            chunks.push(bytes[last..].to_vec());
            chunks.retain(|c| !c.is_empty());
            chunks
        });
    let status_value = prop_oneof![
        Just("0".to_string()),
        Just("5".to_string()),
        Just("99".to_string()),
        Just("abc".to_string()),
        "[ -~]{0,8}"
    ];
    let trailers = prop::option::of((status_value.clone(), "[ -~]{0,20}").prop_map(|(s, m)| {
        vec![
            ("grpc-status".to_string(), s),
            ("grpc-message".to_string(), m),
        ]
    }));
    let headers = prop::collection::vec(("x-[a-z]{1,8}", "[!-~]{0,16}"), 0..3);
    (
        content_type,
        prop_oneof![Just(200u16), Just(404), Just(500), Just(503)],
        headers,
        body,
        trailers,
    )
        .prop_map(|(content_type, status, headers, chunks, trailers)| Script {
            content_type,
            status,
            headers,
            chunks,
            trailers,
        })
}

fn build_response(script: &Script) -> Response<Scripted> {
    let mut builder = Response::builder()
        .status(script.status)
        .header("content-type", script.content_type);
    for (k, v) in &script.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = script
        .chunks
        .iter()
        .map(|c| Ok(Frame::data(Bytes::from(c.clone()))))
        .collect();
    if let Some(t) = &script.trailers {
        let mut map = HeaderMap::new();
        for (k, v) in t {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                map.append(n, v);
            }
        }
        frames.push(Ok(Frame::trailers(map)));
    }
    builder.body(Scripted::new(frames)).unwrap()
}

fn request(content_type: &str) -> Request<Full<Bytes>> {
    Request::post("http://127.0.0.1:1/pkg.Svc/Method")
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(envelope(0, b"req"))))
        .unwrap()
}

/// Collects a response: status, headers, concatenated body, trailers.
async fn observe<B>(response: Response<B>) -> (u16, HeaderMap, Vec<u8>, Option<HeaderMap>)
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (
        parts.status.as_u16(),
        parts.headers,
        collected.to_bytes().to_vec(),
        trailers,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn layers_never_change_what_passes_through(script in script_strategy()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let t = Telemetry::new();
            let otel = t.instrumentation().with_trace_events();
            let s = script.clone();
            let handler = tower::service_fn(move |_req: Request<Full<Bytes>>| {
                let response = build_response(&s);
                async move { Ok::<_, Infallible>(response) }
            });
            let bare = observe(handler.clone().oneshot(request(script.content_type)).await.unwrap()).await;
            let server = ServiceBuilder::new().layer(otel.server_layer()).service(handler.clone());
            let through_server = observe(server.oneshot(request(script.content_type)).await.unwrap()).await;
            let client = ServiceBuilder::new().layer(otel.client_layer()).service(handler);
            let through_client = observe(client.oneshot(request(script.content_type)).await.unwrap()).await;
            prop_assert_eq!(&bare, &through_server);
            // The client layer only adds propagation headers to the request, never to the response.
            prop_assert_eq!(&bare, &through_client);
            // And both calls ended exactly once.
            prop_assert_eq!(t.finished_spans().len(), 2);
            Ok(())
        })?;
    }
}

/// The same over real connections, for a few fixed streams with awkward splits.
#[tokio::test]
async fn real_hyper_passthrough_is_byte_identical() {
    let t = Telemetry::new();
    let otel = t.instrumentation();
    let make = |_: &Request<hyper::body::Incoming>| {
        let mut bytes = envelope(0, &[1, 2, 3]);
        bytes.extend(envelope(1, &[0u8; 300]));
        bytes.extend(envelope(0, b""));
        let chunks: Vec<&[u8]> = bytes.chunks(7).collect();
        Response::builder()
            .header("content-type", "application/grpc")
            .header("x-custom", "v")
            .body(Scripted::data_then_trailers(
                &chunks,
                trailers(&[("grpc-status", "0"), ("x-trailer", "t")]),
            ))
            .unwrap()
    };
    let with = serve(otel.server_layer(), std::sync::Arc::new(make)).await;
    let without = serve(
        tower::layer::util::Identity::new(),
        std::sync::Arc::new(make),
    )
    .await;
    let client = ServiceBuilder::new()
        .layer(otel.client_layer())
        .service(h2_client());
    let a = read_all(
        client
            .clone()
            .oneshot(grpc_request(with, "/p.S/M", "application/grpc"))
            .await
            .unwrap(),
    )
    .await;
    let b = read_all(
        h2_client()
            .oneshot(grpc_request(without, "/p.S/M", "application/grpc"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.1, b.1, "body");
    assert_eq!(a.2, b.2, "trailers");
    let strip_date = |h: &HeaderMap| {
        let mut h = h.clone();
        h.remove("date");
        h
    };
    assert_eq!(
        strip_date(&a.0.headers),
        strip_date(&b.0.headers),
        "headers"
    );
}
