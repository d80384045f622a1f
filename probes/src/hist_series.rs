//! What a latency histogram is about, decoded from the kernel's key (`struct ep_hist_key`),
//! so that users of the drain never see the raw key.

use std::cmp::Ordering;

use emberprof_model::Log2Histogram;

use crate::abi::{BlockOp, HistKey, HistKind};

/// What one drain read: the histogram of each series present, overflow ones included.
#[derive(Clone, Debug, Default)]
pub struct HistogramDrain {
    /// One entry per key present in the drained buffer, and one per non-empty overflow
    /// histogram.
    pub series: Vec<(HistSeries, Log2Histogram)>,
    /// Durations under keys of a kind this build does not know (a kernel/user-space
    /// mismatch): dropped, and counted here.
    pub unknown_kind: u64,
    /// Durations that the CPUs' caches held under keys beyond the cap, moved to their
    /// kind's overflow histogram here (the kernel counted them as recorded).
    pub overflowed: u64,
}

impl HistogramDrain {
    /// Adds `h` to the series, merged with what the drain holds of it already.
    pub(crate) fn add(&mut self, series: HistSeries, h: &Log2Histogram) {
        match self.series.iter_mut().find(|(s, _)| *s == series) {
            Some((_, have)) => have.merge(h),
            None => self.series.push((series, h.clone())),
        }
    }

    /// Keyed (not overflow) series held.
    pub(crate) fn keyed(&self) -> usize {
        self.series
            .iter()
            .filter(|(s, _)| !matches!(s, HistSeries::Overflow(_)))
            .count()
    }
}

/// One histogram series: what it measures, and of whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HistSeries {
    /// Run-queue latency of a cgroup's threads (cgroup v2 id).
    RunQueue { cgroup: u64 },
    /// Off-CPU durations of a cgroup's threads.
    OffCpu { cgroup: u64 },
    /// Block I/O latency of one disk (major and first minor) in one direction.
    BlockIo { major: u32, minor: u32, op: BlockOp },
    /// One syscall's latency (the target architecture's number) in a cgroup.
    Syscall { nr: u32, cgroup: u64 },
    /// Everything of a kind that found no room under the key cap.
    Overflow(HistKind),
}

impl HistSeries {
    /// The series a kernel key names; `None` for a kind this build does not know (a
    /// kernel/user-space mismatch).
    pub(crate) fn decode(key: &HistKey) -> Option<HistSeries> {
        Some(match HistKind::from_index(key.kind)? {
            HistKind::RunQueue => HistSeries::RunQueue { cgroup: key.cgroup },
            HistKind::OffCpu => HistSeries::OffCpu { cgroup: key.cgroup },
            HistKind::BlockIo => HistSeries::BlockIo {
                major: key.major,
                minor: key.minor,
                op: BlockOp::from_index(key.detail),
            },
            HistKind::Syscall => HistSeries::Syscall {
                nr: key.detail,
                cgroup: key.cgroup,
            },
        })
    }

    /// What the series measures.
    pub fn kind(self) -> HistKind {
        match self {
            HistSeries::RunQueue { .. } => HistKind::RunQueue,
            HistSeries::OffCpu { .. } => HistKind::OffCpu,
            HistSeries::BlockIo { .. } => HistKind::BlockIo,
            HistSeries::Syscall { .. } => HistKind::Syscall,
            HistSeries::Overflow(kind) => kind,
        }
    }

    /// The cgroup the series is about, if it is about one.
    pub fn cgroup(self) -> Option<u64> {
        match self {
            HistSeries::RunQueue { cgroup }
            | HistSeries::OffCpu { cgroup }
            | HistSeries::Syscall { cgroup, .. } => Some(cgroup),
            HistSeries::BlockIo { .. } | HistSeries::Overflow(_) => None,
        }
    }

    /// Kind first, each kind's keyed series before its overflow, then the key's fields in
    /// declaration order.
    fn sort_key(self) -> (HistKind, bool, u64, u64, BlockOp) {
        match self {
            HistSeries::RunQueue { cgroup } | HistSeries::OffCpu { cgroup } => {
                (self.kind(), false, cgroup, 0, BlockOp::Read)
            }
            HistSeries::BlockIo { major, minor, op } => {
                (self.kind(), false, major.into(), minor.into(), op)
            }
            HistSeries::Syscall { nr, cgroup } => {
                (self.kind(), false, nr.into(), cgroup, BlockOp::Read)
            }
            HistSeries::Overflow(kind) => (kind, true, 0, 0, BlockOp::Read),
        }
    }
}

