//! Lowercase-hex helpers shared by the W3C and B3 parsers.

/// Value of each byte as a lowercase hex digit, `INVALID` otherwise;
/// uppercase is rejected on purpose (W3C and B3 both require lowercase).
const INVALID: u8 = 0xff;
static NIBBLES: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Parses exactly `N * 2` lowercase hex characters into `N` bytes.
#[inline]
pub(crate) fn decode<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    let (eights, rest) = s.as_chunks::<8>();
    let (words, _) = out.as_chunks_mut::<4>();
    for (eight, word) in eights.iter().zip(words) {
        *word = decode8(*eight)?;
    }
    let out_rest = &mut out[eights.len() * 4..];
    // One check at the end instead of a branch per digit.
    let mut invalid = 0u8;
    for (o, pair) in out_rest.iter_mut().zip(rest.chunks_exact(2)) {
        let (hi, lo) = (NIBBLES[pair[0] as usize], NIBBLES[pair[1] as usize]);
        invalid |= (hi | lo) & 0xf0;
        *o = (hi << 4) | (lo & 0x0f);
    }
    (invalid == 0).then_some(out)
}

/// Each byte of a `u64` set to `b`.
const fn lanes(b: u8) -> u64 {
    u64::from_ne_bytes([b; 8])
}

/// Parses 8 lowercase hex characters into 4 bytes, checking and converting
/// all eight at once (ids arrive on every incoming call; a table lookup per
/// digit costs about three times as much).
#[inline]
fn decode8(digits: [u8; 8]) -> Option<[u8; 4]> {
    let x = u64::from_le_bytes(digits);
    // Every lane below 0x80, so that the sums below never carry into the
    // next lane: then bit 7 of `x + (0x80 - lo)` says `>= lo`, and bit 7 of
    // `x + (0x7f - hi)` says `> hi`.
    let at_least = |lo: u8| x.wrapping_add(lanes(0x80 - lo)) & lanes(0x80);
    let at_most = |hi: u8| !x.wrapping_add(lanes(0x7f - hi)) & lanes(0x80);
    let digit = at_least(b'0') & at_most(b'9');
    let letter = at_least(b'a') & at_most(b'f');
    if x & lanes(0x80) != 0 || digit | letter != lanes(0x80) {
        return None;
    }
    // '0'..'9' are 0x30..0x39 and 'a'..'f' 0x61..0x66: the low nibble, plus
    // 9 for a letter.
    let nibbles = (x & lanes(0x0f)) + (letter >> 7) * 9;
    // Lane pairs (first digit high): each 16-bit lane holds one byte.
    let pairs = ((nibbles & 0x000f_000f_000f_000f) << 4) | ((nibbles >> 8) & 0x000f_000f_000f_000f);
    let packed = (pairs | (pairs >> 8)) & 0x0000_ffff_0000_ffff;
    let packed = (packed | (packed >> 16)) as u32;
    Some(packed.to_le_bytes())
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The lowercase hex form of 4 bytes, computed on all eight digits at once
/// (an id is written on every outgoing call; a table lookup per digit
/// costs about twice as much).
#[inline]
fn encode4(bytes: [u8; 4]) -> [u8; 8] {
    let x = u64::from(u32::from_be_bytes(bytes));
    // One nibble per byte, most significant first.
    let x = ((x & 0xffff_0000) << 16) | (x & 0xffff);
    let x = ((x & 0x0000_ff00_0000_ff00) << 8) | (x & 0x0000_00ff_0000_00ff);
    let x = ((x & 0x00f0_00f0_00f0_00f0) << 4) | (x & 0x000f_000f_000f_000f);
    // 1 in each byte whose nibble is 10 or more: those skip to 'a'.
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (x + 0x3030_3030_3030_3030 + letters * (b'a' - b'0' - 10) as u64).to_be_bytes()
}

/// Writes the lowercase hex form of `bytes` into `out` (twice as long).
#[inline]
pub(crate) fn encode_to_slice(bytes: &[u8], out: &mut [u8]) {
    let (words, rest) = bytes.as_chunks::<4>();
    let (eights, _) = out.as_chunks_mut::<8>();
    for (word, eight) in words.iter().zip(eights) {
        *eight = encode4(*word);
    }
    let out = &mut out[words.len() * 8..];
    for (pair, b) in out.chunks_exact_mut(2).zip(rest) {
        pair[0] = DIGITS[(b >> 4) as usize];
        pair[1] = DIGITS[(b & 0x0f) as usize];
    }
}

/// Appends the lowercase hex form of `bytes` to `out`.
pub(crate) fn encode_into(bytes: &[u8], out: &mut String) {
    let mut buf = [0u8; 64];
    for chunk in bytes.chunks(32) {
        encode_to_slice(chunk, &mut buf);
        // Only ASCII digits were written.
        out.push_str(std::str::from_utf8(&buf[..chunk.len() * 2]).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn word_encoder_matches_the_table() {
        let digits = |b: &[u8]| -> String {
            b.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .concat()
        };
        // Every byte value in every position of a word, and every length
        // (words plus a tail).
        for v in 0..=255u8 {
            for pos in 0..4 {
                let mut word = [0x5a; 4];
                word[pos] = v;
                let mut out = [0; 8];
                super::encode_to_slice(&word, &mut out);
                assert_eq!(std::str::from_utf8(&out).unwrap(), digits(&word));
            }
        }
        let bytes: Vec<u8> = (0..=255u8).rev().collect();
        for len in 0..=bytes.len() {
            let mut out = vec![b'-'; len * 2 + 1];
            super::encode_to_slice(&bytes[..len], &mut out);
            assert_eq!(&out[..len * 2], digits(&bytes[..len]).as_bytes());
            assert_eq!(out[len * 2], b'-', "wrote past its digits");
        }
    }

    /// The table decoder, one digit at a time: what `decode` must agree with.
    fn reference(s: &[u8]) -> Option<Vec<u8>> {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        s.chunks_exact(2)
            .map(|p| Some((digit(p[0])? << 4) | digit(p[1])?))
            .collect()
    }

    #[test]
    fn word_decoder_matches_the_reference() {
        // Every byte value in every position of an 8-digit word, amid
        // valid digits of every kind.
        for base in [*b"0123abcd", *b"9f9f9f9f", *b"a0b1c2d3"] {
            for pos in 0..8 {
                for v in 0..=255u8 {
                    let mut word = base;
                    word[pos] = v;
                    assert_eq!(
                        super::decode::<4>(&word).map(|b| b.to_vec()),
                        reference(&word),
                        "{word:?}"
                    );
                }
            }
        }
        // Two bad lanes at once, including ones whose sums would carry.
        for a in [0x00u8, 0x2f, 0x3a, 0x60, 0x67, 0x7f, 0x80, 0xff] {
            for b in [0x00u8, 0x2f, 0x3a, 0x60, 0x67, 0x7f, 0x80, 0xff] {
                let word = [b'1', a, b'2', b'3', b, b'4', b'5', b'6'];
                assert_eq!(super::decode::<4>(&word), None, "{word:?}");
            }
        }
        // Lengths that mix words and a tail.
        let digits = b"0123456789abcdef0123456789abcdef0123";
        for n in 0..=18 {
            assert_eq!(
                decode_n(n, &digits[..2 * n]),
                reference(&digits[..2 * n]),
                "{n}"
            );
        }
    }

    fn decode_n(n: usize, s: &[u8]) -> Option<Vec<u8>> {
        macro_rules! by_len {
            ($($len:literal)*) => {
                match n {
                    $($len => super::decode::<$len>(s).map(|b| b.to_vec()),)*
                    _ => unreachable!(),
                }
            };
        }
        by_len!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18)
    }

    #[test]
    fn round_trip_and_rejects() {
        let mut s = String::new();
        super::encode_into(&[0x00, 0x9a, 0xff, 0x10], &mut s);
        assert_eq!(s, "009aff10");
        assert_eq!(
            super::decode::<4>(s.as_bytes()),
            Some([0x00, 0x9a, 0xff, 0x10])
        );
        for bad in ["009AFF10", "009aff1g", "009aff1 ", "009aff1\u{0}"] {
            assert_eq!(super::decode::<4>(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(super::decode::<4>(b"009aff"), None);
        let long: Vec<u8> = (0..=255).collect();
        let mut s = String::new();
        super::encode_into(&long, &mut s);
        assert_eq!(
            super::decode::<256>(s.as_bytes()).map(|b| b.to_vec()),
            Some(long)
        );
    }
}
