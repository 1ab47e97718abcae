//! Incremental parser for length-prefixed envelopes (gRPC, gRPC-Web, Connect streaming).

/// Envelope flag: the payload is compressed.
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Envelope flag: Connect end-of-stream message (responses only).
pub const FLAG_END_STREAM: u8 = 0x02;
/// Envelope flag: gRPC-Web trailers block.
pub const FLAG_TRAILERS: u8 = 0x80;

/// Most payload bytes of a terminal envelope (end-stream or trailers) kept
/// for classification; the rest is skipped, never stored.
pub const TERMINAL_CAP: usize = 64 * 1024;

/// What the parser saw.
#[derive(Debug, PartialEq, Eq)]
pub enum EnvelopeEvent<'a> {
    /// A message envelope's header was read: its flags and declared length.
    Message {
        /// The flags byte.
        flags: u8,
        /// The declared (wire) length.
        len: u32,
    },
    /// A terminal envelope (one whose flags intersect the terminal mask) ended.
    Terminal {
        /// The flags byte.
        flags: u8,
        /// Its payload, up to [`TERMINAL_CAP`] bytes.
        payload: &'a [u8],
        /// True when the payload was longer than the cap.
        truncated: bool,
    },
}

/// Reads envelopes from body chunks of any size and alignment.
///
/// State is a 5-byte header buffer and a countdown of payload bytes to skip,
/// so memory does not depend on declared lengths: a 4 GiB length is just a
/// large countdown. Only terminal payloads are copied, up to the cap.
#[derive(Debug)]
pub struct EnvelopeParser {
    terminal_mask: u8,
    header: [u8; 5],
    header_len: u8,
    remaining: u32,
    flags: u8,
    in_payload: bool,
    terminal: Option<Vec<u8>>,
    truncated: bool,
}

impl EnvelopeParser {
    /// A parser that buffers envelopes whose flags intersect `terminal_mask`
    /// (`FLAG_END_STREAM` for Connect responses, `FLAG_TRAILERS` for
    /// gRPC-Web responses, 0 for requests and gRPC).
    pub fn new(terminal_mask: u8) -> Self {
        EnvelopeParser {
            terminal_mask,
            header: [0; 5],
            header_len: 0,
            remaining: 0,
            flags: 0,
            in_payload: false,
            terminal: None,
            truncated: false,
        }
    }

    /// True between envelopes (nothing partially read).
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && !self.in_payload
    }

    /// Feeds one chunk, reporting each event through `on_event`.
    pub fn feed(&mut self, mut data: &[u8], on_event: &mut dyn FnMut(EnvelopeEvent<'_>)) {
        while !data.is_empty() {
            if !self.in_payload {
                let need = 5 - self.header_len as usize;
                let take = need.min(data.len());
                self.header[self.header_len as usize..self.header_len as usize + take]
                    .copy_from_slice(&data[..take]);
                self.header_len += take as u8;
                data = &data[take..];
                if self.header_len < 5 {
                    return;
                }
                self.header_len = 0;
                self.flags = self.header[0];
                self.remaining = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                self.in_payload = true;
                if self.flags & self.terminal_mask != 0 {
                    self.terminal = Some(Vec::with_capacity(
                        (self.remaining as usize).min(TERMINAL_CAP),
                    ));
                    self.truncated = false;
                } else {
                    on_event(EnvelopeEvent::Message {
                        flags: self.flags,
                        len: self.remaining,
                    });
                }
            }
            let take = (self.remaining as usize).min(data.len());
            if let Some(buf) = self.terminal.as_mut() {
                let room = TERMINAL_CAP - buf.len();
                let keep = room.min(take);
                buf.extend_from_slice(&data[..keep]);
                self.truncated |= keep < take;
            }
            data = &data[take..];
            self.remaining -= take as u32;
            if self.remaining == 0 {
                self.in_payload = false;
                if let Some(buf) = self.terminal.take() {
                    on_event(EnvelopeEvent::Terminal {
                        flags: self.flags,
                        payload: &buf,
                        truncated: self.truncated,
                    });
                }
            }
        }
    }
}

/// Streaming base64 decoder for gRPC-Web text bodies.
///
/// Decodes in 4-character groups carried across chunk boundaries; padding
/// may end a group anywhere in the stream (each server flush is padded on
/// its own). On a character outside the alphabet it stops decoding for good:
/// the bytes still pass through untouched, only the counting stops.
#[derive(Debug, Default)]
pub struct Base64Stream {
    group: [u8; 4],
    len: u8,
    broken: bool,
}

fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    }
}

impl Base64Stream {
    /// Decodes `data`, handing decoded bytes to `out` in small batches.
    pub fn feed(&mut self, data: &[u8], out: &mut dyn FnMut(&[u8])) {
        if self.broken {
            return;
        }
        let mut batch = [0u8; 192];
        let mut n = 0;
        for &c in data {
            if matches!(c, b'\r' | b'\n' | b' ' | b'\t') {
                continue;
            }
            self.group[self.len as usize] = c;
            self.len += 1;
            if self.len < 4 {
                continue;
            }
            self.len = 0;
            let g = self.group;
            let pad = g.iter().rev().take_while(|&&c| c == b'=').count();
            if pad > 2 {
                self.broken = true;
                break;
            }
            let mut v = 0u32;
            for &c in &g[..4 - pad] {
                let Some(s) = sextet(c) else {
                    self.broken = true;
                    break;
                };
                v = (v << 6) | u32::from(s);
            }
            if self.broken {
                break;
            }
            v <<= 6 * pad as u32;
            let bytes = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
            for &b in &bytes[..3 - pad] {
                batch[n] = b;
                n += 1;
            }
            if n + 3 > batch.len() {
                out(&batch[..n]);
                n = 0;
            }
        }
        if n > 0 {
            out(&batch[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(parser: &mut EnvelopeParser, chunks: &[&[u8]]) -> Vec<String> {
        let mut seen = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut |e| {
                seen.push(match e {
                    EnvelopeEvent::Message { flags, len } => format!("m{flags}:{len}"),
                    EnvelopeEvent::Terminal {
                        flags,
                        payload,
                        truncated,
                    } => {
                        format!("t{flags}:{}:{truncated}", String::from_utf8_lossy(payload))
                    }
                })
            });
        }
        seen
    }

    #[test]
    fn split_headers_and_many_per_chunk() {
        let mut p = EnvelopeParser::new(FLAG_END_STREAM);
        let body = [
            &[0u8, 0, 0, 0, 2, b'h', b'i', 1, 0, 0, 0, 0][..],
            &[2, 0, 0, 0, 2, b'{', b'}'],
        ]
        .concat();
        let whole = collect(&mut p, &[&body]);
        assert_eq!(whole, ["m0:2", "m1:0", "t2:{}:false"]);
        for split in 0..body.len() {
            let mut p = EnvelopeParser::new(FLAG_END_STREAM);
            let (a, b) = body.split_at(split);
            assert_eq!(collect(&mut p, &[a, b]), whole, "split at {split}");
        }
        let mut p = EnvelopeParser::new(FLAG_END_STREAM);
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(collect(&mut p, &bytes), whole);
    }

    #[test]
    fn huge_declared_length_is_not_allocated() {
        let mut p = EnvelopeParser::new(FLAG_TRAILERS);
        let seen = collect(&mut p, &[&[0, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]]);
        assert_eq!(seen, ["m0:4294967295"]);
        assert!(!p.at_boundary());
        let mut p = EnvelopeParser::new(FLAG_TRAILERS);
        p.feed(&[0x80, 0xff, 0xff, 0xff, 0xff], &mut |_| {});
        p.feed(&vec![b'x'; 200_000], &mut |_| {});
        assert!(p.terminal.as_ref().unwrap().capacity() <= TERMINAL_CAP);
    }

    #[test]
    fn base64_groups_across_chunks_and_mid_stream_padding() {
        let mut d = Base64Stream::default();
        let mut out = Vec::new();
        // "AAAAAAJoaQ==" is envelope {0,0,0,0,2,'h','i'}; followed by another padded flush.
        for chunk in [
            &b"AAAA"[..],
            b"AAJo",
            b"aQ=",
            b"=gAAAAA9ncnBjLXN0YXR1czowDQo=",
        ] {
            d.feed(chunk, &mut |b| out.extend_from_slice(b));
        }
        assert_eq!(&out[..7], &[0, 0, 0, 0, 2, b'h', b'i']);
        assert_eq!(out[7], 0x80);
        assert_eq!(&out[12..], b"grpc-status:0\r\n");
    }
}
