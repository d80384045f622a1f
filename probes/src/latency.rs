//! The latency histograms (scheduler, block I/O and, opt-in, syscall tracepoints): attaches
//! their programs and drains the log2 histograms they keep in the kernel.

use std::os::fd::AsFd;

use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use aya::{Btf, Ebpf};

use crate::abi::{
    Hist, HistCached, HistCounter, HistKey, HistKind, DEFAULT_HIST_KEYS, HIST_CACHE_SLOTS,
};
use crate::double_buffer::{Buffer, DoubleBuffer};
use crate::error::ProbeError;
use crate::hist_series::{EventSeries, HistSeries, HistogramDrain};
use crate::loader::check_start;
use crate::maps::{drain_hash, take_as, take_hash, PerCpuCounters};
use crate::pid_filter;
use crate::profiler::{health_of, Drained, HealthRow, Profiler};
use crate::shared_ebpf::{SharedEbpf, SCHED_SWITCH};
use emberprof_model::{HealthCounter, Log2Histogram, ProfileKind};

pub(crate) const HIST_MAPS: [&str; 2] = ["ep_hists_0", "ep_hists_1"];
const OVERFLOW_MAPS: [&str; 2] = ["ep_hist_overflow_0", "ep_hist_overflow_1"];
const CACHE_MAPS: [&str; 2] = ["ep_hist_cache_0", "ep_hist_cache_1"];
/// Calls of probed functions in progress.
pub(crate) const PROBE_CALLS: &str = "ep_probe_calls";
/// TCP connections in SYN_SENT.
pub(crate) const TCP_SYN: &str = "ep_tcp_syn";
/// Event counts (probe hits, TCP events), sized like the histograms when asked for.
pub(crate) const EVENT_MAPS: [&str; 2] = ["ep_events_0", "ep_events_1"];
/// Maps shrunk to one entry when the histograms are not asked for (besides HIST_MAPS):
/// block requests in flight, and the CPUs' caches.
pub(crate) const UNUSED_WITHOUT: [&str; 3] = ["ep_bio_start", CACHE_MAPS[0], CACHE_MAPS[1]];

/// (program, BTF tracepoint) always attached. Run-queue and off-CPU durations come from
/// the sched_switch program the off-CPU profiler also uses.
const CORE_PROGRAMS: &[(&str, &str)] = &[
    (SCHED_SWITCH, "sched_switch"),
    ("ep_hist_rq_issue", "block_rq_issue"),
    ("ep_hist_rq_complete", "block_rq_complete"),
];

/// (program, BTF tracepoint) attached for `--tcp`.
const TCP_PROGRAMS: &[(&str, &str)] = &[
    ("ep_tcp_state", "inet_sock_set_state"),
    ("ep_tcp_retransmit", "tcp_retransmit_skb"),
    ("ep_tcp_reset_sent", "tcp_send_reset"),
    ("ep_tcp_reset_received", "tcp_receive_reset"),
];

/// (program, BTF tracepoint) attached only for syscall latency: they run on every syscall.
const SYSCALL_PROGRAMS: &[(&str, &str)] = &[
    ("ep_hist_sys_enter", "sys_enter"),
    ("ep_hist_sys_exit", "sys_exit"),
];

