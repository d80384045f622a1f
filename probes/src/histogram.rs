//! The user-space latency histogram: the kernel's log2 slots summed over CPUs and drains.
//!
//! Bucket boundaries, in nanoseconds, and their OTLP mapping. An OpenTelemetry
//! `ExponentialHistogramDataPoint` at scale 0 has base 2 and bucket index `i` covering
//! `(2^i, 2^(i+1)]` (lower bound exclusive, upper inclusive). Slot `s` here covers
//! `(2^(s-1), 2^s]` ns, so slot `s` is OTLP index `s - 1`:
//! - `zero_count` = [`Log2Histogram::zero_count`] (durations of exactly 0 ns, which the
//!   clock's resolution makes possible); `zero_threshold` = 0;
//! - `positive.offset` = -1 + the first non-empty slot, `positive.bucket_counts` = the
//!   slots from there to the last non-empty one; `negative` is empty (no negative durations);
//! - `count` = [`Log2Histogram::count`], `sum` = [`Log2Histogram::sum_ns`].
//!
//! The last slot also takes anything above its upper bound (2^63 ns, centuries), which no
//! real duration reaches.

use crate::abi::{Hist, HIST_SLOTS};

/// Buckets of an OTLP exponential histogram data point (scale 0, positive range only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpExponentialBuckets {
    /// Always 0: base 2.
    pub scale: i32,
    /// Count of zero durations.
    pub zero_count: u64,
    /// OTLP index of `bucket_counts[0]`.
    pub offset: i32,
    /// Counts of consecutive buckets from `offset`.
    pub bucket_counts: Vec<u64>,
    /// Total count, zero bucket included.
    pub count: u64,
    /// Sum of all durations, ns.
    pub sum: u64,
}

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

    /// Adds one CPU's kernel histogram.
    pub fn add_kernel(&mut self, h: &Hist) {
        for (mine, theirs) in self.slots.iter_mut().zip(h.slots.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
        self.zero = self.zero.saturating_add(h.zero);
        self.sum_ns = self.sum_ns.saturating_add(h.sum_ns);
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

    /// The same data as an OTLP exponential histogram at scale 0 (see the module docs).
    pub fn to_otlp(&self) -> OtlpExponentialBuckets {
        let first = self.slots.iter().position(|&c| c != 0);
        let last = self.slots.iter().rposition(|&c| c != 0);
        let (offset, bucket_counts) = match (first, last) {
            (Some(first), Some(last)) => (first as i32 - 1, self.slots[first..=last].to_vec()),
            _ => (0, Vec::new()),
        };
        OtlpExponentialBuckets {
            scale: 0,
            zero_count: self.zero,
            offset,
            bucket_counts,
            count: self.count(),
            sum: self.sum_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OTLP's own definition at scale 0: the index of the bucket (2^i, 2^(i+1)] holding v,
    /// computed independently of `slot_of` with exact integer powers.
    fn otlp_index(v: u64) -> i32 {
        assert!(v > 0);
        let mut i = -1i32;
        // Smallest i with v <= 2^(i+1).
        while u128::from(v) > 1u128 << (i + 1) {
            i += 1;
        }
        i
    }

    #[test]
    fn slot_is_otlp_index_plus_one() {
        let mut values = vec![1u64, 2, 3, 4, 5, 1000, 1023, 1024, 1025, 10_000_000];
        for k in 1..62 {
            values.extend([(1u64 << k) - 1, 1u64 << k, (1u64 << k) + 1]);
        }
        for v in values {
            assert_eq!(
                Log2Histogram::slot_of(v) as i32 - 1,
                otlp_index(v),
                "value {v}"
            );
        }
    }

    #[test]
    fn otlp_buckets_round_trip_boundaries() {
        let mut h = Log2Histogram::new();
        for v in [0, 3, 4, 5, 1024, 1025] {
            h.record(v);
        }
        let otlp = h.to_otlp();
        assert_eq!(otlp.scale, 0);
        assert_eq!(otlp.zero_count, 1);
        assert_eq!(otlp.count, 6);
        assert_eq!(otlp.sum, 3 + 4 + 5 + 1024 + 1025);
        // 3 and 4 are in (2, 4] = index 1; 5 in (4, 8] = index 2; 1024 in index 9; 1025 in 10.
        assert_eq!(otlp.offset, 1);
        let at = |index: i32| otlp.bucket_counts[(index - otlp.offset) as usize];
        assert_eq!(at(1), 2);
        assert_eq!(at(2), 1);
        assert_eq!(at(9), 1);
        assert_eq!(at(10), 1);
        assert_eq!(
            otlp.bucket_counts.iter().sum::<u64>() + otlp.zero_count,
            otlp.count
        );
    }

    #[test]
    fn empty_histogram_has_no_buckets_or_quantiles() {
        let h = Log2Histogram::new();
        assert!(h.is_empty());
        assert_eq!(h.quantile(0.5), None);
        assert!(h.to_otlp().bucket_counts.is_empty());
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
        let mut cpu0 = Hist::default();
        cpu0.slots[3] = 2;
        cpu0.sum_ns = 10;
        let mut cpu1 = Hist::default();
        cpu1.slots[3] = 1;
        cpu1.zero = 1;
        cpu1.sum_ns = 6;
        let mut first = Log2Histogram::new();
        first.add_kernel(&cpu0);
        let mut second = Log2Histogram::new();
        second.add_kernel(&cpu1);
        first.merge(&second);
        assert_eq!(first.slots()[3], 3);
        assert_eq!(first.count(), 4);
        assert_eq!(first.sum_ns(), 16);
    }
}
