//! `emberprof agent`: profile until stopped, and every interval hand one span (the
//! interval's profiles, the histograms, emberprof's health) to the sinks. Sampling never
//! waits on export. On SIGTERM/SIGINT the final partial interval is exported within
//! --shutdown-timeout and every probe is detached before exit.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use emberprof_probes::{CpuSamplerConfig, OffCpuConfig};

use crate::cli::AgentArgs;
use crate::http::SharedStatus;
use crate::metadata::attributes::ExtraAttributes;
use crate::pprof_dir::PprofDir;
use crate::selection::Selection;
use crate::session::{Session, SessionConfig};
use crate::sinks::Sinks;
use crate::stop_signal::StopSignal;

/// How often the loop wakes to check for signals.
const TICK: Duration = Duration::from_millis(100);

pub fn run(mut args: AgentArgs) -> anyhow::Result<()> {
    for pid in &args.pids {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("no process with PID {pid} (--pid)");
        }
    }
    let mut sinks = sinks_of(&args)?;
    if sinks.is_empty() {
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
        crate::http::OnDemand {
            profile_self: args.symbols.profile_self,
            unwind_entries: args.unwind.entries(),
            python: !args.unwind.no_python,
        },
        status.clone(),
    )?;
    let stop = StopSignal::install()?;
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .context("installing the SIGHUP handler")?;

    crate::kubernetes::init(args.select.k8s_opt_in);
    let mut selection = Selection::from_args(&args.pids, &args.select)?;
    let filter_pids = selection.is_some();
    let mut symbolizer = crate::symbols::symbolizer(&args.symbols, raise_open_file_limit());
    for pid in &args.pids {
        symbolizer.observe(*pid);
    }
    let want_histograms = args.waits.wants_histograms();
    let mut session = Session::start(SessionConfig {
        cpu: Some(CpuSamplerConfig {
            stack_map_entries: args.maps.stack_map_entries,
            count_map_entries: args.maps.count_map_entries,
            filter_pids,
            profile_self: args.symbols.profile_self,
            unwind_entries: args.unwind.entries(),
            ..CpuSamplerConfig::new(args.frequency, args.pids.clone())
        }),
        off_cpu: args.waits.off_cpu.then(|| OffCpuConfig {
            include_preempted: args.waits.include_preempted,
            min_block: args.waits.min_block,
            count_map_entries: args.maps.count_map_entries,
            filter_pids,
            profile_self: args.symbols.profile_self,
            unwind_entries: args.unwind.entries(),
            ..OffCpuConfig::new(args.pids.clone())
        }),
        latency: args.waits.latency_config(
            &args.pids,
            filter_pids,
            args.symbols.profile_self,
            args.unwind.entries(),
        ),
        probe_points: args.waits.probe_config(true)?,
        symbolizer,
        extra: extra_attributes(&args)?,
        attributes: true,
        start: SystemTime::now(),
        count_map_entries: args.maps.count_map_entries,
        python: !args.unwind.no_python,
    })?;
    select(selection.as_ref(), &mut session);
    publish(&status, &session, &sinks)?;
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
    while !stop.requested() {
        let elapsed = started.elapsed();
        if reload.swap(false, Ordering::Relaxed) {
            match reloaded() {
                Ok(new) => {
                    apply_reload(&mut args, *new, &mut sinks, &mut selection, &mut session);
                    next_export = interval_began + args.interval;
                }
                Err(e) => tracing::warn!(
                    error = %format!("{e:#}"),
                    "SIGHUP: the new configuration is not valid; keeping the running one"
                ),
            }
        }
        if elapsed >= next_drain || elapsed >= next_export {
            session.drain()?;
            select(selection.as_ref(), &mut session);
            publish(&status, &session, &sinks)?;
            next_drain = elapsed + args.maps.drain_interval;
        }
        if elapsed >= next_export {
            let closing = Instant::now();
            let span = session.end_span(SystemTime::now());
            let data = session.package(span, true);
            sinks.submit(&data.span());
            session.end_histogram_interval(sinks.delta_histograms());
            session.forget_interval(closing.elapsed());
            intervals += 1;
            interval_began = elapsed;
            next_export = elapsed + args.interval;
        }
        session.tick();
        std::thread::sleep(TICK);
    }

    // The whole shutdown, detaching included, fits in --shutdown-timeout from the signal.
    let deadline = stop.deadline(args.shutdown_timeout);
    status.lock().unwrap_or_else(|e| e.into_inner()).attached = false;
    // Stopping: detach everything, then export what the last partial interval holds.
    session.stop()?;
    let span = session.end_span(SystemTime::now());
    let data = session.package(span, true);
    sinks.submit(&data.span());
    intervals += 1;
    // Not eprintln: a log pipe whose reader went away must not turn a clean stop into a panic.
    let _ = writeln!(
        std::io::stderr(),
        "emberprof: agent stopped after {intervals} intervals"
    );
    sinks.close(deadline)
}

/// Refreshes what the HTTP endpoints show.
fn publish(status: &SharedStatus, session: &Session, sinks: &Sinks) -> anyhow::Result<()> {
    let mut counters = session.health()?;
    counters.extend(sinks.health());
    let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
    s.counters = counters;
    s.export_ok = sinks.healthy();
    Ok(())
}

/// Points the probes' PID filters at what the selection rules pick now.
fn select(selection: Option<&Selection>, session: &mut Session) {
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
    session.set_pids(&pids);
}

/// `--extra-attributes`, checked.
fn extra_attributes(args: &AgentArgs) -> anyhow::Result<ExtraAttributes> {
    ExtraAttributes::parse(&args.export.extra_attributes)
        .map_err(anyhow::Error::msg)
        .context("--extra-attributes")
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

/// The agent's sinks: the pprof directory, and the exporters its arguments ask for.
fn sinks_of(args: &AgentArgs) -> anyhow::Result<Sinks> {
    let mut sinks = Sinks::default();
    if let Some(d) = args.pprof_dir.as_deref() {
        sinks.push(Box::new(PprofDir::new(
            d,
            args.pprof_max_files,
            args.pprof_max_bytes,
            args.pprof_max_age,
        )?));
    }
    for sink in crate::export::remote_sinks(&args.export)? {
        sinks.push(sink);
    }
    Ok(sinks)
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
    session: &mut Session,
) {
    let mut needs_restart = Vec::new();
    if new.frequency != args.frequency {
        needs_restart.push("frequency");
    }
    if new.waits != args.waits {
        needs_restart.push("off_cpu/histograms/probe/tcp");
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
        match (sinks_of(&new), extra_attributes(&new)) {
            (Ok(fresh), Ok(extra)) => {
                // Off the sampling thread: the kernel maps must keep being drained.
                sinks.replace(fresh);
                session.set_extra(extra);
            }
            (Err(e), _) | (_, Err(e)) => {
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
    if new.unwind != args.unwind {
        needs_restart.push("unwind/unwind_table_mib/no_python");
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
