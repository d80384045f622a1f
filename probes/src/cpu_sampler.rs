//! Loads the perf-event CPU sampler on every online CPU and drains its in-kernel
//! aggregates without losing or double-counting samples.

use std::os::fd::AsFd;

use aya::maps::MapData;

use aya::programs::perf_event::{
    perf_sw_ids::PERF_COUNT_SW_CPU_CLOCK, PerfEventLinkId, PerfEventScope, PerfTypeId, SamplePolicy,
};
use aya::programs::PerfEvent;
use aya::Ebpf;

use crate::abi::{
    Counter, SampleKey, DEFAULT_COUNT_MAP_ENTRIES, DEFAULT_STACK_MAP_ENTRIES, UNWIND_ENTRIES,
};
use crate::double_buffer::{Buffer, DoubleBuffer};
use crate::error::ProbeError;
use crate::maps::{drain_hash, drain_stacks, take_hash, PerCpuCounters};
use crate::new_processes::{self, NewProcesses};
use crate::pid_filter;
use crate::profiler::{announce_lost, health_of, unwind_cut, Drained, HealthRow, Profiler};
use crate::shared_ebpf::SharedEbpf;
#[cfg(test)]
use emberprof_model::StackCut;
use emberprof_model::{HealthCounter, KernelSample, ProfileKind};

// The limits a sampler's configuration is checked against, where its users look for them.
pub use crate::abi::MAX_FILTER_PIDS;
pub use crate::loader::MAX_MAP_ENTRIES;

const PROGRAM: &str = "ep_cpu_sample";
pub(crate) const COUNT_MAPS: [&str; 2] = ["ep_counts_0", "ep_counts_1"];
pub(crate) const STACK_MAPS: [&str; 2] = ["ep_stacks_0", "ep_stacks_1"];
/// Highest frequency accepted; the kernel clamps higher values to perf_event_max_sample_rate.
pub const MAX_FREQUENCY_HZ: u64 = 10_000;

/// What to sample.
#[derive(Clone, Debug)]
pub struct CpuSamplerConfig {
    /// Samples per second on each CPU.
    pub frequency_hz: u64,
    /// Only these processes (thread-group ids) when non-empty.
    pub pids: Vec<u32>,
    /// Filter by PID even while `pids` is empty: the set is changed at run time with
    /// `set_pids` (include/exclude rules).
    pub filter_pids: bool,
    /// Also record emberprof's own process (left out by default: symbolizing its own
    /// samples parses its own debug info and feeds back into what is measured).
    pub profile_self: bool,
    /// Entries of each of the two stack maps (distinct stacks between drains).
    pub stack_map_entries: u32,
    /// Entries of each of the two count maps (distinct thread + stack keys between drains).
    pub count_map_entries: u32,
    /// Entries of the unwind tables' array (all files together, 8 bytes each, allocated
    /// at load), at most `MAX_UNWIND_ENTRIES`; `None`: user stacks are walked by frame
    /// pointers only and the array is left at one entry.
    pub unwind_entries: Option<u32>,
}

impl CpuSamplerConfig {
    /// Default map sizes: 16384 stacks and 16384 keys per buffer (about 17 MiB of kernel
    /// memory per stack map).
    pub fn new(frequency_hz: u64, pids: Vec<u32>) -> Self {
        CpuSamplerConfig {
            frequency_hz,
            pids,
            filter_pids: false,
            stack_map_entries: DEFAULT_STACK_MAP_ENTRIES,
            count_map_entries: DEFAULT_COUNT_MAP_ENTRIES,
            profile_self: false,
            unwind_entries: Some(UNWIND_ENTRIES as u32),
        }
    }
}

/// Totals of what the kernel side saw, summed over CPUs, since load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Samples of profiled processes (idle and filtered-out excluded).
    pub samples: u64,
    pub idle: u64,
    pub user_stack_map_full: u64,
    pub kernel_stack_map_full: u64,
    pub stack_errors: u64,
    /// Samples dropped entirely: no room in the count map.
    pub count_map_full: u64,
    /// New processes not announced to user space (ring buffer full); they are captured
    /// at the next drain instead, or retried at their next sample.
    pub announce_lost: u64,
    /// User-stack walks by unwind tables that ended at a pc without a rule.
    pub unwind_no_rule: u64,
    /// ... that ended because a return address or RBP could not be read.
    pub unwind_bad_read: u64,
    /// ... that reached the frame limit.
    pub unwind_depth: u64,
    /// Samples of threads of processes listed as running Python.
    pub py_samples: u64,
    /// ... whose thread had no Python thread state.
    pub py_no_thread: u64,
    /// ... whose Python walk stopped at an unreadable frame.
    pub py_bad_read: u64,
    /// ... whose Python walk reached the frame limit.
    pub py_depth: u64,
    /// ... whose Python stack found no room in the stack map.
    pub py_stack_full: u64,
    /// New Python stacks not noted to user space (ring full).
    pub py_notes_lost: u64,
}

