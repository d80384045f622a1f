//! The probe profile: the stacks (kernel and user) of the threads that hit a probe point,
//! counted per probe, drained like the CPU profile. The probe points' programs record them
//! (see `probe_points`); this loader holds the buffers and says which slots take stacks.

use std::os::fd::AsFd;

use aya::maps::{Array, MapData};
use aya::Ebpf;

use crate::abi::{Counter, ProbeSampleKey, ProbeSampleValue, PROBE_SLOTS};
use crate::double_buffer::{Buffer, DoubleBuffer};
use crate::error::ProbeError;
use crate::maps::{drain_hash, drain_stacks, take_as, take_hash, PerCpuCounters};
use crate::new_processes::NewProcesses;
use crate::pid_filter;
use crate::profiler::{announce_lost, health_of, unwind_cut, Drained, HealthRow, Profiler};
use crate::shared_ebpf::SharedEbpf;
use emberprof_model::{HealthCounter, KernelSample, ProbeHit, ProfileKind};

pub(crate) const SAMPLE_MAPS: [&str; 2] = ["ep_probe_samples_0", "ep_probe_samples_1"];
pub(crate) const STACK_MAPS: [&str; 2] = ["ep_probe_stacks_0", "ep_probe_stacks_1"];
const SLOT_FLAGS: &str = "ep_probe_slot_flags";
const COUNTERS: &str = "ep_probe_counters";

/// The probe profile's kernel counters since load, by `Counter` index (the CPU sampler's
/// meanings: hits whose stacks were taken under `Samples`).
type Totals = [u64; Counter::ALL.len()];

const fn at(c: Counter) -> usize {
    c as usize
}

/// `emberprof.probe.stacks.lost{reason}`.
const fn stacks_lost(reason: &'static str, value: fn(&Totals) -> u64) -> HealthRow<Totals> {
    HealthRow {
        name: "emberprof.probe.stacks.lost",
        description: "Probe hits whose stacks could not be kept (the hits are counted)",
        unit: "{stack}",
        label: Some(("reason", reason)),
        value,
    }
}

/// The probe profile's health metrics.
const HEALTH: &[HealthRow<Totals>] = &[
    HealthRow {
        name: "emberprof.probe.stacks",
        description: "Probe hits whose stacks were taken (the probe profile)",
        unit: "{hit}",
        label: None,
        value: |k| k[at(Counter::Samples)],
    },
    stacks_lost("user_stack_map_full", |k| k[at(Counter::UserStackMapFull)]),
    stacks_lost("kernel_stack_map_full", |k| {
        k[at(Counter::KernelStackMapFull)]
    }),
    stacks_lost("stack_error", |k| k[at(Counter::StackError)]),
    stacks_lost("count_map_full", |k| k[at(Counter::CountMapFull)]),
    unwind_cut("emberprof.probe.unwind.cut", "no_rule", |k| {
        k[at(Counter::UnwindNoRule)]
    }),
    unwind_cut("emberprof.probe.unwind.cut", "bad_read", |k| {
        k[at(Counter::UnwindBadRead)]
    }),
    unwind_cut("emberprof.probe.unwind.cut", "depth", |k| {
        k[at(Counter::UnwindDepth)]
    }),
    announce_lost(|k| k[at(Counter::AnnounceLost)]),
];

/// The probe profile's buffers.
pub struct ProbeStacks {
    ebpf: SharedEbpf,
    buffers: DoubleBuffer<StackBuffer>,
    slot_flags: Array<MapData, u32>,
    counters: PerCpuCounters,
    new_processes: Option<NewProcesses>,
    /// Hits whose stacks were drained, for the summary.
    hits: u64,
}

impl ProbeStacks {
    /// Takes the maps out of a loaded object.
    pub(crate) fn loaded(
        ebpf: SharedEbpf,
        new_processes: Option<NewProcesses>,
    ) -> Result<Self, ProbeError> {
        let (buffers, slot_flags, counters) = {
            let mut object = ebpf.lock();
            let buffers = [
                StackBuffer::take(&mut object, 0)?,
                StackBuffer::take(&mut object, 1)?,
            ];
            let buffers = DoubleBuffer::take(&mut object, "ep_probe_control", buffers)?;
            (
                buffers,
                take_as(&mut object, SLOT_FLAGS)?,
                PerCpuCounters::take(&mut object, COUNTERS)?,
            )
        };
        Ok(ProbeStacks {
            ebpf,
            buffers,
            slot_flags,
            counters,
            new_processes,
            hits: 0,
        })
    }

