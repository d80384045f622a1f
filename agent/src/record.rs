//! `emberprof record`: sample for a while, then write one profile per kind recorded and
//! print the latency histograms. With an exporter (OTLP or Pyroscope) each finished span of
//! `--export-interval` is sent while recording, through the agent's sinks, so that no
//! profile is older than a span when it arrives (Pyroscope refuses profiles over an hour
//! old); the files still cover the whole recording.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use emberprof_exporters::Format;
use emberprof_model::Attributes;
use emberprof_model::{Profile, ProfileBuilder};
use emberprof_probes::{CpuSamplerConfig, LatencyConfig, OffCpuConfig};

use crate::cli::RecordArgs;
use crate::collect;
use crate::histograms::Histograms;
use crate::output;
use crate::progress::Progress;
use crate::session::{
    health_counters, observe, start_cpu, start_histograms, start_off_cpu, stop_all, Profiler, Run,
};
use crate::sinks::Sinks;
use crate::watcher::ProcessWatcher;

/// How often the loop wakes to check for Ctrl-C and refresh the progress line.
const TICK: Duration = Duration::from_millis(100);

pub fn run(args: RecordArgs) -> anyhow::Result<()> {
    crate::kubernetes::init(false);
    for pid in &args.pids {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("no process with PID {pid} (--pid)");
        }
    }
    let want_off_cpu = args.waits.off_cpu;
    let want_histograms = args.waits.histograms || args.waits.syscall_latency;
    let want_cpu = args.cpu || !(args.waits.off_cpu || want_histograms);
    let format = output::choose_format(args.format, args.output.as_deref());
    let start = SystemTime::now();
    let (cpu_path, off_cpu_path) = output_paths(&args, format, start, want_cpu, want_off_cpu)?;
    // A path that cannot be written fails now, not after the recording.
    let mut destinations: Vec<&Path> = Vec::new();
    if want_cpu {
        destinations.push(&cpu_path);
    }
    if want_off_cpu {
        destinations.push(&off_cpu_path);
    }
    if !(want_cpu || want_off_cpu) {
        // Only histograms: they go to --output.
        destinations.extend(args.output.as_deref());
    }
    let _reserved = output::reserve(&destinations)?;

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .context("installing the Ctrl-C handler")?;
    }
    let mut sinks = Sinks::from_args(&args.export, None)?;
    let threads = sinks.extra.threads();
    // Resource attributes of the processes profiled, read while they run, for the exports.
    let mut processes: Option<HashMap<u32, Attributes>> = sinks.remote().then(HashMap::new);
    let mut symbolizer = crate::symbols::symbolizer(&args.symbols, usize::MAX);
    for pid in &args.pids {
        symbolizer.observe(*pid);
    }

    let mut runs = Vec::new();
    if want_cpu {
        let config = CpuSamplerConfig {
            stack_map_entries: args.maps.stack_map_entries,
            count_map_entries: args.maps.count_map_entries,
            profile_self: args.symbols.profile_self,
            ..CpuSamplerConfig::new(args.frequency, args.pids.clone())
        };
        runs.push(start_cpu(&config, start, Some(cpu_path))?);
    }
    if want_off_cpu {
        let config = OffCpuConfig {
            include_preempted: args.waits.include_preempted,
            min_block: args.waits.min_block,
            count_map_entries: args.maps.count_map_entries,
            // Without a CPU sampler, the off-CPU profiler announces new processes.
            announce: !want_cpu,
            profile_self: args.symbols.profile_self,
            ..OffCpuConfig::new(args.pids.clone())
        };
        runs.push(start_off_cpu(&config, start, Some(off_cpu_path))?);
    }
    let mut histograms = start_histograms(want_histograms.then(|| LatencyConfig {
        syscalls: args.waits.syscall_latency,
        max_keys: args.waits.histogram_keys,
        profile_self: args.symbols.profile_self,
        ..LatencyConfig::new(args.pids.clone())
    }))?;
    let watcher = ProcessWatcher::start(&mut runs);
    // The whole recording, for the files; the runs' builders hold the current span.
    let mut whole: Vec<ProfileBuilder> = runs.iter().map(|r| r.builder.fresh(start)).collect();
    let mut span_start = start;
    let started = Instant::now();
    tracing::info!(
        cpu = want_cpu,
        off_cpu = want_off_cpu,
        histograms = want_histograms,
        frequency = args.frequency,
        "recording"
    );

    let progress = Progress::new();
    let mut next_drain = args.maps.drain_interval;
    let mut next_span = args.export_interval;
    loop {
        let elapsed = started.elapsed();
        if elapsed >= args.duration || stop.load(Ordering::Relaxed) {
            break;
        }
        if elapsed >= next_drain {
            if let Some(w) = &watcher {
                w.deliver(&mut symbolizer, processes.as_mut());
            }
            for run in &mut runs {
                let counts = run.profiler.drain().context("draining the kernel maps")?;
                collect::add(
                    &counts,
                    &mut symbolizer,
                    &mut run.builder,
                    &mut run.collected,
                    threads,
                );
            }
            if let Some(h) = &mut histograms {
                h.drain()?;
            }
            if let Some(p) = &mut processes {
                observe(p, &runs);
            }
            next_drain = elapsed + args.maps.drain_interval;
            if let (Some(p), true) = (&processes, elapsed >= next_span) {
                let end = SystemTime::now();
                let spans = end_span(&mut runs, &mut whole, end);
                // Histograms go out once, at the end: they are totals since the start.
                sinks.ship(&spans, None, p, start, span_start, end);
                span_start = end;
                next_span = elapsed + args.export_interval;
            }
        }
        progress.update(
            elapsed,
            args.duration,
            &live_counts(&runs, histograms.as_ref()),
        );
        let until_next = next_drain
            .saturating_sub(elapsed)
            .max(Duration::from_millis(1));
        std::thread::sleep(
            TICK.min(args.duration.saturating_sub(elapsed))
                .min(until_next),
        );
    }
    if let Some(w) = &watcher {
        w.deliver(&mut symbolizer, processes.as_mut());
    }
    stop_all(&mut runs, histograms.as_mut(), &mut symbolizer, threads)?;
    drop(watcher);
    if let Some(p) = &mut processes {
        observe(p, &runs);
    }
    let end = SystemTime::now();
    progress.finish();

    let runs_written = runs.len();
    let health = match &sinks.exporter {
        Some(_) => health_counters(
            &runs,
            histograms.as_ref(),
            &symbolizer,
            args.maps.count_map_entries,
        )?,
        None => Vec::new(),
    };
    let last_spans = end_span(&mut runs, &mut whole, end);
    for (run, whole) in runs.into_iter().zip(whole) {
        let summary = summary(&run)?;
        let Run { profiler, path, .. } = run;
        drop(profiler);
        let profile = whole.finish(end);
        let path = path.context("a recorded profile has a destination")?;
        output::write(&profile, format, &path)?;
        eprintln!(
            "{summary} in {:.1} s -> {}",
            profile.duration.as_secs_f64(),
            shown(&path)
        );
    }
    if let Some(h) = &mut histograms {
        let report = h.report()?;
        print_report(&report, &args, runs_written)?;
    }
    if let Some(processes) = &processes {
        // The last span must not be skipped for a push still running.
        sinks.wait_for_push(args.export.otlp_flush_timeout);
        sinks.ship(
            &last_spans,
            histograms.as_mut(),
            processes,
            start,
            span_start,
            end,
        );
        sinks.wait_for_push(args.export.otlp_flush_timeout);
    }
    // Every sink gets its data even when another fails; the first failure is reported.
    if let Some(e) = sinks.exporter.take() {
        e.finish(health)?;
    }
    let failed_pushes = sinks
        .pyroscope_failures
        .load(std::sync::atomic::Ordering::Relaxed);
    if failed_pushes > 0 {
        bail!("{failed_pushes} Pyroscope pushes failed (see above)");
    }
    tracing::debug!(stats = ?symbolizer.stats(), "symbolizer");
    Ok(())
}