impl KernelCounters {
    /// The field that totals `counter`.
    fn field(&mut self, counter: Counter) -> &mut u64 {
        match counter {
            Counter::Samples => &mut self.samples,
            Counter::Idle => &mut self.idle,
            Counter::UserStackMapFull => &mut self.user_stack_map_full,
            Counter::KernelStackMapFull => &mut self.kernel_stack_map_full,
            Counter::StackError => &mut self.stack_errors,
            Counter::CountMapFull => &mut self.count_map_full,
            Counter::AnnounceLost => &mut self.announce_lost,
            Counter::UnwindNoRule => &mut self.unwind_no_rule,
            Counter::UnwindBadRead => &mut self.unwind_bad_read,
            Counter::UnwindDepth => &mut self.unwind_depth,
            Counter::PySamples => &mut self.py_samples,
            Counter::PyNoThread => &mut self.py_no_thread,
            Counter::PyBadRead => &mut self.py_bad_read,
            Counter::PyDepth => &mut self.py_depth,
            Counter::PyStackFull => &mut self.py_stack_full,
            Counter::PyNotesLost => &mut self.py_notes_lost,
        }
    }

    /// Samples the kernel could not record at all.
    pub fn dropped(&self) -> u64 {
        self.count_map_full
    }

    /// Samples recorded without one of their stacks.
    pub fn stacks_lost(&self) -> u64 {
        self.user_stack_map_full + self.kernel_stack_map_full + self.stack_errors
    }
}

/// The loaded and attached CPU sampler. Dropping it detaches and unloads everything.
pub struct CpuSampler {
    ebpf: SharedEbpf,
    buffers: DoubleBuffer<SampleBuffer>,
    counters: PerCpuCounters,
    links: Vec<PerfEventLinkId>,
    cpus: usize,
    new_processes: Option<NewProcesses>,
}

impl CpuSampler {
    /// Checks the configuration a sampler is loaded with (before anything is loaded).
    pub(crate) fn check(config: &CpuSamplerConfig) -> Result<(), ProbeError> {
        if config.frequency_hz == 0 || config.frequency_hz > MAX_FREQUENCY_HZ {
            return Err(ProbeError::Frequency {
                got: config.frequency_hz,
                max: MAX_FREQUENCY_HZ,
            });
        }
        crate::loader::check_start(
            &[
                ("stack", config.stack_map_entries),
                ("count", config.count_map_entries),
            ],
            &config.pids,
        )
    }

    /// Takes the sampler's maps out of a loaded object, without sampling yet (see
    /// `Probes`); `start_sampling` attaches it.
    pub(crate) fn loaded(
        ebpf: SharedEbpf,
        new_processes: Option<NewProcesses>,
    ) -> Result<Self, ProbeError> {
        let (buffers, counters) = {
            let mut object = ebpf.lock();
            let buffers = [
                SampleBuffer::take(&mut object, 0)?,
                SampleBuffer::take(&mut object, 1)?,
            ];
            let buffers = DoubleBuffer::take(&mut object, "ep_control", buffers)?;
            let counters = PerCpuCounters::take(&mut object, "ep_counters")?;
            (buffers, counters)
        };
        Ok(CpuSampler {
            ebpf,
            buffers,
            counters,
            links: Vec::new(),
            cpus: 0,
            new_processes,
        })
    }

    /// Attaches a loaded sampler to every online CPU.
    pub fn start_sampling(&mut self, config: &CpuSamplerConfig) -> Result<(), ProbeError> {
        self.attach(config.frequency_hz)
    }

    fn attach(&mut self, frequency_hz: u64) -> Result<(), ProbeError> {
        let program_err = |source| ProbeError::Program {
            name: PROGRAM,
            source,
        };
        let cpus = aya::util::online_cpus()
            .map_err(|(path, source)| ProbeError::OnlineCpus { path, source })?;
        let mut object = self.ebpf.lock();
        let program: &mut PerfEvent = object
            .program_mut(PROGRAM)
            .ok_or(ProbeError::MissingMap(PROGRAM))?
            .try_into()
            .map_err(program_err)?;
        program.load().map_err(program_err)?;
        for cpu in cpus {
            let link = program
                .attach(
                    PerfTypeId::Software,
                    PERF_COUNT_SW_CPU_CLOCK as u64,
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(frequency_hz),
                    false,
                )
                .map_err(program_err)?;
            self.links.push(link);
        }
        drop(object);
        self.cpus = self.links.len();
        tracing::debug!(cpus = self.cpus, frequency_hz, "CPU sampler attached");
        Ok(())
    }