    /// The kernel's counters since load, summed over CPUs.
    fn totals(&self) -> Result<Totals, ProbeError> {
        let mut out: Totals = [0; Counter::ALL.len()];
        for (counter, total) in self.counters.totals(&Counter::ALL)? {
            out[at(counter)] = total;
        }
        Ok(out)
    }

    /// Makes probe `slot` record the stacks of its hits (or stop doing so).
    pub fn set_stacks(&mut self, slot: usize, on: bool) -> Result<(), ProbeError> {
        if slot >= PROBE_SLOTS {
            return Err(ProbeError::ProbeSlot {
                slot,
                max: PROBE_SLOTS,
            });
        }
        self.slot_flags
            .set(slot as u32, u32::from(on) * crate::abi::PROBE_STACKS_ON, 0)
            .map_err(|source| ProbeError::Map {
                name: SLOT_FLAGS,
                source,
            })
    }
}

impl Profiler for ProbeStacks {
    fn kind(&self) -> Option<ProfileKind> {
        Some(ProfileKind::Probe)
    }

    fn drain(&mut self) -> Result<Drained, ProbeError> {
        let samples = self.buffers.drain()?;
        self.hits += samples.iter().map(|s| s.value).sum::<u64>();
        Ok(Drained::Samples(samples))
    }

    /// The probes' programs are detached by their owner (`probe_points`) before this.
    fn stop(&mut self) -> Result<Drained, ProbeError> {
        let samples = self.buffers.stop(|| Ok(()))?;
        self.hits += samples.iter().map(|s| s.value).sum::<u64>();
        Ok(Drained::Samples(samples))
    }

    fn set_pids(&mut self, pids: &std::collections::BTreeSet<u32>) -> Result<(), ProbeError> {
        pid_filter::sync(&mut self.ebpf.lock(), pids)
    }

    fn counts(&self) -> Result<Vec<(&'static str, u64)>, ProbeError> {
        let k = self.totals()?;
        let lost = [
            Counter::UserStackMapFull,
            Counter::KernelStackMapFull,
            Counter::StackError,
        ]
        .iter()
        .map(|c| k[at(*c)])
        .sum();
        Ok(vec![
            ("hits", self.hits),
            ("dropped", k[at(Counter::CountMapFull)]),
            ("stacks_lost", lost),
        ])
    }

    fn health(&self) -> Result<Vec<HealthCounter>, ProbeError> {
        Ok(health_of(HEALTH, &self.totals()?))
    }

    fn take_new_processes(&mut self) -> Option<NewProcesses> {
        self.new_processes.take()
    }
}

/// One buffer: the hits by thread, stacks and probe, and the stacks.
struct StackBuffer {
    samples: MapData,
    stacks: MapData,
    samples_name: &'static str,
    stacks_name: &'static str,
}

impl StackBuffer {
    fn take(ebpf: &mut Ebpf, i: usize) -> Result<Self, ProbeError> {
        Ok(StackBuffer {
            samples: take_hash(ebpf, SAMPLE_MAPS[i])?,
            stacks: take_hash(ebpf, STACK_MAPS[i])?,
            samples_name: SAMPLE_MAPS[i],
            stacks_name: STACK_MAPS[i],
        })
    }
}

impl Buffer for StackBuffer {
    type Drained = Vec<KernelSample>;

    fn drain_into(&mut self, out: &mut Vec<KernelSample>) -> Result<(), ProbeError> {
        let entries: Vec<(ProbeSampleKey, ProbeSampleValue)> =
            drain_hash(self.samples.fd().as_fd(), self.samples_name)?;
        let stacks = drain_stacks(self.stacks.fd().as_fd(), self.stacks_name)?;
        out.extend(entries.into_iter().map(|(key, value)| {
            let hit = ProbeHit {
                slot: key.slot,
                ns: value.ns,
            };
            key.sample.sample(&stacks, value.hits, Some(hit))
        }));
        Ok(())
    }
}
