//! The gRPC-Web trailer block parser: arbitrary bytes never panic, names
//! and values never contain line breaks, and status parsing is total.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otel_tower::wire::Code;
use otel_tower::wire::grpc_web::{trailer, trailer_lines};

fuzz_target!(|data: &[u8]| {
    for (name, value) in trailer_lines(data) {
        assert!(!name.contains(&b'\n') && !value.contains(&b'\n'));
        assert!(!name.is_empty());
    }
    if let Some(status) = trailer(data, "grpc-status") {
        let _ = Code::from_grpc_status(status);
    }
    let _ = otel_tower::wire::decode_grpc_message(data);
});
