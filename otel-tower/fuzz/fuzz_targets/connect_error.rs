//! Connect error bodies and end-stream messages: arbitrary (and gzip- or
//! zstd-framed) input never panics and decompression stays bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otel_tower::wire::connect_error::{
    decompress, decompress_prefix, parse_end_stream, parse_end_stream_prefix, parse_unary_error,
};

fuzz_target!(|data: &[u8]| {
    let _ = parse_unary_error(data);
    let _ = parse_end_stream(data);
    let _ = parse_end_stream_prefix(data);
    for encoding in [&b"gzip"[..], b"zstd"] {
        if let Some((out, _)) = decompress_prefix(data, Some(encoding), 4096) {
            assert!(out.len() <= 4096);
            let _ = parse_end_stream_prefix(&out);
        }
        if let Some(out) = decompress(data, Some(encoding), 4096) {
            assert!(out.len() <= 4096);
            let _ = parse_unary_error(&out);
        }
    }
    assert_eq!(decompress(data, None, 4096).as_deref(), Some(data));
});
