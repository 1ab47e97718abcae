//! Engine tests for the Stable duration series of successful calls, which a
//! configuration resolves once per method (bound to the histogram with the
//! `experimental_metrics_bound_instruments` feature): repeated calls must
//! land in exactly the series that building the attributes on every call
//! would give. CI runs these with and without the feature.

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{
    InMemoryMetricExporterBuilder, PeriodicReader, SdkMeterProvider, Temporality,
};
use otel_tower::Instrumentation;
use support::*;
use tower::{Layer, ServiceExt};

const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";

/// The Stable call duration points of one side, by attributes: their counts.
fn counts(points: &[HistPoint]) -> BTreeMap<BTreeMap<String, String>, u64> {
    points
        .iter()
        .map(|p| (p.attributes.clone(), p.count))
        .collect()
}

/// A gRPC, Connect unary or failing gRPC answer, chosen by the request.
fn answer(req: &Request<hyper::body::Incoming>) -> Response<Scripted> {
    let connect = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/proto");
    if connect {
        return Response::builder()
            .header("content-type", "application/proto")
            .body(Scripted::data(&[b"\x08\x01"]))
            .unwrap();
    }
    let status = if req.headers().contains_key("x-fail") {
        "5"
    } else {
        "0"
    };
    Response::builder()
        .header("content-type", "application/grpc")
        .body(Scripted::data_then_trailers(
            &[&envelope(0, b"ok")],
            trailers(&[("grpc-status", status)]),
        ))
        .unwrap()
}

#[tokio::test]
async fn a_server_keeps_one_series_per_method_system_and_outcome() {
    let t = Telemetry::new();
    let addr = serve(
        t.instrumentation().server_layer(),
        std::sync::Arc::new(answer),
    )
    .await;
    let client = h2_client();
    // Interleaved, so each series is reused after the others were made.
    let calls = [
        "grpc", "connect", "grpc", "fail", "grpc", "connect", "grpc", "fail",
    ];
    for kind in calls {
        let mut req = grpc_request(addr, SAY_HELLO, "application/grpc");
        match kind {
            "connect" => {
                let headers = req.headers_mut();
                headers.insert("content-type", "application/proto".parse().unwrap());
                headers.remove("te");
                *req.body_mut() = Full::new(Bytes::from_static(b"\x08\x01"));
            }
            "fail" => {
                req.headers_mut().insert("x-fail", "1".parse().unwrap());
            }
            _ => {}
        }
        read_all(client.request(req).await.unwrap()).await;
    }
    t.wait_spans(calls.len()).await;
    let method = "helloworld.Greeter/SayHello";
    assert_eq!(
        counts(&t.histogram("rpc.server.call.duration")),
        BTreeMap::from([
            (
                map(&[
                    ("rpc.system.name", "grpc"),
                    ("rpc.method", method),
                    ("rpc.status_code", "OK"),
                ]),
                4
            ),
            (
                map(&[("rpc.system.name", "connectrpc"), ("rpc.method", method)]),
                2
            ),
            (
                map(&[
                    ("rpc.system.name", "grpc"),
                    ("rpc.method", method),
                    ("rpc.status_code", "NOT_FOUND"),
                ]),
                2
            ),
        ])
    );
}

/// An in-process gRPC handler that always succeeds.
fn ok_handler() -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Scripted>,
    Error = Infallible,
    Future: Send,
> + Clone
+ Send {
    tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(grpc_ok_response(&[b"ok"]))
    })
}

/// A gRPC request for `path` on `authority`.
fn grpc_call(authority: &str, path: &str) -> Request<Full<Bytes>> {
    Request::post(format!("http://{authority}{path}"))
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from(envelope(0, b"hi"))))
        .unwrap()
}

/// Sends `req` through `svc` and reads the response to the end.
async fn call<S, B>(svc: &S, req: Request<Full<Bytes>>)
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body + Unpin,
    B::Data: bytes::Buf,
    B::Error: std::fmt::Debug,
{
    read_all(svc.clone().oneshot(req).await.unwrap()).await;
}

