//! Captures each process the moment the CPU sampler first sees it (announced through a ring
//! buffer), so that one which exits before the next drain is still symbolized and still
//! carries its resource attributes, and lists it in the kernel's unwinder right away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use emberprof_model::Attributes;
use emberprof_probes::NewProcesses;
use emberprof_symbolizer::{ProcessSnapshot, Symbolizer, UnwindPlan};

use crate::metadata::process::process_attributes;
use crate::python_procs::SharedPython;
use crate::unwind_loader::{SharedUnwind, UnwindState};

/// What was read of one process while it ran.
struct Captured {
    pid: u32,
    snapshot: ProcessSnapshot,
    attributes: Attributes,
}

/// The watcher thread and what it has captured since the last delivery.
pub struct ProcessWatcher {
    captured: Receiver<Captured>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Lists captured processes in the kernel's unwinder (with `--unwind auto`).
    lister: Option<JoinHandle<()>>,
}

/// Captured processes waiting for their tables; past that, the main thread lists them at
/// its next tick instead.
const PLAN_QUEUE: usize = 1024;

impl ProcessWatcher {
    /// Starts watching announcements (the CPU sampler's, else an off-CPU profiler's started
    /// with `announce`).
    pub fn start(
        announcements: NewProcesses,
        unwind: SharedUnwind,
        python: Option<SharedPython>,
    ) -> Option<ProcessWatcher> {
        let (send, captured) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        // Tables on a thread of their own: the main thread may be symbolizing for seconds,
        // longer than a short process lives, and compiling a large table takes longer than
        // the next capture may wait.
        let enabled = lock(&unwind).enabled();
        let (plans, planned) = sync_channel::<(u32, UnwindPlan)>(PLAN_QUEUE);
        let lister = if enabled {
            let spawned = std::thread::Builder::new()
                .name("ep-unwind".into())
                .spawn(move || {
                    for (pid, plan) in planned {
                        let t = std::time::Instant::now();
                        lock(&unwind).list_captured(pid, &plan);
                        tracing::debug!(pid, took = ?t.elapsed(), "listed at its announcement");
                    }
                });
            match spawned {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the unwind table thread; new processes get their tables at the next tick");
                    None
                }
            }
        } else {
            None
        };
        let planning = lister.is_some();
        let thread = std::thread::Builder::new()
            .name("ep-procwatch".into())
            .spawn(move || {
                watch(announcements, &stopping, python, |c| {
                    if planning {
                        if let Some(plan) = c.snapshot.unwind_plan() {
                            let _ = plans.try_send((c.pid, plan));
                        }
                    }
                    send.send(c).is_ok()
                })
            });
        match thread {
            Ok(thread) => Some(ProcessWatcher {
                captured,
                stop,
                thread: Some(thread),
                lister,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the process watcher; short-lived processes may be unnamed");
                None
            }
        }
    }

    /// Hands what was captured to the symbolizer (and the attribute table); call before
    /// symbolizing a drain. Returns how many processes it handed over.
    pub fn deliver(
        &self,
        symbolizer: &mut Symbolizer,
        mut processes: Option<&mut HashMap<u32, Attributes>>,
    ) -> usize {
        let mut delivered = 0;
        while let Ok(c) = self.captured.try_recv() {
            if let Some(p) = processes.as_deref_mut() {
                p.insert(c.pid, c.attributes);
            }
            symbolizer.adopt(c.pid, c.snapshot);
            delivered += 1;
        }
        delivered
    }
}

impl Drop for ProcessWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The watcher's end closed the plan queue: the lister finishes what is queued.
        if let Some(t) = self.lister.take() {
            let _ = t.join();
        }
    }
}

fn watch(
    mut announcements: NewProcesses,
    stop: &AtomicBool,
    python: Option<SharedPython>,
    mut send: impl FnMut(Captured) -> bool,
) {
    let own = std::process::id();
    while !stop.load(Ordering::Relaxed) {
        for a in announcements.wait(Duration::from_millis(100)) {
            let pid = a.tgid;
            if pid == own {
                continue;
            }
            // Before the capture: the sooner it is listed, the fewer of its first samples
            // lack their Python frames.
            if let Some(python) = &python {
                crate::python_procs::observe(python, pid, a.exec_id);
            }
            let comm = a.comm_str();
            // Gone already, the snapshot still carries the announced name and image.
            let snapshot = ProcessSnapshot::capture_announced(pid, a.exec_id, &comm);
            let name = snapshot.name().unwrap_or(&comm).to_string();
            let attributes = process_attributes(pid, &name, false);
            if !send(Captured {
                pid,
                snapshot,
                attributes,
            }) {
                return;
            }
        }
    }
}

/// The unwind state; a thread that panicked holding it left it as consistent as any
/// listing is between two syscalls.
fn lock(unwind: &SharedUnwind) -> std::sync::MutexGuard<'_, UnwindState> {
    unwind
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
