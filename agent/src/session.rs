//! The collection session that `record`, `agent` and `/debug/pprof` drive: the loaded
//! profilers and the profiles they fill, the latency histograms, the symbolizer, the process
//! watcher and the attributes of the processes seen. A driver starts it, drains it on its own
//! clock, ends spans and hands them to its sinks, and stops it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use emberprof_exporters::otlp::metrics::{CounterPoint, HistogramPoint};
use emberprof_exporters::sinks::Span;
use emberprof_model::{
    Attributes, HealthCounter, HealthValue, Profile, ProfileBuilder, ProfileKind,
};
use emberprof_probes::{CpuSamplerConfig, Drained, LatencyConfig, OffCpuConfig, Probes, Profiler};
use emberprof_symbolizer::Symbolizer;

use crate::collect::{self, Collected};
use crate::health::{self, Sources};
use crate::histograms::{Histograms, Recorded};
use crate::metadata::attributes::ExtraAttributes;
use crate::metadata::process::process_attributes;
use crate::probe_points::ProbeRunner;
use crate::python_procs::{PythonReader, PythonTracker, SharedPython};
use crate::timings::{IntervalSize, IntervalTimings};
use crate::unwind_loader::{SharedUnwind, UnwindState, UnwindStats};
use crate::watcher::ProcessWatcher;

/// A profiler with the span of profile it fills, and what it collected since the totals
/// were last reset.
pub struct Run {
    pub profiler: Box<dyn Profiler>,
    pub kind: ProfileKind,
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
    /// Walk the Python stacks of processes running CPython (CPU samples and off-CPU blocks).
    pub python: bool,
    /// Probe points to attach (`--probe`; needs `latency` with `probes` set).
    pub probe_points: Option<crate::probe_points::ProbeConfig>,
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
    pub counters: Vec<CounterPoint>,
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
            counters: &self.counters,
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
    /// The histogram probes and what was drained from them.
    histograms: Option<(Box<dyn Profiler>, Histograms)>,
    symbolizer: Symbolizer,
    watcher: Option<ProcessWatcher>,
    /// Resource attributes of the processes seen, when spans are shipped.
    processes: Option<HashMap<u32, Attributes>>,
    extra: ExtraAttributes,
    run_start: SystemTime,
    span_start: SystemTime,
    count_map_entries: u32,
    timings: IntervalTimings,
    /// The unwind tables written to the kernel's walker (whose maps the CPU sampler and
    /// the off-CPU profiler share), also written by the watcher at announcements.
    unwind: SharedUnwind,
    /// The processes listed in the kernel's Python walker (`None`: `--no-python`).
    python: Option<SharedPython>,
    /// Names of new Python stacks, read while their processes run.
    python_reader: Option<PythonReader>,
    /// The probe points' attacher and rate guard.
    probe_runner: Option<ProbeRunner>,
    /// Each probe's spec, by slot: the root frame of its stacks in the probe profile.
    probe_names: Vec<String>,
}

