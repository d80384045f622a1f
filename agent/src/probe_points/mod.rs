//! `--probe`: attaches each probe point in its slot, in every mount namespace its file is
//! found in (again as files appear, and off files that are gone), and guards the host
//! against a probe hit too often (`--probe-max-rate`): such a probe is detached, logged and
//! counted. What the probes measure is drained with the latency histograms. Two threads:
//! the attacher (finds files and parses them without holding the state) and the guard,
//! which nothing slow can hold up.

mod files;
pub mod spec;
mod tracefs;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use emberprof_model::{HealthCounter, HealthValue};
use emberprof_probes::probe_points::ProbeLink;
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
    /// Its files exist, and none could be attached to (the last error).
    Failed(String),
    /// Taken off by the rate guard.
    Detached {
        hits: u64,
        seconds: f64,
    },
}

struct Slot {
    spec: ProbeSpec,
    status: Status,
    /// Files attached to, with their attachments.
    files: BTreeMap<FileId, Vec<ProbeLink>>,
    /// Files that cannot be attached to as they are (no symbol, not ELF, ...); a changed
    /// file is another identity.
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

/// The probes' attacher and guard threads.
pub struct ProbeRunner {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A file found for a probe, opened (so that what is parsed is what is attached to, even if
/// the path is replaced meanwhile) and parsed: where to attach.
struct Prepared {
    id: FileId,
    /// Kept open until attached: the path attached through is this descriptor's.
    _file: File,
    through: PathBuf,
    shown: PathBuf,
    offsets: Vec<u64>,
}

/// What a scan found for one probe.
#[derive(Default)]
struct Scanned {
    /// Every file the path names now.
    present: BTreeSet<FileId>,
    new: Vec<Prepared>,
    /// Files that cannot be attached to, and why.
    failed: Vec<(FileId, String)>,
}

/// Opens and parses one file for `target`: `None` when it changed or vanished meanwhile
/// (the next scan sees it again).
fn prepare(target: &Target, file: &files::Found) -> Option<Result<Prepared, String>> {
    let opened = File::open(&file.open_as).ok()?;
    let through = PathBuf::from(format!("/proc/self/fd/{}", opened.as_raw_fd()));
    if files::regular_file(&through) != Some(file.id) {
        return None;
    }
    let offsets = match target {
        Target::Function { symbol, .. } => {
            probe_targets::function_offset(&through, symbol).map(|o| vec![o])
        }
        Target::Usdt { provider, name, .. } => probe_targets::usdt_sites(&through, provider, name)
            .map(|sites| sites.iter().map(|s| s.offset).collect()),
        Target::Tracepoint { .. } => Ok(Vec::new()),
    };
    match offsets {
        Ok(offsets) => Some(Ok(Prepared {
            id: file.id,
            _file: opened,
            through,
            shown: file.open_as.clone(),
            offsets,
        })),
        Err(e) if e.is_transient() => None,
        // The error names the descriptor's path: name the file as it was found.
        Err(e) => Some(Err(e.to_string().replace(
            &through.display().to_string(),
            &file.open_as.display().to_string(),
        ))),
    }
}

/// Finds and parses, without the state, what is new for every probe.
fn look(wanted: &[(Target, BTreeSet<FileId>)]) -> Vec<Scanned> {
    let any_path = wanted
        .iter()
        .any(|(t, _)| !matches!(t, Target::Tracepoint { .. }));
    let roots = if any_path { files::roots() } else { Vec::new() };
    wanted
        .iter()
        .map(|(target, known)| {
            let mut out = Scanned::default();
            let path = match target {
                Target::Function { path, .. } | Target::Usdt { path, .. } => path,
                Target::Tracepoint { .. } => return out,
            };
            for file in files::find(path, &roots) {
                out.present.insert(file.id);
                if known.contains(&file.id) {
                    continue;
                }
                match prepare(target, &file) {
                    Some(Ok(p)) => out.new.push(p),
                    Some(Err(e)) => out.failed.push((file.id, e)),
                    None => {}
                }
            }
            out
        })
        .collect()
}

impl State {
    /// What the attacher should look for: each probe's target and the files it knows.
    fn wanted(&self) -> Vec<(Target, BTreeSet<FileId>)> {
        self.slots
            .iter()
            .map(|slot| {
                let known = slot.files.keys().chain(&slot.failed).copied().collect();
                (slot.spec.target.clone(), known)
            })
            .collect()
    }

    /// Applies what a scan found to probe `i`: attaches new files, lets go of gone ones.
    /// `strict` (at start): errors end the start.
    fn apply(&mut self, i: usize, found: Scanned, strict: bool, wait: bool) -> anyhow::Result<()> {
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
        // Files no longer anywhere (replaced by a deploy, their last container gone).
        let gone: Vec<FileId> = slot
            .files
            .keys()
            .filter(|id| !found.present.contains(id))
            .copied()
            .collect();
        for id in gone {
            if let Some(links) = slot.files.remove(&id) {
                if let Err(e) = points.detach_links(i, links) {
                    tracing::warn!(probe = %text, error = %e, "detaching a probe from a gone file");
                }
            }
        }
        slot.failed.retain(|id| found.present.contains(id));
        let mut first_error = None;
        for (id, e) in found.failed {
            slot.failed.insert(id);
            slot.attach_errors += 1;
            tracing::warn!(probe = %text, error = %e, "probe not attached to a file");
            first_error.get_or_insert(e);
        }
        for p in found.new {
            let mut links = Vec::new();
            let mut result = Ok(());
            for offset in &p.offsets {
                let attached = match &slot.spec.target {
                    Target::Function { .. } => points.attach_function(i, &p.through, *offset),
                    _ => points.attach_usdt(i, &p.through, *offset).map(|l| vec![l]),
                };
                match attached {
                    Ok(l) => links.extend(l),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            match result {
                Ok(()) => {
                    tracing::info!(probe = %text, file = %p.shown.display(), "probe attached");
                    slot.files.insert(p.id, links);
                }
                Err(e) => {
                    // All of a file or none of it: a USDT probe's first sites are let go.
                    let _ = points.detach_links(i, links);
                    slot.failed.insert(p.id);
                    slot.attach_errors += 1;
                    let e = format!("{}: {e}", p.shown.display());
                    tracing::warn!(probe = %text, error = %e, "probe not attached to a file");
                    first_error.get_or_insert(e);
                }
            }
        }
        slot.status = if !slot.files.is_empty() {
            Status::Attached
        } else if let Some(e) = first_error.or_else(|| match &slot.status {
            Status::Failed(e) if !slot.failed.is_empty() => Some(e.clone()),
            _ => None,
        }) {
            if strict {
                bail!("--probe {text}: {e}");
            }
            Status::Failed(e)
        } else {
            if strict && !wait {
                bail!(
                    "--probe {text}: no such file {} (looked for in every process's mount namespace)",
                    slot.spec.path().map_or(String::new(), |p| p.display().to_string())
                );
            }
            if slot.status != Status::Pending || strict {
                tracing::warn!(probe = %text, "probe waits for its file to appear");
            }
            Status::Pending
        };
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
            // Void with the programs unloaded.
            slot.files.clear();
            tracing::warn!(
                probe = %slot.spec.text,
                hits = since,
                seconds = format!("{seconds:.2}"),
                max_rate = self.max_rate,
                "probe detached: hit more often than --probe-max-rate per second (each hit \
                 of a function probe costs a trap, ~12 us here); raise the limit or probe \
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

/// One round of the attacher: a snapshot under the lock, the search without it, then the
/// attaching under it.
fn scan(state: &Mutex<State>, strict: bool, wait: bool) -> anyhow::Result<()> {
    let wanted = lock(state).wanted();
    let found = look(&wanted);
    let mut s = lock(state);
    for (i, f) in found.into_iter().enumerate() {
        s.apply(i, f, strict, wait)?;
    }
    Ok(())
}

impl ProbeRunner {
    /// Attaches every probe (errors for a bad spec, a missing symbol, a file nowhere unless
    /// waited for), then re-attaches and guards on threads of their own.
    pub fn start(points: ProbePoints, config: ProbeConfig) -> anyhow::Result<Self> {
        let hits = points.hits().context("reading the probes' hit counters")?;
        let state = Mutex::new(State {
            points,
            slots: config
                .specs
                .into_iter()
                .enumerate()
                .map(|(i, spec)| Slot {
                    spec,
                    status: Status::Pending,
                    files: BTreeMap::new(),
                    failed: BTreeSet::new(),
                    attach_errors: 0,
                    window_hits: hits[i],
                })
                .collect(),
            max_rate: config.max_rate,
            window_start: Instant::now(),
        });
        scan(&state, true, config.wait_for_files)?;
        let state = Arc::new(state);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (name, job) in [
            ("ep-probe-guard", guard as fn(&Mutex<State>, &AtomicBool)),
            ("ep-probes", attacher),
        ] {
            let (state, stop) = (state.clone(), stop.clone());
            let thread = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || job(&state, &stop))
                .context("starting the probe points' threads")?;
            threads.push(thread);
        }
        Ok(ProbeRunner {
            state,
            stop,
            threads,
        })
    }

    /// Stops the threads and detaches every probe, so that what they recorded can be
    /// drained whole.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if self.threads.is_empty() {
            return;
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let mut state = lock(&self.state);
        for i in 0..state.slots.len() {
            // The slots' links are void now; their files stay listed for the last export.
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
            match &slot.status {
                Status::Pending => out.push_str(&format!(
                    "probe {}: never attached (its file was not found)\n",
                    slot.spec.text
                )),
                Status::Failed(e) => {
                    out.push_str(&format!("probe {}: not attached: {e}\n", slot.spec.text))
                }
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

/// Sleeps `d` in short steps, false when asked to stop meanwhile.
fn nap(d: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(TICK.min(until.saturating_duration_since(Instant::now())));
    }
    !stop.load(Ordering::Relaxed)
}

fn guard(state: &Mutex<State>, stop: &AtomicBool) {
    while nap(TICK, stop) {
        lock(state).guard();
    }
}

fn attacher(state: &Mutex<State>, stop: &AtomicBool) {
    while nap(RESCAN, stop) {
        if let Err(e) = scan(state, false, true) {
            tracing::warn!(error = %format!("{e:#}"), "attaching a probe");
        }
    }
}
