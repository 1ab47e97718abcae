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

/// Largest zstd window accepted (log2): 8 MiB, the window RFC 8878 asks
/// every decoder to support and common encoders' default. libzstd refuses
/// a frame that declares more before it allocates the window.
#[cfg(feature = "zstd")]
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Decompresses at most `cap` output bytes; `None` for unknown encodings.
fn inflate(data: &[u8], encoding: Option<&[u8]>, cap: usize) -> Option<(Vec<u8>, Stop)> {
    match encoding.map(<[u8]>::trim_ascii) {
        None | Some(b"identity") | Some(b"") => Some((data.to_vec(), Stop::End)),
        Some(b"gzip") => Some(read_capped(flate2::read::GzDecoder::new(data), cap)),
        #[cfg(feature = "zstd")]
        Some(b"zstd") => Some(zstd_inflate(data, cap)),
        Some(_) => None,
    }
}

/// libzstd, not a decoder written in Rust: it checks that a block decodes
/// to at most 128 KiB, so the work and memory per call stay bounded by
/// the window and the cap (ruzstd 0.8 executes a block's sequences
/// unchecked: a few KiB of input made gigabytes of copies).
#[cfg(feature = "zstd")]
fn zstd_inflate(data: &[u8], cap: usize) -> (Vec<u8>, Stop) {
    let decoder = zstd::stream::read::Decoder::with_buffer(data).and_then(|mut decoder| {
        decoder.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
        Ok(decoder)
    });
    match decoder {
        Ok(decoder) => read_capped(decoder, cap),
        Err(_) => (Vec::new(), Stop::Broken),
    }
}

/// Reads `reader` to its end, keeping at most `cap` bytes.
fn read_capped(reader: impl Read, cap: usize) -> (Vec<u8>, Stop) {
    let mut out = Vec::new();
    // One byte past the cap tells a full output from a longer one.
    let read = reader.take(cap as u64 + 1).read_to_end(&mut out);
    let stop = match read {
        // What was decoded before the error is kept in `out`.
        Err(_) => Stop::Broken,
        Ok(_) if out.len() > cap => {
            out.truncate(cap);
            Stop::Cap
        }
        Ok(_) => Stop::End,
    };
    (out, stop)
}

/// Decompresses `data` with `encoding` (`gzip`, `identity`, and `zstd`
/// with the `zstd` feature), reading at most `cap` output bytes; `None`
/// for unknown encodings or corrupt input.
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

    #[cfg(feature = "zstd")]
    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Frames from the reference zstd library (python-zstandard 0.23, level
    /// 3, streaming: a 2 MiB window descriptor, no content size).
    #[cfg(feature = "zstd")]
    #[test]
    fn zstd_frames_of_the_reference_encoder() {
        let error = hex(
            "28b52ffd0058950200924512189029e90b36dec8c6dbd46d95c4e2bf7b51221345f67f5e\
             012911163ca84f5e0924a3da8e193b352ed209e40c0039445ed76099352e363d79d82169a1\
             058fcbe275cd95518d87d851010015910251",
        );
        let json = decompress(&error, Some(b"zstd"), 1 << 16).unwrap();
        assert_eq!(json.len(), 288, "a compressed block, not a raw one");
        let e = parse_end_stream(&json).unwrap().unwrap();
        assert_eq!(e.code, Some(Code::ResourceExhausted));
        assert_eq!(e.message.as_deref(), Some("slow down"));
        let (out, complete) = decompress_prefix(&error, Some(b"zstd"), 100).unwrap();
        assert_eq!((out.len(), complete), (100, false));
        // A frame cut short yields no complete output.
        assert_eq!(decompress(&error[..40], Some(b"zstd"), 1 << 16), None);

        let ok = hex("28b52ffd00581100007b7d");
        assert_eq!(decompress(&ok, Some(b"zstd"), 1 << 16).unwrap(), b"{}");
        // A single segment (its content size, 2, is its window).
        let single = hex("28b52ffd20021100007b7d");
        assert_eq!(decompress(&single, Some(b"zstd"), 1 << 16).unwrap(), b"{}");
    }

    /// A frame header may declare any window. Past 8 MiB the frame is
    /// refused before its window is allocated.
    #[cfg(feature = "zstd")]
    #[test]
    fn zstd_windows_past_the_cap_are_refused() {
        // Window descriptor 0x68: 2^23 = 8 MiB, accepted.
        let eight = hex("28b52ffd00681100007b7d");
        assert_eq!(decompress(&eight, Some(b"zstd"), 1 << 16).unwrap(), b"{}");
        // Window descriptor 0x80: 2^(10+16) = 64 MiB.
        let big = hex("28b52ffd00801100007b7d");
        assert_eq!(decompress(&big, Some(b"zstd"), 1 << 16), None);
        assert_eq!(
            decompress_prefix(&big, Some(b"zstd"), 1 << 16),
            Some((vec![], false))
        );
        // A single segment whose 8-byte content size says 1 TiB.
        let mut huge = hex("28b52ffde0");
        huge.extend_from_slice(&(1u64 << 40).to_le_bytes());
        huge.extend_from_slice(&hex("1100007b7d"));
        assert_eq!(decompress(&huge, Some(b"zstd"), 1 << 16), None);
        // Not a zstd frame, or a header cut short.
        for bad in [
            &b""[..],
            b"{}",
            &hex("28b52ffd"),
            &hex("28b52ffd00"),
            &hex("28b52ffde0ffff"),
        ] {
            assert_eq!(decompress(bad, Some(b"zstd"), 1 << 16), None, "{bad:?}");
        }
    }

    /// One compressed block whose sequences decode to far more than the
    /// 128 KiB a block may hold (RLE length tables, each 16 bits of input a
    /// 65 KiB match): a decoder that executes them unchecked writes
    /// gigabytes for a 64 KiB input. It is refused as corrupt.
    #[cfg(feature = "zstd")]
    #[test]
    fn a_zstd_block_larger_than_a_block_may_be_is_refused() {
        let sequences: usize = 30_000;
        // Magic, descriptor, a 1 KiB window; a raw block of 4 bytes.
        let mut frame = hex("28b52ffd0000");
        frame.extend_from_slice(&[32, 0, 0]);
        frame.extend_from_slice(b"aaaa");
        // Compressed block: no literals, `sequences` sequences, all three
        // tables RLE (literal length 0, offset code 0, match length code
        // 52: 65,539 plus 16 bits), then the bit stream.
        let mut block = vec![0x00];
        // Two bytes hold a count under 0x7f00.
        block.extend_from_slice(&[128 + (sequences >> 8) as u8, sequences as u8]);
        block.push(0x54);
        block.extend_from_slice(&[0, 0, 52]);
        block.extend(std::iter::repeat_n(0u8, 2 * sequences));
        block.push(0x01);
        let header = ((block.len() as u32) << 3) | (2 << 1) | 1;
        frame.extend_from_slice(&header.to_le_bytes()[..3]);
        frame.extend_from_slice(&block);
        assert!(frame.len() < 64 * 1024);
        assert_eq!(decompress(&frame, Some(b"zstd"), 1 << 16), None);
        let (out, complete) = decompress_prefix(&frame, Some(b"zstd"), 1 << 16).unwrap();
        assert!(out.len() <= 4 && !complete, "{} bytes", out.len());
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
