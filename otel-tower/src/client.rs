//! `ClientLayer`: spans and metrics for outgoing RPCs, with context injection.

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use opentelemetry::Context;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{Current, ResponseBody, ResponseFuture};
use crate::call::{Begin, Call, fail_on_panic};
use crate::instrumentation::Config;
use crate::propagation::B3Decision;
use crate::request::RpcRequest;
use crate::semconv::Side;
use crate::server::content_length;
use crate::wire::Protocol;

/// Instruments outgoing gRPC, gRPC-Web and Connect calls and injects the
/// call's context into the request headers; other requests pass through.
///
/// Made by [`Instrumentation::client_layer`](crate::Instrumentation::client_layer)
/// or [`client()`](crate::client()).
#[derive(Clone)]
pub struct ClientLayer {
    config: Arc<Config>,
}

impl std::fmt::Debug for ClientLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLayer").finish_non_exhaustive()
    }
}

impl ClientLayer {
    pub(crate) fn from_config(config: Arc<Config>) -> Self {
        ClientLayer { config }
    }
}

impl<S> Layer<S> for ClientLayer {
    type Service = ClientService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service made by [`ClientLayer`].
#[derive(Clone)]
pub struct ClientService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> std::fmt::Debug for ClientService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientService").finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for ClientService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ReqBody: http_body::Body,
    ResBody: http_body::Body,
{
    type Response = http::Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let Some(protocol) = Protocol::detect(req.method(), req.uri(), req.headers()) else {
            return ResponseFuture::new(self.inner.call(req), None, Current::Nothing, false);
        };
        let (start, start_time) = crate::clock::now();
        let config = &self.config;
        let (mut parts, body) = req.into_parts();
        let parent = parts
            .extensions
            .get::<Context>()
            .cloned()
            .unwrap_or_else(Context::current);
        let (method, known) = config.methods.lookup(parts.uri.path());
        let system = config.rpc_system.unwrap_or(protocol.system());
        let view = RpcRequest::new(&parts, protocol, system, &method, Side::Client);
        let instrumented = config.filter.as_ref().is_none_or(|f| f(&view));
        // A caller's B3 "do not sample" without ids, which the server layer
        // honoured with no span, holds for the calls its handler makes too:
        // a span here would start a new sampled trace one hop later.
        let tracer = config
            .tracer
            .as_deref()
            .filter(|_| instrumented && !B3Decision::declines(&parent));
        let metered = instrumented && config.client_instruments.is_some();
        if tracer.is_none() && !metered {
            config.propagator.inject(&parent, &mut parts.headers, start);
            let req = http::Request::from_parts(parts, body);
            return ResponseFuture::new(self.inner.call(req), None, Current::Nothing, false);
        }

        let request_size = matches!(protocol, Protocol::ConnectUnary | Protocol::ConnectGet)
            .then(|| {
                body.size_hint()
                    .exact()
                    .or_else(|| content_length(&parts.headers))
            })
            .flatten();
        let mut call = Call::begin(Begin {
            config,
            side: Side::Client,
            protocol,
            system,
            method,
            known,
            parts: &parts,
            tracer,
            parent,
            peer: None,
            public: false,
            request_size,
            start,
            start_time,
        });
        // The injected parent is the client span (or the parent when untraced).
        call.inject(&mut parts.headers);
        let inner = &mut self.inner;
        // The request is put back together inside: one move of its head.
        let future = fail_on_panic(Some(&mut call), || {
            inner.call(http::Request::from_parts(parts, body))
        });
        ResponseFuture::new(future, Some(call), Current::Nothing, false)
    }
}
