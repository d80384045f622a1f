//! The Python walker's list of processes (`python.bpf.h`): for each process found running
//! CPython, where its interpreter keeps threads and frames. Whoever holds it decides which
//! processes get Python stacks.

use std::os::fd::AsRawFd;
use std::time::Duration;

use aya::maps::{HashMap, MapData, RingBuf};
use aya::Ebpf;

use crate::abi::{PyNote, PyProc};
use crate::error::ProbeError;
use crate::maps;

const PROCS: &str = "ep_py_procs";
const NOTES: &str = "ep_py_notes";

/// `ep_py_procs` of one loaded object.
pub struct PythonProcs {
    procs: HashMap<MapData, u32, PyProc>,
}

impl PythonProcs {
    /// Takes the map out of a loaded object.
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        let procs =
            HashMap::try_from(maps::take(ebpf, PROCS)?).map_err(|source| ProbeError::Map {
                name: PROCS,
                source,
            })?;
        Ok(PythonProcs { procs })
    }

    /// Lists process `pid` as running the interpreter `proc` describes.
    pub fn set(&mut self, pid: u32, proc: &PyProc) -> Result<(), ProbeError> {
        self.procs
            .insert(pid, *proc, 0)
            .map_err(|source| ProbeError::Map {
                name: PROCS,
                source,
            })
    }

    /// Stops walking `pid`'s Python stacks (gone, or no longer Python after an exec).
    pub fn remove(&mut self, pid: u32) {
        // Not listed is what was asked for.
        let _ = self.procs.remove(&pid);
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
        let mut fd = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd, living across the call.
        unsafe { libc::poll(&mut fd, 1, millis) };
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