impl Ord for HistSeries {
    fn cmp(&self, other: &Self) -> Ordering {
        self.sort_key().cmp(&other.sort_key())
    }
}

impl PartialOrd for HistSeries {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_decode_to_series() {
        let key = HistKey {
            kind: HistKind::BlockIo as u32,
            detail: 1,
            major: 254,
            minor: 0,
            cgroup: 0,
        };
        assert_eq!(
            HistSeries::decode(&key),
            Some(HistSeries::BlockIo {
                major: 254,
                minor: 0,
                op: BlockOp::Write
            })
        );
        let key = HistKey {
            kind: HistKind::Syscall as u32,
            detail: 35,
            cgroup: 7,
            ..Default::default()
        };
        assert_eq!(
            HistSeries::decode(&key),
            Some(HistSeries::Syscall { nr: 35, cgroup: 7 })
        );
        let key = HistKey {
            kind: HistKind::OffCpu as u32,
            cgroup: 9,
            // Fields a kind does not use are ignored.
            detail: 3,
            ..Default::default()
        };
        assert_eq!(
            HistSeries::decode(&key),
            Some(HistSeries::OffCpu { cgroup: 9 })
        );
        let key = HistKey {
            kind: HistKind::RunQueue as u32,
            cgroup: 4,
            ..Default::default()
        };
        assert_eq!(
            HistSeries::decode(&key),
            Some(HistSeries::RunQueue { cgroup: 4 })
        );
        let key = HistKey {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(HistSeries::decode(&key), None);
    }

    #[test]
    fn an_unknown_direction_is_other() {
        let key = HistKey {
            kind: HistKind::BlockIo as u32,
            detail: 77,
            ..Default::default()
        };
        assert_eq!(
            HistSeries::decode(&key).map(|s| s.kind()),
            Some(HistKind::BlockIo)
        );
        assert!(matches!(
            HistSeries::decode(&key),
            Some(HistSeries::BlockIo {
                op: BlockOp::Other,
                ..
            })
        ));
    }

    #[test]
    fn series_sort_by_kind_with_each_overflow_after_its_keyed_series() {
        let mut all = vec![
            HistSeries::Overflow(HistKind::Syscall),
            HistSeries::Syscall { nr: 1, cgroup: 2 },
            HistSeries::Syscall { nr: 0, cgroup: 9 },
            HistSeries::Overflow(HistKind::BlockIo),
            HistSeries::BlockIo {
                major: 8,
                minor: 0,
                op: BlockOp::Write,
            },
            HistSeries::BlockIo {
                major: 8,
                minor: 0,
                op: BlockOp::Read,
            },
            HistSeries::Overflow(HistKind::OffCpu),
            HistSeries::OffCpu { cgroup: 3 },
            HistSeries::Overflow(HistKind::RunQueue),
            HistSeries::RunQueue { cgroup: 5 },
            HistSeries::RunQueue { cgroup: 1 },
        ];
        all.sort();
        assert_eq!(
            all,
            [
                HistSeries::RunQueue { cgroup: 1 },
                HistSeries::RunQueue { cgroup: 5 },
                HistSeries::Overflow(HistKind::RunQueue),
                HistSeries::OffCpu { cgroup: 3 },
                HistSeries::Overflow(HistKind::OffCpu),
                HistSeries::BlockIo {
                    major: 8,
                    minor: 0,
                    op: BlockOp::Read,
                },
                HistSeries::BlockIo {
                    major: 8,
                    minor: 0,
                    op: BlockOp::Write,
                },
                HistSeries::Overflow(HistKind::BlockIo),
                HistSeries::Syscall { nr: 0, cgroup: 9 },
                HistSeries::Syscall { nr: 1, cgroup: 2 },
                HistSeries::Overflow(HistKind::Syscall),
            ]
        );
    }
}