#[tokio::test]
async fn a_client_keeps_each_authority_in_its_own_series() {
    let t = Telemetry::new();
    let otel = t.instrumentation();
    let svc = otel.client_layer().layer(ok_handler());
    // The method's resolved series goes to the first authority called once
    // the method is known to exist (after its first success); calls to the
    // others, differing by port only or by host only, must not land in it.
    let authorities = [
        "a.example:50051",
        "a.example:50051",
        "a.example:50052",
        "b.example:50051",
        "a.example:50051",
        "b.example:50051",
    ];
    for authority in authorities {
        call(&svc, grpc_call(authority, SAY_HELLO)).await;
    }
    let series = |host: &str, port: &str| {
        map(&[
            ("rpc.system.name", "grpc"),
            ("rpc.method", "helloworld.Greeter/SayHello"),
            ("rpc.status_code", "OK"),
            ("server.address", host),
            ("server.port", port),
        ])
    };
    assert_eq!(
        counts(&t.histogram("rpc.client.call.duration")),
        BTreeMap::from([
            (series("a.example", "50051"), 3),
            (series("b.example", "50051"), 2),
            (series("a.example", "50052"), 1),
        ])
    );
}

#[tokio::test]
async fn an_attribute_filter_applies_to_every_successful_call() {
    let t = Telemetry::new();
    let otel = t
        .instrumentation()
        .with_attribute_filter(|_, kv| kv.key.as_str() != "rpc.method");
    let server = otel.server_layer().layer(ok_handler());
    for _ in 0..3 {
        call(&server, grpc_call("127.0.0.1:1", SAY_HELLO)).await;
    }
    assert_eq!(
        counts(&t.histogram("rpc.server.call.duration")),
        BTreeMap::from([(
            map(&[("rpc.system.name", "grpc"), ("rpc.status_code", "OK"),]),
            3
        )])
    );
}

/// The call counts of the server duration histogram in one export.
fn exported_counts(export: &ResourceMetrics) -> Vec<u64> {
    let mut out = Vec::new();
    for scope in export.scope_metrics() {
        for metric in scope.metrics() {
            if metric.name() != "rpc.server.call.duration" {
                continue;
            }
            if let AggregatedMetrics::F64(MetricData::Histogram(h)) = metric.data() {
                out.extend(h.data_points().map(|p| p.count()));
            }
        }
    }
    out
}

#[tokio::test]
async fn with_delta_temporality_each_export_counts_the_calls_since_the_last() {
    let exporter = InMemoryMetricExporterBuilder::new()
        .with_temporality(Temporality::Delta)
        .build();
    let meter_provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let otel = Instrumentation::new()
        .with_meter_provider(meter_provider.clone())
        .without_tracing();
    let server = otel.server_layer().layer(ok_handler());
    let mut exports = Vec::new();
    for calls in [3, 0, 2] {
        for _ in 0..calls {
            call(&server, grpc_call("127.0.0.1:1", SAY_HELLO)).await;
        }
        meter_provider.force_flush().unwrap();
        let finished = exporter.get_finished_metrics().unwrap();
        exports.push(finished.last().map(exported_counts).unwrap_or_default());
        exporter.reset();
    }
    // An export with no calls has no point for the series, as for any
    // delta series left idle.
    assert_eq!(exports, [vec![3], vec![], vec![2]]);
}

#[test]
fn concurrent_first_calls_lose_no_measurement() {
    // Threads start together on methods nobody has called, so admitting the
    // method, making its series (binding it, with the feature) and recording
    // into it race; every call must be counted once, in its own series.
    const THREADS: usize = 4;
    const CALLS: usize = 300;
    let t = Telemetry::new();
    let otel = t.instrumentation().without_tracing();
    let server = otel.server_layer().layer(ok_handler());
    let client = otel.client_layer().layer(ok_handler());
    let start = std::sync::Barrier::new(THREADS);
    std::thread::scope(|scope| {
        for n in 0..THREADS {
            let (server, client, start) = (server.clone(), client.clone(), &start);
            scope.spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                start.wait();
                for i in 0..CALLS {
                    // Half the threads call each of two authorities.
                    let authority = ["a.example:1", "b.example:2"][n % 2];
                    let path = ["/race.v1.Svc/One", "/race.v1.Svc/Two"][i % 2];
                    runtime.block_on(async {
                        call(&server, grpc_call(authority, path)).await;
                        call(&client, grpc_call(authority, path)).await;
                    });
                }
            });
        }
    });
    let per_series = (THREADS / 2 * CALLS / 2) as u64;
    let server_counts = counts(&t.histogram("rpc.server.call.duration"));
    assert_eq!(
        server_counts.values().copied().collect::<Vec<_>>(),
        vec![2 * per_series; 2],
        "one series per method: {server_counts:?}"
    );
    let client_counts = counts(&t.histogram("rpc.client.call.duration"));
    assert_eq!(
        client_counts.values().copied().collect::<Vec<_>>(),
        vec![per_series; 4],
        "one series per method and authority: {client_counts:?}"
    );
}