/// What to measure.
#[derive(Clone, Debug)]
pub struct LatencyConfig {
    /// Only these processes' threads (run queue, off-CPU, syscalls) when non-empty. Block
    /// I/O completes in interrupt context and is always per disk, never filtered.
    pub pids: Vec<u32>,
    /// Filter by PID even while `pids` is empty: the set is changed at run time with
    /// `set_pids` (include/exclude rules).
    pub filter_pids: bool,
    /// Also record emberprof's own process (left out by default: symbolizing its own
    /// samples parses its own debug info and feeds back into what is measured).
    pub profile_self: bool,
    /// Run-queue, off-CPU and block I/O histograms (off when only probes or TCP are asked
    /// for).
    pub core: bool,
    /// Also measure every syscall's latency (costs a few hundred ns per syscall).
    pub syscalls: bool,
    /// TCP connection latency, retransmits and resets (`--tcp`).
    pub tcp: bool,
    /// Probe points (`--probe`): their programs are attached later, through
    /// [`LatencyHistograms::probe_points`].
    pub probes: bool,
    /// Some probes record the stacks of their hits (the probe profile, `Probes::probe_stacks`).
    pub probe_stacks: bool,
    /// Unwind tables for those stacks (`None`: frame pointers only), as the profilers'.
    pub unwind_entries: Option<u32>,
    /// Distinct histograms (cgroup, disk, syscall keys) kept between drains; more go to the
    /// overflow histogram of their kind.
    pub max_keys: u32,
}

impl LatencyConfig {
    /// Scheduler and block I/O histograms, up to 1024 keys (`DEFAULT_HIST_KEYS`).
    pub fn new(pids: Vec<u32>) -> Self {
        LatencyConfig {
            pids,
            filter_pids: false,
            profile_self: false,
            core: true,
            syscalls: false,
            tcp: false,
            probes: false,
            probe_stacks: false,
            unwind_entries: None,
            max_keys: DEFAULT_HIST_KEYS,
        }
    }
}

/// Totals of what the kernel side saw, summed over CPUs, since load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyCounters {
    /// Durations recorded into a keyed histogram.
    pub recorded: u64,
    /// Durations recorded into an overflow histogram: too many keys.
    pub overflowed: u64,
    /// Waits not tracked (no task storage for the thread, too many block requests in
    /// flight, or a run-queue wait that ended before the thread's first switch-out seen):
    /// those durations are lost.
    pub start_full: u64,
    /// Events (probe hits, TCP events) not counted: the count map was full.
    pub events_full: u64,
}

impl LatencyCounters {
    /// The field that totals `counter`.
    fn field(&mut self, counter: HistCounter) -> &mut u64 {
        match counter {
            HistCounter::Recorded => &mut self.recorded,
            HistCounter::Overflowed => &mut self.overflowed,
            HistCounter::StartFull => &mut self.start_full,
            HistCounter::EventsFull => &mut self.events_full,
        }
    }
}

/// The loaded histogram programs, attached by `attach`. Dropping the last holder of the
/// object detaches and unloads them.
pub struct LatencyHistograms {
    ebpf: SharedEbpf,
    buffers: DoubleBuffer<HistBuffer>,
    counters: PerCpuCounters,
    core: bool,
    syscalls: bool,
    tcp: bool,
    /// The probe points' programs, until taken by `probe_points`.
    probe_points: Option<crate::probe_points::ProbePoints>,
    attached: Vec<&'static str>,
    /// Durations the drains moved from the caches to overflow histograms.
    overflowed: u64,
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source }
}

impl LatencyHistograms {
    /// Checks the kernel and the configuration (before anything is loaded).
    pub(crate) fn check(config: &LatencyConfig) -> Result<(), ProbeError> {
        // sched_switch's prev_state argument (BTF tracepoint) and task storage in tracing
        // programs.
        crate::preflight::check_kernel("latency histograms", (5, 18))?;
        check_start(&[("histogram key", config.max_keys)], &config.pids)?;
        if !std::path::Path::new("/proc/self/schedstat").exists() {
            tracing::warn!(
                "this kernel has no scheduler statistics (CONFIG_SCHED_INFO: schedstats or \
                 delay accounting), which run-queue latency is read from: no run-queue \
                 histograms; the others are recorded"
            );
        }
        Ok(())
    }

