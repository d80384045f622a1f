//! `emberprof record`: sample for a while, then write one profile per kind recorded and
//! print the latency histograms.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use emberprof_exporters::otlp::Attributes;
use emberprof_exporters::{Format, Profile};
use emberprof_probes::{CpuSamplerConfig, LatencyConfig, OffCpuConfig};

use crate::cli::RecordArgs;
use crate::collect;
use crate::export::{push_to_pyroscope, pyroscope_config, Exporter};
use crate::histograms::Histograms;
use crate::output;
use crate::progress::Progress;
use crate::session::{
    health_counters, observe, start_cpu, start_histograms, start_off_cpu, stop_all, Profiler, Run,
};
use crate::watcher::ProcessWatcher;

/// How often the loop wakes to check for Ctrl-C and refresh the progress line.
const TICK: Duration = Duration::from_millis(100);

pub fn run(args: RecordArgs) -> anyhow::Result<()> {
    crate::kubernetes::init(false);
    emberprof_probes::set_profile_self(args.symbols.profile_self);
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
    let exporter = Exporter::from_args(&args.export)?;
    let pyroscope = pyroscope_config(&args.export)?;
    // Resource attributes of the processes profiled, read while they run, for the exports.
    let mut processes: Option<HashMap<u32, Attributes>> =
        (exporter.is_some() || pyroscope.is_some()).then(HashMap::new);
    let mut symbolizer = crate::symbols::symbolizer(&args.symbols, usize::MAX);
    for pid in &args.pids {
        symbolizer.observe(*pid);
    }

    let mut runs = Vec::new();
    if want_cpu {
        let config = CpuSamplerConfig {
            stack_map_entries: args.maps.stack_map_entries,
            count_map_entries: args.maps.count_map_entries,
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
            ..OffCpuConfig::new(args.pids.clone())
        };
        runs.push(start_off_cpu(&config, start, Some(off_cpu_path))?);
    }
    let mut histograms = start_histograms(want_histograms.then(|| LatencyConfig {
        syscalls: args.waits.syscall_latency,
        max_keys: args.waits.histogram_keys,
        ..LatencyConfig::new(args.pids.clone())
    }))?;
    let watcher = ProcessWatcher::start(&mut runs);
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
                );
            }
            if let Some(h) = &mut histograms {
                h.drain()?;
            }
            if let Some(p) = &mut processes {
                observe(p, &runs, &symbolizer);
            }
            next_drain = elapsed + args.maps.drain_interval;
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
    stop_all(&mut runs, histograms.as_mut(), &mut symbolizer)?;
    drop(watcher);
    if let Some(p) = &mut processes {
        observe(p, &runs, &symbolizer);
    }
    let end = SystemTime::now();
    progress.finish();

    let runs_written = runs.len();
    let health = match &exporter {
        Some(_) => health_counters(
            &runs,
            histograms.as_ref(),
            &symbolizer,
            args.maps.count_map_entries,
        )?,
        None => Vec::new(),
    };
    let mut profiles = Vec::new();
    for run in runs {
        let summary = summary(&run)?;
        let Run {
            profiler,
            builder,
            path,
            ..
        } = run;
        drop(profiler);
        let profile = builder.finish(end);
        let path = path.context("a recorded profile has a destination")?;
        output::write(&profile, format, &path)?;
        eprintln!(
            "{summary} in {:.1} s -> {}",
            profile.duration.as_secs_f64(),
            shown(&path)
        );
        profiles.push(profile);
    }
    if let Some(h) = &mut histograms {
        let report = h.report()?;
        print_report(&report, &args, runs_written)?;
    }
    let processes = processes.unwrap_or_default();
    // Every sink gets its data even when another fails; the first failure is reported.
    let pushed = match &pyroscope {
        Some(config) => push_to_pyroscope(config, &profiles, &processes),
        None => Ok(()),
    };
    if let Some(mut e) = exporter {
        let points = histograms.as_mut().map(|h| h.points()).unwrap_or_default();
        let refs: Vec<&Profile> = profiles.iter().collect();
        e.export(&refs, &processes, &points, start, end);
        e.finish(health)?;
    }
    pushed?;
    tracing::debug!(stats = ?symbolizer.stats(), "symbolizer");
    Ok(())
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
