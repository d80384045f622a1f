//! Getting batches to an OTLP collector: configuration from the standard environment
//! variables, a gRPC client with retries, and a byte-bounded queue drained by a background
//! worker so that a slow or absent collector never blocks the caller.

mod client;
mod config;
pub(crate) mod pipeline;
mod queue;
mod retry;
mod transport_fault;

pub use client::{OtlpClient, SendError};
pub use config::{ConfigError, OtlpConfig};
pub use pipeline::{Batch, Limits, OtlpTransport, Pipeline, PipelineStats, Transport};
pub use queue::ByteQueue;

#[cfg(test)]
mod tests;
