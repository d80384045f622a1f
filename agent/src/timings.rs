//! Where the sampling thread's time goes in one agent interval: draining the kernel maps,
//! symbolizing the drained stacks into the profiles, and closing the interval (encoding it
//! and handing it to the sinks). One debug event per interval, target `emberprof::timings`
//! (`EMBERPROF_LOG=emberprof::timings=debug`); the scale benchmark in bench/ reads it.

use std::time::{Duration, Instant};

/// Wall time of each phase since the interval began.
#[derive(Default)]
pub struct IntervalTimings {
    drain: Duration,
    symbolize: Duration,
    /// Kernel count-map entries drained: the unit of work of draining and symbolizing.
    entries: usize,
}

/// What an interval's profiles hold, read before they are closed.
pub struct IntervalSize {
    /// Unique stacks over all profiles.
    pub stacks: usize,
    /// Distinct processes over all profiles.
    pub processes: usize,
}

impl IntervalTimings {
    /// Times one read of the kernel maps.
    pub fn drain<T>(&mut self, read: impl FnOnce() -> T) -> T {
        let began = Instant::now();
        let out = read();
        self.drain += began.elapsed();
        out
    }

    /// Times symbolizing `entries` drained entries and adding them to a profile.
    pub fn symbolize<T>(&mut self, entries: usize, add: impl FnOnce() -> T) -> T {
        let began = Instant::now();
        let out = add();
        self.symbolize += began.elapsed();
        self.entries += entries;
        out
    }

    /// Logs the interval just closed, whose closing took `encode`, and starts the next.
    pub fn finish(&mut self, size: IntervalSize, encode: Duration) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(
            target: "emberprof::timings",
            drain_ms = ms(self.drain),
            symbolize_ms = ms(self.symbolize),
            encode_ms = ms(encode),
            entries = self.entries,
            stacks = size.stacks,
            processes = size.processes,
            "interval"
        );
        *self = IntervalTimings::default();
    }
}
