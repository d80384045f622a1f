//! `emberprof agent`: profile until stopped, and every interval hand one batch (the
//! interval's profiles, the histograms) to the sinks (sinks.rs). Sampling never waits on
//! export. On SIGTERM/SIGINT the final partial interval is exported within
//! --shutdown-timeout and every probe is detached before exit.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use emberprof_model::Attributes;
use emberprof_model::Profile;
use emberprof_probes::{CpuSamplerConfig, LatencyConfig, OffCpuConfig};
use emberprof_symbolizer::Symbolizer;

use crate::cli::AgentArgs;
use crate::collect::{self, Collected, ThreadDetail};
use crate::export::Exporter;
use crate::histograms::Histograms;
use crate::http::SharedStatus;
use crate::pprof_dir::PprofDir;
use crate::selection::Selection;
use crate::session::{
    health_counters, observe, start_cpu, start_histograms, start_off_cpu, stop_all, Run,
};
use crate::sinks::Sinks;
use crate::timings::{IntervalSize, IntervalTimings};
use crate::watcher::ProcessWatcher;

/// How often the loop wakes to check for signals.
const TICK: Duration = Duration::from_millis(100);

pub fn run(mut args: AgentArgs) -> anyhow::Result<()> {
    for pid in &args.pids {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("no process with PID {pid} (--pid)");
        }
    }
    let mut sinks = sinks_of(&args)?;
    if sinks.exporter.is_none() && sinks.pyroscope.is_none() && sinks.pprof_dir.is_none() {
        // Still useful: /metrics and the on-demand /debug/pprof endpoints.
        tracing::warn!(
            "no exporter configured: intervals are dropped; set --otlp-endpoint (or \
             OTEL_EXPORTER_OTLP_ENDPOINT), --pyroscope-url or --pprof-dir"
        );
    }
    let missing = emberprof_probes::preflight::missing_file_access();
    if !missing.is_empty() {
        tracing::warn!(
            ?missing,
            "other users' processes will have unnamed frames: grant these capabilities"
        );
    }
    let status: SharedStatus = Arc::default();
    crate::http::serve(
        args.http_listen,
        &args.debug,
        args.symbols.profile_self,
        status.clone(),
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .context("installing the signal handlers")?;
    }
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .context("installing the SIGHUP handler")?;

    crate::kubernetes::init(args.select.k8s_opt_in);
    let mut selection = Selection::from_args(&args.pids, &args.select)?;
    let agent_start = SystemTime::now();
    let mut interval_start = agent_start;
    let mut runs = start_profilers(&args, selection.is_some(), interval_start)?;
    let watcher = ProcessWatcher::start(&mut runs);
    let want_histograms = args.waits.histograms || args.waits.syscall_latency;
    let mut histograms = start_histograms(want_histograms.then(|| LatencyConfig {
        syscalls: args.waits.syscall_latency,
        max_keys: args.waits.histogram_keys,
        filter_pids: selection.is_some(),
        profile_self: args.symbols.profile_self,
        ..LatencyConfig::new(args.pids.clone())
    }))?;
    select(selection.as_ref(), &mut runs, histograms.as_mut());
    let mut symbolizer = crate::symbols::symbolizer(&args.symbols, raise_open_file_limit());
    for pid in &args.pids {
        symbolizer.observe(*pid);
    }
    let mut processes: HashMap<u32, Attributes> = HashMap::new();
    publish(
        &status,
        &runs,
        histograms.as_ref(),
        &symbolizer,
        sinks.exporter.as_ref(),
        &args,
    )?;
    status.lock().unwrap_or_else(|e| e.into_inner()).attached = true;
    tracing::info!(
        frequency = args.frequency,
        interval = ?args.interval,
        off_cpu = args.waits.off_cpu,
        histograms = want_histograms,
        "agent running"
    );

    let started = Instant::now();
    let mut next_drain = args.maps.drain_interval;
    let mut next_export = args.interval;
    let mut interval_began = Duration::ZERO;
    let mut intervals = 0u64;
    let mut timings = IntervalTimings::default();
    while !stop.load(Ordering::Relaxed) {
        let elapsed = started.elapsed();
        if reload.swap(false, Ordering::Relaxed) {
            match reloaded() {
                Ok(new) => {
                    apply_reload(&mut args, *new, &mut sinks, &mut selection);
                    next_export = interval_began + args.interval;
                }
                Err(e) => tracing::warn!(
                    error = %format!("{e:#}"),
                    "SIGHUP: the new configuration is not valid; keeping the running one"
                ),
            }
        }
        if elapsed >= next_drain || elapsed >= next_export {
            if let Some(w) = &watcher {
                w.deliver(&mut symbolizer, Some(&mut processes));
            }
            drain(
                &mut runs,
                histograms.as_mut(),
                &mut symbolizer,
                &mut processes,
                &mut timings,
                sinks.extra.threads(),
            )?;
            select(selection.as_ref(), &mut runs, histograms.as_mut());
            publish(
                &status,
                &runs,
                histograms.as_ref(),
                &symbolizer,
                sinks.exporter.as_ref(),
                &args,
            )?;
            next_drain = elapsed + args.maps.drain_interval;
        }
        if elapsed >= next_export {
            let now = SystemTime::now();
            let size = IntervalSize::of(&runs);
            let closing = Instant::now();
            let profiles = finish_interval(&mut runs, now);
            sinks.ship(
                &profiles,
                histograms.as_mut(),
                &processes,
                agent_start,
                interval_start,
                now,
            );
            timings.finish(size, closing.elapsed());
            intervals += 1;
            interval_start = now;
            interval_began = elapsed;
            next_export = elapsed + args.interval;
            // Only processes of the next interval need attributes; exited ones go, from
            // the symbolizer too (their samples are symbolized by now).
            processes.clear();
            symbolizer.forget_exited();
        }
        std::thread::sleep(TICK);
    }

    status.lock().unwrap_or_else(|e| e.into_inner()).attached = false;
    // Stopping: detach everything, then export what the last partial interval holds.
    if let Some(w) = &watcher {
        w.deliver(&mut symbolizer, Some(&mut processes));
    }
    stop_all(
        &mut runs,
        histograms.as_mut(),
        &mut symbolizer,
        sinks.extra.threads(),
    )?;
    drop(watcher);
    observe(&mut processes, &runs);
    let now = SystemTime::now();
    let health = health_counters(
        &runs,
        histograms.as_ref(),
        &symbolizer,
        args.maps.count_map_entries,
    )?;
    let profiles = finish_interval(&mut runs, now);
    drop(runs);
    sinks.ship(
        &profiles,
        histograms.as_mut(),
        &processes,
        agent_start,
        interval_start,
        now,
    );
    intervals += 1;
    sinks.wait_for_push(args.shutdown_timeout);
    eprintln!("emberprof: agent stopped after {intervals} intervals");
    if let Some(mut e) = sinks.exporter {
        e.set_flush_timeout(args.shutdown_timeout);
        e.finish(health)?;
    }
    Ok(())
}

