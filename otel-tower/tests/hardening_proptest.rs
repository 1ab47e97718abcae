//! The fuzz targets' invariants as property tests, so CI checks them on
//! every run (the fuzzers in `otel-tower/fuzz` search much deeper).

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use otel_tower::propagation::{B3, Baggage, HeaderExtractor, HeaderInjector, TraceContext};
use otel_tower::wire::Code;
use otel_tower::wire::connect_error::{
    decompress, decompress_prefix, parse_end_stream, parse_end_stream_prefix, parse_unary_error,
};
use otel_tower::wire::envelope::{Base64Stream, EnvelopeEvent, EnvelopeParser, TERMINAL_CAP};
use otel_tower::wire::grpc_web::{trailer, trailer_lines};
use otel_tower::wire::timeout::{parse_connect_timeout, parse_grpc_timeout};
use proptest::prelude::*;

const NAMES: [&str; 8] = [
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-sampled",
    "x-b3-flags",
];

fn events(mask: u8, chunks: &[&[u8]]) -> Vec<(u8, u32, Vec<u8>, bool)> {
    let mut parser = EnvelopeParser::new(mask);
    let mut out = Vec::new();
    for c in chunks {
        parser.feed(c, &mut |e| match e {
            EnvelopeEvent::Message { flags, len } => out.push((flags, len, Vec::new(), false)),
            EnvelopeEvent::Terminal {
                flags,
                payload,
                truncated,
            } => {
                assert!(payload.len() <= TERMINAL_CAP);
                out.push((flags, payload.len() as u32, payload.to_vec(), truncated))
            }
        });
    }
    out
}