impl Session {
    /// Loads and attaches the profilers asked for and starts the process watcher.
    pub fn start(config: SessionConfig) -> anyhow::Result<Session> {
        let mut runs = Vec::new();
        let mut symbolizer = config.symbolizer;
        let unwind_entries = emberprof_probes::object::unwind_entries(
            config.cpu.as_ref(),
            config.off_cpu.as_ref(),
            config.latency.as_ref(),
        );
        let mut unwind = crate::unwind_loader::UnwindLoader::new(unwind_entries);
        let mut unwind_maps = None;
        let mut histograms = None;
        let mut python = None;
        let mut python_reader = None;
        let mut probe_runner = None;
        if config.cpu.is_some() || config.off_cpu.is_some() || config.latency.is_some() {
            let what = [
                config.cpu.as_ref().map(|_| "the CPU sampler"),
                config.off_cpu.as_ref().map(|_| "the off-CPU profiler"),
                config.latency.as_ref().map(|_| "the latency histograms"),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" and ");
            let mut probes = Probes::load(
                config.cpu.as_ref(),
                config.off_cpu.as_ref(),
                config.latency.as_ref(),
            )
            .with_context(|| format!("starting {what}"))?;
            // Tables of the processes known now before the first stack is taken, so that
            // none of theirs is walked without.
            unwind.sync(&mut symbolizer, &mut probes.unwind);
            if let (Some(mut sampler), Some(c)) = (probes.cpu, &config.cpu) {
                sampler
                    .start_sampling(c)
                    .context("starting the CPU sampler")?;
                runs.push(Run {
                    profiler: Box::new(sampler),
                    kind: ProfileKind::Cpu,
                    builder: ProfileBuilder::cpu(c.frequency_hz, config.start),
                    collected: Collected::default(),
                });
            }
            if let Some(mut profiler) = probes.off_cpu {
                profiler.attach().context("starting the off-CPU profiler")?;
                runs.push(Run {
                    profiler: Box::new(profiler),
                    kind: ProfileKind::OffCpu,
                    builder: ProfileBuilder::off_cpu(config.start),
                    collected: Collected::default(),
                });
            }
            if let (Some(mut stacks), Some(pc)) = (probes.probe_stacks, &config.probe_points) {
                for (slot, spec) in pc.specs.iter().enumerate() {
                    stacks
                        .set_stacks(slot, spec.takes_stacks())
                        .context("starting the probe profile")?;
                }
                runs.push(Run {
                    profiler: Box::new(stacks),
                    kind: ProfileKind::Probe,
                    builder: ProfileBuilder::probe(config.start),
                    collected: Collected::default(),
                });
            }
            if let (Some(mut probe), Some(c)) = (probes.latency, &config.latency) {
                probe.attach().context("starting the latency histograms")?;
                let recorded = Recorded {
                    core: c.core,
                    syscalls: c.syscalls,
                    probes: config
                        .probe_points
                        .iter()
                        .flat_map(|p| p.specs.iter().cloned())
                        .collect(),
                    tcp: c.tcp,
                };
                if let (Some(points), Some(pc)) = (probe.probe_points(), &config.probe_points) {
                    probe_runner = Some(ProbeRunner::start(points, pc.clone())?);
                }
                let probe: Box<dyn Profiler> = Box::new(probe);
                histograms = Some((probe, Histograms::new(recorded)));
            }
            unwind_maps = Some(probes.unwind);
            if config.python && (config.cpu.is_some() || config.off_cpu.is_some()) {
                let tracker = Arc::new(Mutex::new(PythonTracker::new(probes.python)));
                python_reader = PythonReader::start(probes.python_notes, tracker.clone());
                python = Some(tracker);
            }
        }
        let unwind = Arc::new(Mutex::new(UnwindState {
            loader: unwind,
            maps: unwind_maps,
        }));
        let watcher = runs
            .iter_mut()
            .find_map(|r| r.profiler.take_new_processes())
            .and_then(|ring| ProcessWatcher::start(ring, unwind.clone(), python.clone()));
        let mut session = Session {
            runs,
            histograms,
            symbolizer,
            watcher,
            processes: config.attributes.then(HashMap::new),
            extra: config.extra,
            run_start: config.start,
            span_start: config.start,
            count_map_entries: config.count_map_entries,
            timings: IntervalTimings::default(),
            unwind,
            python,
            python_reader,
            probe_runner,
            probe_names: config
                .probe_points
                .iter()
                .flat_map(|p| p.specs.iter().map(|s| s.text.clone()))
                .collect(),
        };
        session.load_unwind_tables();
        Ok(session)
    }

    /// The profilers and what they collected.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// The latency histograms' probes' counts (`recorded`, `overflowed`, `lost`), if
    /// recorded.
    pub fn histogram_counts(&self) -> anyhow::Result<Option<Vec<(&'static str, u64)>>> {
        self.histograms
            .as_ref()
            .map(|(probe, _)| probe.counts())
            .transpose()
            .context("reading the latency histograms' counters")
    }