/// Ends every run's span at `end`: the spans, also added to the whole recording.
fn end_span(runs: &mut [Run], whole: &mut [ProfileBuilder], end: SystemTime) -> Vec<Profile> {
    runs.iter_mut()
        .zip(whole.iter_mut())
        .map(|(run, whole)| {
            let span = run.take_span(end);
            whole.merge(&span);
            span
        })
        .collect()
}

/// Histograms go to --output when no profile took it, else to standard output (standard
/// error when a profile is being written to standard output).
fn print_report(report: &str, args: &RecordArgs, profiles: usize) -> anyhow::Result<()> {
    use std::io::Write;
    match (&args.output, profiles) {
        (Some(path), 0) if path != Path::new("-") => {
            std::fs::write(path, report)
                .with_context(|| format!("writing the histograms to {}", path.display()))?;
            eprintln!("emberprof: histograms -> {}", path.display());
        }
        (Some(path), n) if n > 0 && path == Path::new("-") => {
            std::io::stderr()
                .write_all(report.as_bytes())
                .context("printing the histograms")?;
        }
        _ => std::io::stdout()
            .write_all(report.as_bytes())
            .context("printing the histograms")?,
    }
    Ok(())
}

/// Where each profile goes: with both kinds, the off-CPU file gets `.offcpu` before its
/// extension; with one kind, `--output` is used as given.
fn output_paths(
    args: &RecordArgs,
    format: Format,
    start: SystemTime,
    cpu: bool,
    off_cpu: bool,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let both = cpu && off_cpu;
    if both && args.output.as_deref() == Some(Path::new("-")) {
        bail!("--cpu with --off-cpu writes two profiles: give --output a file name, not -");
    }
    let cpu_path = args
        .output
        .clone()
        .unwrap_or_else(|| output::default_path(format, start, ""));
    let off_cpu_path = match (&args.output, both) {
        (Some(path), true) => output::with_infix(path, "offcpu", format),
        (Some(path), false) => path.clone(),
        (None, _) => output::default_path(format, start, "offcpu"),
    };
    Ok((cpu_path, off_cpu_path))
}

