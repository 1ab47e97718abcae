//! The gRPC-Web trailers block: an HTTP/1-style header block in the last envelope.

/// Iterates the `name: value` lines of a trailers block. Names are returned
/// as written (compare case-insensitively); malformed lines are skipped.
pub fn trailer_lines(block: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    block.split(|&b| b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        let (name, value) = (line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
        (!name.is_empty()).then_some((name, value))
    })
}

/// The part of a block cut short that ends with its last line feed: the
/// lines known to be whole.
pub fn whole_lines(block: &[u8]) -> &[u8] {
    match block.iter().rposition(|&b| b == b'\n') {
        Some(end) => &block[..=end],
        None => &[],
    }
}

/// The value of `name` (lowercase) in a trailers block.
pub fn trailer<'a>(block: &'a [u8], name: &str) -> Option<&'a [u8]> {
    trailer_lines(block)
        .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block() {
        let b = b"grpc-status: 5\r\nGrpc-Message: not%20found\r\nbad line\r\n";
        assert_eq!(trailer(b, "grpc-status"), Some(&b"5"[..]));
        assert_eq!(trailer(b, "grpc-message"), Some(&b"not%20found"[..]));
        assert_eq!(trailer(b, "x"), None);
        assert_eq!(trailer(b"grpc-status:0", "grpc-status"), Some(&b"0"[..]));
    }

    #[test]
    fn a_cut_block_keeps_its_whole_lines() {
        let cut = b"grpc-message: x\r\ngrpc-status: 1";
        assert_eq!(whole_lines(cut), &b"grpc-message: x\r\n"[..]);
        assert_eq!(trailer(whole_lines(cut), "grpc-status"), None);
        assert_eq!(whole_lines(b"grpc-status: 1"), &b""[..]);
        assert_eq!(whole_lines(b"a: 1\n"), &b"a: 1\n"[..]);
    }
}
