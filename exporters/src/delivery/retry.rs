//! When and how long to wait before sending again, per the OTLP specification: retry
//! UNAVAILABLE and the other transient codes, RESOURCE_EXHAUSTED only when the server says
//! when (RetryInfo); back off exponentially with jitter otherwise.

use std::time::Duration;

use prost::Message;
use tonic::Code;

/// `google.rpc.Status`, the payload of the `grpc-status-details-bin` trailer.
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<Any>,
}

#[derive(Clone, PartialEq, Message)]
struct Any {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// The server's requested delay from a status's RetryInfo detail, if any.
pub(crate) fn retry_info(details: &[u8]) -> Option<Duration> {
    let status = RpcStatus::decode(details).ok()?;
    status
        .details
        .iter()
        .filter(|a| a.type_url.ends_with("google.rpc.RetryInfo"))
        .find_map(|a| RetryInfo::decode(a.value.as_slice()).ok()?.retry_delay)
        .map(|d| {
            Duration::from_secs(d.seconds.max(0) as u64)
                + Duration::from_nanos(d.nanos.max(0) as u64)
        })
}

/// Whether a failed export may be sent again, and the server's delay if it gave one.
pub(crate) fn retryable(code: Code, details: &[u8]) -> (bool, Option<Duration>) {
    let hint = retry_info(details);
    let retry = match code {
        Code::Unavailable
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::DataLoss => true,
        Code::ResourceExhausted => hint.is_some(),
        _ => false,
    };
    (retry, hint)
}

/// Delay before attempt `attempt` (1 = first retry): initial x 2^(attempt-1), capped, with
/// ±20% jitter so that many agents do not retry in lockstep. `unit` in [0, 1) is the random
/// draw.
pub(crate) fn backoff(attempt: u32, initial: Duration, max: Duration, unit: f64) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let base = exp.min(max);
    base.mul_f64(0.8 + 0.4 * unit.clamp(0.0, 1.0))
}

/// A random number in [0, 1) for jitter.
pub(crate) fn jitter_unit() -> f64 {
    (crate::random::random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// `grpc-status-details-bin` asking for a retry after `secs` (for tests).
#[cfg(test)]
pub(crate) fn details_with_delay(secs: i64) -> Vec<u8> {
    let info = RetryInfo {
        retry_delay: Some(ProtoDuration {
            seconds: secs,
            nanos: 0,
        }),
    };
    RpcStatus {
        code: Code::ResourceExhausted as i32,
        message: "slow down".into(),
        details: vec![Any {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: info.encode_to_vec(),
        }],
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_codes_like_the_otlp_spec() {
        assert_eq!(retryable(Code::Unavailable, &[]), (true, None));
        assert_eq!(retryable(Code::ResourceExhausted, &[]), (false, None));
        assert_eq!(
            retryable(Code::ResourceExhausted, &details_with_delay(3)),
            (true, Some(Duration::from_secs(3)))
        );
        assert_eq!(retryable(Code::InvalidArgument, &[]), (false, None));
        assert_eq!(retryable(Code::Unauthenticated, &[]), (false, None));
        assert_eq!(retry_info(b"\xff\xff garbage"), None);
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(backoff(1, i, m, 0.5), Duration::from_millis(100));
        assert_eq!(backoff(2, i, m, 0.5), Duration::from_millis(200));
        assert_eq!(backoff(5, i, m, 0.5), Duration::from_secs(1));
        assert_eq!(backoff(40, i, m, 0.5), Duration::from_secs(1));
        assert_eq!(backoff(1, i, m, 0.0), Duration::from_millis(80));
        assert!(backoff(1, i, m, 0.999) < Duration::from_millis(120));
        let u = jitter_unit();
        assert!((0.0..1.0).contains(&u));
    }
}
