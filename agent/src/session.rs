//! The collection session that `record`, `agent` and `/debug/pprof` drive: the loaded
//! profilers and the profiles they fill, the latency histograms, the symbolizer, the process
//! watcher and the attributes of the processes seen. A driver starts it, drains it on its own
//! clock, ends spans and hands them to its sinks, and stops it.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use emberprof_exporters::otlp::metrics::HistogramPoint;
use emberprof_exporters::sinks::Span;
use emberprof_model::{
    Attributes, HealthCounter, KernelSample, Profile, ProfileBuilder, ProfileKind,
};
use emberprof_probes::{
    CpuSampler, CpuSamplerConfig, LatencyConfig, NewProcesses, OffCpuConfig, OffCpuProfiler,
    ProbeError,
};
use emberprof_symbolizer::Symbolizer;

use crate::collect::{self, Collected};
use crate::health::{self, Sources};
use crate::histograms::Histograms;
use crate::metadata::attributes::ExtraAttributes;
use crate::metadata::process::process_attributes;
use crate::timings::{IntervalSize, IntervalTimings};
use crate::watcher::ProcessWatcher;

/// One loaded profiler (boxed: they are large and moved around).
pub enum Profiler {
    Cpu(Box<CpuSampler>),
    OffCpu(Box<OffCpuProfiler>),
}

impl Profiler {
    fn kind(&self) -> ProfileKind {
        match self {
            Profiler::Cpu(_) => ProfileKind::Cpu,
            Profiler::OffCpu(_) => ProfileKind::OffCpu,
        }
    }

    fn drain(&mut self) -> Result<Vec<KernelSample>, ProbeError> {
        match self {
            Profiler::Cpu(p) => p.drain(),
            Profiler::OffCpu(p) => p.drain(),
        }
    }

    fn set_pids(&mut self, pids: &BTreeSet<u32>) -> Result<(), ProbeError> {
        match self {
            Profiler::Cpu(p) => p.set_pids(pids),
            Profiler::OffCpu(p) => p.set_pids(pids),
        }
    }

    fn stop(&mut self) -> Result<Vec<KernelSample>, ProbeError> {
        match self {
            Profiler::Cpu(p) => p.stop(),
            Profiler::OffCpu(p) => p.stop(),
        }
    }

    /// The announcements of newly sampled processes, if this profiler makes them.
    pub fn take_new_processes(&mut self) -> Option<NewProcesses> {
        match self {
            Profiler::Cpu(p) => p.take_new_processes(),
            Profiler::OffCpu(p) => p.take_new_processes(),
        }
    }
}

/// A profiler with the span of profile it fills, and what it collected since the totals
/// were last reset.
pub struct Run {
    pub profiler: Profiler,
    pub builder: ProfileBuilder,
    pub collected: Collected,
}

/// What to start.
pub struct SessionConfig {
    pub cpu: Option<CpuSamplerConfig>,
    pub off_cpu: Option<OffCpuConfig>,
    pub latency: Option<LatencyConfig>,
    pub symbolizer: Symbolizer,
    /// Which per-process and per-thread attributes leave emberprof.
    pub extra: ExtraAttributes,
    /// Read the resource attributes of the processes seen (needed when spans are shipped).
    pub attributes: bool,
    pub start: SystemTime,
    /// Entries of each kernel count map, for how full they got.
    pub count_map_entries: u32,
}

/// A span ended: its profiles (one per kind), start and end.
pub struct FinishedSpan {
    pub profiles: Vec<Profile>,
    pub start: SystemTime,
    pub end: SystemTime,
}

/// A span with everything sinks take (see [`Session::package`]).
pub struct SpanData {
    pub profiles: Vec<Profile>,
    pub processes: HashMap<u32, Attributes>,
    pub histograms: Vec<HistogramPoint>,
    pub health: Vec<HealthCounter>,
    pub run_start: SystemTime,
    pub start: SystemTime,
    pub end: SystemTime,
}

impl SpanData {
    /// The span as sinks take it.
    pub fn span(&self) -> Span<'_> {
        Span {
            profiles: &self.profiles,
            processes: &self.processes,
            histograms: &self.histograms,
            health: &self.health,
            run_start: self.run_start,
            start: self.start,
            end: self.end,
        }
    }
}

