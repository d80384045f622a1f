//! The sinks of a run, one list whatever they are (files, a pprof directory, OTLP,
//! Pyroscope): every span goes to each, and each reports its own health and end-of-run line.

use std::time::Duration;

use emberprof_exporters::sinks::{Sink, Span};
use emberprof_model::HealthCounter;

/// Every configured output.
#[derive(Default)]
pub struct Sinks {
    sinks: Vec<Box<dyn Sink>>,
}

impl Sinks {
    /// Adds an output.
    pub fn push(&mut self, sink: Box<dyn Sink>) {
        self.sinks.push(sink);
    }

    /// Whether there is no output at all.
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Hands one span to every sink; none waits on the network.
    pub fn submit(&mut self, span: &Span<'_>) {
        for s in &mut self.sinks {
            s.submit(span);
        }
    }

    /// Waits up to `timeout` for deliveries under way, reporting nothing (failures show at
    /// the final [`flush`](Self::flush)).
    pub fn settle(&mut self, timeout: Duration) {
        let _ = self.flush_and_report(timeout, false);
    }

    /// Gives every sink up to `timeout` to deliver what it holds, all of them even when one
    /// fails; prints each sink's end-of-run line. The first failure is returned.
    pub fn flush(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.flush_and_report(timeout, true)
    }

    fn flush_and_report(&mut self, timeout: Duration, report: bool) -> anyhow::Result<()> {
        let mut first = None;
        for s in &mut self.sinks {
            let result = s.flush(timeout);
            if let (true, Some(line)) = (report, s.summary()) {
                eprintln!("{line}");
            }
            if let Err(e) = result {
                tracing::warn!(sink = %s.describe(), error = %e, "not everything was delivered");
                first.get_or_insert(e);
            }
        }
        match first {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// The sinks' own health.
    pub fn health(&self) -> Vec<HealthCounter> {
        self.sinks.iter().flat_map(|s| s.health()).collect()
    }

    /// Whether every sink's last delivery went through.
    pub fn healthy(&self) -> bool {
        self.sinks.iter().all(|s| s.healthy())
    }

    /// Whether a sink exports histograms as deltas.
    pub fn delta_histograms(&self) -> bool {
        self.sinks.iter().any(|s| s.delta_histograms())
    }

    /// Lets the current sinks go (replaced on a reload), giving them `timeout` to deliver
    /// what they hold, off the calling thread.
    pub fn close_in_background(self, timeout: Duration) {
        std::thread::spawn(move || {
            let mut sinks = self;
            if let Err(e) = sinks.flush_and_report(timeout, false) {
                tracing::warn!(error = %format!("{e:#}"), "old exporters closed with data undelivered");
            }
        });
    }
}
