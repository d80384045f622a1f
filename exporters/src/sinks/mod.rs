//! The one contract every output implements: a sink takes finished spans of profiling
//! (profiles, latency histograms, emberprof's health) without waiting on the network, and
//! can be flushed and closed at the end. `agent` hands it every interval, `record` every
//! `--export-interval` and at the end. Adding an output is one type implementing [`Sink`].

mod otlp;
mod pyroscope;
mod tally;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use emberprof_model::{Attributes, HealthCounter, Profile};

use crate::otlp::metrics::{CounterPoint, HistogramPoint};
use crate::ExportError;

pub use otlp::OtlpSink;
pub use pyroscope::PyroscopeSink;
pub use tally::Tally;

/// Everything one span of profiling produced.
#[derive(Clone, Copy, Debug)]
pub struct Span<'a> {
    /// One profile per kind recorded, covering `start..end`.
    pub profiles: &'a [Profile],
    /// Resource attributes of the processes in the profiles, by PID (already limited to
    /// what may leave emberprof).
    pub processes: &'a HashMap<u32, Attributes>,
    /// Latency histograms: totals since `run_start`, or since `start` for delta export.
    pub histograms: &'a [HistogramPoint],
    /// Event counts (probe hits, TCP events), with the histograms' temporality.
    pub counters: &'a [CounterPoint],
    /// emberprof's own counters now (totals since `run_start`).
    pub health: &'a [HealthCounter],
    /// When the recording (or the agent) started.
    pub run_start: SystemTime,
    pub start: SystemTime,
    pub end: SystemTime,
}

/// An output of spans.
pub trait Sink: Send {
    /// What and where, for logs and errors (`OTLP http://collector:4317`).
    fn describe(&self) -> String;

    /// Takes one span. Never waits on the network; local files may be written.
    fn submit(&mut self, span: &Span<'_>);

    /// Waits up to `timeout` for everything submitted to be delivered; an error says what
    /// was lost or is still undelivered.
    fn flush(&mut self, timeout: Duration) -> Result<(), ExportError>;

    /// The end: delivers what it can within `timeout`, then stops, counting whatever is
    /// left as lost so that its [`tally`](Self::tally) covers everything it was given.
    fn close(&mut self, timeout: Duration) -> Result<(), ExportError> {
        self.flush(timeout)
    }

    /// The sink's own health (delivery outcomes, queue).
    fn health(&self) -> Vec<HealthCounter> {
        Vec::new()
    }

    /// Whether its last delivery went through (or is still being retried).
    fn healthy(&self) -> bool {
        true
    }

    /// Whether it exports histograms as deltas (the histograms then start from zero after
    /// every span).
    fn delta_histograms(&self) -> bool {
        false
    }

    /// What it delivered so far, if it delivers over the network (for the end-of-run line).
    fn tally(&self) -> Option<Tally> {
        None
    }
}
