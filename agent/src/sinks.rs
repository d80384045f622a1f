//! The sinks of a run, one list whatever they are (files, a pprof directory, OTLP,
//! Pyroscope): every span goes to each, and each reports its own health. The end-of-run
//! lines count everything a destination was given during the whole run, including what
//! sinks replaced by a reload delivered or lost after they were let go.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use emberprof_exporters::sinks::{Sink, Span, Tally};
use emberprof_exporters::ExportError;
use emberprof_model::HealthCounter;

/// How long a sink replaced by a reload may go on delivering what it holds.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Sinks a reload replaced, closing on their own thread; each gives itself back with how
/// its closing went.
type Retiring = JoinHandle<Vec<(Box<dyn Sink>, Result<(), ExportError>)>>;

/// Every configured output.
#[derive(Default)]
pub struct Sinks {
    sinks: Vec<Box<dyn Sink>>,
    retiring: Vec<Retiring>,
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

    /// Ends the run's delivery: every sink gets until `deadline` (one budget for all of
    /// them) to deliver what it holds, then stops; prints each destination's end-of-run
    /// line. The first loss or failure is returned.
    pub fn close(self, deadline: Instant) -> anyhow::Result<()> {
        let (closed, first) = self.close_all(deadline);
        for line in summary_lines(&closed) {
            eprintln!("{line}");
        }
        match first {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Closes every sink, the retiring ones included, by `deadline`; returns them and the
    /// first loss or failure.
    fn close_all(mut self, deadline: Instant) -> (Vec<Box<dyn Sink>>, Option<ExportError>) {
        let mut first: Option<ExportError> = None;
        let mut closed: Vec<Box<dyn Sink>> = Vec::new();
        for retiring in std::mem::take(&mut self.retiring) {
            while !retiring.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if !retiring.is_finished() {
                tracing::warn!(
                    "sinks replaced by a reload are still closing; their counts are left out"
                );
                continue;
            }
            for (sink, result) in retiring.join().unwrap_or_default() {
                if let Err(e) = result {
                    first.get_or_insert(e);
                }
                closed.push(sink);
            }
        }
        for mut s in std::mem::take(&mut self.sinks) {
            if let Err(e) = s.close(deadline.saturating_duration_since(Instant::now())) {
                tracing::warn!(sink = %s.describe(), error = %e, "not everything was delivered");
                first.get_or_insert(e);
            }
            closed.push(s);
        }
        (closed, first)
    }

    /// Puts `fresh` in place of the current sinks (a reload). The old ones get a few seconds
    /// to deliver what they hold, off the calling thread; their counts stay in the run's
    /// end-of-run lines.
    pub fn replace(&mut self, fresh: Sinks) {
        let old = std::mem::take(&mut self.sinks);
        let mut retiring = std::mem::take(&mut self.retiring);
        retiring.extend(fresh.retiring);
        self.sinks = fresh.sinks;
        self.retiring = retiring;
        let handle = std::thread::Builder::new()
            .name("emberprof-retire".into())
            .spawn(move || {
                old.into_iter()
                    .map(|mut s| {
                        let result = s.close(RETIRE_TIMEOUT);
                        if let Err(e) = &result {
                            tracing::warn!(sink = %s.describe(), error = %e,
                                "replaced exporter closed with data undelivered");
                        }
                        (s, result)
                    })
                    .collect()
            });
        match handle {
            Ok(h) => self.retiring.push(h),
            Err(e) => tracing::warn!(error = %e, "cannot start closing the replaced exporters"),
        }
    }

    /// The sinks' own health.
    pub fn health(&self) -> Vec<HealthCounter> {
        self.sinks.iter().flat_map(|s| s.health()).collect()
    }

    /// Whether every sink can deliver: its last delivery went through (or is still being
    /// retried) and its endpoint is not set up wrong.
    pub fn healthy(&self) -> bool {
        self.sinks.iter().all(|s| s.healthy())
    }

    /// Whether a sink exports histograms as deltas.
    pub fn delta_histograms(&self) -> bool {
        self.sinks.iter().any(|s| s.delta_histograms())
    }
}

/// One line per destination, its tallies added up over every sink that delivered to it.
fn summary_lines(sinks: &[Box<dyn Sink>]) -> Vec<String> {
    let mut totals: Vec<(String, Tally)> = Vec::new();
    for s in sinks {
        let Some(t) = s.tally() else { continue };
        let destination = s.describe();
        match totals.iter_mut().find(|(d, _)| *d == destination) {
            Some((_, total)) => total.add(&t),
            None => totals.push((destination, t)),
        }
    }
    totals.iter().map(|(d, t)| t.line(d)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that only counts.
    struct Counting(&'static str, u64, u64);

    impl Sink for Counting {
        fn describe(&self) -> String {
            self.0.to_string()
        }
        fn submit(&mut self, _: &Span<'_>) {}
        fn flush(&mut self, _: Duration) -> Result<(), ExportError> {
            Ok(())
        }
        fn tally(&self) -> Option<Tally> {
            Some(Tally {
                noun: "batches sent",
                sent: self.1,
                dropped: self.2,
                ..Tally::default()
            })
        }
    }

    #[test]
    fn a_destination_reloaded_is_one_line_with_every_sink_counted() {
        let sinks: Vec<Box<dyn Sink>> = vec![
            Box::new(Counting("OTLP a", 3, 1)),
            Box::new(Counting("Pyroscope b", 2, 0)),
            Box::new(Counting("OTLP a", 4, 0)),
        ];
        let lines = summary_lines(&sinks);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("emberprof: OTLP a: 7 batches sent"),
            "{lines:?}"
        );
        assert!(lines[0].contains("1 dropped"), "{lines:?}");
    }

    #[test]
    fn replaced_sinks_are_closed_and_still_counted_at_the_end() {
        let mut sinks = Sinks::default();
        sinks.push(Box::new(Counting("OTLP a", 3, 0)));
        let mut fresh = Sinks::default();
        fresh.push(Box::new(Counting("OTLP a", 1, 0)));
        sinks.replace(fresh);
        assert_eq!(sinks.sinks.len(), 1);
        assert_eq!(sinks.retiring.len(), 1);
        let (closed, first) = sinks.close_all(Instant::now() + Duration::from_secs(5));
        assert!(first.is_none());
        assert_eq!(
            summary_lines(&closed),
            vec!["emberprof: OTLP a: 4 batches sent (0 bytes), 0 retries, 0 failed, 0 dropped"]
        );
    }
}