    /// The announcements of newly sampled processes, for a watcher thread (once).
    pub fn take_new_processes(&mut self) -> Option<NewProcesses> {
        self.new_processes.take()
    }

    /// Number of CPUs sampled.
    pub fn cpus(&self) -> usize {
        self.cpus
    }

    /// Switches the kernel to the other buffer and returns what the previous one holds.
    pub fn drain(&mut self) -> Result<Vec<KernelSample>, ProbeError> {
        self.buffers.drain()
    }

    /// Detaches from every CPU and returns everything still in the kernel.
    pub fn stop(&mut self) -> Result<Vec<KernelSample>, ProbeError> {
        let (ebpf, links) = (&self.ebpf, &mut self.links);
        self.buffers.stop(|| {
            let mut ebpf = ebpf.lock();
            if let Some(program) = ebpf.program_mut(PROGRAM) {
                let program: &mut PerfEvent =
                    program.try_into().map_err(|source| ProbeError::Program {
                        name: PROGRAM,
                        source,
                    })?;
                for link in links.drain(..) {
                    program.detach(link).map_err(|source| ProbeError::Program {
                        name: PROGRAM,
                        source,
                    })?;
                }
            }
            new_processes::unload_lifecycle(&mut ebpf);
            Ok(())
        })
    }

    /// Replaces the processes the kernel records (with `filter_pids` or a non-empty `pids`
    /// at start; otherwise the filter is off and this has no effect).
    pub fn set_pids(&mut self, pids: &std::collections::BTreeSet<u32>) -> Result<(), ProbeError> {
        pid_filter::sync(&mut self.ebpf.lock(), pids)
    }

    /// Kernel-side totals since load.
    pub fn counters(&self) -> Result<KernelCounters, ProbeError> {
        let mut totals = KernelCounters::default();
        for (counter, total) in self.counters.totals(&Counter::ALL)? {
            *totals.field(counter) = total;
        }
        Ok(totals)
    }
}

/// One buffer: the sample counts and the stacks they refer to.
struct SampleBuffer {
    counts: MapData,
    stacks: MapData,
    counts_name: &'static str,
    stacks_name: &'static str,
}

impl SampleBuffer {
    /// Takes buffer `i`'s maps out of the loaded object.
    fn take(ebpf: &mut Ebpf, i: usize) -> Result<Self, ProbeError> {
        Ok(SampleBuffer {
            counts: take_hash(ebpf, COUNT_MAPS[i])?,
            stacks: take_hash(ebpf, STACK_MAPS[i])?,
            counts_name: COUNT_MAPS[i],
            stacks_name: STACK_MAPS[i],
        })
    }
}

impl Buffer for SampleBuffer {
    type Drained = Vec<KernelSample>;

    fn drain_into(&mut self, out: &mut Vec<KernelSample>) -> Result<(), ProbeError> {
        let entries: Vec<(SampleKey, u64)> =
            drain_hash(self.counts.fd().as_fd(), self.counts_name)?;
        // Emptied with the counts that reference it, so the next round of this buffer has
        // the whole map.
        let stacks = drain_stacks(self.stacks.fd().as_fd(), self.stacks_name)?;
        out.extend(
            entries
                .into_iter()
                .map(|(key, count)| key.sample(&stacks, count, None)),
        );
        Ok(())
    }
}

