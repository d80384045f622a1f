//! Loads the off-CPU profiler on the sched_switch BTF tracepoint and drains the blocked
//! time it aggregates per thread and stack.

use std::os::fd::AsFd;
use std::time::Duration;

use aya::maps::MapData;
use aya::{Btf, Ebpf};

use crate::abi::{
    captured_stack, OffCpuCounter, OffCpuKey, OffCpuValue, DEFAULT_MIN_BLOCK_NS,
    DEFAULT_OFF_CPU_COUNT_MAP_ENTRIES, KEY_KTHREAD, UNWIND_ENTRIES,
};
use crate::double_buffer::{Buffer, DoubleBuffer};
use crate::error::ProbeError;
use crate::maps::{drain_hash, drain_hash_each, take_hash, PerCpuCounters};
use crate::new_processes::{self, NewProcesses};
use crate::pid_filter;
use crate::profiler::{announce_lost, health_of, unwind_cut, Drained, HealthRow, Profiler};
use crate::shared_ebpf::SharedEbpf;
use emberprof_model::{CapturedStack, HealthCounter, KernelSample, ProfileKind, StackLoss};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::shared_ebpf::SCHED_SWITCH as PROGRAM;
pub(crate) const COUNT_MAPS: [&str; 2] = ["ep_off_counts_0", "ep_off_counts_1"];
const STACK_MAPS: [&str; 2] = ["ep_off_stacks_0", "ep_off_stacks_1"];
const SHORT_MAPS: [&str; 2] = ["ep_off_short_0", "ep_off_short_1"];

/// What to record.
#[derive(Clone, Debug)]
pub struct OffCpuConfig {
    /// Only these processes (thread-group ids) when non-empty.
    pub pids: Vec<u32>,
    /// Filter by PID even while `pids` is empty: the set is changed at run time with
    /// `set_pids` (include/exclude rules).
    pub filter_pids: bool,
    /// Also record emberprof's own process (left out by default: symbolizing its own
    /// samples parses its own debug info and feeds back into what is measured).
    pub profile_self: bool,
    /// Also count time a runnable thread waited after being preempted.
    pub include_preempted: bool,
    /// Blocks shorter than this are not recorded (bounds the cost on busy hosts).
    pub min_block: Duration,
    /// Entries of each of the two count maps (distinct thread + stack keys between drains).
    pub count_map_entries: u32,
    /// Announce processes at their first block, for a watcher (when no CPU sampler does).
    pub announce: bool,
    /// As `CpuSamplerConfig::unwind_entries` (the CPU sampler's wins when both run: they
    /// share the array).
    pub unwind_entries: Option<u32>,
}

impl OffCpuConfig {
    /// Voluntary waits of at least 1 µs, 16384 keys per buffer.
    pub fn new(pids: Vec<u32>) -> Self {
        OffCpuConfig {
            pids,
            filter_pids: false,
            profile_self: false,
            include_preempted: false,
            min_block: Duration::from_nanos(DEFAULT_MIN_BLOCK_NS),
            count_map_entries: DEFAULT_OFF_CPU_COUNT_MAP_ENTRIES,
            announce: false,
            unwind_entries: Some(UNWIND_ENTRIES as u32),
        }
    }
}

/// Totals of what the kernel side saw, summed over CPUs, since load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffCpuCounters {
    /// Blocks credited to a stack.
    pub blocks: u64,
    /// Blocks shorter than the minimum, not recorded.
    pub short: u64,
    /// Blocks not recorded: too many threads blocked at once.
    pub start_full: u64,
    /// Blocks lost: no room in the count map.
    pub count_full: u64,
    /// Stacks that could not be read.
    pub stack_errors: u64,
    /// New processes not announced to user space (ring buffer full).
    pub announce_lost: u64,
    /// User-stack walks by unwind tables that ended at a pc without a rule.
    pub unwind_no_rule: u64,
    /// ... that ended because a return address or RBP could not be read.
    pub unwind_bad_read: u64,
    /// ... that reached the frame limit.
    pub unwind_depth: u64,
    /// Switch-outs that reused the thread's last stacks instead of walking them.
    pub reused: u64,
    /// Reused stacks that the periodic walk found different.
    pub stale: u64,
    /// Short blocks whose process total had no room (counted in `short` only).
    pub short_full: u64,
    /// Blocks lost: no room for their stacks in the buffer.
    pub stacks_full: u64,
    /// Switch-outs of threads of Python processes whose Python stack is missing or cut.
    pub py_incomplete: u64,
}

