//! Header lookups sized for RPC messages: a scan of their few fields
//! instead of hashing the name.
//!
//! A gRPC or Connect request carries a handful of header fields, a
//! response or its trailers one to three, and the engine looks up several
//! names in them on every call. The map hashes every byte of the name, then
//! probes: 130-180 instructions a lookup (callgrind, x86-64, maps of 2 to
//! 12 fields), where a scan spends about 15 a field, most fields failing on
//! their first compared word. A map with more fields than [`SCAN_MAX`],
//! where a scan would cost about as much or more, is looked up by hash, so
//! a peer that sends many fields never makes a lookup cost more than the
//! map's own.

use http::header::AsHeaderName;
use http::{HeaderMap, HeaderName, HeaderValue};

/// The most fields (values, not names) a map may hold to be scanned.
pub(crate) const SCAN_MAX: usize = 8;

/// A field name to look for: one parsed once, or text, as
/// `opentelemetry`'s extractors name fields.
pub(crate) trait Name: AsHeaderName + Copy {
    /// Whether the stored name `stored` is this one, as the map matches it.
    fn is(self, stored: &HeaderName) -> bool;
}

impl Name for &HeaderName {
    #[inline]
    fn is(self, stored: &HeaderName) -> bool {
        stored == self
    }
}

impl Name for &str {
    /// Stored names are lowercase tokens; the map's own lookup lowercases
    /// the text and finds nothing for text that is not a token, which no
    /// stored name then equals either.
    #[inline]
    fn is(self, stored: &HeaderName) -> bool {
        stored.as_str().eq_ignore_ascii_case(self)
    }
}

/// The first value of `name`, as [`HeaderMap::get`] returns it.
#[inline]
pub(crate) fn get(headers: &HeaderMap, name: impl Name) -> Option<&HeaderValue> {
    if headers.len() > SCAN_MAX {
        return headers.get(name);
    }
    // The map yields a name's values together, first value first.
    headers.iter().find(|(n, _)| name.is(n)).map(|(_, v)| v)
}

/// Every value of `name`, in the order [`HeaderMap::get_all`] yields them.
#[inline]
pub(crate) fn each<'a>(
    headers: &'a HeaderMap,
    name: impl Name,
    mut f: impl FnMut(&'a HeaderValue),
) {
    if headers.len() > SCAN_MAX {
        headers.get_all(name).iter().for_each(f);
        return;
    }
    for (n, v) in headers {
        if name.is(n) {
            f(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map of `n` fields: `x-0` .. `x-{n-1}`, then the same names again
    /// as second values, so that names hold several values.
    fn map(n: usize) -> HeaderMap {
        let mut m = HeaderMap::new();
        for i in 0..n {
            let name: HeaderName = format!("x-{}", i % n.div_ceil(2).max(1)).parse().unwrap();
            m.append(name, HeaderValue::from_str(&i.to_string()).unwrap());
        }
        m
    }

    #[test]
    fn lookups_agree_with_the_map_on_either_side_of_the_scan_limit() {
        for n in [0, 1, 2, 5, SCAN_MAX, SCAN_MAX + 1, 40] {
            let m = map(n);
            for probe in ["x-0", "x-1", "x-3", "x-9", "absent", "content-type"] {
                let name: HeaderName = probe.parse().unwrap();
                assert_eq!(get(&m, &name), m.get(&name), "{n} fields, {probe}");
                let mut seen = Vec::new();
                each(&m, &name, |v| seen.push(v.clone()));
                let want: Vec<_> = m.get_all(&name).iter().cloned().collect();
                assert_eq!(seen, want, "{n} fields, {probe}");
            }
            for key in ["x-0", "X-1", "x-3", "Content-Type", "absent", "x 0", ""] {
                let mut seen = Vec::new();
                each(&m, key, |v| seen.push(v.clone()));
                let want: Vec<_> = m.get_all(key).iter().cloned().collect();
                assert_eq!(seen, want, "{n} fields, {key:?}");
                assert_eq!(get(&m, key), m.get(key), "{n} fields, {key:?}");
            }
        }
    }

    #[test]
    fn standard_and_custom_names_are_told_apart() {
        let mut m = HeaderMap::new();
        m.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("a"));
        m.insert("grpc-status", HeaderValue::from_static("0"));
        m.append("grpc-status", HeaderValue::from_static("1"));
        assert_eq!(get(&m, &http::header::CONTENT_TYPE).unwrap(), "a");
        assert_eq!(get(&m, &crate::wire::names::GRPC_STATUS).unwrap(), "0");
        assert_eq!(get(&m, &http::header::CONTENT_ENCODING), None);
        let mut all = Vec::new();
        each(&m, &crate::wire::names::GRPC_STATUS, |v| {
            all.push(v.clone())
        });
        assert_eq!(all, ["0", "1"]);
    }
}
