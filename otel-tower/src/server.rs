//! `ServerLayer`: spans and metrics for incoming RPCs, with context extraction.

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Instant, SystemTime};

use opentelemetry::trace::{Link, SpanBuilder, SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, StringValue};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{ResponseBody, ResponseFuture};
use crate::call::Call;
use crate::instrumentation::Config;
use crate::propagation::B3Decision;
use crate::request::RpcRequest;
use crate::semconv::{Facts, Side};
use crate::wire::Protocol;
use crate::wire::timeout::request_timeout;

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

/// Host and port of the authority the request addresses: the URI's
/// authority (`:authority` in HTTP/2) or the `Host` header.
pub(crate) fn authority_host_port(
    parts: &http::request::Parts,
    hosts: &crate::instrumentation::HostCache,
) -> Option<(StringValue, Option<i64>)> {
    let parsed;
    let authority = match parts.uri.authority() {
        Some(a) => a,
        None => {
            parsed = parts
                .headers
                .get(http::header::HOST)?
                .to_str()
                .ok()?
                .parse::<http::uri::Authority>()
                .ok()?;
            &parsed
        }
    };
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((hosts.get(host), authority.port_u16().map(i64::from)))
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
            return ResponseFuture::new(self.inner.call(req), None, None);
        };
        let start = Instant::now();
        let start_time = SystemTime::now();
        let config = &self.config;
        let (mut parts, body) = req.into_parts();
        let (method, cached) = config.methods.lookup(parts.uri.path());
        let system = config.rpc_system.unwrap_or(protocol.system());
        let view = RpcRequest {
            parts: &parts,
            protocol,
            system,
            method: method.full.as_str(),
            service: method.service.as_str(),
            method_name: method.short.as_str(),
            client: false,
        };
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
                Context::map_current(|cur| config.propagator.extract(cur, &parts.headers))
            });

        let tracer = config.tracer.as_ref().filter(|_| instrumented);
        let metered = instrumented && config.server_instruments.is_some();
        if tracer.is_none() && !metered {
            parts.extensions.insert(parent.clone());
            let req = http::Request::from_parts(parts, body);
            let future = {
                let _guard = parent.clone().attach();
                self.inner.call(req)
            };
            return ResponseFuture::new(future, None, Some(parent));
        }

        let (server_address, server_port) = match authority_host_port(&parts, &config.hosts) {
            Some((host, port)) => (Some(host), port),
            None => (None, None),
        };
        let peer = if config.server_peer_attributes {
            (config.peer_addr_fn)(&parts.extensions)
        } else {
            None
        };

        let parent_sc = parent.span().span_context().clone();
        let b3_declined =
            !parent_sc.is_valid() && parent.get::<B3Decision>() == Some(&B3Decision::NotSampled);
        let (cx, traced) = match tracer.filter(|_| !b3_declined) {
            Some(tracer) => {
                let facts = Facts {
                    mode: config.mode,
                    side: Side::Server,
                    system,
                    method: &method,
                    server_address: server_address.as_ref(),
                    server_port,
                    peer,
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
                let mut builder = SpanBuilder {
                    name: facts.span_name(),
                    span_kind: Some(SpanKind::Server),
                    start_time: Some(start_time),
                    attributes: Some(attributes),
                    ..Default::default()
                };
                // Only a caller's (remote) span is distrusted; a local parent made by
                // another layer stays the parent.
                let span = if public && parent_sc.is_valid() && parent_sc.is_remote() {
                    builder.links = Some(vec![Link::with_context(parent_sc)]);
                    tracer.build_with_context(builder, &Context::new())
                } else {
                    tracer.build_with_context(builder, &parent)
                };
                (parent.with_span(span), true)
            }
            None => (parent, false),
        };

        let filter_parts = config
            .attribute_filter
            .as_ref()
            .map(|_| Box::new(parts.clone()));
        let mut call = Call::new(
            config.clone(),
            Side::Server,
            protocol,
            system,
            method,
            (!cached).then(|| parts.uri.path().into()),
            cx.clone(),
            traced,
            start,
            start_time,
        );
        call.deadline = request_timeout(&parts.headers, protocol)
            .and_then(|t| start.checked_add(crate::call::deadline_with_grace(t)));
        call.server_address = server_address;
        call.server_port = server_port;
        call.peer = peer;
        call.filter_parts = filter_parts;
        if matches!(protocol, Protocol::ConnectUnary) {
            call.request_size = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok());
        }

        parts.extensions.insert(cx.clone());
        let req = http::Request::from_parts(parts, body);
        let future = {
            let _guard = cx.clone().attach();
            self.inner.call(req)
        };
        ResponseFuture::new(future, Some(call), Some(cx))
    }
}
