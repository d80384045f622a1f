//! The Python walker's list of processes (`python.bpf.h`): for each process found running
//! CPython, where its interpreter keeps threads and frames. Whoever holds it decides which
//! processes get Python stacks.

use std::os::fd::AsRawFd;
use std::time::Duration;

use aya::maps::{Array, HashMap, MapData, RingBuf};
use aya::Ebpf;

use crate::abi::{PyNote, PyProc};
use crate::error::ProbeError;
use crate::maps;

const PROCS: &str = "ep_py_procs";
const GEN: &str = "ep_py_gen";
const NOTES: &str = "ep_py_notes";

/// `ep_py_procs` of one loaded object.
pub struct PythonProcs {
    procs: HashMap<MapData, u32, PyProc>,
    /// Advanced at every change of the list: the off-CPU program's threads that found
    /// their process not listed look again.
    generation: Array<MapData, u32>,
    changes: u32,
}

impl PythonProcs {
    /// Takes the map out of a loaded object.
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        let procs =
            HashMap::try_from(maps::take(ebpf, PROCS)?).map_err(|source| ProbeError::Map {
                name: PROCS,
                source,
            })?;
        let generation = Array::try_from(maps::take(ebpf, GEN)?)
            .map_err(|source| ProbeError::Map { name: GEN, source })?;
        Ok(PythonProcs {
            procs,
            generation,
            changes: 0,
        })
    }

    fn changed(&mut self) {
        self.changes = self.changes.wrapping_add(1);
        if let Err(e) = self.generation.set(0, self.changes, 0) {
            // Threads that found their process not listed keep taking no Python stacks
            // off-CPU until their next full walk (at most 64 blocks).
            tracing::debug!(error = %e, "cannot advance the python list's generation");
        }
    }

    /// Lists process `pid` as running the interpreter `proc` describes.
    pub fn set(&mut self, pid: u32, proc: &PyProc) -> Result<(), ProbeError> {
        self.procs
            .insert(pid, *proc, 0)
            .map_err(|source| ProbeError::Map {
                name: PROCS,
                source,
            })?;
        self.changed();
        Ok(())
    }

    /// Stops walking `pid`'s Python stacks (gone, or no longer Python after an exec).
    pub fn remove(&mut self, pid: u32) {
        // Not listed is what was asked for.
        if self.procs.remove(&pid).is_ok() {
            self.changed();
        }
    }
}

/// The ring of Python stacks new to the kernel's buffers (`ep_py_notes`).
pub struct PythonNotes {
    ring: RingBuf<MapData>,
}

impl PythonNotes {
    /// Takes the ring out of a loaded object.
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        Ok(PythonNotes {
            ring: maps::take_as(ebpf, NOTES)?,
        })
    }

    /// Waits up to `timeout` for notes (the kernel wakes the ring's poller as each is
    /// written) and returns those there; an interrupted or failed wait returns what is there.
    pub fn wait(&mut self, timeout: Duration) -> Vec<PyNote> {
        let out = self.take_waiting();
        if !out.is_empty() {
            return out;
        }
        maps::wait_readable(self.ring.as_raw_fd(), timeout);
        self.take_waiting()
    }

    /// The notes waiting now (none when empty; never blocks).
    pub fn take_waiting(&mut self) -> Vec<PyNote> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            match PyNote::from_bytes(&item) {
                Some(note) => out.push(note),
                None => tracing::debug!(len = item.len(), "short python note ignored"),
            }
        }
        out
    }
}