    /// The histogram text report, if recorded.
    pub fn histogram_report(&mut self) -> anyhow::Result<Option<String>> {
        let counts = self.histogram_counts()?;
        let probes = self
            .probe_runner
            .as_ref()
            .map(ProbeRunner::report)
            .unwrap_or_default();
        Ok(self.histograms.as_mut().map(|(_, h)| {
            let mut report = h.report(counts.as_deref().unwrap_or_default());
            report.push_str(&probes);
            report
        }))
    }

    /// What the unwind tables written to the kernel's walker hold; `None` with
    /// `--unwind fp`.
    pub fn unwind_stats(&self) -> Option<UnwindStats> {
        self.unwind_state().loader.stats()
    }

    /// The unwind state; a thread that panicked holding it left the tables as consistent
    /// as any listing is between two syscalls.
    fn unwind_state(&self) -> std::sync::MutexGuard<'_, UnwindState> {
        self.unwind
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The symbolizer, e.g. to capture a process before its first sample.
    pub fn symbolizer(&mut self) -> &mut Symbolizer {
        &mut self.symbolizer
    }

    /// Between drains (every tick of the run loop): hands the watcher's captures to the
    /// symbolizer, and if there were any, loads the tables of those the table thread could
    /// not (its queue was full). Nothing else: a sync walks every process held, work for
    /// the drains, not for ten ticks a second.
    pub fn tick(&mut self) {
        let delivered = self.watcher.as_ref().map_or(0, |w| {
            w.deliver(&mut self.symbolizer, self.processes.as_mut())
        });
        if delivered > 0 {
            self.load_unwind_tables();
        }
    }

    /// Loads the unwind tables of processes the symbolizer met since the last call.
    fn load_unwind_tables(&mut self) {
        let unwind = self.unwind.clone();
        let mut state = unwind
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.sync(&mut self.symbolizer);
    }

    /// Reads what the kernel aggregated since the last drain into the spans' profiles.
    pub fn drain(&mut self) -> anyhow::Result<()> {
        if let Some(w) = &self.watcher {
            w.deliver(&mut self.symbolizer, self.processes.as_mut());
        }
        self.load_unwind_tables();
        for i in 0..self.runs.len() {
            let drained = self
                .timings
                .drain(|| self.runs[i].profiler.drain())
                .context("draining the kernel maps")?;
            if let Drained::Samples(samples) = &drained {
                // Processes that mapped code since they were read (a dlopen) are read again
                // and their new files' tables loaded before the samples are symbolized, which
                // can take far longer (the first time a file's symbols are read).
                self.symbolizer.observe_samples(samples);
                self.load_unwind_tables();
                self.observe_python(samples);
            }
            self.adopt_python_names();
            self.add(i, drained);
        }
        if let Some((probe, h)) = &mut self.histograms {
            let drained = self
                .timings
                .drain(|| probe.drain())
                .context("draining the latency histograms")?;
            if let Drained::Histograms(d) = drained {
                h.add(d);
            }
        }
        self.observe();
        // What symbolizing the drain parsed and let go goes back to the system.
        emberprof_symbolizer::heap::give_back_freed();
        Ok(())
    }

    /// Looks for Python in the processes sampled whose announcement was lost, and takes
    /// out those gone.
    fn observe_python(&mut self, samples: &[emberprof_model::KernelSample]) {
        let Some(python) = &self.python else {
            return;
        };
        python
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .prune();
        let own = std::process::id();
        // One look per process image, not per drained stack (a lock each).
        let images: std::collections::HashSet<(u32, u32)> = samples
            .iter()
            .filter(|s| !s.kernel_thread && s.pid != own)
            .map(|s| (s.pid, s.exec_id))
            .collect();
        for (pid, exec_id) in images {
            crate::python_procs::observe(python, pid, exec_id);
        }
    }

