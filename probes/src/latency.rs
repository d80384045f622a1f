//! Loads the latency-histogram programs (scheduler, block I/O and, opt-in, syscall
//! tracepoints) and drains the log2 histograms they keep in the kernel.

use std::os::fd::AsFd;

use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use aya::programs::BtfTracePoint;
use aya::{Btf, Ebpf, EbpfLoader};

use crate::abi::{Hist, HistCounter, HistKey, HistKind, DEFAULT_HIST_KEYS};
use crate::double_buffer::{Buffer, DoubleBuffer};
use crate::error::ProbeError;
use crate::hist_series::{HistSeries, HistogramDrain};
use crate::loader::check_start;
use crate::maps::{drain_hash, take_as, take_hash, PerCpuCounters};
use crate::pid_filter::{self, PidFilter};
use crate::profiler::{health_of, Drained, HealthRow, Profiler};
use emberprof_model::{HealthCounter, Log2Histogram, ProfileKind};

static LATENCY_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/latency.bpf.o"));

const HIST_MAPS: [&str; 2] = ["ep_hists_0", "ep_hists_1"];
const OVERFLOW_MAPS: [&str; 2] = ["ep_hist_overflow_0", "ep_hist_overflow_1"];

/// (program, BTF tracepoint) always attached.
const CORE_PROGRAMS: &[(&str, &str)] = &[
    ("ep_hist_wakeup", "sched_wakeup"),
    ("ep_hist_wakeup_new", "sched_wakeup_new"),
    ("ep_hist_switch", "sched_switch"),
    ("ep_hist_rq_issue", "block_rq_issue"),
    ("ep_hist_rq_complete", "block_rq_complete"),
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
    /// Also measure every syscall's latency (costs a few hundred ns per syscall).
    pub syscalls: bool,
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
            syscalls: false,
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
    /// Waits not tracked (no task storage for the thread, or too many block requests in
    /// flight): those durations are lost.
    pub start_full: u64,
}

impl LatencyCounters {
    /// The field that totals `counter`.
    fn field(&mut self, counter: HistCounter) -> &mut u64 {
        match counter {
            HistCounter::Recorded => &mut self.recorded,
            HistCounter::Overflowed => &mut self.overflowed,
            HistCounter::StartFull => &mut self.start_full,
        }
    }
}

/// The loaded and attached histogram programs. Dropping it detaches and unloads them.
pub struct LatencyHistograms {
    ebpf: Ebpf,
    buffers: DoubleBuffer<HistBuffer>,
    counters: PerCpuCounters,
    attached: Vec<&'static str>,
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source }
}

impl LatencyHistograms {
    /// Checks privileges, loads the programs and attaches them.
    pub fn start(config: &LatencyConfig) -> Result<Self, ProbeError> {
        // sched_switch's prev_state argument (BTF tracepoint) and task storage in tracing
        // programs.
        crate::preflight::check_kernel("latency histograms", (5, 18))?;
        check_start(&[("histogram key", config.max_keys)], &config.pids)?;
        let cpus = aya::util::nr_cpus()
            .map_err(|(path, source)| ProbeError::OnlineCpus { path, source })?;

        let filter = PidFilter::new(&config.pids, config.filter_pids, config.profile_self);
        let btf = Btf::from_sys_fs().map_err(|e| ProbeError::Btf(e.to_string()))?;
        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(&btf))
            // Task-local storage (ep_marks) is a map type aya has no wrapper for; it is
            // only used by the programs.
            .allow_unsupported_maps();
        filter.set_globals(&mut loader);
        for name in HIST_MAPS {
            loader.set_max_entries(name, config.max_keys);
        }
        let mut ebpf = loader.load(LATENCY_OBJ)?;
        pid_filter::sync(&mut ebpf, &config.pids.iter().copied().collect())?;

        let buffers = [
            HistBuffer::take(&mut ebpf, 0, cpus)?,
            HistBuffer::take(&mut ebpf, 1, cpus)?,
        ];
        let buffers = DoubleBuffer::take(&mut ebpf, "ep_hist_control", buffers)?;
        let counters = PerCpuCounters::take(&mut ebpf, "ep_hist_counters")?;

