//! Request timeout headers: `grpc-timeout` and `connect-timeout-ms`.

use std::time::Duration;

/// Parses `grpc-timeout`: 1 to 8 ASCII digits and a unit `H M S m u n`.
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    let n = parse_digits(digits, 8)?;
    Some(match unit {
        b'H' => Duration::from_secs(n.checked_mul(3600)?),
        b'M' => Duration::from_secs(n.checked_mul(60)?),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Parses `connect-timeout-ms`: 1 to 10 ASCII digits, milliseconds.
pub fn parse_connect_timeout(value: &[u8]) -> Option<Duration> {
    parse_digits(value, 10).map(Duration::from_millis)
}

fn parse_digits(digits: &[u8], max: usize) -> Option<u64> {
    if digits.is_empty() || digits.len() > max || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

/// The timeout a request carries, from the header its protocol uses.
pub fn request_timeout(
    headers: &http::HeaderMap,
    protocol: super::Protocol,
) -> Option<std::time::Duration> {
    if protocol.is_grpc() {
        super::headers::get(headers, &super::names::GRPC_TIMEOUT)
            .and_then(|v| parse_grpc_timeout(v.as_bytes()))
    } else {
        super::headers::get(headers, &super::names::CONNECT_TIMEOUT_MS)
            .and_then(|v| parse_connect_timeout(v.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_units() {
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_grpc_timeout(b"100m"),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            parse_grpc_timeout(b"99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout(b"5n"), Some(Duration::from_nanos(5)));
        for bad in [
            &b"123456789S"[..],
            b"S",
            b"",
            b"1x",
            b"-1S",
            b"1.5S",
            b" 1S",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None);
        }
    }

    #[test]
    fn connect_ms() {
        assert_eq!(
            parse_connect_timeout(b"1500"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_connect_timeout(b"9999999999"),
            Some(Duration::from_millis(9_999_999_999))
        );
        assert_eq!(parse_connect_timeout(b"99999999999"), None);
        assert_eq!(parse_connect_timeout(b""), None);
        assert_eq!(parse_connect_timeout(b"1s"), None);
    }
}
