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

/// Why decompression stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The whole input was decoded.
    End,
    /// The output reached the cap.
    Cap,
    /// The input is corrupt or cut short: the output is what came before.
    Broken,
}

/// Decompresses at most `cap` output bytes; `None` for unknown encodings.
fn inflate(data: &[u8], encoding: Option<&[u8]>, cap: usize) -> Option<(Vec<u8>, Stop)> {
    match encoding.map(<[u8]>::trim_ascii) {
        None | Some(b"identity") | Some(b"") => Some((data.to_vec(), Stop::End)),
        Some(b"gzip") => {
            let mut out = Vec::new();
            // One byte past the cap tells a full output from a longer one.
            let read = flate2::read::GzDecoder::new(data)
                .take(cap as u64 + 1)
                .read_to_end(&mut out);
            let stop = match read {
                // What was decoded before the error is kept in `out`.
                Err(_) => Stop::Broken,
                Ok(_) if out.len() > cap => {
                    out.truncate(cap);
                    Stop::Cap
                }
                Ok(_) => Stop::End,
            };
            Some((out, stop))
        }
        Some(_) => None,
    }
}

/// Decompresses `data` with `encoding` (`gzip` or `identity`), reading at
/// most `cap` output bytes; `None` for unknown encodings or corrupt input.
pub fn decompress(data: &[u8], encoding: Option<&[u8]>, cap: usize) -> Option<Vec<u8>> {
    match inflate(data, encoding, cap)? {
        (_, Stop::Broken) => None,
        (out, _) => Some(out),
    }
}

/// Decompresses as much of `data` as can be read (at most `cap` output
/// bytes), even when it is cut short; with whether that is all of it.
/// `None` for unknown encodings.
pub fn decompress_prefix(
    data: &[u8],
    encoding: Option<&[u8]>,
    cap: usize,
) -> Option<(Vec<u8>, bool)> {
    let (out, stop) = inflate(data, encoding, cap)?;
    Some((out, stop == Stop::End))
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

/// The `metadata` member of an end-of-stream message (the stream's
/// trailers): each name with its values, in order. Values that are not
/// strings, and anything that is not valid JSON, yield nothing.
pub fn end_stream_metadata(json: &[u8]) -> Vec<(String, String)> {
    let Ok(serde_json::Value::Object(mut obj)) = serde_json::from_slice(json) else {
        return Vec::new();
    };
    let Some(serde_json::Value::Object(metadata)) = obj.remove("metadata") else {
        return Vec::new();
    };
    let mut pairs = Vec::new();
    for (name, values) in metadata {
        if let serde_json::Value::Array(values) = values {
            for value in values {
                if let serde_json::Value::String(value) = value {
                    pairs.push((name.clone(), value));
                }
            }
        }
    }
    pairs
}

/// The `error` member of an end-of-stream message cut short (past the
/// cap), if it came whole before the cut: Connect implementations write it
/// before the `metadata`, which is what can grow large.
pub fn parse_end_stream_prefix(json: &[u8]) -> Option<ConnectError> {
    let mut found = None;
    let mut de = serde_json::Deserializer::from_slice(json);
    // The cut makes this fail; what was read before it is in `found`.
    let _ = serde::Deserializer::deserialize_map(&mut de, ErrorMember(&mut found));
    found
}

/// Reads an end-of-stream object member by member, keeping its `error`.
struct ErrorMember<'a>(&'a mut Option<ConnectError>);

impl<'de> serde::de::Visitor<'de> for ErrorMember<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an end-of-stream message")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "error" {
                if let serde_json::Value::Object(err) = map.next_value()? {
                    *self.0 = Some(from_object(&err));
                }
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
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
    fn end_stream_metadata_keeps_string_values_in_order() {
        let json = br#"{"error":{"code":"aborted"},"metadata":{"X-Cost":["1","2"],"n":[3],"s":"x","e":[]}}"#;
        assert_eq!(
            end_stream_metadata(json),
            [
                ("X-Cost".to_string(), "1".to_string()),
                ("X-Cost".to_string(), "2".to_string())
            ]
        );
        assert!(end_stream_metadata(br#"{"metadata":["a"]}"#).is_empty());
        assert!(end_stream_metadata(br#"{"metadata":{"a":["#).is_empty());
        assert!(end_stream_metadata(b"{}").is_empty());
    }

    #[test]
    fn end_stream_cut_short() {
        let error = br#"{"error":{"code":"internal","message":"m"},"metadata":{"a":["bbbb"#;
        let e = parse_end_stream_prefix(error).unwrap();
        assert_eq!(e.code, Some(Code::Internal));
        assert_eq!(e.message.as_deref(), Some("m"));
        // The error itself cut, or not seen before the cut: nothing to go by.
        assert_eq!(parse_end_stream_prefix(br#"{"error":{"code":"inter"#), None);
        assert_eq!(
            parse_end_stream_prefix(br#"{"metadata":{"a":["b"]},"err"#),
            None
        );
        assert_eq!(parse_end_stream_prefix(b""), None);

        // A gzip stream cut short still yields what came before the cut.
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(error).unwrap();
        // Metadata that does not compress, so the stream is long.
        let mut x = 1u32;
        let filler: Vec<u8> = (0..1 << 17)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                b'a' + (x >> 16) as u8 % 26
            })
            .collect();
        enc.write_all(&filler).unwrap();
        let gz = enc.finish().unwrap();
        let cut = &gz[..gz.len() * 3 / 4];
        let (out, complete) = decompress_prefix(cut, Some(b"gzip"), 1 << 20).unwrap();
        assert!(!complete);
        assert!(out.len() > error.len() && out.starts_with(error));
        assert_eq!(
            parse_end_stream_prefix(&out).unwrap().code,
            Some(Code::Internal)
        );
        assert_eq!(decompress(cut, Some(b"gzip"), 1 << 20), None);
        let (out, complete) = decompress_prefix(&gz, Some(b"gzip"), 100).unwrap();
        assert_eq!((out.len(), complete), (100, false));
        let (_, complete) = decompress_prefix(&gz, Some(b"gzip"), 1 << 20).unwrap();
        assert!(complete);
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