fn decode(chunks: &[&[u8]]) -> Vec<u8> {
    let mut d = Base64Stream::default();
    let mut out = Vec::new();
    for c in chunks {
        d.feed(c, &mut |b| out.extend_from_slice(b));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn propagation_never_panics_and_injects_valid_headers(
        records in prop::collection::vec((0usize..NAMES.len(), prop::collection::vec(any::<u8>(), 0..80)), 0..8)
    ) {
        let mut headers = HeaderMap::new();
        for (i, v) in &records {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                headers.append(HeaderName::from_static(NAMES[*i]), v);
            }
        }
        let propagators: [Box<dyn TextMapPropagator>; 4] =
            [Box::new(TraceContext::new()), Box::new(Baggage::new()), Box::new(B3::single()), Box::new(B3::multi())];
        for p in &propagators {
            let cx = p.extract_with_context(&Context::new(), &HeaderExtractor(&headers));
            let mut out = HeaderMap::new();
            p.inject_context(&cx, &mut HeaderInjector(&mut out));
            for (name, value) in &out {
                prop_assert!(p.fields().any(|f| f == name.as_str()));
                prop_assert!(value.to_str().is_ok() && !value.is_empty());
            }
        }
    }

    #[test]
    fn envelope_events_do_not_depend_on_frame_splits(
        mask in prop_oneof![Just(0u8), Just(0x02), Just(0x80)],
        body in prop::collection::vec(any::<u8>(), 0..300),
        cut in any::<prop::sample::Index>(),
        step in 1usize..9,
    ) {
        let whole = events(mask, &[&body]);
        let (a, b) = body.split_at(cut.index(body.len() + 1));
        prop_assert_eq!(&events(mask, &[a, b]), &whole);
        let pieces: Vec<&[u8]> = body.chunks(step).collect();
        prop_assert_eq!(&events(mask, &pieces), &whole);
        let decoded = decode(&[&body]);
        prop_assert!(decoded.len() <= body.len());
        prop_assert_eq!(decode(&[a, b]), decoded);
    }

    #[test]
    fn connect_error_parsing_is_total_and_bounded(data in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_unary_error(&data);
        let _ = parse_end_stream(&data);
        let _ = parse_end_stream_prefix(&data);
        if let Some(out) = decompress(&data, Some(b"gzip"), 64) {
            prop_assert!(out.len() <= 64);
        }
        if let Some((out, _)) = decompress_prefix(&data, Some(b"gzip"), 64) {
            prop_assert!(out.len() <= 64);
        }
        prop_assert_eq!(decompress(&data, None, 64), Some(data.clone()));
        // Behind a zstd frame's magic number, so the decoder itself runs.
        let mut framed = vec![0x28, 0xb5, 0x2f, 0xfd];
        framed.extend_from_slice(&data);
        for input in [&data, &framed] {
            if let Some(out) = decompress(input, Some(b"zstd"), 64) {
                prop_assert!(out.len() <= 64);
            }
            if let Some((out, _)) = decompress_prefix(input, Some(b"zstd"), 64) {
                prop_assert!(out.len() <= 64);
            }
        }
    }

    /// Real zstd of any size, whole, cut short or with one byte changed:
    /// the output stops at the cap, is exactly the data when whole, and a
    /// damaged frame never panics.
    #[cfg(feature = "zstd")]
    #[test]
    fn zstd_output_is_capped(
        data in prop::collection::vec(any::<u8>(), 0..400),
        cut in 0usize..64,
        flip in any::<(usize, u8)>(),
    ) {
        let framed = zstd::bulk::compress(&data, 1).unwrap();
        let out = decompress(&framed, Some(b"zstd"), 64).unwrap();
        prop_assert_eq!(&out[..], &data[..data.len().min(64)]);
        let (out, complete) = decompress_prefix(&framed, Some(b"zstd"), 64).unwrap();
        prop_assert_eq!(&out[..], &data[..data.len().min(64)]);
        prop_assert_eq!(complete, data.len() <= 64);
        let short = &framed[..framed.len().saturating_sub(cut + 1)];
        if let Some((out, _)) = decompress_prefix(short, Some(b"zstd"), 64) {
            prop_assert!(out.len() <= 64);
        }
        let mut damaged = framed.clone();
        let at = flip.0 % damaged.len();
        damaged[at] ^= flip.1 | 1;
        if let Some((out, _)) = decompress_prefix(&damaged, Some(b"zstd"), 64) {
            prop_assert!(out.len() <= 64);
        }
    }

    /// Real gzip of any size: the output stops at the cap, and is exactly
    /// the data when it fits; a cut-short stream gives its decoded prefix.
    #[test]
    fn gzip_output_is_capped(data in prop::collection::vec(any::<u8>(), 0..400), cut in 0usize..64) {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let zipped = gz.finish().unwrap();
        let out = decompress(&zipped, Some(b"gzip"), 64).unwrap();
        prop_assert_eq!(&out[..], &data[..data.len().min(64)]);
        let (out, complete) = decompress_prefix(&zipped, Some(b"gzip"), 64).unwrap();
        prop_assert_eq!(&out[..], &data[..data.len().min(64)]);
        prop_assert_eq!(complete, data.len() <= 64);
        let short = &zipped[..zipped.len().saturating_sub(cut + 1)];
        if let Some((out, complete)) = decompress_prefix(short, Some(b"gzip"), 64) {
            prop_assert!(out.len() <= 64);
            prop_assert!(data.starts_with(&out));
            prop_assert!(!complete || out.len() == data.len().min(64));
        }
    }

    #[test]
    fn trailer_blocks_and_timeouts_are_total(data in prop::collection::vec(any::<u8>(), 0..120)) {
        for (name, value) in trailer_lines(&data) {
            prop_assert!(!name.is_empty() && !name.contains(&b'\n') && !value.contains(&b'\n'));
        }
        if let Some(status) = trailer(&data, "grpc-status") {
            let _ = Code::from_grpc_status(status);
        }
        let _ = otel_tower::wire::decode_grpc_message(&data);
        if parse_connect_timeout(&data).is_some() {
            prop_assert!(data.len() <= 10 && data.iter().all(u8::is_ascii_digit));
        }
        if parse_grpc_timeout(&data).is_some() {
            let (unit, digits) = data.split_last().unwrap();
            prop_assert!(b"HMSmun".contains(unit) && !digits.is_empty() && digits.len() <= 8);
        }
    }
}
