//! Header carriers: `opentelemetry` extractor/injector views of an `http::HeaderMap`.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector};

/// Stands in for a header value that is not visible ASCII.
const NOT_VISIBLE_ASCII: &str = "\u{FFFD}";

/// Reads propagation fields from an [`http::HeaderMap`].
///
/// Unlike a plain `get`, [`Extractor::get_all`] returns every value of a
/// repeated header, which W3C Trace Context and Baggage need (several
/// `tracestate` or `baggage` headers are one combined list). Values that are
/// not visible ASCII are never decoded lossily: [`Extractor::get`] skips them,
/// and [`Extractor::get_all`] reports each as `"\u{FFFD}"`, which no
/// propagation grammar accepts, so it still counts (a binary second
/// `traceparent` makes the pair invalid; a binary `tracestate` invalidates
/// the list) without its bytes being read.
#[derive(Debug, Clone, Copy)]
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        crate::wire::headers::get(self.0, key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        let mut values = Vec::new();
        crate::wire::headers::each(self.0, key, |v| {
            values.push(v.to_str().unwrap_or(NOT_VISIBLE_ASCII));
        });
        (!values.is_empty()).then_some(values)
    }
}

/// Writes propagation fields into an [`http::HeaderMap`].
///
/// A field whose name or value is not a valid HTTP header is dropped rather
/// than written: a propagator must never produce an invalid request.
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

/// A header our propagators write: its name, parsed once
/// (`HeaderName::from_bytes` copies a name that is not a standard HTTP header
/// into a new buffer), and whether its value carries a per-request span id.
fn propagation_header(key: &str) -> Option<(HeaderName, bool)> {
    let (name, unique) = match key {
        "traceparent" => ("traceparent", true),
        "tracestate" => ("tracestate", false),
        "baggage" => ("baggage", false),
        "b3" => ("b3", true),
        "x-b3-traceid" => ("x-b3-traceid", true),
        "x-b3-spanid" => ("x-b3-spanid", true),
        "x-b3-parentspanid" => ("x-b3-parentspanid", true),
        "x-b3-sampled" => ("x-b3-sampled", false),
        "x-b3-flags" => ("x-b3-flags", false),
        _ => return None,
    };
    Some((HeaderName::from_static(name), unique))
}

/// Marks a value that differs on every request (a span id) so HTTP/2 sends
/// it as a never-indexed HPACK literal.
///
/// Indexed, each new `traceparent` or `b3` value would enter the
/// connection's HPACK dynamic table and soon evict the headers that do
/// repeat (`:path`, `content-type`, `te`, `user-agent`), which then have to
/// be sent and decoded in full again: measured end to end over loopback,
/// about 5% of throughput. `HeaderValue::set_sensitive` is the only way to
/// ask for that encoding; it also makes the value print as `Sensitive` in
/// `Debug` output.
pub(crate) fn mark_unique(value: &mut HeaderValue) {
    value.set_sensitive(true);
}

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let (name, unique) = match propagation_header(key) {
            Some((name, unique)) => (Ok(name), unique),
            None => (HeaderName::from_bytes(key.as_bytes()), false),
        };
        // `try_from(String)` keeps the string's buffer (no copy).
        if let (Ok(name), Ok(mut value)) = (name, HeaderValue::try_from(value)) {
            if unique {
                mark_unique(&mut value);
            }
            self.0.insert(name, value);
        }
    }
}
