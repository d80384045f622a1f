//! Where finished spans of profiling go, for `agent` (every interval) and `record` (every
//! `--export-interval` while it records, and at the end): OTLP through the background
//! pipeline, Pyroscope pushes on their own thread, pprof files in a directory. Handing a span
//! over never waits on the network.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use emberprof_exporters::pyroscope::PyroscopeConfig;
use emberprof_model::Attributes;
use emberprof_model::Profile;

use crate::cli::ExportArgs;
use crate::export::{push_to_pyroscope, pyroscope_config, Exporter};
use crate::histograms::Histograms;
use crate::metadata::attributes::ExtraAttributes;
use crate::pprof_dir::PprofDir;

/// The configured outputs of spans.
pub struct Sinks {
    pub exporter: Option<Exporter>,
    pub pyroscope: Option<PyroscopeConfig>,
    /// The Pyroscope push in flight: at most one, so a slow server cannot pile them up.
    pub pyroscope_push: Option<std::thread::JoinHandle<()>>,
    /// Pushes that failed (each logged).
    pub pyroscope_failures: Arc<AtomicU64>,
    pub pprof_dir: Option<PprofDir>,
    /// Which per-process attributes go out.
    pub extra: ExtraAttributes,
}

impl Sinks {
    /// The sinks `args` ask for, and `pprof_dir` if given.
    pub fn from_args(args: &ExportArgs, pprof_dir: Option<PprofDir>) -> anyhow::Result<Sinks> {
        Ok(Sinks {
            exporter: Exporter::from_args(args)?,
            pyroscope: pyroscope_config(args)?,
            pyroscope_push: None,
            pyroscope_failures: Arc::default(),
            pprof_dir,
            extra: ExtraAttributes::parse(&args.extra_attributes)
                .map_err(anyhow::Error::msg)
                .context("--extra-attributes")?,
        })
    }

    /// Whether anything is sent over the network (OTLP or Pyroscope).
    pub fn remote(&self) -> bool {
        self.exporter.is_some() || self.pyroscope.is_some()
    }

    /// Hands one span (`profiles`, the histograms, from `span_start` to `end`) to every
    /// sink without waiting for delivery; local files are written before returning.
    /// Cumulative histograms count from `run_start`.
    pub fn ship(
        &mut self,
        profiles: &[Profile],
        mut histograms: Option<&mut Histograms>,
        processes: &HashMap<u32, Attributes>,
        run_start: SystemTime,
        span_start: SystemTime,
        end: SystemTime,
    ) {
        let samples: usize = profiles.iter().map(|p| p.samples.len()).sum();
        tracing::info!(samples, "exporting an interval");
        if let Some(dir) = &self.pprof_dir {
            for p in profiles {
                if let Err(e) = dir.write(p, p.kind.id(), end) {
                    tracing::warn!(error = %format!("{e:#}"), "writing the interval's pprof file");
                }
            }
        }
        let processes: HashMap<u32, Attributes> = processes
            .iter()
            .map(|(pid, attrs)| (*pid, self.extra.filter(attrs)))
            .collect();
        if let Some(config) = &self.pyroscope {
            if self
                .pyroscope_push
                .as_ref()
                .is_some_and(|h| !h.is_finished())
            {
                tracing::warn!(
                    "the previous Pyroscope push is still running; this interval is not pushed"
                );
            } else {
                let (config, profiles, processes) =
                    (config.clone(), profiles.to_vec(), processes.clone());
                let failures = self.pyroscope_failures.clone();
                // A slow Pyroscope must not hold up sampling.
                self.pyroscope_push = Some(std::thread::spawn(move || {
                    if let Err(e) = push_to_pyroscope(&config, &profiles, &processes) {
                        failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %format!("{e:#}"), "Pyroscope push failed");
                    }
                }));
            }
        }
        let delta = self.exporter.as_ref().is_some_and(|e| e.delta());
        if let Some(e) = &mut self.exporter {
            let points = histograms
                .as_deref_mut()
                .map(Histograms::points)
                .unwrap_or_default();
            let start = if delta { span_start } else { run_start };
            let refs: Vec<&Profile> = profiles.iter().collect();
            e.export(&refs, &processes, &points, start, end);
        }
        // Also without an exporter, so that series of removed cgroups do not pile up.
        if let Some(h) = histograms {
            h.end_interval(delta);
        }
    }

    /// Waits up to `timeout` for the Pyroscope push in flight; false if it did not finish.
    pub fn wait_for_push(&mut self, timeout: Duration) -> bool {
        let Some(push) = self.pyroscope_push.take() else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        while !push.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !push.is_finished() {
            tracing::warn!("the last Pyroscope push did not finish within --shutdown-timeout");
            return false;
        }
        push.join().is_ok()
    }
}
