//! A latency histogram: the kernel's log2 slots summed over CPUs and drains. Slot `s`
//! covers `(2^(s-1), 2^s]` ns (lower bound exclusive, upper inclusive), slot 0 `(0.5, 1]`;
//! durations of exactly 0 ns, which the clock's resolution makes possible, are counted
//! apart. The last slot also takes anything above its upper bound (2^63 ns, centuries),
//! which no real duration reaches. (How this maps onto OTLP exponential histograms is
//! stated in emberprof-exporters' `otlp::metrics`.)

/// Slots of a histogram (the kernel's `EP_HIST_SLOTS`).
pub const HIST_SLOTS: usize = 64;

/// A log2 histogram of durations in nanoseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log2Histogram {
    slots: [u64; HIST_SLOTS],
    zero: u64,
    sum_ns: u64,
}

impl Default for Log2Histogram {
    fn default() -> Self {
        Log2Histogram {
            slots: [0; HIST_SLOTS],
            zero: 0,
            sum_ns: 0,
        }
    }
}

impl Log2Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one CPU's kernel histogram: its slots, zero durations and sum.
    pub fn add_slots(&mut self, slots: &[u64; HIST_SLOTS], zero: u64, sum_ns: u64) {
        for (mine, theirs) in self.slots.iter_mut().zip(slots.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
        self.zero = self.zero.saturating_add(zero);
        self.sum_ns = self.sum_ns.saturating_add(sum_ns);
    }

    /// Adds another histogram.
    pub fn merge(&mut self, other: &Log2Histogram) {
        for (mine, theirs) in self.slots.iter_mut().zip(other.slots.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
        self.zero = self.zero.saturating_add(other.zero);
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }

    /// Records one duration the way the kernel does (for tests and synthetic data).
    pub fn record(&mut self, ns: u64) {
        if ns == 0 {
            self.zero += 1;
        } else {
            self.slots[Self::slot_of(ns)] += 1;
        }
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    /// The slot holding a duration > 0: ceil(log2(ns)), clamped to the last slot.
    pub fn slot_of(ns: u64) -> usize {
        if ns <= 1 {
            return 0;
        }
        let ceil_log2 = 64 - (ns - 1).leading_zeros() as usize;
        ceil_log2.min(HIST_SLOTS - 1)
    }

    /// Bounds of a slot in ns: (lower exclusive, upper inclusive) = (2^(s-1), 2^s].
    pub fn slot_bounds(slot: usize) -> (f64, f64) {
        let upper = 2f64.powi(slot as i32);
        (upper / 2.0, upper)
    }

    /// Per-slot counts; slot `s` covers [`Log2Histogram::slot_bounds`]`(s)`.
    pub fn slots(&self) -> &[u64; HIST_SLOTS] {
        &self.slots
    }

    /// Durations of exactly 0 ns.
    pub fn zero_count(&self) -> u64 {
        self.zero
    }

    /// Number of recorded durations.
    pub fn count(&self) -> u64 {
        self.slots
            .iter()
            .fold(self.zero, |acc, &c| acc.saturating_add(c))
    }

    /// Sum of recorded durations, ns.
    pub fn sum_ns(&self) -> u64 {
        self.sum_ns
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// Estimate of the q-quantile (0 < q <= 1) in ns, interpolating linearly inside the
    /// bucket that holds it; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * count as f64).max(1.0);
        let mut seen = self.zero as f64;
        if rank <= seen {
            return Some(0.0);
        }
        for (slot, &c) in self.slots.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if rank <= seen + c as f64 {
                let (lo, hi) = Self::slot_bounds(slot);
                return Some(lo + (hi - lo) * (rank - seen) / c as f64);
            }
            seen += c as f64;
        }
        Some(Self::slot_bounds(HIST_SLOTS - 1).1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_ceil_log2_and_bounded() {
        for (ns, slot) in [
            (1, 0),
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 3),
            (1024, 10),
            (1025, 11),
        ] {
            assert_eq!(Log2Histogram::slot_of(ns), slot, "{ns}");
            let (lo, hi) = Log2Histogram::slot_bounds(slot);
            assert!(lo < ns as f64 && ns as f64 <= hi, "{ns} in ({lo}, {hi}]");
        }
        assert_eq!(Log2Histogram::slot_of(u64::MAX), HIST_SLOTS - 1);
    }

    #[test]
    fn empty_histogram_has_no_quantiles() {
        let h = Log2Histogram::new();
        assert!(h.is_empty());
        assert_eq!(h.quantile(0.5), None);
    }

    #[test]
    fn quantiles_fall_in_the_right_bucket() {
        let mut h = Log2Histogram::new();
        for _ in 0..90 {
            h.record(1_500); // (1024, 2048]
        }
        for _ in 0..10 {
            h.record(1_000_000); // (524288, 1048576]
        }
        let p50 = h.quantile(0.5).unwrap();
        assert!(p50 > 1024.0 && p50 <= 2048.0, "{p50}");
        let p90 = h.quantile(0.9).unwrap();
        assert!(p90 > 1024.0 && p90 <= 2048.0, "{p90}");
        let p99 = h.quantile(0.99).unwrap();
        assert!(p99 > 524_288.0 && p99 <= 1_048_576.0, "{p99}");
    }

    #[test]
    fn kernel_cpus_and_drains_add_up() {
        let mut cpu0 = [0u64; HIST_SLOTS];
        cpu0[3] = 2;
        let mut cpu1 = [0u64; HIST_SLOTS];
        cpu1[3] = 1;
        let mut first = Log2Histogram::new();
        first.add_slots(&cpu0, 0, 10);
        let mut second = Log2Histogram::new();
        second.add_slots(&cpu1, 1, 6);
        first.merge(&second);
        assert_eq!(first.slots()[3], 3);
        assert_eq!(first.count(), 4);
        assert_eq!(first.sum_ns(), 16);
    }
}
