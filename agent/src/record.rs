//! `emberprof record`: sample for a while, then write one profile per kind recorded and
//! print the latency histograms. With an exporter (OTLP or Pyroscope) each finished span of
//! `--export-interval` is sent while recording, through the agent's sinks, so that no
//! profile is older than a span when it arrives (Pyroscope refuses profiles over an hour
//! old); the files still cover the whole recording.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use emberprof_exporters::sinks::Sink;
use emberprof_exporters::Format;
use emberprof_model::ProfileKind;
use emberprof_probes::{CpuSamplerConfig, OffCpuConfig};

use crate::cli::RecordArgs;
use crate::metadata::attributes::ExtraAttributes;
use crate::output::{self, Files};
use crate::progress::Progress;
use crate::session::{Run, Session, SessionConfig};
use crate::sinks::Sinks;

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
    let want_histograms = args.waits.wants_histograms();
    let want_cpu = args.cpu || !(args.waits.off_cpu || want_histograms);
    let format = output::choose_format(args.format, args.output.as_deref());
    let start = SystemTime::now();
    let kinds: Vec<ProfileKind> = [
        (ProfileKind::Cpu, want_cpu),
        (ProfileKind::OffCpu, want_off_cpu),
        (ProfileKind::Probe, args.waits.probe_profile()),
    ]
    .into_iter()
    .filter_map(|(kind, wanted)| wanted.then_some(kind))
    .collect();
    let paths = output_paths(&args, format, start, &kinds)?;
    // A path that cannot be written fails now, not after the recording.
    let mut destinations: Vec<&Path> = paths.iter().map(|(_, p)| p.as_path()).collect();
    if paths.is_empty() {
        // Only histograms: they go to --output.
        destinations.extend(args.output.as_deref());
    }
    destinations.extend(args.summary_json.as_deref());
    let _reserved = output::reserve(&destinations)?;

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .context("installing the Ctrl-C handler")?;
    }
    let extra = ExtraAttributes::parse(&args.export.extra_attributes)
        .map_err(anyhow::Error::msg)
        .context("--extra-attributes")?;
    let mut sinks = Sinks::default();
    for sink in crate::export::remote_sinks(&args.export)? {
        sinks.push(sink);
    }
    let mut files = Files::new(format, paths.clone());
    let mut symbolizer = crate::symbols::symbolizer(&args.symbols, usize::MAX);
    for pid in &args.pids {
        symbolizer.observe(*pid);
    }
    let mut session = Session::start(SessionConfig {
        cpu: want_cpu.then(|| CpuSamplerConfig {
            stack_map_entries: args.maps.stack_map_entries,
            count_map_entries: args.maps.count_map_entries,
            profile_self: args.symbols.profile_self,
            unwind_entries: args.unwind.entries(),
            ..CpuSamplerConfig::new(args.frequency, args.pids.clone())
        }),
        off_cpu: want_off_cpu.then(|| OffCpuConfig {
            include_preempted: args.waits.include_preempted,
            min_block: args.waits.min_block,
            count_map_entries: args.maps.count_map_entries,
            // Without a CPU sampler, the off-CPU profiler announces new processes.
            announce: !want_cpu,
            profile_self: args.symbols.profile_self,
            unwind_entries: args.unwind.entries(),
            ..OffCpuConfig::new(args.pids.clone())
        }),
        latency: args.waits.latency_config(
            &args.pids,
            false,
            args.symbols.profile_self,
            args.unwind.entries(),
        ),
        probe_points: args.waits.probe_config(false)?,
        symbolizer,
        extra,
        attributes: !sinks.is_empty(),
        start,
        count_map_entries: args.maps.count_map_entries,
        python: !args.unwind.no_python,
    })?;
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
            session.drain()?;
            next_drain = elapsed + args.maps.drain_interval;
            if !sinks.is_empty() && elapsed >= next_span {
                let span = session.end_span(SystemTime::now());
                // Histograms go out once, at the end: they are totals since the start.
                let data = session.package(span, false);
                files.submit(&data.span());
                sinks.submit(&data.span());
                next_span = elapsed + args.export_interval;
            }
        }
        session.tick();
        progress.update(elapsed, args.duration, &live_counts(&session));
        let until_next = next_drain
            .saturating_sub(elapsed)
            .max(Duration::from_millis(1));
        std::thread::sleep(
            TICK.min(args.duration.saturating_sub(elapsed))
                .min(until_next),
        );
    }
    session.stop()?;
    let end = SystemTime::now();
    progress.finish();

    let last = session.end_span(end);
    let data = session.package(last, !sinks.is_empty());
    files.submit(&data.span());
    files.flush(args.export.otlp_flush_timeout)?;
    let seconds = end.duration_since(start).unwrap_or_default().as_secs_f64();
    let mut json = Vec::new();
    for (run, (_, path)) in session.runs().iter().zip(&paths) {
        let (line, mut value) = summary(run)?;
        eprintln!("{line} in {seconds:.1} s -> {}", shown(path));
        value["seconds"] = serde_json::json!(seconds);
        value["output"] = serde_json::json!(path);
        json.push(value);
    }
    if let Some(report) = session.histogram_report()? {
        print_report(&report, &args, paths.len())?;
    }
    let histograms_json = session.histogram_counts()?.map(|counts| {
        let mut json = serde_json::json!({});
        for (name, value) in counts {
            json[name] = serde_json::json!(value);
        }
        json
    });
    if let Some(path) = &args.summary_json {
        let stats = session.symbolizer().stats();
        let mut memory = memory_json(&stats);
        let mode = clap::ValueEnum::to_possible_value(&args.unwind.unwind);
        let mode = mode.as_ref().map_or("", |v| v.get_name());
        memory["unwind"] = match session.unwind_stats() {
            Some(u) => serde_json::json!({
                "mode": mode,
                "tables_compiled": u.tables_compiled,
                "files_written": u.files_written,
                "processes_listed": u.processes_listed,
                "entries": u.used_entries + u.unused_entries,
                "entries_used": u.used_entries,
                "entries_unused": u.unused_entries,
                "table_bytes_max": crate::unwind_loader::entry_bytes(u.capacity_entries),
                "table_misses": u.misses,
                "evictions": u.evictions,
            }),
            // --unwind fp, or no CPU profile: no table is compiled.
            None => serde_json::json!({
                "mode": mode,
                "tables_compiled": stats.unwind_tables,
            }),
        };
        write_summary_json(path, json, histograms_json, memory)?;
    }
    if !sinks.is_empty() {
        sinks.submit(&data.span());
        sinks.close(Instant::now() + args.export.otlp_flush_timeout)?;
    }
    tracing::debug!(stats = ?session.symbolizer().stats(), "symbolizer");
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