/// The running session.
pub struct Session {
    runs: Vec<Run>,
    histograms: Option<Histograms>,
    symbolizer: Symbolizer,
    watcher: Option<ProcessWatcher>,
    /// Resource attributes of the processes seen, when spans are shipped.
    processes: Option<HashMap<u32, Attributes>>,
    extra: ExtraAttributes,
    run_start: SystemTime,
    span_start: SystemTime,
    count_map_entries: u32,
    timings: IntervalTimings,
}

impl Session {
    /// Loads and attaches the profilers asked for and starts the process watcher.
    pub fn start(config: SessionConfig) -> anyhow::Result<Session> {
        let mut runs = Vec::new();
        if let Some(c) = &config.cpu {
            let sampler = CpuSampler::start(c).context("starting the CPU sampler")?;
            runs.push(Run {
                profiler: Profiler::Cpu(Box::new(sampler)),
                builder: ProfileBuilder::cpu(c.frequency_hz, config.start),
                collected: Collected::default(),
            });
        }
        if let Some(c) = &config.off_cpu {
            let profiler = OffCpuProfiler::start(c).context("starting the off-CPU profiler")?;
            runs.push(Run {
                profiler: Profiler::OffCpu(Box::new(profiler)),
                builder: ProfileBuilder::off_cpu(config.start),
                collected: Collected::default(),
            });
        }
        let histograms = config.latency.as_ref().map(Histograms::start).transpose()?;
        let watcher = runs
            .iter_mut()
            .find_map(|r| r.profiler.take_new_processes())
            .and_then(ProcessWatcher::start);
        Ok(Session {
            runs,
            histograms,
            symbolizer: config.symbolizer,
            watcher,
            processes: config.attributes.then(HashMap::new),
            extra: config.extra,
            run_start: config.start,
            span_start: config.start,
            count_map_entries: config.count_map_entries,
            timings: IntervalTimings::default(),
        })
    }

    /// The profilers and what they collected.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// The latency histograms, if recorded.
    pub fn histograms(&self) -> Option<&Histograms> {
        self.histograms.as_ref()
    }

    /// The latency histograms, to report or export.
    pub fn histograms_mut(&mut self) -> Option<&mut Histograms> {
        self.histograms.as_mut()
    }

    /// The symbolizer, e.g. to capture a process before its first sample.
    pub fn symbolizer(&mut self) -> &mut Symbolizer {
        &mut self.symbolizer
    }

    /// Reads what the kernel aggregated since the last drain into the spans' profiles.
    pub fn drain(&mut self) -> anyhow::Result<()> {
        if let Some(w) = &self.watcher {
            w.deliver(&mut self.symbolizer, self.processes.as_mut());
        }
        let threads = self.extra.threads();
        for run in &mut self.runs {
            let counts = self
                .timings
                .drain(|| run.profiler.drain())
                .context("draining the kernel maps")?;
            let symbolizer = &mut self.symbolizer;
            self.timings.symbolize(counts.len(), || {
                collect::add(
                    &counts,
                    symbolizer,
                    &mut run.builder,
                    &mut run.collected,
                    threads,
                )
            });
        }
        if let Some(h) = &mut self.histograms {
            self.timings.drain(|| h.drain())?;
        }
        self.observe();
        Ok(())
    }

