//! What a network sink did with everything it was given, in the form every such sink
//! reports it: the end-of-run line, its health rows and whether the run lost data.

use std::time::Duration;

use emberprof_model::{HealthCounter, HealthValue};

use crate::delivery::PipelineStats;
use crate::ExportError;

/// Delivery outcomes of one destination. Once its sink is closed, `sent + failed + dropped`
/// is everything it was given; tallies of one destination add up across reloads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// What a delivered item is called in the summary ("batches sent", "profiles pushed").
    pub noun: &'static str,
    pub sent: u64,
    pub sent_bytes: u64,
    pub retries: u64,
    /// Given up: refused for good, retried too long, or in flight when the sink closed.
    pub failed: u64,
    /// Dropped from a full queue, or still queued when the sink closed.
    pub dropped: u64,
    /// Items the receiver refused inside delivered batches (OTLP partial success).
    pub rejected: Option<u64>,
}

impl Tally {
    /// The tally of a pipeline's counters.
    pub fn of(noun: &'static str, s: &PipelineStats, counts_rejected: bool) -> Tally {
        Tally {
            noun,
            sent: s.sent,
            sent_bytes: s.sent_bytes,
            retries: s.retries,
            failed: s.failed,
            dropped: s.dropped,
            rejected: counts_rejected.then_some(s.rejected_items),
        }
    }

    /// Both tallies together (the same destination before and after a reload).
    pub fn add(&mut self, other: &Tally) {
        self.sent += other.sent;
        self.sent_bytes += other.sent_bytes;
        self.retries += other.retries;
        self.failed += other.failed;
        self.dropped += other.dropped;
        if let Some(o) = other.rejected {
            *self.rejected.get_or_insert(0) += o;
        }
    }

    /// The end-of-run line: `emberprof: OTLP URL: 12 batches sent (3456 bytes), …`.
    pub fn line(&self, destination: &str) -> String {
        let mut line = format!(
            "emberprof: {destination}: {} {} ({} bytes), {} retries, {} failed, {} dropped",
            self.sent, self.noun, self.sent_bytes, self.retries, self.failed, self.dropped
        );
        if let Some(r) = self.rejected {
            line.push_str(&format!(", {r} items rejected"));
        }
        line
    }

    /// Whether anything given was not delivered.
    pub fn lost(&self) -> bool {
        self.failed > 0 || self.dropped > 0
    }
}

/// The outcome of flushing or closing a pipeline within `timeout` (`done`: nothing was
/// left), as the error a run ends with: what was lost, and whether it ran out of time.
pub(super) fn delivery_result(
    destination: &str,
    tally: &Tally,
    done: bool,
    timeout: Duration,
) -> Result<(), ExportError> {
    let late = format!(
        "delivery did not finish in the {:.1} s it had (is it up?)",
        timeout.as_secs_f64()
    );
    match (tally.lost(), done) {
        (false, true) => Ok(()),
        (false, false) => Err(ExportError::Undelivered(format!("{destination}: {late}"))),
        (true, _) => Err(ExportError::Undelivered(format!(
            "{destination} lost data ({} failed, {} dropped){}",
            tally.failed,
            tally.dropped,
            if done {
                String::new()
            } else {
                format!("; {late}")
            }
        ))),
    }
}

/// Health rows of a pipeline: `name{result=sent|failed|dropped|retried}` and the queue's
/// bytes as `queue_name`.
pub(super) fn health_rows(
    s: &PipelineStats,
    name: &'static str,
    description: &'static str,
    unit: &'static str,
    queue_name: &'static str,
) -> Vec<HealthCounter> {
    let mut out: Vec<HealthCounter> = [
        ("sent", s.sent),
        ("failed", s.failed),
        ("dropped", s.dropped),
        ("retried", s.retries),
    ]
    .into_iter()
    .map(|(result, n)| HealthCounter {
        name,
        description,
        unit,
        attributes: vec![("result", result.to_string())],
        value: HealthValue::Count(n),
    })
    .collect();
    out.push(HealthCounter {
        name: queue_name,
        description: "Bytes waiting in the delivery queue",
        unit: "By",
        attributes: Vec::new(),
        value: HealthValue::Level(s.queued_bytes as f64),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_of_one_destination_add_up_and_report_losses() {
        let mut t = Tally {
            noun: "batches sent",
            sent: 3,
            sent_bytes: 300,
            retries: 1,
            rejected: Some(2),
            ..Tally::default()
        };
        t.add(&Tally {
            noun: "batches sent",
            sent: 2,
            sent_bytes: 50,
            dropped: 4,
            rejected: Some(1),
            ..Tally::default()
        });
        assert_eq!(
            t.line("OTLP http://c:4317"),
            "emberprof: OTLP http://c:4317: 5 batches sent (350 bytes), 1 retries, 0 failed, 4 dropped, 3 items rejected"
        );
        assert!(t.lost());
        let err = delivery_result("OTLP http://c:4317", &t, false, Duration::from_secs(2));
        let msg = err.unwrap_err().to_string();
        assert!(
            msg.contains("0 failed, 4 dropped") && msg.contains("in the 2.0 s it had"),
            "{msg}"
        );
        let clean = Tally {
            sent: 1,
            ..Tally::default()
        };
        assert!(delivery_result("x", &clean, true, Duration::ZERO).is_ok());
    }
}
