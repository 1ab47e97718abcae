//! W3C Baggage: the `baggage` header, percent-encoded both ways.

use opentelemetry::Context;
use opentelemetry::baggage::{BaggageExt, BaggageMetadata};
use opentelemetry::propagation::{
    Extractor, Injector, TextMapPropagator, text_map_propagator::FieldIter,
};

const BAGGAGE: &str = "baggage";
const BAGGAGE_NAME: http::HeaderName = http::HeaderName::from_static(BAGGAGE);
/// Most list members read from all `baggage` headers together.
pub const MAX_MEMBERS: usize = 64;
/// Most bytes of list members read from all `baggage` headers together.
pub const MAX_BYTES: usize = 8192;

/// The W3C Baggage propagator.
///
/// Values are percent-decoded (invalid UTF-8 becomes U+FFFD) and may contain
/// `=`; all `baggage` headers are read as one list; at most
/// [`MAX_MEMBERS`] members and [`MAX_BYTES`] bytes are kept, dropping whole
/// members past the limit. On inject every byte outside the W3C
/// `baggage-octet` set, `%` included, is percent-encoded.
///
/// ```
/// use opentelemetry::baggage::BaggageExt;
/// use opentelemetry::propagation::TextMapPropagator;
/// use std::collections::HashMap;
///
/// let mut headers = HashMap::new();
/// headers.insert("baggage".to_string(), "user=a%20b,expr=x=1".to_string());
/// let cx = otel_tower::propagation::Baggage::new().extract(&headers);
/// assert_eq!(cx.baggage().get("user").unwrap().as_str(), "a b");
/// assert_eq!(cx.baggage().get("expr").unwrap().as_str(), "x=1");
/// ```
#[derive(Debug, Clone)]
pub struct Baggage {
    fields: [String; 1],
}

impl Default for Baggage {
    fn default() -> Self {
        Self::new()
    }
}

impl Baggage {
    /// Creates the propagator.
    pub fn new() -> Self {
        Baggage {
            fields: [BAGGAGE.to_string()],
        }
    }
}

/// RFC 7230 `tchar`: what a baggage key may contain.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// W3C `baggage-octet`: bytes a value may carry without encoding.
fn is_baggage_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e) && b != b'%'
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes leniently: a `%` not followed by two hex digits is kept as
/// is; invalid UTF-8 becomes U+FFFD.
pub(crate) fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex_val(bytes[i + 1]), hex_val(bytes[i + 2]))
        {
            out.push((h << 4) | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode_into(s: &str, out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if is_baggage_octet(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(DIGITS[(b >> 4) as usize] as char);
            out.push(DIGITS[(b & 0xf) as usize] as char);
        }
    }
}

/// One parsed list member: decoded key and value, raw properties.
pub(crate) struct Member<'a> {
    pub(crate) key: &'a str,
    pub(crate) value: String,
    pub(crate) properties: &'a str,
}

/// Parses all `baggage` headers as one list, applying the W3C limits.
/// Invalid members are skipped one by one.
pub(crate) fn parse<'a>(headers: impl IntoIterator<Item = &'a str>) -> Vec<Member<'a>> {
    let mut members = Vec::new();
    let mut bytes = 0usize;
    for header in headers {
        for raw in header.split(',') {
            if members.len() == MAX_MEMBERS {
                return members;
            }
            let raw = raw.trim_matches([' ', '\t']);
            if raw.is_empty() {
                continue;
            }
            let (pair, properties) = match raw.split_once(';') {
                Some((pair, props)) => (pair, props.trim_matches([' ', '\t'])),
                None => (raw, ""),
            };
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            let key = key.trim_matches([' ', '\t']);
            let value = value.trim_matches([' ', '\t']);
            if !is_token(key) || value.bytes().any(|b| !(is_baggage_octet(b) || b == b'%')) {
                continue;
            }
            if bytes + raw.len() > MAX_BYTES {
                continue;
            }
            bytes += raw.len();
            members.push(Member {
                key,
                value: percent_decode(value),
                properties,
            });
        }
    }
    members
}

impl TextMapPropagator for Baggage {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        inject_to(cx, injector);
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        extract_from(cx, &extractor)
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}

/// Extracts from any header source; all `baggage` headers are one list.
pub(crate) fn extract_from<'a>(cx: &Context, source: &'a impl super::Source<'a>) -> Context {
    let mut headers: smallvec::SmallVec<[&str; 2]> = smallvec::SmallVec::new();
    source.each(&BAGGAGE_NAME, &mut |v| headers.push(super::text(v)));
    if headers.is_empty() {
        return cx.clone();
    }
    let members = parse(headers.iter().copied());
    if members.is_empty() {
        return cx.clone();
    }
    let mut baggage = opentelemetry::baggage::Baggage::new();
    for m in members {
        baggage.insert_with_metadata(
            m.key.to_string(),
            m.value,
            BaggageMetadata::from(m.properties),
        );
    }
    cx.with_baggage(baggage)
}

/// Writes `cx`'s baggage as one `baggage` header (nothing when empty).
pub(crate) fn inject_to(cx: &Context, injector: &mut dyn Injector) {
    let baggage = cx.baggage();
    if baggage.is_empty() {
        return;
    }
    let mut header = String::new();
    for (key, (value, metadata)) in baggage.iter() {
        if !is_token(key.as_str()) {
            continue;
        }
        // Percent-encoding can triple a value: a member that would take the
        // header past the limit is left out whole.
        let member_start = header.len();
        if !header.is_empty() {
            header.push(',');
        }
        header.push_str(key.as_str());
        header.push('=');
        percent_encode_into(value.as_str(), &mut header);
        let metadata = metadata.as_str();
        if !metadata.is_empty()
            && metadata
                .bytes()
                .all(|b| (0x20..=0x7e).contains(&b) && b != b',')
        {
            header.push(';');
            header.push_str(metadata);
        }
        if header.len() > MAX_BYTES {
            header.truncate(member_start);
        }
    }
    if !header.is_empty() {
        injector.set(BAGGAGE, header);
    }
}