    /// Detaches every probe and adds what the kernel still held.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(w) = &self.watcher {
            w.deliver(&mut self.symbolizer, self.processes.as_mut());
        }
        let threads = self.extra.threads();
        for run in &mut self.runs {
            let counts = run.profiler.stop().context("stopping the probes")?;
            collect::add(
                &counts,
                &mut self.symbolizer,
                &mut run.builder,
                &mut run.collected,
                threads,
            );
        }
        if let Some(h) = &mut self.histograms {
            h.stop()?;
        }
        self.watcher = None;
        self.observe();
        Ok(())
    }

    /// Reads the resource attributes of processes not seen before, while they still run;
    /// one already gone is named after what the kernel called it, never its PID.
    fn observe(&mut self) {
        let Some(processes) = &mut self.processes else {
            return;
        };
        for (pid, seen) in self.runs.iter().flat_map(|r| r.collected.pids.iter()) {
            processes
                .entry(*pid)
                .or_insert_with(|| process_attributes(*pid, &seen.name, seen.kernel_thread));
        }
    }

    /// Ends the span being filled at `end` and starts the next one there, so that
    /// consecutive spans neither overlap nor leave gaps.
    pub fn end_span(&mut self, end: SystemTime) -> FinishedSpan {
        let profiles = self
            .runs
            .iter_mut()
            .map(|run| {
                let next = run.builder.fresh(end);
                std::mem::replace(&mut run.builder, next).finish(end)
            })
            .collect();
        let start = std::mem::replace(&mut self.span_start, end);
        FinishedSpan {
            profiles,
            start,
            end,
        }
    }

    /// Everything a finished span hands to sinks: its profiles, the attributes of their
    /// processes (only those that may leave emberprof), emberprof's health now and, when
    /// `histograms` is set, the latency histograms (end their interval with
    /// [`end_histogram_interval`](Self::end_histogram_interval) once shipped).
    pub fn package(&mut self, span: FinishedSpan, histograms: bool) -> SpanData {
        let samples: usize = span.profiles.iter().map(|p| p.samples.len()).sum();
        tracing::info!(samples, "exporting an interval");
        let processes: HashMap<u32, Attributes> = self
            .processes
            .iter()
            .flatten()
            .map(|(pid, attrs)| (*pid, self.extra.filter(attrs)))
            .collect();
        let health = match self.health() {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reading emberprof's own counters");
                Vec::new()
            }
        };
        let histograms = match (&mut self.histograms, histograms) {
            (Some(h), true) => h.points(),
            _ => Vec::new(),
        };
        SpanData {
            profiles: span.profiles,
            processes,
            histograms,
            health,
            run_start: self.run_start,
            start: span.start,
            end: span.end,
        }
    }

    /// Closes the histograms' export interval: with delta export every series starts again
    /// from zero, otherwise the series of removed cgroups are let go. Called after every
    /// span that carried histograms, with or without an exporter, so that they do not pile
    /// up.
    pub fn end_histogram_interval(&mut self, delta: bool) {
        if let Some(h) = &mut self.histograms {
            h.end_interval(delta);
        }
    }

    /// Starts per-interval bookkeeping over (the agent's), so that a months-long run does
    /// not accumulate every stack and PID it ever saw; exited processes are let go, from
    /// the symbolizer too (their samples are symbolized by now).
    pub fn forget_interval(&mut self, closing: Duration) {
        let processes: std::collections::HashSet<u32> = self
            .runs
            .iter()
            .flat_map(|r| r.collected.pids.keys().copied())
            .collect();
        let size = IntervalSize {
            stacks: self.runs.iter().map(|r| r.collected.stacks.len()).sum(),
            processes: processes.len(),
        };
        self.timings.finish(size, closing);
        for run in &mut self.runs {
            run.collected = Collected::default();
        }
        if let Some(p) = &mut self.processes {
            p.clear();
        }
        self.symbolizer.forget_exited();
    }

    /// Changes which per-process and per-thread attributes leave emberprof from the next
    /// span on (a configuration reload).
    pub fn set_extra(&mut self, extra: ExtraAttributes) {
        self.extra = extra;
    }

    /// Points the probes' PID filters at `pids`. A failed update keeps the previous filter:
    /// profiling goes on, and the next call tries again.
    pub fn set_pids(&mut self, pids: &BTreeSet<u32>) {
        for run in &mut self.runs {
            if let Err(e) = run.profiler.set_pids(pids) {
                tracing::warn!(error = %e, "updating the PID filter");
            }
        }
        if let Some(h) = &mut self.histograms {
            if let Err(e) = h.set_pids(pids) {
                tracing::warn!(error = %format!("{e:#}"), "updating the PID filter");
            }
        }
    }

    /// emberprof's own counters now (the health catalogue; sinks report theirs).
    pub fn health(&self) -> anyhow::Result<Vec<HealthCounter>> {
        let (mut cpu, mut off_cpu) = (None, None);
        let mut map_fill = Vec::new();
        for run in &self.runs {
            match &run.profiler {
                Profiler::Cpu(p) => {
                    cpu = Some(p.counters().context("reading the CPU sampler's counters")?)
                }
                Profiler::OffCpu(p) => {
                    off_cpu = Some(
                        p.counters()
                            .context("reading the off-CPU profiler's counters")?,
                    )
                }
            }
            map_fill.push((
                run.profiler.kind(),
                run.collected.max_drained as f64 / f64::from(self.count_map_entries.max(1)),
            ));
        }
        let latency = self.histograms.as_ref().map(|h| h.counters()).transpose()?;
        let stats = self.symbolizer.stats();
        Ok(health::counters(&Sources {
            cpu,
            off_cpu,
            latency,
            map_fill: &map_fill,
            symbolizer: &stats,
            k8s: crate::kubernetes::get(),
        }))
    }
}
