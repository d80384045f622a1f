//! The contract every loader fulfils, so that a session drives the CPU sampler, the off-CPU
//! profiler and the latency histograms (and any probe added later) alike: drain, stop, filter
//! by process, read the kernel's counters, hand over announcements of new processes.

use std::collections::BTreeSet;

use emberprof_model::{HealthCounter, HealthValue, KernelSample, ProfileKind};

use crate::abi::{UnwindEntry, UnwindMapping, UnwindRule};
use crate::error::ProbeError;
use crate::hist_series::HistogramDrain;
use crate::new_processes::NewProcesses;

/// What one drain read.
pub enum Drained {
    /// Samples of the profiler's profile kind: counts (CPU) or nanoseconds (off-CPU).
    Samples(Vec<KernelSample>),
    /// Latency histograms by series.
    Histograms(HistogramDrain),
}

/// A loaded, attached set of probes. Dropping it detaches and unloads them.
pub trait Profiler {
    /// The profile its samples make; `None` when it drains histograms.
    fn kind(&self) -> Option<ProfileKind>;

    /// Reads what the kernel aggregated since the last drain, without losing what arrives
    /// meanwhile.
    fn drain(&mut self) -> Result<Drained, ProbeError>;

    /// Detaches the programs, then reads what the kernel still held.
    fn stop(&mut self) -> Result<Drained, ProbeError>;

    /// Replaces the processes it records (its PID filter must be on).
    fn set_pids(&mut self, pids: &BTreeSet<u32>) -> Result<(), ProbeError>;

    /// What its kernel side counted since load, by name (`kernel_counted`, `dropped`, ...).
    fn counts(&self) -> Result<Vec<(&'static str, u64)>, ProbeError>;

    /// Those counts as emberprof's health metrics.
    fn health(&self) -> Result<Vec<HealthCounter>, ProbeError>;

    /// The announcements of newly sampled processes, the first time asked, if it makes them.
    fn take_new_processes(&mut self) -> Option<NewProcesses> {
        None
    }
}

/// Where unwind tables are loaded for the kernel's user-stack walker (`unwind.bpf.h`).
pub trait UnwindTarget {
    /// Sets rule `index`, shared by every file's table.
    fn set_rule(&mut self, index: u32, rule: UnwindRule) -> Result<(), ProbeError>;
    /// Writes table entries from index `first` on.
    fn set_entries(&mut self, first: u32, entries: &[UnwindEntry]) -> Result<(), ProbeError>;
    /// Lists a process's mappings with tables.
    fn set_process(&mut self, pid: u32, mappings: &[UnwindMapping]) -> Result<(), ProbeError>;
    /// Forgets a process's mappings.
    fn forget_process(&mut self, pid: u32);
}

/// One health metric read from a loader's counters: each loader lists its own.
pub(crate) struct HealthRow<T> {
    pub(crate) name: &'static str,
    pub(crate) description: &'static str,
    pub(crate) unit: &'static str,
    /// The label telling series of one metric apart (a reason), if any.
    pub(crate) label: Option<(&'static str, &'static str)>,
    pub(crate) value: fn(&T) -> u64,
}

/// The metrics of `rows`, read from `counters`.
pub(crate) fn health_of<T>(rows: &[HealthRow<T>], counters: &T) -> Vec<HealthCounter> {
    rows.iter()
        .map(|row| HealthCounter {
            name: row.name,
            description: row.description,
            unit: row.unit,
            attributes: row
                .label
                .map(|(k, v)| vec![(k, v.to_string())])
                .unwrap_or_default(),
            value: HealthValue::Count((row.value)(counters)),
        })
        .collect()
}

/// `emberprof.processes.announce_lost`: every announcing loader reports it; a session adds
/// them up (only the one that announces counts).
pub(crate) const fn announce_lost<T>(value: fn(&T) -> u64) -> HealthRow<T> {
    HealthRow {
        name: "emberprof.processes.announce_lost",
        description:
            "New processes not announced at their first sample (ring full); read at the next drain",
        unit: "{process}",
        label: None,
        value,
    }
}

/// `name{reason}`: user stacks walked by unwind tables that ended early (the CPU sampler
/// and the off-CPU profiler each report one per reason).
pub(crate) const fn unwind_cut<T>(
    name: &'static str,
    reason: &'static str,
    value: fn(&T) -> u64,
) -> HealthRow<T> {
    HealthRow {
        name,
        description:
            "User stacks walked by unwind tables that ended early, by why (the frames up to there are kept)",
        unit: "{stack}",
        label: Some(("reason", reason)),
        value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counts {
        lost: u64,
        full: u64,
    }

    #[test]
    fn rows_read_their_counter_and_carry_their_label() {
        const ROWS: &[HealthRow<Counts>] = &[
            HealthRow {
                name: "emberprof.x.dropped",
                description: "d",
                unit: "{x}",
                label: Some(("reason", "full")),
                value: |c| c.full,
            },
            announce_lost(|c| c.lost),
        ];
        let out = health_of(ROWS, &Counts { lost: 3, full: 7 });
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].attributes, [("reason", "full".to_string())]);
        assert_eq!(out[0].value, HealthValue::Count(7));
        assert_eq!(out[1].name, "emberprof.processes.announce_lost");
        assert_eq!(out[1].value, HealthValue::Count(3));
    }
}