fn live_counts(runs: &[Run], histograms: Option<&Histograms>) -> String {
    let mut parts: Vec<String> = runs
        .iter()
        .filter_map(|run| match &run.profiler {
            Profiler::Cpu(p) => p.counters().ok().map(|c| format!("{} samples", c.samples)),
            Profiler::OffCpu(p) => p.counters().ok().map(|c| format!("{} blocks", c.blocks)),
        })
        .collect();
    if let Some(c) = histograms.and_then(|h| h.counters().ok()) {
        parts.push(format!("{} latencies", c.recorded + c.overflowed));
    }
    parts.join(", ")
}

/// The summary line of one run, without its duration and destination.
fn summary(run: &Run) -> anyhow::Result<String> {
    let c = &run.collected;
    Ok(match &run.profiler {
        Profiler::Cpu(p) => {
            let k = p.counters().context("reading the CPU sampler's counters")?;
            if k.dropped() > 0 {
                tracing::warn!(
                    dropped = k.dropped(),
                    "the kernel's count map was full; those samples are missing from the profile"
                );
            }
            format!(
                "emberprof: {} samples (kernel counted {}, {} dropped, {} stacks lost) from {} processes, {} unique stacks",
                c.total,
                k.samples,
                k.dropped(),
                k.stacks_lost(),
                c.pids.len(),
                c.stacks.len()
            )
        }
        Profiler::OffCpu(p) => {
            let k = p
                .counters()
                .context("reading the off-CPU profiler's counters")?;
            if k.dropped() > 0 {
                tracing::warn!(
                    dropped = k.dropped(),
                    "the kernel's off-CPU maps were full; those blocks are missing from the profile"
                );
            }
            format!(
                "emberprof: off-CPU {:.3} s blocked ({} blocks, {} dropped, {} shorter than the minimum) from {} processes, {} unique stacks",
                c.total as f64 / 1e9,
                k.blocks,
                k.dropped(),
                k.short,
                c.pids.len(),
                c.stacks.len()
            )
        }
    })
}

fn shown(path: &Path) -> String {
    if path == Path::new("-") {
        "standard output".to_string()
    } else {
        path.display().to_string()
    }
}