/// The CPU sampler's health metrics.
const HEALTH: &[HealthRow<KernelCounters>] = &[
    HealthRow {
        name: "emberprof.cpu.samples",
        description: "CPU samples taken of profiled processes",
        unit: "{sample}",
        label: None,
        value: |k| k.samples,
    },
    HealthRow {
        name: "emberprof.cpu.samples.dropped",
        description: "CPU samples the kernel could not record",
        unit: "{sample}",
        label: Some(("reason", "count_map_full")),
        value: |k| k.count_map_full,
    },
    HealthRow {
        name: "emberprof.cpu.stacks.lost",
        description:
            "User or kernel stacks of CPU samples that could not be kept (the samples are)",
        unit: "{stack}",
        label: Some(("reason", "user_stack_map_full")),
        value: |k| k.user_stack_map_full,
    },
    HealthRow {
        name: "emberprof.cpu.stacks.lost",
        description:
            "User or kernel stacks of CPU samples that could not be kept (the samples are)",
        unit: "{stack}",
        label: Some(("reason", "kernel_stack_map_full")),
        value: |k| k.kernel_stack_map_full,
    },
    HealthRow {
        name: "emberprof.cpu.stacks.lost",
        description:
            "User or kernel stacks of CPU samples that could not be kept (the samples are)",
        unit: "{stack}",
        label: Some(("reason", "stack_error")),
        value: |k| k.stack_errors,
    },
    unwind_cut("emberprof.cpu.unwind.cut", "no_rule", |k| k.unwind_no_rule),
    unwind_cut("emberprof.cpu.unwind.cut", "bad_read", |k| {
        k.unwind_bad_read
    }),
    unwind_cut("emberprof.cpu.unwind.cut", "depth", |k| k.unwind_depth),
    announce_lost(|k| k.announce_lost),
    HealthRow {
        name: "emberprof.python.samples",
        description: "CPU samples of threads of processes running Python",
        unit: "{sample}",
        label: None,
        value: |k| k.py_samples,
    },
    py_cut("no_thread_state", |k| k.py_no_thread),
    py_cut("bad_read", |k| k.py_bad_read),
    py_cut("depth", |k| k.py_depth),
    py_cut("stack_map_full", |k| k.py_stack_full),
    HealthRow {
        name: "emberprof.python.notes.lost",
        description: "New Python stacks not passed to user space at once (ring full): named at the drain, unless their process exited",
        unit: "{stack}",
        label: None,
        value: |k| k.py_notes_lost,
    },
];

/// Python samples without their whole Python stack, by reason.
const fn py_cut(
    reason: &'static str,
    value: fn(&KernelCounters) -> u64,
) -> HealthRow<KernelCounters> {
    HealthRow {
        name: "emberprof.python.stacks.incomplete",
        description: "CPU samples of Python processes whose Python stack is missing or cut",
        unit: "{sample}",
        label: Some(("reason", reason)),
        value,
    }
}

impl Profiler for CpuSampler {
    fn kind(&self) -> Option<ProfileKind> {
        Some(ProfileKind::Cpu)
    }

    fn drain(&mut self) -> Result<Drained, ProbeError> {
        CpuSampler::drain(self).map(Drained::Samples)
    }

    fn stop(&mut self) -> Result<Drained, ProbeError> {
        CpuSampler::stop(self).map(Drained::Samples)
    }

    fn set_pids(&mut self, pids: &std::collections::BTreeSet<u32>) -> Result<(), ProbeError> {
        CpuSampler::set_pids(self, pids)
    }

    fn counts(&self) -> Result<Vec<(&'static str, u64)>, ProbeError> {
        let k = self.counters()?;
        Ok(vec![
            ("kernel_counted", k.samples),
            ("dropped", k.dropped()),
            ("stacks_lost", k.stacks_lost()),
        ])
    }

    fn health(&self) -> Result<Vec<HealthCounter>, ProbeError> {
        Ok(health_of(HEALTH, &self.counters()?))
    }

    fn take_new_processes(&mut self) -> Option<NewProcesses> {
        CpuSampler::take_new_processes(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{captured_stack, stack_of, STACK_ERR_MAP_FULL, STACK_ERR_NONE};
    use emberprof_model::{CapturedStack, StackLoss};
    use std::collections::HashMap;
    use std::sync::Arc;

    #[test]
    fn sample_keys_name_their_stack_or_why_it_is_missing() {
        let stacks: HashMap<u64, CapturedStack> = [
            (7u64, captured_stack(&[0x10u64, 0x20])),
            (9u64, captured_stack(&[])),
            (
                11u64,
                captured_stack(&[0x10u64, crate::abi::UNWIND_CUT + 1]),
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            stack_of(&stacks, 7, 0),
            CapturedStack::Addrs(Arc::from(&[0x10u64, 0x20][..]))
        );
        assert_eq!(stack_of(&stacks, 9, 0), CapturedStack::None);
        assert_eq!(
            stack_of(&stacks, 11, 0),
            CapturedStack::Cut(Arc::from(&[0x10u64][..]), StackCut::NoRule)
        );
        assert_eq!(stack_of(&stacks, 0, STACK_ERR_NONE), CapturedStack::None);
        assert_eq!(stack_of(&stacks, 0, 0), CapturedStack::None);
        assert_eq!(
            stack_of(&stacks, 0, STACK_ERR_MAP_FULL),
            CapturedStack::Lost(StackLoss::MapFull)
        );
        assert_eq!(
            stack_of(&stacks, 0, -16),
            CapturedStack::Lost(StackLoss::Error(16))
        );
        // A key whose stack was drained with an earlier round.
        assert_eq!(
            stack_of(&stacks, 8, 0),
            CapturedStack::Lost(StackLoss::Error(libc::ENOENT))
        );
    }
}