    /// Hands the code objects read at notes of new stacks to the symbolizer.
    fn adopt_python_names(&mut self) {
        let Some(reader) = &self.python_reader else {
            return;
        };
        for c in reader.take() {
            self.symbolizer
                .adopt_python(c.pid, c.exec_id, c.runtime, c.codes);
        }
    }

    /// Adds what run `i` drained to its profile.
    fn add(&mut self, i: usize, drained: Drained) {
        let Drained::Samples(samples) = drained else {
            return;
        };
        let threads = self.extra.threads();
        let run = &mut self.runs[i];
        let symbolizer = &mut self.symbolizer;
        let probe_names = &self.probe_names;
        self.timings.symbolize(samples.len(), || {
            collect::add(
                &samples,
                symbolizer,
                &mut run.builder,
                &mut run.collected,
                threads,
                probe_names,
            )
        });
    }

    /// Detaches every probe and adds what the kernel still held.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(w) = &self.watcher {
            w.deliver(&mut self.symbolizer, self.processes.as_mut());
        }
        // Probe points first: the probe profile is drained only once nothing writes to it.
        if let Some(runner) = &mut self.probe_runner {
            runner.stop();
        }
        for i in 0..self.runs.len() {
            let drained = self.runs[i]
                .profiler
                .stop()
                .context("stopping the probes")?;
            self.adopt_python_names();
            self.add(i, drained);
        }
        if let Some((probe, h)) = &mut self.histograms {
            if let Drained::Histograms(d) =
                probe.stop().context("stopping the latency histograms")?
            {
                h.add(d);
            }
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
        let (histograms, counters) = match (&mut self.histograms, histograms) {
            (Some((_, h)), true) => (h.points(), h.counter_points()),
            _ => (Vec::new(), Vec::new()),
        };
        SpanData {
            profiles: span.profiles,
            processes,
            histograms,
            counters,
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
        if let Some((_, h)) = &mut self.histograms {
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
        // What the interval's stacks and processes held goes back to the system.
        emberprof_symbolizer::heap::give_back_freed();
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
        if let Some((probe, _)) = &mut self.histograms {
            if let Err(e) = probe.set_pids(pids) {
                tracing::warn!(error = %e, "updating the histograms' PID filter");
            }
        }
    }

    /// emberprof's own counters now: the probes' and the health catalogue's (sinks report
    /// theirs). A metric several probes report (announcements lost) is added up.
    pub fn health(&self) -> anyhow::Result<Vec<HealthCounter>> {
        let mut out: Vec<HealthCounter> = Vec::new();
        let probes = self
            .runs
            .iter()
            .map(|r| &r.profiler)
            .chain(self.histograms.iter().map(|(p, _)| p));
        for probe in probes {
            for c in probe.health().context("reading the probes' counters")? {
                match out
                    .iter_mut()
                    .find(|o| o.name == c.name && o.attributes == c.attributes)
                {
                    Some(HealthCounter {
                        value: HealthValue::Count(total),
                        ..
                    }) => {
                        if let HealthValue::Count(n) = c.value {
                            *total += n;
                        }
                    }
                    _ => out.push(c),
                }
            }
        }
        out.extend(
            self.runs
                .iter()
                .filter(|r| r.kind != ProfileKind::Probe)
                .map(|r| {
                    let fill =
                        r.collected.max_drained as f64 / f64::from(self.count_map_entries.max(1));
                    health::map_fill(r.kind, fill)
                }),
        );
        if let Some(python) = &self.python {
            let tracker = python
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            out.extend(tracker.health());
            out.extend(crate::python_procs::name_health(
                &self.symbolizer.python_stats(),
            ));
        }
        if let Some(runner) = &self.probe_runner {
            out.extend(runner.health());
        }
        let stats = self.symbolizer.stats();
        out.extend(health::counters(&Sources {
            symbolizer: &stats,
            k8s: crate::kubernetes::get(),
            unwind: self.unwind_stats(),
        }));
        Ok(out)
    }
}
