//! `InjectLayer` → real HTTP/1.1 over 127.0.0.1 → `ExtractLayer`: a hyper
//! client stack injects a context, a hyper server stack extracts it, and the
//! handler reports what it sees in the request extensions and in
//! `Context::current()`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use otel_tower::propagation::{B3, CompositePropagator, ExtractLayer, InjectLayer, TraceContext};
use tower::{Service, ServiceBuilder, ServiceExt};

const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const S: &str = "00f067aa0ba902b7";
const T2: &str = "0af7651916cd43dd8448eb211c80319c";
const S2: &str = "b7ad6b7169203331";
const LIMIT: Duration = Duration::from_secs(20);

/// What a context carries, as one comparable line.
fn describe(cx: &Context) -> String {
    let span = cx.span();
    let sc = span.span_context();
    let baggage: BTreeMap<String, String> = cx
        .baggage()
        .iter()
        .map(|(k, (v, _))| (k.as_str().to_string(), v.as_str().to_string()))
        .collect();
    format!(
        "valid={} trace={} span={} flags={:02x} remote={} state={} baggage={:?}",
        sc.is_valid(),
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8(),
        sc.is_remote(),
        sc.trace_state().header(),
        baggage
    )
}

/// The server's handler: reports the context from the extensions, the
/// current context (read after yielding, so across polls) and the
/// propagation headers it received.
async fn handler(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let from_extensions = req
        .extensions()
        .get::<Context>()
        .map(describe)
        .unwrap_or_else(|| "missing".to_string());
    let current_at_call = describe(&Context::current());
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let current = describe(&Context::current());
    let mut headers: Vec<String> = req
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str() != "host")
        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("<binary>")))
        .collect();
    headers.sort();
    let body = format!(
        "{from_extensions}\n{current_at_call}\n{current}\n{}",
        headers.join("\n")
    );
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// Starts a server whose service is `handler` behind `ExtractLayer`; returns
/// its address and the accept task (aborted by the caller).
async fn start_server(layer: ExtractLayer) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = ServiceBuilder::new().layer(layer).service_fn(handler);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let hyper_service =
                    hyper::service::service_fn(move |req| service.clone().oneshot(req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hyper_service)
                    .await;
            });
        }
    });
    (addr, task)
}

/// What the server saw for one request.
#[derive(Debug)]
struct Seen {
    extensions: String,
    current_at_call: String,
    current: String,
    headers: Vec<String>,
}

async fn read(response: Response<Incoming>) -> Seen {
    assert!(response.status().is_success());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let mut lines = text.lines().map(str::to_string);
    Seen {
        extensions: lines.next().unwrap(),
        current_at_call: lines.next().unwrap(),
        current: lines.next().unwrap(),
        headers: lines.collect(),
    }
}

fn request(addr: SocketAddr) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(format!("http://{addr}/greet.v1.GreetService/Greet"))
        .header("x-custom", "kept")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

fn remote_context(trace: &str, span: &str, flags: u8, state: &[(&str, &str)]) -> Context {
    let sc = SpanContext::new(
        TraceId::from_hex(trace).unwrap(),
        SpanId::from_hex(span).unwrap(),
        TraceFlags::new(flags),
        true,
        TraceState::from_key_value(state.iter().copied()).unwrap(),
    );
    Context::new().with_remote_span_context(sc)
}

fn special_baggage() -> Vec<KeyValue> {
    vec![
        KeyValue::new("user", "Jane Doe"),
        KeyValue::new("expr", "a=b;c,d"),
        KeyValue::new("pct", "100%"),
        KeyValue::new("unicode", "café ☕"),
    ]
}

