//! Which RPC protocol a request speaks, decided from its method, headers and query.

use http::{HeaderMap, Method, Uri};

/// The wire protocol of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// gRPC over HTTP/2 (`application/grpc`).
    Grpc,
    /// gRPC-Web, binary (`application/grpc-web`).
    GrpcWeb,
    /// gRPC-Web, base64 text mode (`application/grpc-web-text`).
    GrpcWebText,
    /// Connect unary over POST (`application/proto`, `application/json`, ...).
    ConnectUnary,
    /// Connect unary over GET (request in the query string).
    ConnectGet,
    /// Connect streaming (`application/connect+...`).
    ConnectStream,
}

/// Which semantic-convention family a call belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RpcSystem {
    /// gRPC and gRPC-Web: `rpc.system.name = grpc`.
    Grpc,
    /// Connect: `rpc.system.name = connectrpc` (Legacy: `connect_rpc`).
    ConnectRpc,
}

impl RpcSystem {
    /// The stable `rpc.system.name` value.
    pub fn name(self) -> &'static str {
        match self {
            RpcSystem::Grpc => "grpc",
            RpcSystem::ConnectRpc => "connectrpc",
        }
    }

    /// The legacy `rpc.system` value (otelconnect-go) of the system. A
    /// gRPC-Web call is reported as `grpc_web` instead, as otelconnect-go
    /// does, unless `with_rpc_system` chose one system for every call.
    pub fn legacy_name(self) -> &'static str {
        match self {
            RpcSystem::Grpc => "grpc",
            RpcSystem::ConnectRpc => "connect_rpc",
        }
    }
}

impl Protocol {
    /// The system the protocol natively belongs to.
    pub fn system(self) -> RpcSystem {
        match self {
            Protocol::Grpc | Protocol::GrpcWeb | Protocol::GrpcWebText => RpcSystem::Grpc,
            _ => RpcSystem::ConnectRpc,
        }
    }

    /// Whether bodies are sequences of length-prefixed envelopes.
    pub fn is_enveloped(self) -> bool {
        !matches!(self, Protocol::ConnectUnary | Protocol::ConnectGet)
    }

    /// Whether the outcome travels in gRPC status fields.
    pub fn is_grpc(self) -> bool {
        self.system() == RpcSystem::Grpc
    }

    /// Detects the protocol of a request; `None` for anything that is not an RPC.
    pub fn detect(method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Protocol> {
        if method == Method::GET {
            return is_connect_get(uri).then_some(Protocol::ConnectGet);
        }
        let content_type = super::headers::get(headers, &http::header::CONTENT_TYPE)?.as_bytes();
        // What gRPC clients and servers send on nearly every call, matched
        // whole before the general parse (parameters, case, whitespace).
        if content_type == b"application/grpc" || content_type == b"application/grpc+proto" {
            return Some(Protocol::Grpc);
        }
        let media = match content_type.iter().position(|&b| b == b';') {
            Some(i) => &content_type[..i],
            None => content_type,
        }
        .trim_ascii();
        let media_lower;
        let media = if media.iter().any(u8::is_ascii_uppercase) {
            media_lower = media.to_ascii_lowercase();
            &media_lower[..]
        } else {
            media
        };
        if media.starts_with(b"application/grpc-web-text") {
            Some(Protocol::GrpcWebText)
        } else if media.starts_with(b"application/grpc-web") {
            Some(Protocol::GrpcWeb)
        } else if media.starts_with(b"application/grpc") {
            Some(Protocol::Grpc)
        } else if media.starts_with(b"application/connect+") {
            Some(Protocol::ConnectStream)
        } else if method == Method::POST {
            if media == b"application/proto" || media == b"application/json" {
                return Some(Protocol::ConnectUnary);
            }
            let versioned = super::headers::get(headers, &super::names::CONNECT_PROTOCOL_VERSION)
                .is_some_and(|v| v.as_bytes().trim_ascii() == b"1");
            let codec = media.strip_prefix(b"application/").unwrap_or_default();
            (versioned && !codec.is_empty()).then_some(Protocol::ConnectUnary)
        } else {
            None
        }
    }
}

fn is_connect_get(uri: &Uri) -> bool {
    let Some(query) = uri.query() else {
        return false;
    };
    let (mut encoding, mut message) = (false, false);
    for pair in query.split('&') {
        let key = pair.split('=').next().unwrap_or_default();
        encoding |= key == "encoding" && pair.contains('=');
        message |= key == "message" && pair.contains('=');
    }
    encoding && message
}

/// A procedure path split into its parts, borrowed from the request URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Procedure<'a> {
    /// `package.Service/Method`, without the leading `/` or any routing prefix.
    pub full: &'a str,
    /// `package.Service`.
    pub service: &'a str,
    /// `Method`.
    pub method: &'a str,
}