        let mut programs: Vec<(&'static str, &'static str)> = CORE_PROGRAMS.to_vec();
        if config.syscalls {
            programs.extend_from_slice(SYSCALL_PROGRAMS);
        }
        let mut histograms = LatencyHistograms {
            ebpf,
            buffers,
            counters,
            attached: Vec::new(),
        };
        for (name, tracepoint) in programs {
            let program_err = |source| ProbeError::Program { name, source };
            let program: &mut BtfTracePoint = histograms
                .ebpf
                .program_mut(name)
                .ok_or(ProbeError::MissingMap(name))?
                .try_into()
                .map_err(program_err)?;
            program.load(tracepoint, &btf).map_err(program_err)?;
            program.attach().map_err(program_err)?;
            histograms.attached.push(name);
        }
        tracing::debug!(?config, "latency histograms attached");
        Ok(histograms)
    }

    /// Switches the kernel to the other buffer and returns what the previous one holds.
    pub fn drain(&mut self) -> Result<HistogramDrain, ProbeError> {
        self.buffers.drain()
    }

    /// Detaches every program and returns everything still in the kernel. Waits still in
    /// progress at that moment are not counted: they have not ended.
    pub fn stop(&mut self) -> Result<HistogramDrain, ProbeError> {
        let (ebpf, attached) = (&mut self.ebpf, &mut self.attached);
        self.buffers.stop(|| {
            for name in std::mem::take(attached) {
                if let Some(program) = ebpf.program_mut(name) {
                    let program: &mut BtfTracePoint = program
                        .try_into()
                        .map_err(|source| ProbeError::Program { name, source })?;
                    program
                        .unload()
                        .map_err(|source| ProbeError::Program { name, source })?;
                }
            }
            Ok(())
        })
    }

    /// Replaces the processes the kernel records (with `filter_pids` or a non-empty `pids`
    /// at start; otherwise the filter is off and this has no effect).
    pub fn set_pids(&mut self, pids: &std::collections::BTreeSet<u32>) -> Result<(), ProbeError> {
        pid_filter::sync(&mut self.ebpf, pids)
    }

    /// Kernel-side totals since load.
    pub fn counters(&self) -> Result<LatencyCounters, ProbeError> {
        let mut totals = LatencyCounters::default();
        for (counter, total) in self.counters.totals(&HistCounter::ALL)? {
            *totals.field(counter) = total;
        }
        Ok(totals)
    }
}

/// One buffer: the keyed histograms and, per kind, the overflow histogram.
struct HistBuffer {
    hists: MapData,
    hists_name: &'static str,
    overflow: PerCpuArray<MapData, Hist>,
    overflow_name: &'static str,
    /// Possible CPUs: the per-CPU values written back when zeroing an overflow histogram.
    cpus: usize,
}

impl HistBuffer {
    /// Takes buffer `i`'s maps out of the loaded object.
    fn take(ebpf: &mut Ebpf, i: usize, cpus: usize) -> Result<Self, ProbeError> {
        Ok(HistBuffer {
            hists: take_hash(ebpf, HIST_MAPS[i])?,
            hists_name: HIST_MAPS[i],
            overflow: take_as(ebpf, OVERFLOW_MAPS[i])?,
            overflow_name: OVERFLOW_MAPS[i],
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
                Some(series) => drain.series.push((series, h)),
                None => {
                    tracing::debug!(kind = key.kind, "histogram key of an unknown kind");
                    drain.unknown_kind += h.count();
                }
            }
        }

        // The buffer is quiet (switched away from, or detached), so reading then zeroing
        // each overflow entry loses nothing.
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
            drain.series.push((HistSeries::Overflow(kind), h));
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
        ])
    }

    fn health(&self) -> Result<Vec<HealthCounter>, ProbeError> {
        Ok(health_of(HEALTH, &self.counters()?))
    }
}
