//! `RpcRequest`: the borrowed view of one call that filters and hooks receive.

use crate::semconv::{MethodNames, Side};
use crate::wire::{Protocol, RpcSystem};

/// A borrowed view of one call, handed to filters
/// ([`Instrumentation::with_filter`](crate::Instrumentation::with_filter),
/// [`with_attribute_filter`](crate::Instrumentation::with_attribute_filter),
/// [`with_public_endpoint_fn`](crate::Instrumentation::with_public_endpoint_fn)).
#[derive(Debug, Clone, Copy)]
pub struct RpcRequest<'a> {
    pub(crate) parts: &'a http::request::Parts,
    pub(crate) protocol: Protocol,
    pub(crate) system: RpcSystem,
    pub(crate) method: &'a str,
    pub(crate) service: &'a str,
    pub(crate) method_name: &'a str,
    pub(crate) client: bool,
}

impl<'a> RpcRequest<'a> {
    pub(crate) fn new(
        parts: &'a http::request::Parts,
        protocol: Protocol,
        system: RpcSystem,
        method: &'a MethodNames,
        side: Side,
    ) -> Self {
        RpcRequest {
            parts,
            protocol,
            system,
            method: method.full.as_str(),
            service: method.service.as_str(),
            method_name: method.short.as_str(),
            client: side == Side::Client,
        }
    }

    /// The wire protocol.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The convention the call is reported under (after
    /// [`with_rpc_system`](crate::Instrumentation::with_rpc_system)).
    pub fn system(&self) -> RpcSystem {
        self.system
    }

    /// The fully qualified method, `package.Service/Method`; the raw path
    /// when the path is not of that shape.
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The service, `package.Service` (empty when the path does not parse).
    pub fn service(&self) -> &'a str {
        self.service
    }

    /// The short method name, `Method` (empty when the path does not parse).
    pub fn method_name(&self) -> &'a str {
        self.method_name
    }

    /// The request head: method, URI, version, headers, extensions.
    pub fn parts(&self) -> &'a http::request::Parts {
        self.parts
    }

    /// The request headers.
    pub fn headers(&self) -> &'a http::HeaderMap {
        &self.parts.headers
    }

    /// The request URI.
    pub fn uri(&self) -> &'a http::Uri {
        &self.parts.uri
    }

    /// The request extensions.
    pub fn extensions(&self) -> &'a http::Extensions {
        &self.parts.extensions
    }

    /// True in the client layer, false in the server layer.
    pub fn is_client(&self) -> bool {
        self.client
    }
}
