//! Shared harness for the engine tests: explicit SDK providers with in-memory
//! exporters, a scripted response body, and hyper servers/clients on 127.0.0.1.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::Service;

mod telemetry;

pub use telemetry::*;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body replaying a script of frames (and maybe an error).
pub struct Scripted {
    frames: VecDeque<Result<Frame<Bytes>, BoxError>>,
    /// After the frames, stay pending forever instead of ending.
    hang: bool,
    /// After the frames, continue with what this channel delivers.
    channel: Option<tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>>,
}

impl Scripted {
    pub fn new(frames: Vec<Result<Frame<Bytes>, BoxError>>) -> Self {
        Scripted {
            frames: frames.into(),
            hang: false,
            channel: None,
        }
    }

    /// A body fed by the returned sender (frames arrive over time).
    pub fn channel() -> (
        tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
        Self,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut s = Scripted::new(vec![]);
        s.channel = Some(rx);
        (tx, s)
    }

    /// Replays `chunks`, then never ends (for drop and timeout tests).
    pub fn data_then_hang(chunks: &[&[u8]]) -> Self {
        let mut s = Scripted::data(chunks);
        s.hang = true;
        s
    }

    pub fn empty() -> Self {
        Scripted::new(vec![])
    }

    pub fn data(chunks: &[&[u8]]) -> Self {
        Scripted::new(
            chunks
                .iter()
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect(),
        )
    }

    pub fn data_then_trailers(chunks: &[&[u8]], trailers: HeaderMap) -> Self {
        let mut frames: Vec<_> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        frames.push(Ok(Frame::trailers(trailers)));
        Scripted::new(frames)
    }
}

impl Body for Scripted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.frames.is_empty()
            && let Some(rx) = self.channel.as_mut()
        {
            return rx.poll_recv(cx);
        }
        match self.frames.pop_front() {
            None if self.hang => Poll::Pending,
            next => Poll::Ready(next),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && !self.hang && self.channel.is_none()
    }
}

pub fn envelope(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A gRPC response: these body chunks, then `grpc-status: 0` trailers.
pub fn grpc_ok_response(chunks: &[&[u8]]) -> Response<Scripted> {
    Response::builder()
        .header("content-type", "application/grpc")
        .body(Scripted::data_then_trailers(
            chunks,
            trailers(&[("grpc-status", "0")]),
        ))
        .unwrap()
}

pub fn trailers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    map
}

pub type Handler = Arc<dyn Fn(&Request<Incoming>) -> Response<Scripted> + Send + Sync>;

/// Serves `layer(handler)` on 127.0.0.1 (HTTP/1.1 and HTTP/2), forever in the
/// background; returns the address.
pub async fn serve<L>(layer: L, handler: Handler) -> SocketAddr
where
    L: tower::Layer<
            tower::util::BoxCloneSyncService<Request<Incoming>, Response<Scripted>, Infallible>,
        > + Send
        + 'static,
    L::Service: Service<Request<Incoming>, Error = Infallible> + Clone + Send + 'static,
    <L::Service as Service<Request<Incoming>>>::Future: Send + 'static,
    <L::Service as Service<Request<Incoming>>>::Response: IntoHyperResponse,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler =
        tower::util::BoxCloneSyncService::new(tower::service_fn(move |req: Request<Incoming>| {
            let response = handler(&req);
            async move {
                // Drain the request so the client's stream completes.
                let _ = req.into_body().collect().await;
                Ok::<_, Infallible>(response)
            }
        }));
    let svc = layer.layer(handler);
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            let svc = svc.clone();
            tokio::spawn(async move {
                let svc = tower::ServiceBuilder::new()
                    .map_response(IntoHyperResponse::into_hyper)
                    .map_request(move |mut req: Request<Incoming>| {
                        req.extensions_mut().insert(peer);
                        req
                    })
                    .service(svc);
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // Room for the adversarial tests' oversized headers.
                builder.http2().max_header_list_size(4 << 20);
                builder.http1().max_headers(512);
                let _ = builder
                    .serve_connection(
                        TokioIo::new(stream),
                        hyper_util::service::TowerToHyperService::new(svc),
                    )
                    .await;
            });
        }
    });
    addr
}

/// Boxes whatever body the layered service returns for hyper.
pub trait IntoHyperResponse {
    fn into_hyper(self) -> Response<http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>>;
}

impl<B> IntoHyperResponse for Response<B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn into_hyper(self) -> Response<http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>> {
        self.map(|b| b.map_err(Into::into).boxed_unsync())
    }
}

pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub fn h1_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A gRPC request carrying one message.
pub fn grpc_request(addr: SocketAddr, path: &str, content_type: &str) -> Request<Full<Bytes>> {
    Request::post(format!("http://{addr}{path}"))
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(Full::new(Bytes::from(envelope(0, b"hello"))))
        .unwrap()
}

/// Reads a whole response: body bytes and trailers.
pub async fn read_all<B>(
    response: Response<B>,
) -> (http::response::Parts, Vec<u8>, Option<HeaderMap>)
where
    B: Body + Unpin,
    B::Data: bytes::Buf,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = response.into_parts();
    let collected = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .unwrap()
        .unwrap();
    let trailers = collected.trailers().cloned();
    (parts, collected.to_bytes().to_vec(), trailers)
}
