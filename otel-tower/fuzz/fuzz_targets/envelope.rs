//! The envelope parser fed arbitrary byte streams in arbitrary frame splits:
//! same events whatever the split, bounded buffering, and the base64 decoder
//! agrees with itself across splits too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otel_tower::wire::envelope::{Base64Stream, EnvelopeEvent, EnvelopeParser, TERMINAL_CAP};

fn events(mask: u8, chunks: &[&[u8]]) -> Vec<(u8, u32, usize, bool)> {
    let mut parser = EnvelopeParser::new(mask);
    let mut out = Vec::new();
    for c in chunks {
        parser.feed(c, &mut |e| match e {
            EnvelopeEvent::Message { flags, len } => out.push((flags, len, 0, false)),
            EnvelopeEvent::Terminal { flags, payload, truncated } => {
                assert!(payload.len() <= TERMINAL_CAP);
                out.push((flags, payload.len() as u32, payload.iter().map(|&b| b as usize).sum(), truncated))
            }
        });
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let mask = [0u8, 0x02, 0x80][data[0] as usize % 3];
    let split = data[1] as usize;
    let body = &data[2..];
    let whole = events(mask, &[body]);
    let cut = split.min(body.len());
    let (a, b) = body.split_at(cut);
    assert_eq!(events(mask, &[a, b]), whole);
    let bytes: Vec<&[u8]> = body.chunks(1 + split % 7).collect();
    assert_eq!(events(mask, &bytes), whole);

    let decode = |chunks: &[&[u8]]| {
        let mut d = Base64Stream::default();
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, &mut |b| out.extend_from_slice(b));
        }
        out
    };
    let whole = decode(&[body]);
    assert!(whole.len() <= body.len());
    assert_eq!(decode(&[a, b]), whole);
});
