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
pub(crate) fn decode<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    // One check at the end instead of a branch per digit.
    let mut invalid = 0u8;
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let (hi, lo) = (NIBBLES[pair[0] as usize], NIBBLES[pair[1] as usize]);
        invalid |= (hi | lo) & 0xf0;
        *o = (hi << 4) | (lo & 0x0f);
    }
    (invalid == 0).then_some(out)
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Writes the lowercase hex form of `bytes` into `out` (twice as long).
pub(crate) fn encode_to_slice(bytes: &[u8], out: &mut [u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
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