/// Where each profile goes: the first of the kinds asked for (in `ProfileKind::ALL`
/// order) takes --output itself, the others get their kind before its extension
/// (`x.offcpu.pb.gz`, `x.probe.pb.gz`); without --output, each its default name.
fn output_paths(
    args: &RecordArgs,
    format: Format,
    start: SystemTime,
    kinds: &[ProfileKind],
) -> anyhow::Result<Vec<(ProfileKind, PathBuf)>> {
    if kinds.len() > 1 && args.output.as_deref() == Some(Path::new("-")) {
        bail!(
            "this recording writes {} profiles ({}): give --output a file name, not -",
            kinds.len(),
            kinds.iter().map(|k| k.id()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(kinds
        .iter()
        .enumerate()
        .map(|(i, &kind)| {
            let infix = if kind == ProfileKind::Cpu {
                ""
            } else {
                kind.id()
            };
            let path = match &args.output {
                Some(path) if i == 0 => path.clone(),
                Some(path) => output::with_infix(path, infix, format),
                None => output::default_path(format, start, infix),
            };
            (kind, path)
        })
        .collect())
}

/// A probe's count by name, 0 when it has none of that name.
fn count(counts: &[(&str, u64)], name: &str) -> u64 {
    counts
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, v)| *v)
}

fn live_counts(session: &Session) -> String {
    let mut parts: Vec<String> = session
        .runs()
        .iter()
        .filter_map(|run| {
            let counts = run.profiler.counts().ok()?;
            Some(match run.kind {
                ProfileKind::Cpu => format!("{} samples", count(&counts, "kernel_counted")),
                ProfileKind::OffCpu => format!("{} blocks", count(&counts, "blocks")),
                ProfileKind::Probe => format!("{} probe hits", count(&counts, "hits")),
            })
        })
        .collect();
    if let Ok(Some(counts)) = session.histogram_counts() {
        parts.push(format!("{} latencies", count(&counts, "recorded")));
    }
    parts.join(", ")
}

/// What one run recorded: the summary line (without its duration and destination) and the
/// same as JSON.
fn summary(run: &Run) -> anyhow::Result<(String, serde_json::Value)> {
    let c = &run.collected;
    let counts = run
        .profiler
        .counts()
        .context("reading the probes' counters")?;
    let n = |name| count(&counts, name);
    if n("dropped") > 0 {
        tracing::warn!(
            dropped = n("dropped"),
            kind = run.kind.title(),
            "the kernel's count map was full; those samples are missing from the profile"
        );
    }
    let mut json = serde_json::json!({
        "kind": run.kind.id(),
        "processes": c.pids.len(),
        "unique_stacks": c.stacks.len(),
    });
    for (name, value) in &counts {
        json[*name] = serde_json::json!(value);
    }
    let line = match run.kind {
        ProfileKind::Cpu => {
            json["samples"] = serde_json::json!(c.total);
            format!(
                "emberprof: {} samples (kernel counted {}, {} dropped, {} stacks lost) from {} processes, {} unique stacks",
                c.total,
                n("kernel_counted"),
                n("dropped"),
                n("stacks_lost"),
                c.pids.len(),
                c.stacks.len()
            )
        }
        ProfileKind::OffCpu => {
            json["blocked_ns"] = serde_json::json!(c.total);
            format!(
                "emberprof: off-CPU {:.3} s blocked ({} blocks, {} dropped, {} shorter than the minimum) from {} processes, {} unique stacks",
                c.total as f64 / 1e9,
                n("blocks"),
                n("dropped"),
                n("short"),
                c.pids.len(),
                c.stacks.len()
            )
        }
        ProfileKind::Probe => {
            json["hits"] = serde_json::json!(c.total);
            format!(
                "emberprof: {} probe hits with stacks ({} dropped, {} stacks lost) from {} processes, {} unique stacks",
                c.total,
                n("dropped"),
                n("stacks_lost"),
                c.pids.len(),
                c.stacks.len()
            )
        }
    };
    Ok((line, json))
}

/// Writes the run's summary as JSON (`--summary-json`).
fn write_summary_json(
    path: &Path,
    profiles: Vec<serde_json::Value>,
    histograms: Option<serde_json::Value>,
    memory: serde_json::Value,
) -> anyhow::Result<()> {
    let mut doc = serde_json::json!({ "profiles": profiles, "memory": memory });
    if let Some(h) = histograms {
        doc["histograms"] = h;
    }
    let text = serde_json::to_string_pretty(&doc).context("encoding the JSON summary")?;
    std::fs::write(path, text + "\n")
        .with_context(|| format!("writing the JSON summary to {}", path.display()))
}

/// Where the memory went: this process's RSS now and at its peak, and the symbolizer's
/// caches by part with what keeping them bounded cost.
fn memory_json(st: &emberprof_symbolizer::SymbolizerStats) -> serde_json::Value {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..]
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    };
    serde_json::json!({
        "rss_bytes": kib("VmRSS:").map(|k| k * 1024),
        "peak_rss_bytes": kib("VmHWM:").map(|k| k * 1024),
        "symbolizer": {
            "cache_bytes": st.cache_bytes,
            "parsed_heap_bytes": st.parsed_heap_bytes,
            "mapped_resident_bytes": st.mapped_resident_bytes,
            "mapped_peak_bytes": st.mapped_peak_bytes,
            "location_bytes": st.location_bytes,
            "kernel_bytes": st.kernel_bytes,
            "files": st.files,
            "files_parsed": st.files_parsed,
            "reparses": st.reparses,
            "parse_seconds": st.parse_ns as f64 / 1e9,
            "parsed_released": st.parsed_released,
            "locations_released": st.evictions,
        },
    })
}

fn shown(path: &Path) -> String {
    if path == Path::new("-") {
        "standard output".to_string()
    } else {
        path.display().to_string()
    }
}
