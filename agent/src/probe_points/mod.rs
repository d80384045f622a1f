//! `--probe`: attaches each probe point in its slot, in every mount namespace its file is
//! found in (and again as new files appear), and guards the host against a probe hit too
//! often (`--probe-max-rate`): such a probe is detached, logged and counted. What the
//! probes measure is drained with the latency histograms.

mod files;
pub mod spec;
mod tracefs;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use emberprof_model::{HealthCounter, HealthValue};
use emberprof_probes::ProbePoints;
use emberprof_symbolizer::probe_targets;

use files::FileId;
use spec::{ProbeSpec, Target};

/// How often the guard reads the hit counters.
const TICK: Duration = Duration::from_millis(100);
/// How often paths are looked for again in every mount namespace.
const RESCAN: Duration = Duration::from_secs(2);
/// The rate guard's window.
const WINDOW: Duration = Duration::from_secs(1);

/// What to probe, and how carefully.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    pub specs: Vec<ProbeSpec>,
    /// Hits per second over which a probe is detached (0: never).
    pub max_rate: u64,
    /// A probe whose file is nowhere yet waits for it (the agent) instead of failing (record).
    pub wait_for_files: bool,
}

/// Where a probe stands.
#[derive(Clone, Debug, PartialEq)]
enum Status {
    /// Its file is nowhere yet.
    Pending,
    Attached,
    /// Taken off by the rate guard.
    Detached {
        hits: u64,
        seconds: f64,
    },
}

struct Slot {
    spec: ProbeSpec,
    status: Status,
    /// Files attached to.
    files: BTreeSet<FileId>,
    /// Files that could not be attached to (logged once each).
    failed: BTreeSet<FileId>,
    attach_errors: u64,
    /// Hits at the start of the guard's window.
    window_hits: u64,
}

struct State {
    points: ProbePoints,
    slots: Vec<Slot>,
    max_rate: u64,
    window_start: Instant,
}

/// The probes' attacher and guard, running on their own thread.
pub struct ProbeRunner {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Attaches probe `slot` to one file; the error is one line.
fn attach_file(
    points: &mut ProbePoints,
    slot: usize,
    spec: &ProbeSpec,
    file: &files::Found,
) -> anyhow::Result<()> {
    match &spec.target {
        Target::Function { symbol, .. } => {
            let offset = probe_targets::function_offset(&file.open_as, symbol)?;
            points.attach_function(slot, &file.open_as, offset)?;
        }
        Target::Usdt { provider, name, .. } => {
            for site in probe_targets::usdt_sites(&file.open_as, provider, name)? {
                points.attach_usdt(slot, &file.open_as, site.offset)?;
            }
        }
        Target::Tracepoint { .. } => {}
    }
    Ok(())
}

impl State {
    /// Attaches what is new for probe `i`, looking for its file under `roots`
    /// (`files::roots`). `strict` (at start): errors end the start.
    fn attach(
        &mut self,
        i: usize,
        roots: &[std::path::PathBuf],
        strict: bool,
        wait_for_files: bool,
    ) -> anyhow::Result<()> {
        let State { points, slots, .. } = self;
        let slot = &mut slots[i];
        if matches!(slot.status, Status::Detached { .. }) {
            return Ok(());
        }
        let text = slot.spec.text.clone();
        if let Target::Tracepoint { category, name } = &slot.spec.target {
            if slot.status == Status::Attached {
                return Ok(());
            }
            tracefs::check(category, name).with_context(|| format!("--probe {text}"))?;
            points
                .attach_tracepoint(i, category, name)
                .with_context(|| format!("--probe {text}"))?;
            slot.status = Status::Attached;
            return Ok(());
        }
        let Some(path) = slot.spec.path().map(|p| p.to_path_buf()) else {
            return Ok(());
        };
        let found = files::find(&path, roots);
        if found.is_empty() && slot.files.is_empty() {
            if strict && !wait_for_files {
                bail!(
                    "--probe {text}: no such file {} (looked for in every process's mount namespace)",
                    path.display()
                );
            }
            if slot.status != Status::Pending || strict {
                tracing::warn!(probe = %text, "probe waits for its file to appear");
            }
            slot.status = Status::Pending;
            return Ok(());
        }
        let mut first_error = None;
        for file in found {
            if slot.files.contains(&file.id) || slot.failed.contains(&file.id) {
                continue;
            }
            match attach_file(points, i, &slot.spec, &file) {
                Ok(()) => {
                    tracing::info!(probe = %text, file = %file.open_as.display(), "probe attached");
                    slot.files.insert(file.id);
                }
                Err(e) => {
                    slot.failed.insert(file.id);
                    slot.attach_errors += 1;
                    tracing::warn!(probe = %text, error = %format!("{e:#}"), "probe not attached to a file");
                    first_error.get_or_insert(e);
                }
            }
        }
        if !slot.files.is_empty() {
            slot.status = Status::Attached;
        } else if let Some(e) = first_error {
            if strict {
                return Err(e.context(format!("--probe {text}")));
            }
        }
        Ok(())
    }

