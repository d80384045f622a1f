//! What a latency histogram is about, decoded from the kernel's key (`struct ep_hist_key`),
//! so that users of the drain never see the raw key.

use std::cmp::Ordering;

use emberprof_model::Log2Histogram;

use crate::abi::{BlockOp, EventKind, HistKey, HistKind};

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
    /// Event counts (probe hits, TCP retransmits and resets) by series.
    pub events: Vec<(EventSeries, u64)>,
}

impl HistogramDrain {
    /// Adds `h` to the series, merged with what the drain holds of it already.
    pub(crate) fn add(&mut self, series: HistSeries, h: &Log2Histogram) {
        match self.series.iter_mut().find(|(s, _)| *s == series) {
            Some((_, have)) => have.merge(h),
            None => self.series.push((series, h.clone())),
        }
    }

    /// Adds `n` events to the series.
    pub(crate) fn add_events(&mut self, series: EventSeries, n: u64) {
        match self.events.iter_mut().find(|(s, _)| *s == series) {
            Some((_, have)) => *have += n,
            None => self.events.push((series, n)),
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
    /// Durations of the function of probe `slot`, called in a cgroup.
    Probe { slot: u32, cgroup: u64 },
    /// TCP connection establishment to remote `port`, by a cgroup's socket.
    TcpConnect { port: u16, cgroup: u64 },
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
            HistKind::Probe => HistSeries::Probe {
                slot: key.detail,
                cgroup: key.cgroup,
            },
            HistKind::TcpConnect => HistSeries::TcpConnect {
                port: key.detail as u16,
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
            HistSeries::Probe { .. } => HistKind::Probe,
            HistSeries::TcpConnect { .. } => HistKind::TcpConnect,
            HistSeries::Overflow(kind) => kind,
        }
    }

    /// The cgroup the series is about, if it is about one.
    pub fn cgroup(self) -> Option<u64> {
        match self {
            HistSeries::RunQueue { cgroup }
            | HistSeries::OffCpu { cgroup }
            | HistSeries::Syscall { cgroup, .. }
            | HistSeries::Probe { cgroup, .. }
            | HistSeries::TcpConnect { cgroup, .. } => Some(cgroup),
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
            HistSeries::Syscall { nr, cgroup } | HistSeries::Probe { slot: nr, cgroup } => {
                (self.kind(), false, nr.into(), cgroup, BlockOp::Read)
            }
            HistSeries::TcpConnect { port, cgroup } => {
                (self.kind(), false, port.into(), cgroup, BlockOp::Read)
            }
            HistSeries::Overflow(kind) => (kind, true, 0, 0, BlockOp::Read),
        }
    }
}

/// One event count series: what is counted, and of whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventSeries {
    /// Hits of probe `slot` (calls, for a function) in a cgroup.
    ProbeHits { slot: u32, cgroup: u64 },
    /// TCP segments retransmitted by a cgroup's sockets between local port `local` and
    /// remote `port` (either 0 when in the ephemeral range: a client's, one per connection).
    TcpRetransmits { port: u16, local: u16, cgroup: u64 },
    /// TCP resets sent (cgroup 0: for no socket, e.g. to a closed port).
    TcpResetsSent { port: u16, local: u16, cgroup: u64 },
    /// TCP resets received.
    TcpResetsReceived { port: u16, local: u16, cgroup: u64 },
}

impl EventSeries {
    /// The series a kernel count key names; `None` for a kind this build does not know.
    pub(crate) fn decode(key: &HistKey) -> Option<EventSeries> {
        let (cgroup, port, local) = (key.cgroup, key.detail as u16, key.major as u16);
        Some(match EventKind::from_index(key.kind)? {
            EventKind::ProbeHit => EventSeries::ProbeHits {
                slot: key.detail,
                cgroup,
            },
            EventKind::TcpRetransmit => EventSeries::TcpRetransmits {
                port,
                local,
                cgroup,
            },
            EventKind::TcpResetSent => EventSeries::TcpResetsSent {
                port,
                local,
                cgroup,
            },
            EventKind::TcpResetReceived => EventSeries::TcpResetsReceived {
                port,
                local,
                cgroup,
            },
        })
    }

    /// The cgroup counted under (0 when there was none).
    pub fn cgroup(self) -> u64 {
        match self {
            EventSeries::ProbeHits { cgroup, .. }
            | EventSeries::TcpRetransmits { cgroup, .. }
            | EventSeries::TcpResetsSent { cgroup, .. }
            | EventSeries::TcpResetsReceived { cgroup, .. } => cgroup,
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
    fn probe_and_tcp_keys_decode_to_series() {
        let key = HistKey {
            kind: HistKind::Probe as u32,
            detail: 3,
            cgroup: 7,
            ..Default::default()
        };
        assert_eq!(
            HistSeries::decode(&key),
            Some(HistSeries::Probe { slot: 3, cgroup: 7 })
        );
        let key = HistKey {
            kind: HistKind::TcpConnect as u32,
            detail: 8080,
            cgroup: 7,
            ..Default::default()
        };
        assert_eq!(
            HistSeries::decode(&key),
            Some(HistSeries::TcpConnect {
                port: 8080,
                cgroup: 7
            })
        );
        let key = HistKey {
            kind: EventKind::TcpResetReceived as u32,
            detail: 443,
            major: 0,
            cgroup: 2,
            ..Default::default()
        };
        assert_eq!(
            EventSeries::decode(&key),
            Some(EventSeries::TcpResetsReceived {
                port: 443,
                local: 0,
                cgroup: 2
            })
        );
        let key = HistKey {
            kind: EventKind::ProbeHit as u32,
            detail: 1,
            cgroup: 5,
            ..Default::default()
        };
        assert_eq!(
            EventSeries::decode(&key),
            Some(EventSeries::ProbeHits { slot: 1, cgroup: 5 })
        );
        let key = HistKey {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(EventSeries::decode(&key), None);
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
