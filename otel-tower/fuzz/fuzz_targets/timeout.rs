//! Timeout headers: parsing is total and agrees with the grammar.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otel_tower::wire::timeout::{parse_connect_timeout, parse_grpc_timeout};

fuzz_target!(|data: &[u8]| {
    if let Some(d) = parse_connect_timeout(data) {
        assert!(data.len() <= 10 && data.iter().all(u8::is_ascii_digit));
        assert!(d.as_millis() <= 9_999_999_999);
    }
    if parse_grpc_timeout(data).is_some() {
        let (unit, digits) = data.split_last().unwrap();
        assert!(b"HMSmun".contains(unit));
        assert!(!digits.is_empty() && digits.len() <= 8 && digits.iter().all(u8::is_ascii_digit));
    }
});