/// Refreshes what the HTTP endpoints show.
fn publish(
    status: &SharedStatus,
    runs: &[Run],
    histograms: Option<&Histograms>,
    symbolizer: &Symbolizer,
    exporter: Option<&Exporter>,
    args: &AgentArgs,
) -> anyhow::Result<()> {
    let mut counters = health_counters(runs, histograms, symbolizer, args.maps.count_map_entries)?;
    let mut export_ok = true;
    if let Some(e) = exporter {
        counters.extend(e.health());
        export_ok = !e.stats().last_failed;
    }
    let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
    s.counters = counters;
    s.export_ok = export_ok;
    Ok(())
}

/// Points the probes' PID filters at what the selection rules pick now.
fn select(selection: Option<&Selection>, runs: &mut [Run], histograms: Option<&mut Histograms>) {
    let Some(selection) = selection else {
        return;
    };
    let Some(mut pids) = selection.scan() else {
        tracing::warn!("cannot read /proc: keeping the previous process selection");
        return;
    };
    if pids.len() > emberprof_probes::cpu_sampler::MAX_FILTER_PIDS {
        // The kernel filter holds a bounded set: keep the lowest PIDs and say so.
        tracing::warn!(
            selected = pids.len(),
            max = emberprof_probes::cpu_sampler::MAX_FILTER_PIDS,
            "the selection matches more processes than the kernel filter holds; narrow it"
        );
        pids = pids
            .into_iter()
            .take(emberprof_probes::cpu_sampler::MAX_FILTER_PIDS)
            .collect();
    }
    // A failed update keeps the previous filter: profiling goes on, and the next drain
    // tries again.
    for run in runs.iter_mut() {
        if let Err(e) = run.profiler.set_pids(&pids) {
            tracing::warn!(error = %e, "updating the PID filter");
        }
    }
    if let Some(h) = histograms {
        if let Err(e) = h.set_pids(&pids) {
            tracing::warn!(error = %format!("{e:#}"), "updating the PID filter");
        }
    }
}

fn start_profilers(
    args: &AgentArgs,
    filter_pids: bool,
    start: SystemTime,
) -> anyhow::Result<Vec<Run>> {
    let config = CpuSamplerConfig {
        stack_map_entries: args.maps.stack_map_entries,
        count_map_entries: args.maps.count_map_entries,
        filter_pids,
        profile_self: args.symbols.profile_self,
        ..CpuSamplerConfig::new(args.frequency, args.pids.clone())
    };
    let mut runs = vec![start_cpu(&config, start, None)?];
    if args.waits.off_cpu {
        let config = OffCpuConfig {
            include_preempted: args.waits.include_preempted,
            min_block: args.waits.min_block,
            count_map_entries: args.maps.count_map_entries,
            filter_pids,
            profile_self: args.symbols.profile_self,
            ..OffCpuConfig::new(args.pids.clone())
        };
        runs.push(start_off_cpu(&config, start, None)?);
    }
    Ok(runs)
}