impl OffCpuCounters {
    /// The field that totals `counter`.
    fn field(&mut self, counter: OffCpuCounter) -> &mut u64 {
        match counter {
            OffCpuCounter::Blocks => &mut self.blocks,
            OffCpuCounter::Short => &mut self.short,
            OffCpuCounter::StartFull => &mut self.start_full,
            OffCpuCounter::CountFull => &mut self.count_full,
            OffCpuCounter::StackError => &mut self.stack_errors,
            OffCpuCounter::AnnounceLost => &mut self.announce_lost,
            OffCpuCounter::UnwindNoRule => &mut self.unwind_no_rule,
            OffCpuCounter::UnwindBadRead => &mut self.unwind_bad_read,
            OffCpuCounter::UnwindDepth => &mut self.unwind_depth,
            OffCpuCounter::Reused => &mut self.reused,
            OffCpuCounter::Stale => &mut self.stale,
            OffCpuCounter::ShortFull => &mut self.short_full,
            OffCpuCounter::StacksFull => &mut self.stacks_full,
            OffCpuCounter::PyIncomplete => &mut self.py_incomplete,
        }
    }

    /// Blocks the kernel could not record.
    pub fn dropped(&self) -> u64 {
        self.start_full + self.count_full + self.stacks_full
    }
}

/// The loaded and attached off-CPU profiler. Dropping it detaches and unloads everything.
pub struct OffCpuProfiler {
    ebpf: SharedEbpf,
    buffers: DoubleBuffer<BlockBuffer>,
    counters: PerCpuCounters,
    attached: bool,
    new_processes: Option<NewProcesses>,
    /// Blocks drained with their stacks since load (see `BlockBuffer::drained`).
    drained: Arc<AtomicU64>,
}

impl OffCpuProfiler {
    /// Checks the kernel and the configuration (before anything is loaded).
    pub(crate) fn check(config: &OffCpuConfig) -> Result<(), ProbeError> {
        // sched_switch's prev_state argument (BTF tracepoint) and task storage in tracing
        // programs.
        crate::preflight::check_kernel("off-CPU profiling", (5, 18))?;
        crate::loader::check_start(&[("off-CPU count", config.count_map_entries)], &config.pids)
    }

    /// Takes the profiler's maps out of a loaded object, without attaching yet (see
    /// `Probes`); `attach` attaches it.
    pub(crate) fn loaded(
        ebpf: SharedEbpf,
        new_processes: Option<NewProcesses>,
    ) -> Result<Self, ProbeError> {
        let drained = Arc::new(AtomicU64::new(0));
        let (buffers, counters) = {
            let mut object = ebpf.lock();
            let buffers = [
                BlockBuffer::take(&mut object, 0, drained.clone())?,
                BlockBuffer::take(&mut object, 1, drained.clone())?,
            ];
            let buffers = DoubleBuffer::take(&mut object, "ep_off_control", buffers)?;
            let counters = PerCpuCounters::take(&mut object, "ep_off_counters")?;
            (buffers, counters)
        };
        Ok(OffCpuProfiler {
            ebpf,
            buffers,
            counters,
            attached: false,
            new_processes,
            drained,
        })
    }

    /// Attaches the sched_switch program (shared with the latency histograms).
    pub fn attach(&mut self) -> Result<(), ProbeError> {
        let btf = Btf::from_sys_fs().map_err(|e| ProbeError::Btf(e.to_string()))?;
        self.ebpf.attach_tracepoint(PROGRAM, "sched_switch", &btf)?;
        self.attached = true;
        tracing::debug!("off-CPU profiler attached");
        Ok(())
    }

    /// The announcements of newly seen processes (with `announce`), for a watcher (once).
    pub fn take_new_processes(&mut self) -> Option<NewProcesses> {
        self.new_processes.take()
    }

    /// Switches the kernel to the other buffer and returns what the previous one holds;
    /// values are blocked nanoseconds.
    pub fn drain(&mut self) -> Result<Vec<KernelSample>, ProbeError> {
        self.buffers.drain()
    }

