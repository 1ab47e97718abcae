//! `ServerLayer`: spans and metrics for incoming RPCs, with context extraction.

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{Current, ResponseBody, ResponseFuture};
use crate::call::{Begin, Call, fail_on_panic};
use crate::instrumentation::Config;
use crate::propagation::B3Decision;
use crate::request::RpcRequest;
use crate::semconv::Side;
use crate::wire::Protocol;

/// Instruments incoming gRPC, gRPC-Web and Connect calls; everything else
/// passes through untouched.
///
/// Made by [`Instrumentation::server_layer`](crate::Instrumentation::server_layer)
/// or [`server()`](crate::server()).
#[derive(Clone)]
pub struct ServerLayer {
    config: Arc<Config>,
}

impl std::fmt::Debug for ServerLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerLayer").finish_non_exhaustive()
    }
}

impl ServerLayer {
    pub(crate) fn from_config(config: Arc<Config>) -> Self {
        ServerLayer { config }
    }
}

impl<S> Layer<S> for ServerLayer {
    type Service = ServerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service made by [`ServerLayer`].
#[derive(Clone)]
pub struct ServerService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> std::fmt::Debug for ServerService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerService").finish_non_exhaustive()
    }
}

/// The declared body size, when it is a size a message can have: a peer's
/// claim of more than 4 GiB is ignored rather than recorded (it would
/// overflow a histogram's sum in a few calls).
pub(crate) fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    crate::wire::headers::get(headers, &http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse::<u32>()
        .ok()
        .map(u64::from)
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for ServerService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
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
        let (method, known) = config.methods.lookup(parts.uri.path());
        let system = config.rpc_system.unwrap_or(protocol.system());
        let view = RpcRequest::new(&parts, protocol, system, &method, Side::Server);
        let instrumented = config.filter.as_ref().is_none_or(|f| f(&view));
        let public = instrumented && config.public_endpoint.as_ref().is_some_and(|f| f(&view));

        // Parent, most specific first: a context with an active span that
        // another layer put in the request extensions (used as is, nothing
        // extracted); else the caller's context from the headers; else the
        // ambient current context (an outer layer's span). Extraction runs on
        // top of the current context, so valid headers replace its span.
        let parent = parts
            .extensions
            .get::<Context>()
            .filter(|cx| cx.span().span_context().is_valid())
            .cloned()
            .unwrap_or_else(|| {
                Context::map_current(|cur| config.propagator.extract(cur, &parts.headers, start))
            });

        let tracer = config.tracer.as_deref().filter(|_| instrumented);
        // A public endpoint does not let its caller parent what the handler
        // does: with a span of ours the caller's span becomes its link (see
        // `Call::begin`); without one, the caller's span is left out.
        let parent = if public && tracer.is_none() {
            without_remote_span(parent)
        } else {
            parent
        };
        let metered = instrumented && config.server_instruments.is_some();
        if tracer.is_none() && !metered {
            parts.extensions.insert(parent.clone());
            let req = http::Request::from_parts(parts, body);
            let future = {
                let _guard = parent.clone().attach();
                self.inner.call(req)
            };
            return ResponseFuture::new(
                future,
                None,
                Current::Context(parent),
                config.body_context,
            );
        }

        // A B3 "do not sample" without ids is honoured: no span, metrics only.
        let b3_declined = B3Decision::declines(&parent);
        let peer = if config.server_peer_attributes {
            (config.peer_addr_fn)(&parts.extensions)
        } else {
            None
        };
        let request_size = matches!(protocol, Protocol::ConnectUnary)
            .then(|| content_length(&parts.headers))
            .flatten();
        let mut call = Call::begin(Begin {
            config,
            side: Side::Server,
            protocol,
            system,
            method,
            known,
            parts: &parts,
            tracer: tracer.filter(|_| !b3_declined),
            parent,
            peer,
            public,
            request_size,
            start,
            start_time,
        });
        parts.extensions.insert(call.cx.clone());
        let future = {
            let _guard = call.cx.clone().attach();
            let inner = &mut self.inner;
            // The request is put back together inside: one move of its head.
            fail_on_panic(Some(&mut call), || {
                inner.call(http::Request::from_parts(parts, body))
            })
        };
        ResponseFuture::new(future, Some(call), Current::Call, config.body_context)
    }
}

/// `cx` without its span when that span is a caller's (remote); baggage
/// and the rest stay.
fn without_remote_span(cx: Context) -> Context {
    if cx.span().span_context().is_remote() {
        cx.with_remote_span_context(SpanContext::empty_context())
    } else {
        cx
    }
}
