//! What `record` and `agent` share: the loaded profilers, what each has collected, and the
//! bookkeeping around them (process attributes, health counters).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use emberprof_exporters::health::{HealthCounter, HealthValue};
use emberprof_model::{Attributes, KernelSample, ProfileBuilder};
use emberprof_probes::{
    CpuSampler, CpuSamplerConfig, LatencyConfig, OffCpuConfig, OffCpuProfiler, ProbeError,
};
use emberprof_symbolizer::{PerfMapStats, Symbolizer};
use std::time::SystemTime;

use crate::collect::{self, Collected, ThreadDetail};
use crate::histograms::Histograms;
use crate::metadata::process::process_attributes;

/// One loaded profiler (boxed: they are large and moved around).
pub enum Profiler {
    Cpu(Box<CpuSampler>),
    OffCpu(Box<OffCpuProfiler>),
}

impl Profiler {
    pub fn drain(&mut self) -> Result<Vec<KernelSample>, ProbeError> {
        match self {
            Profiler::Cpu(p) => p.drain(),
            Profiler::OffCpu(p) => p.drain(),
        }
    }

    /// Replaces the processes the kernel records (the PID filter must be on).
    pub fn set_pids(&mut self, pids: &std::collections::BTreeSet<u32>) -> Result<(), ProbeError> {
        match self {
            Profiler::Cpu(p) => p.set_pids(pids),
            Profiler::OffCpu(p) => p.set_pids(pids),
        }
    }

    pub fn stop(&mut self) -> Result<Vec<KernelSample>, ProbeError> {
        match self {
            Profiler::Cpu(p) => p.stop(),
            Profiler::OffCpu(p) => p.stop(),
        }
    }
}

/// A profiler with the profile it fills, and where that profile goes (`record` only).
pub struct Run {
    pub profiler: Profiler,
    pub builder: ProfileBuilder,
    pub collected: Collected,
    pub path: Option<PathBuf>,
}

impl Run {
    /// Closes the span being filled at `end` and starts the next one there, so that
    /// consecutive spans neither overlap nor leave gaps.
    pub fn take_span(&mut self, end: SystemTime) -> emberprof_model::Profile {
        let next = self.builder.fresh(end);
        std::mem::replace(&mut self.builder, next).finish(end)
    }
}

