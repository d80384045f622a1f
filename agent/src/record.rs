//! `emberprof record`: sample for a while, then write one profile.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use emberprof_exporters::ProfileBuilder;
use emberprof_probes::{CpuSampler, CpuSamplerConfig};
use emberprof_symbolizer::Symbolizer;

use crate::cli::RecordArgs;
use crate::collect::{self, Collected};
use crate::output;
use crate::progress::Progress;

/// How often the loop wakes to check for Ctrl-C and refresh the progress line.
const TICK: Duration = Duration::from_millis(100);

pub fn run(args: RecordArgs) -> anyhow::Result<()> {
    for pid in &args.pids {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("no process with PID {pid} (--pid)");
        }
    }
    let format = output::choose_format(args.format, args.output.as_deref());
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .context("installing the Ctrl-C handler")?;
    }

    let mut symbolizer = Symbolizer::new();
    for pid in &args.pids {
        symbolizer.observe(*pid);
    }
    let config = CpuSamplerConfig {
        stack_map_entries: args.stack_map_entries,
        count_map_entries: args.count_map_entries,
        ..CpuSamplerConfig::new(args.frequency, args.pids.clone())
    };
    let mut sampler = CpuSampler::start(&config).context("starting the CPU sampler")?;
    let start = SystemTime::now();
    let started = Instant::now();
    tracing::info!(
        cpus = sampler.cpus(),
        frequency = args.frequency,
        "recording"
    );

    let mut builder = ProfileBuilder::cpu(args.frequency, start);
    let mut collected = Collected::default();
    let progress = Progress::new();
    let mut next_drain = args.drain_interval;
    loop {
        let elapsed = started.elapsed();
        if elapsed >= args.duration || stop.load(Ordering::Relaxed) {
            break;
        }
        if elapsed >= next_drain {
            let counts = sampler.drain().context("draining the sample maps")?;
            collect::add(&counts, &mut symbolizer, &mut builder, &mut collected);
            next_drain = elapsed + args.drain_interval;
        }
        let kernel_samples = sampler
            .counters()
            .map(|c| c.samples)
            .unwrap_or(collected.samples);
        progress.update(elapsed, args.duration, kernel_samples);
        std::thread::sleep(
            TICK.min(args.duration.saturating_sub(elapsed)).min(
                next_drain
                    .saturating_sub(elapsed)
                    .max(Duration::from_millis(1)),
            ),
        );
    }
    let counts = sampler.stop().context("stopping the CPU sampler")?;
    let end = SystemTime::now();
    collect::add(&counts, &mut symbolizer, &mut builder, &mut collected);
    let counters = sampler.counters().context("reading the kernel counters")?;
    drop(sampler);
    progress.finish();

    let profile = builder.finish(end);
    let path = args
        .output
        .unwrap_or_else(|| output::default_path(format, start));
    output::write(&profile, format, &path)?;

    let stats = symbolizer.stats();
    tracing::debug!(?stats, ?counters, "symbolizer and kernel counters");
    eprintln!(
        "emberprof: {} samples (kernel counted {}, {} dropped, {} with a lost stack) from {} processes, {} unique stacks in {:.1} s -> {}",
        collected.samples,
        counters.samples,
        counters.dropped(),
        counters.stacks_lost(),
        collected.pids.len(),
        collected.stacks.len(),
        profile.duration.as_secs_f64(),
        if path == Path::new("-") { "standard output".to_string() } else { path.display().to_string() },
    );
    if counters.dropped() > 0 {
        tracing::warn!(
            dropped = counters.dropped(),
            "the kernel's count map was full; those samples are missing from the profile"
        );
    }
    Ok(())
}