    /// Detaches from the scheduler and returns everything still in the kernel. Threads
    /// still blocked at that moment are not counted: their block has not ended.
    pub fn stop(&mut self) -> Result<Vec<KernelSample>, ProbeError> {
        let (ebpf, attached) = (&self.ebpf, &mut self.attached);
        self.buffers.stop(|| {
            new_processes::unload_lifecycle(&mut ebpf.lock());
            if *attached {
                // The histograms may keep the program attached.
                ebpf.stop_switch_part(crate::abi::SWITCH_OFF_CPU)?;
                ebpf.detach_tracepoint(PROGRAM)?;
                *attached = false;
            }
            Ok(())
        })
    }

    /// Replaces the processes the kernel records (with `filter_pids` or a non-empty `pids`
    /// at start; otherwise the filter is off and this has no effect).
    pub fn set_pids(&mut self, pids: &std::collections::BTreeSet<u32>) -> Result<(), ProbeError> {
        pid_filter::sync(&mut self.ebpf.lock(), pids)
    }

    /// Kernel-side totals since load.
    pub fn counters(&self) -> Result<OffCpuCounters, ProbeError> {
        let mut totals = OffCpuCounters::default();
        for (counter, total) in self.counters.totals(&OffCpuCounter::ALL)? {
            *totals.field(counter) = total;
        }
        Ok(totals)
    }
}

/// One buffer: blocked time by stack id, the thread and stacks of each id, and the short
/// blocks of each process.
struct BlockBuffer {
    counts: MapData,
    stacks: MapData,
    shorts: MapData,
    i: usize,
    /// Blocks handed to user space with their stacks, over both buffers since load: equal
    /// to the kernel's `blocks` counter when nothing was lost between them.
    drained: Arc<AtomicU64>,
}

impl BlockBuffer {
    /// Takes buffer `i`'s maps out of the loaded object.
    fn take(ebpf: &mut Ebpf, i: usize, drained: Arc<AtomicU64>) -> Result<Self, ProbeError> {
        Ok(BlockBuffer {
            drained,
            counts: take_hash(ebpf, COUNT_MAPS[i])?,
            stacks: take_hash(ebpf, STACK_MAPS[i])?,
            shorts: take_hash(ebpf, SHORT_MAPS[i])?,
            i,
        })
    }
}

impl Buffer for BlockBuffer {
    type Drained = Vec<KernelSample>;

    fn drain_into(&mut self, out: &mut Vec<KernelSample>) -> Result<(), ProbeError> {
        let mut counts: HashMap<u64, OffCpuValue> =
            drain_hash(self.counts.fd().as_fd(), COUNT_MAPS[self.i])?
                .into_iter()
                .collect();
        let drained = &self.drained;
        // Stacks are 2 KB each: joined one by one as they are read, never all held.
        drain_hash_each(
            self.stacks.fd().as_fd(),
            STACK_MAPS[self.i],
            |id: u64, key: OffCpuKey| {
                if let Some(value) = counts.remove(&id) {
                    out.push(sample_of(&key, value.total_ns));
                    drained.fetch_add(value.blocks, Ordering::Relaxed);
                }
            },
        )?;
        if !counts.is_empty() {
            // The kernel stores an id's stacks before it counts a block under it; this
            // would take a straggler that wrote past the switch's grace.
            let ns: u64 = counts.values().map(|v| v.total_ns).sum();
            tracing::warn!(
                ids = counts.len(),
                blocked_ns = ns,
                "off-CPU blocks counted without their stacks in the buffer; not attributed"
            );
        }
        // Last: a process named by its other samples in this drain keeps that name.
        let shorts: Vec<(u64, OffCpuValue)> =
            drain_hash(self.shorts.fd().as_fd(), SHORT_MAPS[self.i])?;
        out.extend(
            shorts
                .into_iter()
                .map(|(image, value)| short_blocks(image, value)),
        );
        Ok(())
    }
}

/// A drained thread + stacks with its blocked time.
fn sample_of(key: &OffCpuKey, value: u64) -> KernelSample {
    KernelSample {
        pid: key.tgid,
        tid: key.tid,
        thread_name: key.comm_str(),
        exec_id: key.exec_id,
        kernel_thread: key.flags & KEY_KTHREAD != 0,
        user: captured_stack(key.user_frames()),
        kernel: captured_stack(key.kernel_frames()),
        interpreted: captured_stack(key.py_entries()),
        value,
        probe: None,
    }
}

