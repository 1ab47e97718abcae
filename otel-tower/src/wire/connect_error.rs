//! Connect error JSON: unary error bodies and end-of-stream messages, gzip-aware.

use std::io::Read;

use super::code::Code;

/// Most bytes of a Connect unary error body read for classification (after
/// that the body still passes through, unread).
pub const ERROR_BODY_CAP: usize = 64 * 1024;

/// The code and message found in a Connect error JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectError {
    /// The error code; `None` when absent or not a Connect code.
    pub code: Option<Code>,
    /// The error message, if any.
    pub message: Option<String>,
}

/// Decompresses `data` with `encoding` (`gzip` or `identity`), reading at
/// most `cap` output bytes; `None` for unknown encodings or corrupt input.
pub fn decompress(data: &[u8], encoding: Option<&[u8]>, cap: usize) -> Option<Vec<u8>> {
    match encoding.map(<[u8]>::trim_ascii) {
        None | Some(b"identity") | Some(b"") => Some(data.to_vec()),
        Some(b"gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(data)
                .take(cap as u64)
                .read_to_end(&mut out)
                .ok()?;
            Some(out)
        }
        Some(_) => None,
    }
}

fn from_object(obj: &serde_json::Map<String, serde_json::Value>) -> ConnectError {
    ConnectError {
        code: obj
            .get("code")
            .and_then(|c| c.as_str())
            .and_then(Code::from_connect),
        message: obj
            .get("message")
            .and_then(|m| m.as_str())
            .map(str::to_owned),
    }
}

/// Parses a unary error body `{"code":"not_found","message":"..."}`.
pub fn parse_unary_error(json: &[u8]) -> Option<ConnectError> {
    match serde_json::from_slice::<serde_json::Value>(json).ok()? {
        serde_json::Value::Object(obj) => Some(from_object(&obj)),
        _ => None,
    }
}

/// Parses an end-of-stream message: `Some(None)` for success (`{}` or
/// metadata only), `Some(Some(err))` for an error, `None` when not JSON.
pub fn parse_end_stream(json: &[u8]) -> Option<Option<ConnectError>> {
    let serde_json::Value::Object(obj) = serde_json::from_slice::<serde_json::Value>(json).ok()?
    else {
        return None;
    };
    match obj.get("error") {
        None | Some(serde_json::Value::Null) => Some(None),
        Some(serde_json::Value::Object(err)) => Some(Some(from_object(err))),
        Some(_) => Some(Some(ConnectError::default())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn unary_bodies() {
        let e = parse_unary_error(br#"{"code":"not_found","message":"no such user","details":[]}"#)
            .unwrap();
        assert_eq!(e.code, Some(Code::NotFound));
        assert_eq!(e.message.as_deref(), Some("no such user"));
        assert_eq!(
            parse_unary_error(br#"{"code":"bogus"}"#).unwrap().code,
            None
        );
        assert_eq!(parse_unary_error(b"<html>"), None);
        assert_eq!(parse_unary_error(br#"{"code":"not_fo"#), None);
        assert_eq!(parse_unary_error(b"[]"), None);
    }

    #[test]
    fn end_stream() {
        assert_eq!(parse_end_stream(b"{}"), Some(None));
        assert_eq!(parse_end_stream(br#"{"metadata":{"a":["b"]}}"#), Some(None));
        let e = parse_end_stream(br#"{"error":{"code":"data_loss","message":"m"}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(e.code, Some(Code::DataLoss));
        assert_eq!(parse_end_stream(b"nope"), None);
    }

    #[test]
    fn gzip_bounded() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&vec![b'a'; 1 << 20]).unwrap();
        let gz = enc.finish().unwrap();
        let out = decompress(&gz, Some(b"gzip"), 1000).unwrap();
        assert_eq!(out.len(), 1000);
        assert_eq!(decompress(b"not gzip", Some(b"gzip"), 1000), None);
        assert_eq!(decompress(b"x", Some(b"br"), 1000), None);
    }
}