/// emberprof's own counters for this recording, for the health metrics.
pub fn health_counters(
    runs: &[Run],
    histograms: Option<&Histograms>,
    symbolizer: &Symbolizer,
    count_map_entries: u32,
) -> anyhow::Result<Vec<HealthCounter>> {
    let c = |name, description, unit, attributes: Vec<(&'static str, &str)>, value| HealthCounter {
        name,
        description,
        unit,
        attributes: attributes
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect(),
        value: HealthValue::Count(value),
    };
    let mut out = Vec::new();
    let mut announce_lost = 0;
    for run in runs {
        let map = match &run.profiler {
            Profiler::Cpu(_) => "cpu_counts",
            Profiler::OffCpu(_) => "offcpu_counts",
        };
        out.push(HealthCounter {
            name: "emberprof.map.fill",
            description: "Highest share of a kernel count map in use at a drain",
            unit: "1",
            attributes: vec![("map", map.to_string())],
            value: HealthValue::Level(
                run.collected.max_drained as f64 / f64::from(count_map_entries.max(1)),
            ),
        });
        // One count for emberprof: only the profiler that announces counts (the CPU
        // sampler, else the off-CPU profiler); the others add zero.
        announce_lost += match &run.profiler {
            Profiler::Cpu(p) => p.counters().map(|k| k.announce_lost),
            Profiler::OffCpu(p) => p.counters().map(|k| k.announce_lost),
        }
        .context("reading the probes' counters")?;
        match &run.profiler {
            Profiler::Cpu(p) => {
                let k = p.counters().context("reading the CPU sampler's counters")?;
                out.push(c(
                    "emberprof.cpu.samples",
                    "CPU samples taken of profiled processes",
                    "{sample}",
                    vec![],
                    k.samples,
                ));
                out.push(c(
                    "emberprof.cpu.samples.dropped",
                    "CPU samples the kernel could not record",
                    "{sample}",
                    vec![("reason", "count_map_full")],
                    k.count_map_full,
                ));
                out.extend(by_label(
                    "emberprof.cpu.stacks.lost",
                    "User or kernel stacks of CPU samples that could not be kept (the samples are)",
                    "{stack}",
                    "reason",
                    &[
                        ("user_stack_map_full", k.user_stack_map_full),
                        ("kernel_stack_map_full", k.kernel_stack_map_full),
                        ("stack_error", k.stack_errors),
                    ],
                ));
            }
            Profiler::OffCpu(p) => {
                let k = p
                    .counters()
                    .context("reading the off-CPU profiler's counters")?;
                out.push(c(
                    "emberprof.offcpu.blocks",
                    "Blocks credited to a stack",
                    "{block}",
                    vec![],
                    k.blocks,
                ));
                out.extend(by_label(
                    "emberprof.offcpu.blocks.dropped",
                    "Blocks the kernel could not record",
                    "{block}",
                    "reason",
                    &[
                        ("start_full", k.start_full),
                        ("count_map_full", k.count_full),
                    ],
                ));
            }
        }
    }
    if !runs.is_empty() {
        out.push(c(
            "emberprof.processes.announce_lost",
            "New processes not announced at their first sample (ring full); read at the next drain",
            "{process}",
            vec![],
            announce_lost,
        ));
    }
    if let Some(h) = histograms {
        let k = h.counters()?;
        out.push(c(
            "emberprof.histogram.durations",
            "Durations recorded into latency histograms",
            "{duration}",
            vec![],
            k.recorded + k.overflowed,
        ));
        out.push(c(
            "emberprof.histogram.durations.overflowed",
            "Durations beyond the histogram key cap",
            "{duration}",
            vec![],
            k.overflowed,
        ));
        out.push(c(
            "emberprof.histogram.durations.lost",
            "Waits that could not be tracked",
            "{duration}",
            vec![],
            k.start_full,
        ));
    }
    let s = symbolizer.stats();
    out.extend(by_label(
        "emberprof.symbolizer.lookups",
        "Addresses symbolized, by cache result",
        "{address}",
        "result",
        &[("hit", s.cache_hits), ("miss", s.cache_misses)],
    ));
    for (name, description, unit, value) in [
        (
            "emberprof.symbolizer.cache.entries",
            "Kernel addresses held resolved in the symbolizer's cache",
            "1",
            s.cache_entries,
        ),
        (
            "emberprof.symbolizer.cache.bytes",
            "Memory the symbolizer's caches account for (parsed files, resolved addresses)",
            "By",
            s.cache_bytes,
        ),
        (
            "emberprof.symbolizer.processes",
            "Processes whose mappings the symbolizer holds",
            "1",
            s.processes_held,
        ),
        (
            "emberprof.symbolizer.files",
            "Files the symbolizer holds open",
            "1",
            s.files,
        ),
        (
            "emberprof.symbolizer.debuginfod.pending",
            "Debug files being fetched from debuginfod",
            "1",
            s.debuginfod_pending,
        ),
    ] {
        out.push(HealthCounter {
            name,
            description,
            unit,
            attributes: Vec::new(),
            value: HealthValue::Level(value as f64),
        });
    }
    for (name, description, value) in [
        (
            "emberprof.symbolizer.files.resets",
            "Times the symbolizer's open files passed their limit and were all let go",
            s.file_resets,
        ),
        (
            "emberprof.symbolizer.cache.resets",
            "Times the kernel address cache reached its limit and started over",
            s.cache_resets,
        ),
        (
            "emberprof.symbolizer.files.parsed",
            "Times a file's symbols were loaded (again after an eviction)",
            s.files_parsed,
        ),
        (
            "emberprof.symbolizer.evictions",
            "Files whose parsed symbols were let go to stay under the memory bound",
            s.evictions,
        ),
        (
            "emberprof.symbolizer.debug_files",
            "Files named from a separate debug file",
            s.debug_files,
        ),
        (
            "emberprof.symbolizer.jit_frames",
            "Frames named from a perf map (JIT code)",
            s.jit_frames,
        ),
        (
            "emberprof.symbolizer.processes.adopted",
            "Processes captured when first sampled, before the next drain",
            s.processes_adopted,
        ),
    ] {
        out.push(c(name, description, "1", vec![], value));
    }
    out.extend(by_label(
        "emberprof.symbolizer.debuginfod.requests",
        "debuginfod lookups by outcome",
        "1",
        "result",
        &[
            ("fetched", s.debuginfod_fetched),
            ("not_found", s.debuginfod_not_found),
            ("error", s.debuginfod_errors),
        ],
    ));
    if let Some(k) = crate::kubernetes::get() {
        out.push(HealthCounter {
            name: "emberprof.k8s.pods",
            description: "Pods of this node held from the Kubernetes API",
            unit: "1",
            attributes: Vec::new(),
            value: HealthValue::Level(k.pods() as f64),
        });
        for (name, description, value) in [
            (
                "emberprof.k8s.lists",
                "Complete pod lists received (first and re-lists)",
                &k.stats.lists,
            ),
            (
                "emberprof.k8s.events",
                "Pod changes received from the watch",
                &k.stats.events,
            ),
            (
                "emberprof.k8s.errors",
                "Pod watch errors (each retried with backoff)",
                &k.stats.errors,
            ),
        ] {
            out.push(c(
                name,
                description,
                "1",
                vec![],
                value.load(std::sync::atomic::Ordering::Relaxed),
            ));
        }
    }
    out.push(c(
        "emberprof.symbolizer.file_errors",
        "Files whose symbols could not be read",
        "{file}",
        vec![],
        s.file_errors,
    ));
    out.extend(perf_map_counters(&s.perf_maps));
    Ok(out)
}

