//! The RPC status code table: gRPC numbers and names, Connect codes, HTTP fallbacks.

use super::Protocol;

/// A gRPC / Connect status code (the two protocols share one code space).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Code {
    /// 0, success (Connect has no name for it).
    Ok = 0,
    /// 1 CANCELLED / canceled.
    Cancelled = 1,
    /// 2 UNKNOWN / unknown.
    Unknown = 2,
    /// 3 INVALID_ARGUMENT / invalid_argument.
    InvalidArgument = 3,
    /// 4 DEADLINE_EXCEEDED / deadline_exceeded.
    DeadlineExceeded = 4,
    /// 5 NOT_FOUND / not_found.
    NotFound = 5,
    /// 6 ALREADY_EXISTS / already_exists.
    AlreadyExists = 6,
    /// 7 PERMISSION_DENIED / permission_denied.
    PermissionDenied = 7,
    /// 8 RESOURCE_EXHAUSTED / resource_exhausted.
    ResourceExhausted = 8,
    /// 9 FAILED_PRECONDITION / failed_precondition.
    FailedPrecondition = 9,
    /// 10 ABORTED / aborted.
    Aborted = 10,
    /// 11 OUT_OF_RANGE / out_of_range.
    OutOfRange = 11,
    /// 12 UNIMPLEMENTED / unimplemented.
    Unimplemented = 12,
    /// 13 INTERNAL / internal.
    Internal = 13,
    /// 14 UNAVAILABLE / unavailable.
    Unavailable = 14,
    /// 15 DATA_LOSS / data_loss.
    DataLoss = 15,
    /// 16 UNAUTHENTICATED / unauthenticated.
    Unauthenticated = 16,
}

const ALL: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

const GRPC_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

const CONNECT_NAMES: [&str; 17] = [
    "ok",
    "canceled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];

impl Code {
    /// Every code, in numeric order.
    pub const ALL: [Code; 17] = ALL;

    /// The code for a gRPC number; `None` outside 0..=16.
    pub fn from_i32(n: i32) -> Option<Code> {
        usize::try_from(n).ok().and_then(|i| ALL.get(i).copied())
    }

    /// Parses a `grpc-status` value: ASCII digits only (leading zeros
    /// allowed), no sign or spaces inside; anything else (or out of range)
    /// is `None`.
    pub fn from_grpc_status(value: &[u8]) -> Option<Code> {
        let value = value.trim_ascii();
        if value.is_empty() {
            return None;
        }
        let n = value.iter().try_fold(0i32, |n, &d| {
            // Anything past 16 is out of range: stop before overflowing.
            (d.is_ascii_digit() && n <= 16).then(|| n * 10 + i32::from(d - b'0'))
        })?;
        Code::from_i32(n)
    }

    /// The code for a Connect code string (`not_found`); `ok` is not a
    /// Connect error code and is rejected.
    pub fn from_connect(name: &str) -> Option<Code> {
        CONNECT_NAMES[1..]
            .iter()
            .position(|n| *n == name)
            .map(|i| ALL[i + 1])
    }

    /// The gRPC number.
    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// The canonical gRPC name (`NOT_FOUND`).
    pub fn grpc_name(self) -> &'static str {
        GRPC_NAMES[self as usize]
    }

    /// The Connect code (`not_found`); `ok` for [`Code::Ok`].
    pub fn connect_name(self) -> &'static str {
        CONNECT_NAMES[self as usize]
    }

    /// The HTTP status Connect uses for a unary error with this code.
    pub fn connect_http_status(self) -> u16 {
        match self {
            Code::Ok => 200,
            Code::Cancelled => 499,
            Code::Unknown | Code::Internal | Code::DataLoss => 500,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::Unimplemented => 501,
            Code::Unavailable => 503,
            Code::Unauthenticated => 401,
        }
    }

    /// The code inferred from an HTTP status when no explicit code is
    /// available (lossy; always prefer an explicit code). The tables of gRPC
    /// and Connect differ in one place: 431 is `internal` for gRPC only.
    pub fn from_http_status(status: u16, protocol: Protocol) -> Code {
        match status {
            200 => Code::Ok,
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502 | 503 | 504 => Code::Unavailable,
            431 if protocol.is_grpc() => Code::Internal,
            _ => Code::Unknown,
        }
    }

    /// Whether the server side treats this code as a server error
    /// (span status Error); client mistakes are not.
    pub fn is_server_error(self) -> bool {
        matches!(
            self,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for code in Code::ALL {
            assert_eq!(Code::from_i32(code.as_i32()), Some(code));
            if code != Code::Ok {
                assert_eq!(Code::from_connect(code.connect_name()), Some(code));
            }
        }
        assert_eq!(Code::from_connect("ok"), None);
        assert_eq!(Code::from_connect("NOT_FOUND"), None);
    }

    #[test]
    fn grpc_status_parsing() {
        assert_eq!(Code::from_grpc_status(b"5"), Some(Code::NotFound));
        assert_eq!(Code::from_grpc_status(b" 16 "), Some(Code::Unauthenticated));
        assert_eq!(Code::from_grpc_status(b"0000"), Some(Code::Ok));
        assert_eq!(Code::from_grpc_status(b"00012"), Some(Code::Unimplemented));
        for bad in [
            &b"99"[..],
            b"-1",
            b"abc",
            b"",
            b"+1",
            b"1 2",
            b"00017",
            b"170",
            b"99999999999999999999",
        ] {
            assert_eq!(Code::from_grpc_status(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn http_status_fallback_differs_only_for_431() {
        for status in [200, 400, 401, 403, 404, 429, 500, 502, 503, 504, 418] {
            assert_eq!(
                Code::from_http_status(status, Protocol::Grpc),
                Code::from_http_status(status, Protocol::ConnectUnary),
                "{status}"
            );
        }
        assert_eq!(Code::from_http_status(431, Protocol::Grpc), Code::Internal);
        assert_eq!(
            Code::from_http_status(431, Protocol::ConnectUnary),
            Code::Unknown
        );
    }
}
