//! The series kept between exports (histograms, event counts), and which of them can be
//! let go.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use emberprof_model::Log2Histogram;
use emberprof_probes::{EventSeries, HistSeries};

/// One series' identity: what it measures and whom it is about.
pub trait SeriesKey: Copy + Ord {
    /// The cgroup the series is about, if any: its series can be let go once it is gone.
    fn cgroup(self) -> Option<u64>;
}

impl SeriesKey for HistSeries {
    fn cgroup(self) -> Option<u64> {
        HistSeries::cgroup(self)
    }
}

impl SeriesKey for EventSeries {
    fn cgroup(self) -> Option<u64> {
        // Cgroup 0: counted without one (a reset for no socket); kept like a disk's series.
        Some(EventSeries::cgroup(self)).filter(|c| *c != 0)
    }
}

/// What a series accumulates.
pub trait Total: Default {
    fn add(&mut self, other: &Self);
}

impl Total for Log2Histogram {
    fn add(&mut self, other: &Self) {
        self.merge(other);
    }
}

impl Total for u64 {
    fn add(&mut self, other: &Self) {
        *self = self.saturating_add(*other);
    }
}

/// Series accumulated across drains, and which of them changed since the last export.
pub struct SeriesTable<K, V> {
    series: BTreeMap<K, V>,
    changed: BTreeSet<K>,
    /// Series found unchanged with their cgroup gone at the last prune: dropped at the next
    /// one if still unchanged.
    doomed: BTreeSet<K>,
}

impl<K, V> Default for SeriesTable<K, V> {
    fn default() -> Self {
        SeriesTable {
            series: BTreeMap::new(),
            changed: BTreeSet::new(),
            doomed: BTreeSet::new(),
        }
    }
}

impl<K: SeriesKey, V: Total> SeriesTable<K, V> {
    /// Adds what a drain found for one series.
    pub fn merge(&mut self, key: K, h: &V) {
        self.series.entry(key).or_default().add(h);
        self.changed.insert(key);
    }

    /// Every series, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.series.iter()
    }

    /// Whether a series is about `cgroup`.
    pub fn refers_to(&self, cgroup: u64) -> bool {
        self.series.keys().any(|k| k.cgroup() == Some(cgroup))
    }

    /// Forgets every series (delta export: each interval starts from zero).
    pub fn clear(&mut self) {
        self.series.clear();
        self.changed.clear();
        self.doomed.clear();
    }

    /// Ends an interval of cumulative export. A series whose cgroup is `gone` can never
    /// change again; it is dropped after two exports without a change while the cgroup was
    /// gone. Two, not one: a wait that ended after the drain before an export and before the
    /// cgroup's removal is only read by the next drain, and a series dropped before that
    /// would start again from zero (a reset the cumulative start time does not show).
    /// Without this, every container that ever ran would stay a series until the agent
    /// restarts. Returns the cgroups no series refers to any more.
    pub fn prune(&mut self, gone: impl Fn(u64) -> bool) -> BTreeSet<u64> {
        let changed = std::mem::take(&mut self.changed);
        let doomed = std::mem::take(&mut self.doomed);
        let mut doomed_now = BTreeSet::new();
        // One check per cgroup, however many series it has.
        let mut verdicts: HashMap<u64, bool> = HashMap::new();
        let mut dropped = BTreeSet::new();
        self.series.retain(|key, _| {
            let Some(cgroup) = key.cgroup() else {
                return true;
            };
            if changed.contains(key) || !*verdicts.entry(cgroup).or_insert_with(|| gone(cgroup)) {
                return true;
            }
            if doomed.contains(key) {
                dropped.insert(cgroup);
                return false;
            }
            doomed_now.insert(*key);
            true
        });
        self.doomed = doomed_now;
        for key in self.series.keys() {
            if let Some(cgroup) = key.cgroup() {
                dropped.remove(&cgroup);
            }
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emberprof_probes::abi::BlockOp;

    fn one() -> Log2Histogram {
        let mut h = Log2Histogram::new();
        h.record(1000);
        h
    }

    fn keys(t: &SeriesTable<HistSeries, Log2Histogram>) -> Vec<HistSeries> {
        t.iter().map(|(k, _)| *k).collect()
    }

    #[test]
    fn a_gone_cgroup_is_dropped_after_two_unchanged_exports() {
        let mut t = SeriesTable::default();
        let live = HistSeries::RunQueue { cgroup: 5 };
        let dead = HistSeries::RunQueue { cgroup: 6 };
        let dead_syscall = HistSeries::Syscall { nr: 0, cgroup: 6 };
        let disk = HistSeries::BlockIo {
            major: 8,
            minor: 0,
            op: BlockOp::Read,
        };
        for k in [live, dead, dead_syscall, disk] {
            t.merge(k, &one());
        }
        let gone = |id: u64| id == 6;
        // Changed in this interval: its last totals have not been exported yet.
        assert!(t.prune(gone).is_empty());
        assert_eq!(keys(&t).len(), 4);
        // Unchanged once with the cgroup gone: a late wait may still come.
        assert!(t.prune(gone).is_empty());
        assert_eq!(keys(&t).len(), 4);
        // Unchanged twice: let go, and its cgroup reported.
        assert_eq!(t.prune(gone), BTreeSet::from([6]));
        assert_eq!(keys(&t), [live, disk]);
        // Live cgroups and disks stay, changed or not.
        assert!(t.prune(gone).is_empty());
        assert_eq!(keys(&t), [live, disk]);
    }

    #[test]
    fn a_late_wait_saves_a_doomed_series() {
        let mut t = SeriesTable::default();
        let dead = HistSeries::OffCpu { cgroup: 6 };
        t.merge(dead, &one());
        assert!(t.prune(|_| true).is_empty());
        assert!(t.prune(|_| true).is_empty());
        // Read by the drain after the cgroup went: the series keeps its total and starts
        // its two unchanged exports again.
        t.merge(dead, &one());
        assert!(t.prune(|_| true).is_empty());
        assert!(t.prune(|_| true).is_empty());
        assert_eq!(t.iter().next().map(|(_, h)| h.count()), Some(2));
        assert_eq!(t.prune(|_| true), BTreeSet::from([6]));
    }

    #[test]
    fn a_cgroup_still_named_by_a_changed_series_is_not_reported() {
        let mut t = SeriesTable::default();
        let runq = HistSeries::RunQueue { cgroup: 6 };
        let offcpu = HistSeries::OffCpu { cgroup: 6 };
        t.merge(runq, &one());
        t.merge(offcpu, &one());
        assert!(t.prune(|_| true).is_empty());
        t.merge(offcpu, &one());
        assert!(t.prune(|_| true).is_empty());
        // Only the off-CPU series changed (a last wait finishing): run queue goes, the cgroup
        // keeps its name for the series that stays.
        t.merge(offcpu, &one());
        assert!(t.prune(|_| true).is_empty());
        assert_eq!(keys(&t), [offcpu]);
        assert!(t.prune(|_| true).is_empty());
        assert_eq!(t.prune(|_| true), BTreeSet::from([6]));
        assert!(keys(&t).is_empty());
    }

    #[test]
    fn each_cgroup_is_checked_once_per_prune() {
        let mut t = SeriesTable::default();
        for series in [
            HistSeries::RunQueue { cgroup: 9 },
            HistSeries::OffCpu { cgroup: 9 },
        ] {
            t.merge(series, &one());
        }
        t.prune(|_| false);
        let checks = std::cell::Cell::new(0);
        t.prune(|_| {
            checks.set(checks.get() + 1);
            false
        });
        assert_eq!(checks.get(), 1);
    }
}