    /// Takes the histograms' maps out of a loaded object, without attaching yet (see
    /// `Probes`); `attach` attaches them.
    pub(crate) fn loaded(ebpf: SharedEbpf, config: &LatencyConfig) -> Result<Self, ProbeError> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(path, source)| ProbeError::OnlineCpus { path, source })?;
        let (buffers, counters) = {
            let mut object = ebpf.lock();
            let buffers = [
                HistBuffer::take(&mut object, 0, cpus, config)?,
                HistBuffer::take(&mut object, 1, cpus, config)?,
            ];
            let buffers = DoubleBuffer::take(&mut object, "ep_hist_control", buffers)?;
            let counters = PerCpuCounters::take(&mut object, "ep_hist_counters")?;
            (buffers, counters)
        };
        let probe_points = if config.probes {
            Some(crate::probe_points::ProbePoints::take(ebpf.clone())?)
        } else {
            None
        };
        Ok(LatencyHistograms {
            ebpf,
            buffers,
            counters,
            core: config.core,
            tcp: config.tcp,
            probe_points,
            syscalls: config.syscalls,
            attached: Vec::new(),
            overflowed: 0,
        })
    }

    /// Attaches the programs.
    pub fn attach(&mut self) -> Result<(), ProbeError> {
        let btf = Btf::from_sys_fs().map_err(|e| ProbeError::Btf(e.to_string()))?;
        let mut programs: Vec<(&'static str, &'static str)> = Vec::new();
        if self.core {
            programs.extend_from_slice(CORE_PROGRAMS);
        }
        if self.syscalls {
            programs.extend_from_slice(SYSCALL_PROGRAMS);
        }
        if self.tcp {
            programs.extend_from_slice(TCP_PROGRAMS);
        }
        for (name, tracepoint) in programs {
            if let Err(e) = self.ebpf.attach_tracepoint(name, tracepoint, &btf) {
                // All or nothing: the ones attached already are let go.
                for name in std::mem::take(&mut self.attached) {
                    let _ = self.ebpf.detach_tracepoint(name);
                }
                return Err(e);
            }
            self.attached.push(name);
        }
        tracing::debug!(syscalls = self.syscalls, "latency histograms attached");
        Ok(())
    }

    /// The probe points' programs, to attach (once: later calls get `None`). `None` unless
    /// the configuration asked for probes.
    pub fn probe_points(&mut self) -> Option<crate::probe_points::ProbePoints> {
        self.probe_points.take()
    }

    /// Switches the kernel to the other buffer and returns what the previous one holds.
    pub fn drain(&mut self) -> Result<HistogramDrain, ProbeError> {
        let drain = self.buffers.drain()?;
        self.overflowed += drain.overflowed;
        Ok(drain)
    }

    /// Stops recording (the sched_switch program may stay attached for the off-CPU
    /// profiler, with its histogram part off) and returns everything still in the kernel.
    /// Waits still in progress at that moment are not counted, nor run-queue waits that
    /// ended after their thread last left the CPU (they are recorded at its next
    /// switch-out).
    pub fn stop(&mut self) -> Result<HistogramDrain, ProbeError> {
        let (ebpf, attached) = (&self.ebpf, &mut self.attached);
        let drain = self.buffers.stop(|| {
            if attached.contains(&SCHED_SWITCH) {
                ebpf.stop_switch_part(crate::abi::SWITCH_HISTS)?;
            }
            for name in std::mem::take(attached) {
                ebpf.detach_tracepoint(name)?;
            }
            Ok(())
        })?;
        self.overflowed += drain.overflowed;
        Ok(drain)
    }

    /// Replaces the processes the kernel records (with `filter_pids` or a non-empty `pids`
    /// at start; otherwise the filter is off and this has no effect).
    pub fn set_pids(&mut self, pids: &std::collections::BTreeSet<u32>) -> Result<(), ProbeError> {
        pid_filter::sync(&mut self.ebpf.lock(), pids)
    }

    /// Kernel-side totals since load.
    pub fn counters(&self) -> Result<LatencyCounters, ProbeError> {
        let mut totals = LatencyCounters::default();
        for (counter, total) in self.counters.totals(&HistCounter::ALL)? {
            *totals.field(counter) = total;
        }
        // What the drains found beyond the cap in the CPUs' caches, which the kernel
        // counted as recorded.
        totals.recorded = totals.recorded.saturating_sub(self.overflowed);
        totals.overflowed += self.overflowed;
        Ok(totals)
    }
}