    /// The rate guard: detaches a probe hit more than `max_rate` times in the window.
    fn guard(&mut self) {
        let hits = match self.points.hits() {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "reading the probes' hit counters");
                return;
            }
        };
        let seconds = self.window_start.elapsed().as_secs_f64();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let since = hits[i].saturating_sub(slot.window_hits);
            if self.max_rate == 0
                || since <= self.max_rate
                || matches!(slot.status, Status::Detached { .. })
            {
                continue;
            }
            if let Err(e) = self.points.detach(i) {
                tracing::warn!(probe = %slot.spec.text, error = %e, "detaching a probe");
            }
            tracing::warn!(
                probe = %slot.spec.text,
                hits = since,
                seconds = format!("{seconds:.2}"),
                max_rate = self.max_rate,
                "probe detached: hit more often than --probe-max-rate per second (each hit \
                 of a function probe costs a trap, ~10 us here); raise the limit or probe \
                 a less frequent point"
            );
            slot.status = Status::Detached {
                hits: since,
                seconds,
            };
        }
        if self.window_start.elapsed() >= WINDOW {
            self.window_start = Instant::now();
            for (i, slot) in self.slots.iter_mut().enumerate() {
                slot.window_hits = hits[i];
            }
        }
    }
}

impl ProbeRunner {
    /// Attaches every probe (errors for a bad spec, a missing symbol, a file nowhere unless
    /// waited for), then guards and re-attaches on a thread of its own.
    pub fn start(points: ProbePoints, config: ProbeConfig) -> anyhow::Result<Self> {
        let hits = points.hits().context("reading the probes' hit counters")?;
        let mut state = State {
            points,
            slots: config
                .specs
                .into_iter()
                .enumerate()
                .map(|(i, spec)| Slot {
                    spec,
                    status: Status::Pending,
                    files: BTreeSet::new(),
                    failed: BTreeSet::new(),
                    attach_errors: 0,
                    window_hits: hits[i],
                })
                .collect(),
            max_rate: config.max_rate,
            window_start: Instant::now(),
        };
        let roots = files::roots();
        for i in 0..state.slots.len() {
            state.attach(i, &roots, true, config.wait_for_files)?;
        }
        let state = Arc::new(Mutex::new(state));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::Builder::new()
                .name("ep-probes".into())
                .spawn(move || run(&state, &stop))
                .context("starting the probe points' thread")?
        };
        Ok(ProbeRunner {
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and detaches every probe, so that what they recorded can be
    /// drained whole.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let Some(t) = self.thread.take() else {
            return;
        };
        let _ = t.join();
        let mut state = lock(&self.state);
        for i in 0..state.slots.len() {
            if let Err(e) = state.points.detach(i) {
                tracing::warn!(probe = %state.slots[i].spec.text, error = %e, "detaching a probe");
            }
        }
    }

    /// Per probe: files attached, waiting, detached by the guard, attach errors.
    pub fn health(&self) -> Vec<HealthCounter> {
        let state = lock(&self.state);
        let mut out = Vec::new();
        for slot in &state.slots {
            let attrs = vec![("emberprof.probe", slot.spec.text.clone())];
            let row = |name, description, unit, value| HealthCounter {
                name,
                description,
                unit,
                attributes: attrs.clone(),
                value,
            };
            out.push(row(
                "emberprof.probe.files",
                "Files a probe point is attached to",
                "{file}",
                HealthValue::Level(slot.files.len() as f64),
            ));
            out.push(row(
                "emberprof.probe.pending",
                "1 while a probe point waits for its file to appear",
                "1",
                HealthValue::Level(f64::from(u8::from(slot.status == Status::Pending))),
            ));
            out.push(row(
                "emberprof.probe.detached",
                "Times a probe point was detached by the rate guard (--probe-max-rate)",
                "{detach}",
                HealthValue::Count(u64::from(matches!(slot.status, Status::Detached { .. }))),
            ));
            out.push(row(
                "emberprof.probe.attach.errors",
                "Files a probe point could not be attached to",
                "{file}",
                HealthValue::Count(slot.attach_errors),
            ));
        }
        out
    }

    /// Lines for the report: probes that are not attached, and why.
    pub fn report(&self) -> String {
        let state = lock(&self.state);
        let mut out = String::new();
        for slot in &state.slots {
            match slot.status {
                Status::Pending => out.push_str(&format!(
                    "probe {}: never attached (its file was not found)\n",
                    slot.spec.text
                )),
                Status::Detached { hits, seconds } => out.push_str(&format!(
                    "probe {}: detached by the rate guard ({hits} hits in {seconds:.2} s, over --probe-max-rate {}/s)\n",
                    slot.spec.text, state.max_rate
                )),
                Status::Attached => {}
            }
        }
        out
    }
}

impl Drop for ProbeRunner {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(state: &Mutex<State>, stop: &AtomicBool) {
    let mut last_scan = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(TICK);
        let mut s = lock(state);
        s.guard();
        if last_scan.elapsed() >= RESCAN {
            last_scan = Instant::now();
            let wanted = s.slots.iter().any(|slot| {
                slot.spec.path().is_some() && !matches!(slot.status, Status::Detached { .. })
            });
            // One /proc scan for every probe, made without holding the state.
            drop(s);
            let roots = if wanted { files::roots() } else { Vec::new() };
            let mut s = lock(state);
            for i in 0..s.slots.len() {
                if let Err(e) = s.attach(i, &roots, false, true) {
                    tracing::warn!(error = %format!("{e:#}"), "attaching a probe");
                }
            }
        }
    }
}
