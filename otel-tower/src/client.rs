//! `ClientLayer`: spans and metrics for outgoing RPCs, with context injection.

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Instant, SystemTime};

use opentelemetry::Context;
use opentelemetry::trace::{SpanBuilder, SpanKind, TraceContextExt, Tracer};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{ResponseBody, ResponseFuture};
use crate::call::Call;
use crate::instrumentation::Config;
use crate::request::RpcRequest;
use crate::semconv::{Facts, Side};
use crate::server::authority_host_port;
use crate::wire::Protocol;
use crate::wire::timeout::request_timeout;

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
            return ResponseFuture::new(self.inner.call(req), None, None);
        };
        let start = Instant::now();
        let start_time = SystemTime::now();
        let config = &self.config;
        let (mut parts, body) = req.into_parts();
        let parent = parts
            .extensions
            .get::<Context>()
            .cloned()
            .unwrap_or_else(Context::current);
        let (method, cached) = config.methods.lookup(parts.uri.path());
        let system = config.rpc_system.unwrap_or(protocol.system());
        let view = RpcRequest {
            parts: &parts,
            protocol,
            system,
            method: method.full.as_str(),
            service: method.service.as_str(),
            method_name: method.short.as_str(),
            client: true,
        };
        let instrumented = config.filter.as_ref().is_none_or(|f| f(&view));
        let tracer = config.tracer.as_ref().filter(|_| instrumented);
        let metered = instrumented && config.client_instruments.is_some();
        if tracer.is_none() && !metered {
            config.propagator.inject(&parent, &mut parts.headers);
            let req = http::Request::from_parts(parts, body);
            return ResponseFuture::new(self.inner.call(req), None, None);
        }

        let (server_address, server_port) = match authority_host_port(&parts, &config.hosts) {
            Some((host, port)) => (Some(host), port),
            None => (None, None),
        };
        let (cx, traced) = match tracer {
            Some(tracer) => {
                let facts = Facts {
                    mode: config.mode,
                    side: Side::Client,
                    system,
                    method: &method,
                    server_address: server_address.as_ref(),
                    server_port,
                    peer: None,
                };
                let mut attributes = Vec::with_capacity(12 + config.request_headers.len());
                facts.start_attributes(&mut attributes);
                if !config.request_headers.is_empty() {
                    Call::captured(
                        &parts.headers,
                        &config.request_headers,
                        system,
                        config,
                        &mut attributes,
                        None,
                    );
                }
                if let Some(filter) = &config.attribute_filter {
                    attributes.retain(|kv| filter(&view, kv));
                }
                let builder = SpanBuilder {
                    name: facts.span_name(),
                    span_kind: Some(SpanKind::Client),
                    start_time: Some(start_time),
                    attributes: Some(attributes),
                    ..Default::default()
                };
                let span = tracer.build_with_context(builder, &parent);
                (parent.with_span(span), true)
            }
            None => (parent, false),
        };
        config.propagator.inject(&cx, &mut parts.headers);

        let filter_parts = config
            .attribute_filter
            .as_ref()
            .map(|_| Box::new(parts.clone()));
        let mut call = Call::new(
            config.clone(),
            Side::Client,
            protocol,
            system,
            method,
            (!cached).then(|| parts.uri.path().into()),
            cx,
            traced,
            start,
            start_time,
        );
        call.deadline = request_timeout(&parts.headers, protocol)
            .and_then(|t| start.checked_add(crate::call::deadline_with_grace(t)));
        call.server_address = server_address;
        call.server_port = server_port;
        call.filter_parts = filter_parts;
        if matches!(protocol, Protocol::ConnectUnary | Protocol::ConnectGet) {
            call.request_size = body.size_hint().exact().or_else(|| {
                parts
                    .headers
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse().ok())
            });
        }
        let req = http::Request::from_parts(parts, body);
        ResponseFuture::new(self.inner.call(req), Some(call), None)
    }
}