/// A process image's blocks shorter than the minimum (key `tgid << 32 | exec_id`), as one
/// sample without stacks whose frame says what it holds.
fn short_blocks(image: u64, value: OffCpuValue) -> KernelSample {
    let pid = (image >> 32) as u32;
    KernelSample {
        pid,
        tid: pid,
        thread_name: String::new(),
        exec_id: image as u32,
        kernel_thread: false,
        user: CapturedStack::Lost(StackLoss::ShortBlocks),
        kernel: CapturedStack::None,
        interpreted: CapturedStack::None,
        value: value.total_ns,
        probe: None,
    }
}

/// `emberprof.offcpu.blocks.dropped{reason}`.
const fn dropped(
    reason: &'static str,
    value: fn(&OffCpuCounters) -> u64,
) -> HealthRow<OffCpuCounters> {
    HealthRow {
        name: "emberprof.offcpu.blocks.dropped",
        description: "Blocks the kernel could not record",
        unit: "{block}",
        label: Some(("reason", reason)),
        value,
    }
}

/// The off-CPU profiler's health metrics.
const HEALTH: &[HealthRow<OffCpuCounters>] = &[
    HealthRow {
        name: "emberprof.offcpu.blocks",
        description: "Blocks credited to a stack",
        unit: "{block}",
        label: None,
        value: |k| k.blocks,
    },
    dropped("start_full", |k| k.start_full),
    dropped("count_map_full", |k| k.count_full),
    dropped("stack_map_full", |k| k.stacks_full),
    HealthRow {
        name: "emberprof.offcpu.blocks.short",
        description: "Blocks shorter than --min-block: their time is in the profile under one frame per process, their stacks are not taken",
        unit: "{block}",
        label: None,
        value: |k| k.short,
    },
    HealthRow {
        name: "emberprof.offcpu.stacks.reused",
        description: "Switch-outs that reused the thread's stacks of its last block (same registers at the same syscall, same callers) instead of walking them",
        unit: "{block}",
        label: None,
        value: |k| k.reused,
    },
    HealthRow {
        name: "emberprof.offcpu.stacks.stale",
        description: "Reused stacks that the periodic walk found different (each reuse between was attributed to the old stacks)",
        unit: "{block}",
        label: None,
        value: |k| k.stale,
    },
    announce_lost(|k| k.announce_lost),
    unwind_cut("emberprof.offcpu.unwind.cut", "no_rule", |k| k.unwind_no_rule),
    unwind_cut("emberprof.offcpu.unwind.cut", "bad_read", |k| k.unwind_bad_read),
    unwind_cut("emberprof.offcpu.unwind.cut", "depth", |k| k.unwind_depth),
    HealthRow {
        name: "emberprof.offcpu.python.incomplete",
        description: "Switch-outs of threads of Python processes whose Python stack is missing or cut (a thread without Python state, an unreadable frame, too deep)",
        unit: "{block}",
        label: None,
        value: |k| k.py_incomplete,
    },
];

impl Profiler for OffCpuProfiler {
    fn kind(&self) -> Option<ProfileKind> {
        Some(ProfileKind::OffCpu)
    }

    fn drain(&mut self) -> Result<Drained, ProbeError> {
        OffCpuProfiler::drain(self).map(Drained::Samples)
    }

    fn stop(&mut self) -> Result<Drained, ProbeError> {
        OffCpuProfiler::stop(self).map(Drained::Samples)
    }

    fn set_pids(&mut self, pids: &std::collections::BTreeSet<u32>) -> Result<(), ProbeError> {
        OffCpuProfiler::set_pids(self, pids)
    }

    fn counts(&self) -> Result<Vec<(&'static str, u64)>, ProbeError> {
        let k = self.counters()?;
        Ok(vec![
            ("blocks", k.blocks),
            ("dropped", k.dropped()),
            ("short", k.short),
            ("reused", k.reused),
            ("stale", k.stale),
            ("blocks_drained", self.drained.load(Ordering::Relaxed)),
        ])
    }

    fn health(&self) -> Result<Vec<HealthCounter>, ProbeError> {
        Ok(health_of(HEALTH, &self.counters()?))
    }

    fn take_new_processes(&mut self) -> Option<NewProcesses> {
        OffCpuProfiler::take_new_processes(self)
    }
}