fn drain(
    runs: &mut [Run],
    histograms: Option<&mut Histograms>,
    symbolizer: &mut Symbolizer,
    processes: &mut HashMap<u32, Attributes>,
    timings: &mut IntervalTimings,
    threads: ThreadDetail,
) -> anyhow::Result<()> {
    for run in runs.iter_mut() {
        let counts = timings
            .drain(|| run.profiler.drain())
            .context("draining the kernel maps")?;
        timings.symbolize(counts.len(), || {
            collect::add(
                &counts,
                symbolizer,
                &mut run.builder,
                &mut run.collected,
                threads,
            )
        });
    }
    if let Some(h) = histograms {
        timings.drain(|| h.drain())?;
    }
    observe(processes, runs);
    Ok(())
}

/// Closes the interval's profiles at `end` and starts the next ones there, so that
/// consecutive intervals neither overlap nor leave gaps.
fn finish_interval(runs: &mut [Run], end: SystemTime) -> Vec<Profile> {
    runs.iter_mut()
        .map(|run| {
            // Per-interval bookkeeping starts over too, so that a months-long run does not
            // accumulate every stack and PID it ever saw.
            run.collected = Collected::default();
            run.take_span(end)
        })
        .collect()
}

/// Raises the soft open-file limit to the hard one (the symbolizer keeps files open) and
/// returns how many files the symbolizer may hold: the limit, less room for everything else.
fn raise_open_file_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 512;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    (usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX))
        .saturating_sub(256)
        .max(64)
}

/// The agent's sinks: the exporters its arguments ask for, and the pprof directory.
fn sinks_of(args: &AgentArgs) -> anyhow::Result<Sinks> {
    let pprof_dir = args
        .pprof_dir
        .as_deref()
        .map(|d| {
            PprofDir::new(
                d,
                args.pprof_max_files,
                args.pprof_max_bytes,
                args.pprof_max_age,
            )
        })
        .transpose()?;
    Sinks::from_args(&args.export, pprof_dir)
}

/// The agent's arguments as the command line and the config file say now.
fn reloaded() -> anyhow::Result<Box<AgentArgs>> {
    use clap::FromArgMatches;
    let argv = crate::config::merged_argv(std::env::args_os().collect())?;
    let matches = crate::cli::command().try_get_matches_from(argv)?;
    match crate::cli::Cli::from_arg_matches(&matches)?.command {
        crate::cli::Command::Agent(new) => Ok(new),
        _ => bail!("the command line is no longer an agent command"),
    }
}

/// Applies what can change while running (interval, process selection, exporters, local
/// files, shutdown timeout); warns about the rest, which needs a restart. Data already
/// collected stays in the current interval; batches the old exporter still holds get a
/// few seconds to be delivered.
fn apply_reload(
    args: &mut AgentArgs,
    new: AgentArgs,
    sinks: &mut Sinks,
    selection: &mut Option<Selection>,
) {
    let mut needs_restart = Vec::new();
    if new.frequency != args.frequency {
        needs_restart.push("frequency");
    }
    if new.waits != args.waits {
        needs_restart.push("off_cpu/histograms");
    }
    if new.http_listen != args.http_listen || new.debug != args.debug {
        needs_restart.push("http_listen/debug_pprof");
    }
    match Selection::from_args(&new.pids, &new.select) {
        Ok(Some(s)) if selection.is_some() => *selection = Some(s),
        Ok(None) if selection.is_none() => {
            if new.pids != args.pids {
                needs_restart.push("pid");
            }
        }
        Ok(_) => needs_restart.push("turning process selection on or off"),
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "SIGHUP: keeping the old selection"),
    }
    let sinks_changed = new.export != args.export
        || new.pprof_dir != args.pprof_dir
        || new.pprof_max_files != args.pprof_max_files
        || new.pprof_max_bytes != args.pprof_max_bytes
        || new.pprof_max_age != args.pprof_max_age;
    if sinks_changed {
        match sinks_of(&new) {
            Ok(fresh) => {
                let old = std::mem::replace(sinks, fresh);
                sinks.pyroscope_push = old.pyroscope_push;
                if let Some(e) = old.exporter {
                    // Off the sampling thread: the kernel maps must keep being drained.
                    std::thread::spawn(move || e.close(Duration::from_secs(5)));
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "SIGHUP: keeping the old exporters")
            }
        }
    }
    if new.symbols != args.symbols {
        needs_restart.push("symbolizer settings");
    }
    if new.maps != args.maps {
        needs_restart.push("map sizes and drain interval");
    }
    args.interval = new.interval;
    args.shutdown_timeout = new.shutdown_timeout;
    if let Some(k) = crate::kubernetes::get() {
        k.set_opt_in(new.select.k8s_opt_in);
    }
    args.select = new.select;
    args.export = new.export;
    args.pprof_dir = new.pprof_dir;
    args.pprof_max_files = new.pprof_max_files;
    args.pprof_max_bytes = new.pprof_max_bytes;
    args.pprof_max_age = new.pprof_max_age;
    if needs_restart.is_empty() {
        tracing::info!("SIGHUP: configuration reloaded");
    } else {
        tracing::warn!(
            unchanged = ?needs_restart,
            "SIGHUP: configuration reloaded; these settings need a restart and were kept"
        );
    }
}
