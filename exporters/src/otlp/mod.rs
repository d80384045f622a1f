//! OpenTelemetry (OTLP) messages: profiles (`v1development`, wire level of
//! opentelemetry-proto 1.10.0) and latency histograms as exponential-histogram metrics.

pub mod dictionary;
pub mod health;
pub mod metrics;
pub mod profiles;
pub mod pyroscope_check;
mod resource;
pub mod validate;

pub use opentelemetry_proto::tonic as proto;

/// The instrumentation scope every emberprof message carries.
pub(crate) fn scope() -> proto::common::v1::InstrumentationScope {
    proto::common::v1::InstrumentationScope {
        name: "emberprof".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        ..Default::default()
    }
}
