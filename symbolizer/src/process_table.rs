//! The processes whose mappings are held: captured at first sight or adopted from the
//! watcher, captured again when they map new code, kept across an exec for the samples of
//! the old image, and forgotten once they have exited.

use std::collections::HashSet;
use std::sync::Arc;

use crate::process::{Process, ProcessSnapshot};
use crate::symbolizer::Symbolizer;
use emberprof_model::KernelSample;

impl Symbolizer {
    /// Drops the mappings of processes that have exited, once their samples have been
    /// symbolized (call between drains): a process is dropped at the second call that finds
    /// it gone. Returns how many were dropped.
    pub fn forget_exited(&mut self) -> usize {
        let before = self.processes.len();
        let gone: HashSet<u32> = self
            .processes
            .keys()
            .copied()
            .filter(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        let previously = std::mem::take(&mut self.gone_once);
        self.processes
            .retain(|pid, _| !(gone.contains(pid) && previously.contains(pid)));
        self.gone_once = gone
            .into_iter()
            .filter(|pid| self.processes.contains_key(pid))
            .collect();
        let forgotten = before - self.processes.len();
        self.reset_past_file_limit();
        forgotten
    }

    /// Captures a process's mappings now, while it is alive. Symbolizing its stacks later
    /// works even after it exits.
    pub fn observe(&mut self, pid: u32) {
        if !self.processes.contains_key(&pid) {
            let process = Process::snapshot(pid, &mut self.files);
            self.stats.processes += 1;
            if !process.newest().is_some_and(|i| i.seen_alive) {
                self.stats.processes_gone += 1;
            }
            self.processes.insert(pid, process);
        }
    }

    /// Takes a snapshot made by a watcher when the process (or its new image after an exec)
    /// was first sampled; it may be gone now, and then only its announced name is kept. The
    /// images it replaces stay for samples taken before the exec.
    pub fn adopt(&mut self, pid: u32, snapshot: ProcessSnapshot) {
        if !snapshot.alive() && snapshot.name().is_none() {
            return;
        }
        self.stats.processes += 1;
        self.stats.processes_adopted += 1;
        self.gone_once.remove(&pid);
        match self.processes.get_mut(&pid) {
            Some(p) => p.add(pid, snapshot, &mut self.files, self.tick),
            None => {
                let process = Process::from_snapshot(pid, snapshot, &mut self.files);
                self.processes.insert(pid, process);
            }
        }
    }

    /// The name (comm) of the process's image `exec_id` (else its newest), if known.
    pub fn process_name(&self, pid: u32, exec_id: Option<u32>) -> Option<Arc<str>> {
        let p = self.processes.get(&pid)?;
        p.images.get(p.image_index(exec_id)?)?.name.clone()
    }

    /// Lets go of the images exec'd away from long enough that no sample of them can come.
    pub(crate) fn prune_images(&mut self) {
        let tick = self.tick;
        for p in self.processes.values_mut() {
            p.prune(tick);
        }
    }

    /// Captures the processes of these samples, and captures again those that mapped code
    /// since they were captured (a dlopen). `symbolize` does it too; calling it first lets
    /// the caller act on the new mappings (load their unwind tables) before the samples are
    /// named, which takes far longer.
    pub fn observe_samples(&mut self, requests: &[KernelSample]) {
        // For the symbolize call that will take these samples.
        self.observe_all(requests, self.tick + 1);
    }

    /// `observe_samples` for symbolize call `tick`.
    pub(crate) fn observe_all(&mut self, requests: &[KernelSample], tick: u64) {
        let mut refreshed = HashSet::new();
        for r in requests {
            self.observe(r.pid);
            // A leaf outside every mapping of the newest image means the process mapped code
            // since we looked (dlopen, or an exec not announced): look again, once per
            // batch. An older image (the sample's own, exec'd away from) is what it was.
            // Callers are not checked: frame-pointer walks through code built without them
            // yield garbage there.
            let stale = self.processes.get(&r.pid).is_some_and(|p| {
                let newest = p.images.len().checked_sub(1);
                p.image_index(Some(r.exec_id)) == newest
                    && p.newest().is_some_and(|i| {
                        i.seen_alive && r.user.addrs().first().is_some_and(|&a| i.find(a).is_none())
                    })
            });
            if stale && refreshed.insert(r.pid) {
                let mut snapshot = ProcessSnapshot::read_unopened(r.pid);
                // The sample's image is the newest: what is read now replaces it, rather than
                // standing beside an announced image of the same exec that the samples tagged
                // with it would still be looked up in (without the new library).
                snapshot.exec_id = Some(r.exec_id);
                if snapshot.alive() {
                    if let Some(p) = self.processes.get_mut(&r.pid) {
                        p.add(r.pid, snapshot, &mut self.files, tick);
                    }
                }
            }
        }
    }
}