/// One buffer: the keyed histograms and, per kind, the overflow histogram.
struct HistBuffer {
    hists: MapData,
    hists_name: &'static str,
    events: MapData,
    events_name: &'static str,
    overflow: PerCpuArray<MapData, Hist>,
    overflow_name: &'static str,
    /// Each CPU's scheduler histograms.
    cache: PerCpuArray<MapData, HistCached>,
    cache_name: &'static str,
    /// Keyed series a drain may hold (the size of `hists`).
    max_keys: usize,
    /// Slots of `cache` in use: none without the scheduler histograms (its map is shrunk).
    cache_slots: u32,
    /// Possible CPUs: the per-CPU values written back when zeroing an overflow histogram.
    cpus: usize,
}

impl HistBuffer {
    /// Takes buffer `i`'s maps out of the loaded object.
    fn take(
        ebpf: &mut Ebpf,
        i: usize,
        cpus: usize,
        config: &LatencyConfig,
    ) -> Result<Self, ProbeError> {
        Ok(HistBuffer {
            hists: take_hash(ebpf, HIST_MAPS[i])?,
            hists_name: HIST_MAPS[i],
            events: take_hash(ebpf, EVENT_MAPS[i])?,
            events_name: EVENT_MAPS[i],
            overflow: take_as(ebpf, OVERFLOW_MAPS[i])?,
            overflow_name: OVERFLOW_MAPS[i],
            cache: take_as(ebpf, CACHE_MAPS[i])?,
            cache_name: CACHE_MAPS[i],
            max_keys: config.max_keys as usize,
            cache_slots: if config.core { HIST_CACHE_SLOTS } else { 0 },
            cpus,
        })
    }
}

impl Buffer for HistBuffer {
    type Drained = HistogramDrain;

    fn drain_into(&mut self, drain: &mut HistogramDrain) -> Result<(), ProbeError> {
        let entries: Vec<(HistKey, Hist)> = drain_hash(self.hists.fd().as_fd(), self.hists_name)?;
        for (key, value) in entries {
            let mut h = Log2Histogram::new();
            h.add_slots(&value.slots, value.zero, value.sum_ns);
            match HistSeries::decode(&key) {
                Some(series) => drain.add(series, &h),
                None => {
                    tracing::debug!(kind = key.kind, "histogram key of an unknown kind");
                    drain.unknown_kind += h.count();
                }
            }
        }

        let events: Vec<(HistKey, u64)> = drain_hash(self.events.fd().as_fd(), self.events_name)?;
        for (key, n) in events {
            match EventSeries::decode(&key) {
                Some(series) => drain.add_events(series, n),
                None => drain.unknown_kind += n,
            }
        }

        // The buffer is quiet (switched away from, or detached), so reading then zeroing
        // each cache slot and overflow entry loses nothing.
        self.drain_cache(drain)?;
        let overflow_name = self.overflow_name;
        let overflow = &mut self.overflow;
        for kind in HistKind::ALL {
            let per_cpu = overflow
                .get(&(kind as u32), 0)
                .map_err(map_err(overflow_name))?;
            let mut h = Log2Histogram::new();
            per_cpu
                .iter()
                .for_each(|cpu| h.add_slots(&cpu.slots, cpu.zero, cpu.sum_ns));
            if h.is_empty() {
                continue;
            }
            let zeros =
                PerCpuValues::try_from(vec![Hist::default(); self.cpus]).map_err(|source| {
                    ProbeError::MapSyscall {
                        name: overflow_name,
                        op: "update",
                        source,
                    }
                })?;
            overflow
                .set(kind as u32, zeros, 0)
                .map_err(map_err(overflow_name))?;
            drain.add(HistSeries::Overflow(kind), &h);
        }
        Ok(())
    }
}