/// What reading perf maps (JIT symbols) refused, skipped, cut or dropped, and holds.
fn perf_map_counters(p: &PerfMapStats) -> Vec<HealthCounter> {
    let mut out = by_label(
        "emberprof.symbolizer.perf_map.refused",
        "Perf maps not used: not a regular file, owned by another user, or writable by others",
        "{file}",
        "reason",
        &[
            ("not_regular", p.refused_not_regular),
            ("owner", p.refused_owner),
            ("writable", p.refused_writable),
        ],
    );
    out.extend(by_label(
        "emberprof.symbolizer.perf_map.lines.skipped",
        "Perf map lines skipped",
        "{line}",
        "reason",
        &[
            ("not_utf8", p.lines_not_utf8),
            ("malformed", p.lines_malformed),
        ],
    ));
    for (name, description, unit, value) in [
        (
            "emberprof.symbolizer.perf_map.names.cut",
            "Perf map names longer than the cap, cut",
            "{name}",
            p.names_cut,
        ),
        (
            "emberprof.symbolizer.perf_map.read_bytes",
            "Bytes read from perf maps (only what was appended since the last read)",
            "By",
            p.bytes_read,
        ),
        (
            "emberprof.symbolizer.perf_map.symbols.dropped",
            "Perf map symbols not kept: a process's or the host's bound was reached",
            "{symbol}",
            p.symbols_dropped,
        ),
    ] {
        out.push(HealthCounter {
            name,
            description,
            unit,
            attributes: Vec::new(),
            value: HealthValue::Count(value),
        });
    }
    out.push(HealthCounter {
        name: "emberprof.symbolizer.perf_map.bytes",
        description: "Memory held for perf maps (symbol indexes and cached names)",
        unit: "By",
        attributes: Vec::new(),
        value: HealthValue::Level(p.bytes as f64),
    });
    out
}

/// One counter per value of `label` (a reason, a result), all under one name.
fn by_label(
    name: &'static str,
    description: &'static str,
    unit: &'static str,
    label: &'static str,
    values: &[(&str, u64)],
) -> Vec<HealthCounter> {
    values
        .iter()
        .map(|&(v, n)| HealthCounter {
            name,
            description,
            unit,
            attributes: vec![(label, v.to_string())],
            value: HealthValue::Count(n),
        })
        .collect()
}

/// Reads the resource attributes of processes not seen before, while they still run; one
/// already gone is named after what the kernel called it, never its PID.
pub fn observe(processes: &mut HashMap<u32, Attributes>, runs: &[Run]) {
    for (pid, seen) in runs.iter().flat_map(|r| r.collected.pids.iter()) {
        processes
            .entry(*pid)
            .or_insert_with(|| process_attributes(*pid, &seen.name, seen.kernel_thread));
    }
}

/// Loads the CPU sampler and the profile it fills from `start`.
pub fn start_cpu(
    config: &CpuSamplerConfig,
    start: SystemTime,
    path: Option<PathBuf>,
) -> anyhow::Result<Run> {
    let sampler = CpuSampler::start(config).context("starting the CPU sampler")?;
    Ok(Run {
        profiler: Profiler::Cpu(Box::new(sampler)),
        builder: ProfileBuilder::cpu(config.frequency_hz, start),
        collected: Collected::default(),
        path,
    })
}

/// Loads the off-CPU profiler and the profile it fills from `start`.
pub fn start_off_cpu(
    config: &OffCpuConfig,
    start: SystemTime,
    path: Option<PathBuf>,
) -> anyhow::Result<Run> {
    let profiler = OffCpuProfiler::start(config).context("starting the off-CPU profiler")?;
    Ok(Run {
        profiler: Profiler::OffCpu(Box::new(profiler)),
        builder: ProfileBuilder::off_cpu(start),
        collected: Collected::default(),
        path,
    })
}

/// Loads the histogram probes when asked for.
pub fn start_histograms(config: Option<LatencyConfig>) -> anyhow::Result<Option<Histograms>> {
    config.map(|c| Histograms::start(&c)).transpose()
}

/// Detaches every probe and adds what the kernel still held.
pub fn stop_all(
    runs: &mut [Run],
    histograms: Option<&mut Histograms>,
    symbolizer: &mut Symbolizer,
    threads: ThreadDetail,
) -> anyhow::Result<()> {
    for run in runs.iter_mut() {
        let counts = run.profiler.stop().context("stopping the probes")?;
        collect::add(
            &counts,
            symbolizer,
            &mut run.builder,
            &mut run.collected,
            threads,
        );
    }
    if let Some(h) = histograms {
        h.stop()?;
    }
    Ok(())
}