impl<'a> Procedure<'a> {
    /// Splits a URI path: the last two non-empty segments are service and
    /// method (a routing prefix may come before them).
    pub fn parse(path: &'a str) -> Option<Procedure<'a>> {
        let slash = path.rfind('/')?;
        let method = &path[slash + 1..];
        let before = &path[..slash];
        let service_start = before.rfind('/').map_or(0, |i| i + 1);
        let service = &before[service_start..];
        if service.is_empty() || method.is_empty() {
            return None;
        }
        Some(Procedure {
            full: &path[service_start..],
            service,
            method,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect(method: Method, uri: &str, headers: &[(&str, &str)]) -> Option<Protocol> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Protocol::detect(&method, &uri.parse().unwrap(), &map)
    }

    #[test]
    fn detection_table() {
        let ct = |v| [("content-type", v)];
        assert_eq!(
            detect(Method::POST, "/a.B/C", &ct("application/grpc")),
            Some(Protocol::Grpc)
        );
        assert_eq!(
            detect(Method::POST, "/a.B/C", &ct("application/grpc+proto")),
            Some(Protocol::Grpc)
        );
        assert_eq!(
            detect(Method::POST, "/a.B/C", &ct("application/grpc-web+proto")),
            Some(Protocol::GrpcWeb)
        );
        assert_eq!(
            detect(Method::POST, "/a.B/C", &ct("application/grpc-web-text")),
            Some(Protocol::GrpcWebText)
        );
        assert_eq!(
            detect(
                Method::POST,
                "/a.B/C",
                &ct("Application/GRPC; charset=utf-8")
            ),
            Some(Protocol::Grpc)
        );
        assert_eq!(
            detect(Method::POST, "/a.B/C", &ct("application/connect+json")),
            Some(Protocol::ConnectStream)
        );
        assert_eq!(
            detect(Method::POST, "/a.B/C", &ct("application/proto")),
            Some(Protocol::ConnectUnary)
        );
        assert_eq!(
            detect(
                Method::POST,
                "/a.B/C",
                &ct("application/json; charset=utf-8")
            ),
            Some(Protocol::ConnectUnary)
        );
        assert_eq!(
            detect(Method::POST, "/a.B/C", &ct("application/cbor")),
            None
        );
        assert_eq!(
            detect(
                Method::POST,
                "/a.B/C",
                &[
                    ("content-type", "application/cbor"),
                    ("connect-protocol-version", "1")
                ]
            ),
            Some(Protocol::ConnectUnary)
        );
        assert_eq!(detect(Method::POST, "/a.B/C", &ct("text/html")), None);
        assert_eq!(detect(Method::POST, "/a.B/C", &[]), None);
        assert_eq!(
            detect(Method::GET, "/a.B/C?encoding=proto&message=AA", &[]),
            Some(Protocol::ConnectGet)
        );
        assert_eq!(
            detect(
                Method::GET,
                "/a.B/C?connect=v1&base64=1&message=AA&encoding=json",
                &[]
            ),
            Some(Protocol::ConnectGet)
        );
        assert_eq!(detect(Method::GET, "/a.B/C?encoding=proto", &[]), None);
        assert_eq!(
            detect(Method::GET, "/index.html", &ct("application/grpc")),
            None
        );
    }

    #[test]
    fn procedures() {
        let p = Procedure::parse("/helloworld.Greeter/SayHello").unwrap();
        assert_eq!(
            (p.full, p.service, p.method),
            (
                "helloworld.Greeter/SayHello",
                "helloworld.Greeter",
                "SayHello"
            )
        );
        let p = Procedure::parse("/prefix/api/pkg.Svc/M").unwrap();
        assert_eq!(p.full, "pkg.Svc/M");
        assert_eq!(Procedure::parse("/pkg.Svc/"), None);
        assert_eq!(Procedure::parse("//M"), None);
        assert_eq!(Procedure::parse("/"), None);
        assert_eq!(Procedure::parse("/onlyone"), None);
        let p = Procedure::parse("pkg.Svc/M").unwrap();
        assert_eq!(p.full, "pkg.Svc/M");
    }
}