impl HistBuffer {
    /// Adds each CPU's cached histograms to the drain (merged with the series of the same
    /// key from the shared map, so that each series appears once) and frees the slots.
    fn drain_cache(&mut self, drain: &mut HistogramDrain) -> Result<(), ProbeError> {
        let name = self.cache_name;
        for slot in 0..self.cache_slots {
            let per_cpu = self.cache.get(&slot, 0).map_err(map_err(name))?;
            let mut any = false;
            for cached in per_cpu.iter().filter(|c| c.used != 0) {
                any = true;
                let mut h = Log2Histogram::new();
                h.add_slots(&cached.hist.slots, cached.hist.zero, cached.hist.sum_ns);
                let Some(series) = HistSeries::decode(&cached.key) else {
                    drain.unknown_kind += h.count();
                    continue;
                };
                // The cap holds for what the caches add too: a key the drain does not
                // have yet, once it has max_keys, goes to the overflow histogram.
                let known = drain.series.iter().any(|(s, _)| *s == series);
                if known || drain.keyed() < self.max_keys {
                    drain.add(series, &h);
                } else {
                    drain.overflowed += h.count();
                    drain.add(HistSeries::Overflow(series.kind()), &h);
                }
            }
            if !any {
                continue;
            }
            let zeros = PerCpuValues::try_from(vec![HistCached::default(); self.cpus]).map_err(
                |source| ProbeError::MapSyscall {
                    name,
                    op: "update",
                    source,
                },
            )?;
            self.cache.set(slot, zeros, 0).map_err(map_err(name))?;
        }
        Ok(())
    }
}

/// The latency histograms' health metrics.
const HEALTH: &[HealthRow<LatencyCounters>] = &[
    HealthRow {
        name: "emberprof.histogram.durations",
        description: "Durations recorded into latency histograms",
        unit: "{duration}",
        label: None,
        value: |k| k.recorded + k.overflowed,
    },
    HealthRow {
        name: "emberprof.histogram.durations.overflowed",
        description: "Durations beyond the histogram key cap",
        unit: "{duration}",
        label: None,
        value: |k| k.overflowed,
    },
    HealthRow {
        name: "emberprof.histogram.durations.lost",
        description: "Waits that could not be tracked",
        unit: "{duration}",
        label: None,
        value: |k| k.start_full,
    },
    HealthRow {
        name: "emberprof.histogram.events.lost",
        description: "Probe hits and TCP events not counted (the count map was full)",
        unit: "{event}",
        label: None,
        value: |k| k.events_full,
    },
];

impl Profiler for LatencyHistograms {
    fn kind(&self) -> Option<ProfileKind> {
        None
    }

    fn drain(&mut self) -> Result<Drained, ProbeError> {
        LatencyHistograms::drain(self).map(Drained::Histograms)
    }

    fn stop(&mut self) -> Result<Drained, ProbeError> {
        LatencyHistograms::stop(self).map(Drained::Histograms)
    }

    fn set_pids(&mut self, pids: &std::collections::BTreeSet<u32>) -> Result<(), ProbeError> {
        LatencyHistograms::set_pids(self, pids)
    }

    fn counts(&self) -> Result<Vec<(&'static str, u64)>, ProbeError> {
        let k = self.counters()?;
        Ok(vec![
            ("recorded", k.recorded + k.overflowed),
            ("overflowed", k.overflowed),
            ("lost", k.start_full),
            ("events lost", k.events_full),
        ])
    }

    fn health(&self) -> Result<Vec<HealthCounter>, ProbeError> {
        Ok(health_of(HEALTH, &self.counters()?))
    }
}