fn client_stack(
    layer: InjectLayer,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Incoming>,
    Error = hyper_util::client::legacy::Error,
> + Clone {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    ServiceBuilder::new().layer(layer).service(client)
}

fn assert_seen(seen: &Seen, want: &str) {
    assert_eq!(seen.extensions, want, "context in the request extensions");
    assert_eq!(
        seen.current_at_call, want,
        "current context when the handler is called"
    );
    assert_eq!(seen.current, want, "current context across polls");
    assert!(
        seen.headers.contains(&"x-custom: kept".to_string()),
        "{:?}",
        seen.headers
    );
    assert_eq!(
        seen.headers
            .iter()
            .filter(|h| h.starts_with("x-custom:"))
            .count(),
        1
    );
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers
        .iter()
        .find_map(|h| h.strip_prefix(name)?.strip_prefix(": "))
}

async fn with_limit<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w3c_context_from_request_extensions() {
    with_limit(async {
        let (addr, server) = start_server(ExtractLayer::new(CompositePropagator::w3c())).await;
        let client = client_stack(InjectLayer::new(CompositePropagator::w3c()));
        let sent = remote_context(
            T,
            S,
            0x03,
            &[("congo", "t61rcWkgMzE"), ("rojo", "00f067aa0ba902b7")],
        )
        .with_baggage(special_baggage());
        let mut req = request(addr);
        req.extensions_mut().insert(sent.clone());
        let seen = read(client.oneshot(req).await.unwrap()).await;
        assert_seen(&seen, &describe(&sent));
        assert!(describe(&sent).contains("flags=03"));
        assert_eq!(
            header(&seen, "traceparent"),
            Some(&*format!("00-{T}-{S}-03"))
        );
        assert_eq!(
            header(&seen, "tracestate"),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        server.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w3c_current_attached_context() {
    with_limit(async {
        let (addr, server) = start_server(ExtractLayer::new(CompositePropagator::w3c())).await;
        let mut client = client_stack(InjectLayer::new(CompositePropagator::w3c()));
        let sent = remote_context(T2, S2, 0x01, &[]).with_baggage(special_baggage());
        client.ready().await.unwrap();
        let call = {
            let _guard = sent.clone().attach();
            client.call(request(addr))
        };
        let seen = read(call.await.unwrap()).await;
        assert_seen(&seen, &describe(&sent));
        assert_eq!(
            header(&seen, "traceparent"),
            Some(&*format!("00-{T2}-{S2}-01"))
        );
        assert_eq!(
            header(&seen, "tracestate"),
            None,
            "never an empty tracestate"
        );
        server.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_context_is_used_over_the_current_one() {
    with_limit(async {
        let (addr, server) = start_server(ExtractLayer::new(TraceContext::new())).await;
        let mut client = client_stack(InjectLayer::new(TraceContext::new()));
        let in_extensions = remote_context(T, S, 0x01, &[]);
        let attached = remote_context(T2, S2, 0x00, &[]);
        let mut req = request(addr);
        req.extensions_mut().insert(in_extensions.clone());
        client.ready().await.unwrap();
        let call = {
            let _guard = attached.attach();
            client.call(req)
        };
        let seen = read(call.await.unwrap()).await;
        assert_seen(&seen, &describe(&in_extensions));
        server.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_round_trip_single_and_multi() {
    with_limit(async {
        for (propagator, name) in [(B3::single(), "b3"), (B3::multi(), "x-b3-traceid")] {
            let (addr, server) = start_server(ExtractLayer::new(propagator.clone())).await;
            let client = client_stack(InjectLayer::new(propagator));
            for flags in [0x00, 0x01] {
                let sent = remote_context(T, S, flags, &[]);
                let mut req = request(addr);
                req.extensions_mut().insert(sent.clone());
                let seen = read(client.clone().oneshot(req).await.unwrap()).await;
                assert_seen(&seen, &describe(&sent));
                assert!(header(&seen, name).is_some(), "{name}: {:?}", seen.headers);
                assert!(header(&seen, "x-b3-parentspanid").is_none());
                assert!(header(&seen, "traceparent").is_none());
            }
            server.abort();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_context_sends_nothing_and_the_server_starts_fresh() {
    with_limit(async {
        let (addr, server) = start_server(ExtractLayer::new(CompositePropagator::w3c())).await;
        let client = client_stack(InjectLayer::new(CompositePropagator::w3c()));
        // First a traced request, then an untraced one on the same server:
        // nothing leaks from one request into the next.
        let sent = remote_context(T, S, 0x01, &[]).with_baggage(special_baggage());
        let mut req = request(addr);
        req.extensions_mut().insert(sent.clone());
        let seen = read(client.clone().oneshot(req).await.unwrap()).await;
        assert_seen(&seen, &describe(&sent));

        let seen = read(client.oneshot(request(addr)).await.unwrap()).await;
        assert_seen(&seen, &describe(&Context::new()));
        assert!(header(&seen, "traceparent").is_none());
        assert!(header(&seen, "baggage").is_none());
        server.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_layers_use_w3c_when_no_global_is_installed() {
    // Reads the global propagator (never sets it): nothing in this binary
    // installs one, so the default is W3C Trace Context + Baggage.
    with_limit(async {
        let (addr, server) = start_server(ExtractLayer::default()).await;
        let client = client_stack(InjectLayer::default());
        let sent = remote_context(T, S, 0x01, &[("k", "v")]).with_baggage(special_baggage());
        let mut req = request(addr);
        req.extensions_mut().insert(sent.clone());
        let seen = read(client.oneshot(req).await.unwrap()).await;
        assert_seen(&seen, &describe(&sent));
        assert!(header(&seen, "traceparent").is_some());
        server.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extract_layer_ignores_malformed_headers() {
    with_limit(async {
        let (addr, server) = start_server(ExtractLayer::new(CompositePropagator::w3c())).await;
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut req = request(addr);
        let headers = req.headers_mut();
        headers.append("traceparent", format!("00-{T}-{S}-01").parse().unwrap());
        headers.append("traceparent", format!("00-{T2}-{S2}-01").parse().unwrap());
        headers.append("baggage", "k=v,bad key=x".parse().unwrap());
        let seen = read(client.request(req).await.unwrap()).await;
        let want = describe(&Context::new().with_baggage(vec![KeyValue::new("k", "v")]));
        assert_seen(&seen, &want);
        server.abort();
    })
    .await;
}

/// Headers a propagator writes replace all of its own the request already
/// had: a `tracestate`, `b3` or `x-b3-*` header left from another trace
/// (a forwarded request, a second injector) is not sent beside the new
/// ones, while headers of other propagators and of the application stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_headers_replace_stale_ones_of_their_propagator() {
    // Another trace's headers, in both B3 encodings and W3C.
    fn stale(req: &mut Request<Full<Bytes>>) {
        let headers = req.headers_mut();
        for (name, value) in [
            ("traceparent", format!("00-{T2}-{S2}-01")),
            ("tracestate", "stale=1".to_string()),
            ("b3", format!("{T2}-{S2}-d")),
            ("x-b3-traceid", T2.to_string()),
            ("x-b3-spanid", S2.to_string()),
            ("x-b3-parentspanid", S2.to_string()),
            ("x-b3-flags", "1".to_string()),
        ] {
            headers.append(name, value.parse().unwrap());
        }
    }
    let names = |seen: &Seen, prefixes: &[&str]| -> Vec<String> {
        seen.headers
            .iter()
            .filter(|h| prefixes.iter().any(|p| h.starts_with(p)))
            .cloned()
            .collect()
    };
    let b3_and_w3c = ["b3:", "x-b3-", "traceparent:", "tracestate:"];
    with_limit(async {
        // The server only reports what it received.
        let (addr, server) = start_server(ExtractLayer::new(CompositePropagator::w3c())).await;
        let cases: Vec<(InjectLayer, Context, Vec<String>)> = vec![
            (
                // W3C, no trace state to send: the stale one goes; the B3
                // headers are not W3C's to touch.
                InjectLayer::new(TraceContext::new()),
                remote_context(T, S, 0x01, &[]),
                vec![
                    format!("b3: {T2}-{S2}-d"),
                    format!("traceparent: 00-{T}-{S}-01"),
                    "x-b3-flags: 1".into(),
                    format!("x-b3-parentspanid: {S2}"),
                    format!("x-b3-spanid: {S2}"),
                    format!("x-b3-traceid: {T2}"),
                ],
            ),
            (
                // W3C with a trace state: it replaces the stale one.
                InjectLayer::new(TraceContext::new()),
                remote_context(T, S, 0x00, &[("congo", "t61rcWkgMzE")]),
                vec![
                    format!("b3: {T2}-{S2}-d"),
                    format!("traceparent: 00-{T}-{S}-00"),
                    "tracestate: congo=t61rcWkgMzE".into(),
                    "x-b3-flags: 1".into(),
                    format!("x-b3-parentspanid: {S2}"),
                    format!("x-b3-spanid: {S2}"),
                    format!("x-b3-traceid: {T2}"),
                ],
            ),
            (
                // B3 single: no multi header of the other trace is left
                // for a reader of that encoding; W3C's stay.
                InjectLayer::new(B3::single()),
                remote_context(T, S, 0x00, &[]),
                vec![
                    format!("b3: {T}-{S}-0"),
                    format!("traceparent: 00-{T2}-{S2}-01"),
                    "tracestate: stale=1".into(),
                ],
            ),
            (
                // B3 multi: no stale debug flag beside `x-b3-sampled: 0`,
                // no parent span id, no single header.
                InjectLayer::new(B3::multi()),
                remote_context(T, S, 0x00, &[]),
                vec![
                    format!("traceparent: 00-{T2}-{S2}-01"),
                    "tracestate: stale=1".into(),
                    "x-b3-sampled: 0".into(),
                    format!("x-b3-spanid: {S}"),
                    format!("x-b3-traceid: {T}"),
                ],
            ),
        ];
        for (layer, sent, want) in cases {
            let mut req = request(addr);
            stale(&mut req);
            req.extensions_mut().insert(sent);
            let seen = read(client_stack(layer).oneshot(req).await.unwrap()).await;
            assert_eq!(names(&seen, &b3_and_w3c), want);
            assert!(
                seen.headers.contains(&"x-custom: kept".to_string()),
                "{:?}",
                seen.headers
            );
        }

        // With no span context to send, nothing is written and nothing of
        // the request's own is taken away.
        let mut req = request(addr);
        stale(&mut req);
        req.extensions_mut().insert(Context::new());
        let layer = InjectLayer::new(CompositePropagator::new(vec![
            Box::new(TraceContext::new()),
            Box::new(B3::multi()),
        ]));
        let seen = read(client_stack(layer).oneshot(req).await.unwrap()).await;
        assert_eq!(names(&seen, &b3_and_w3c).len(), 7, "{:?}", seen.headers);
        server.abort();
    })
    .await;
}
