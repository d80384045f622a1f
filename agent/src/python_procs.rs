//! Lists the processes that run CPython in the kernel's Python walker: each process is
//! looked at when it is announced (its first sample, or after an exec) and, should its
//! announcement have been lost, when its samples are drained. Processes gone are taken
//! out at each drain. Counts what was found, per version and per reason it was not used.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use emberprof_model::{HealthCounter, HealthValue};
use emberprof_probes::abi::{
    py_entry, py_fingerprint, py_instr, PyNoteFrame, PyProc, PY_ADDR_MASK, PY_CUT_DEPTH,
    PY_FRAME_READ, PY_NO_FIELD,
};
use emberprof_probes::{PythonNotes, PythonProcs};
use emberprof_symbolizer::python::{
    self, CodeError, CodeInfo, DetectError, EntryMarker, InstrKind, ProcessMemory, PyOffsets,
    PythonNameStats, PythonRuntime,
};

/// What is known of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// Listed in the kernel.
    Listed,
    /// No Python in it, or one that cannot be walked; `again`: when to look once more (a
    /// process announced while the dynamic loader was still mapping libpython).
    NotListed { again: Option<Instant> },
}

/// How long after a first look that found no interpreter the process is looked at again.
const LOOK_AGAIN: Duration = Duration::from_secs(2);

/// The kernel's list and what was found.
pub struct PythonTracker {
    procs: PythonProcs,
    /// By pid: the image looked at and the outcome.
    seen: HashMap<u32, (u32, Seen)>,
    /// The interpreters of the processes listed, by pid.
    runtimes: HashMap<u32, PythonRuntime>,
    /// Processes listed, by version (`3.12`), since start.
    listed: BTreeMap<String, u64>,
    /// Processes running Python that could not be listed, by reason, since start.
    unsupported: BTreeMap<&'static str, u64>,
    /// Calls of `prune`.
    prunes: u64,
}

/// Every this many drains, processes not listed are pruned too (a stat each).
const PRUNE_ALL_EVERY: u64 = 30;

/// The tracker, shared by the process watcher (announcements) and the session (drains).
pub type SharedPython = Arc<Mutex<PythonTracker>>;

impl PythonTracker {
    pub fn new(procs: PythonProcs) -> Self {
        PythonTracker {
            procs,
            seen: HashMap::new(),
            runtimes: HashMap::new(),
            listed: BTreeMap::new(),
            unsupported: BTreeMap::new(),
            prunes: 0,
        }
    }

    /// Whether process `pid` in image `exec_id` is to be looked at: not yet, a newer image
    /// (samples taken before an exec carry the older one, and are not), or a second look.
    fn wants_look(&self, pid: u32, exec_id: u32) -> bool {
        match self.seen.get(&pid) {
            None => true,
            Some((image, _)) if exec_id < *image => false,
            Some((image, _)) if exec_id > *image => true,
            Some((_, Seen::NotListed { again: Some(at) })) => Instant::now() >= *at,
            Some(_) => false,
        }
    }

    /// Records what a look at `pid` found.
    fn looked(
        &mut self,
        pid: u32,
        exec_id: u32,
        found: Result<Option<PythonRuntime>, DetectError>,
    ) {
        let earlier = self.seen.get(&pid).copied();
        if let Some((image, Seen::Listed)) = earlier {
            if image == exec_id {
                return; // Another thread listed it meanwhile.
            }
            self.procs.remove(pid);
            self.runtimes.remove(&pid);
        }
        let first_look = !matches!(earlier, Some((image, _)) if image == exec_id);
        let seen = match found {
            Ok(Some(runtime)) => self.list(pid, &runtime),
            Ok(None) => Seen::NotListed {
                again: first_look.then(|| Instant::now() + LOOK_AGAIN),
            },
            // Gone before it could be read: nothing to count.
            Err(_) if !std::path::Path::new(&format!("/proc/{pid}")).exists() => {
                Seen::NotListed { again: None }
            }
            Err(e) => {
                tracing::info!(pid, error = %e, "python process not walked: its native frames are profiled");
                *self.unsupported.entry(e.reason()).or_default() += 1;
                Seen::NotListed { again: None }
            }
        };
        self.seen.insert(pid, (exec_id, seen));
    }

    fn list(&mut self, pid: u32, runtime: &PythonRuntime) -> Seen {
        let version = format!("{}.{}", runtime.version.major, runtime.version.minor);
        let Some(proc) = kernel_proc(runtime) else {
            *self.unsupported.entry("offsets").or_default() += 1;
            return Seen::NotListed { again: None };
        };
        match self.procs.set(pid, &proc) {
            Ok(()) => {
                tracing::debug!(pid, %version, "python process listed");
                *self.listed.entry(version).or_default() += 1;
                self.runtimes.insert(pid, runtime.clone());
                Seen::Listed
            }
            Err(e) => {
                tracing::warn!(pid, error = %e, "cannot list a python process; its native frames are profiled");
                *self.unsupported.entry("map_full").or_default() += 1;
                Seen::NotListed { again: None }
            }
        }
    }

    /// Takes out the processes that are gone: those listed at every call, the rest (only
    /// what was found of them) every `PRUNE_ALL_EVERY` calls.
    pub fn prune(&mut self) {
        self.prunes = self.prunes.wrapping_add(1);
        let all = self.prunes.is_multiple_of(PRUNE_ALL_EVERY);
        let gone: Vec<u32> = self
            .seen
            .iter()
            .filter(|(_, (_, seen))| all || *seen == Seen::Listed)
            .map(|(pid, _)| *pid)
            .filter(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        for pid in gone {
            if let Some((_, Seen::Listed)) = self.seen.remove(&pid) {
                self.procs.remove(pid);
                self.runtimes.remove(&pid);
            }
        }
    }

    /// The image and interpreter of a listed process.
    fn runtime_of(&self, pid: u32) -> Option<(u32, PythonRuntime)> {
        let (exec_id, _) = self.seen.get(&pid)?;
        Some((*exec_id, self.runtimes.get(&pid)?.clone()))
    }

    /// `emberprof.python.processes{version}` and `emberprof.python.unsupported{reason}`.
    pub fn health(&self) -> Vec<HealthCounter> {
        let listed = self.listed.iter().map(|(v, n)| HealthCounter {
            name: "emberprof.python.processes",
            description:
                "Processes found running CPython whose Python frames are profiled, by version",
            unit: "{process}",
            attributes: vec![("version", v.clone())],
            value: HealthValue::Count(*n),
        });
        let unsupported = self.unsupported.iter().map(|(r, n)| HealthCounter {
            name: "emberprof.python.unsupported",
            description: "Processes running CPython profiled with native frames only, by why",
            unit: "{process}",
            attributes: vec![("reason", r.to_string())],
            value: HealthValue::Count(*n),
        });
        listed.chain(unsupported).collect()
    }
}

/// Code objects read from a live process at a note of its stack.
pub struct PyCaptured {
    pub pid: u32,
    pub exec_id: u32,
    pub runtime: PythonRuntime,
    /// By address: what the code object was, or `None` when what is there now is not the
    /// object the kernel saw (freed, its address reused).
    pub codes: Vec<(u64, Option<CodeInfo>)>,
}

/// The thread that reads the code objects of new Python stacks as the kernel notes them,
/// so that a process that exits before the next drain is still named.
pub struct PythonReader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Boxed: the bounded channel allocates all its slots up front.
    captured: Receiver<Box<PyCaptured>>,
}

/// Longest wait for a note before the stop flag is looked at again (a note wakes it at
/// once: a process must still run when its code objects are read).
const NOTE_WAIT: Duration = Duration::from_millis(100);
/// Processes whose code objects read are remembered (to read each once) before all are
/// forgotten; and code objects per process.
const READ_PROCESSES: usize = 1024;
const READ_CODES: usize = 1 << 14;
/// Reads waiting for the next drain; past this they are dropped (and read at the drain).
const CAPTURED_QUEUE: usize = 4096;

impl PythonReader {
    /// Starts reading `notes`, naming through the interpreters `tracker` found.
    pub fn start(notes: PythonNotes, tracker: SharedPython) -> Option<PythonReader> {
        let (send, captured) = sync_channel(CAPTURED_QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("ep-python".into())
            .spawn(move || read_notes(notes, &tracker, &stopping, &send));
        match spawned {
            Ok(t) => Some(PythonReader {
                stop,
                thread: Some(t),
                captured,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the python name reader; python frames are named at each drain");
                None
            }
        }
    }

    /// What was read since the last call.
    pub fn take(&self) -> Vec<PyCaptured> {
        self.captured.try_iter().map(|c| *c).collect()
    }
}

impl Drop for PythonReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_notes(
    mut notes: PythonNotes,
    tracker: &SharedPython,
    stop: &AtomicBool,
    send: &SyncSender<Box<PyCaptured>>,
) {
    // By pid: its image, and the code objects read already with the fingerprint the kernel
    // saw (a new one at the address is read again).
    let mut read: HashMap<u32, (u32, HashMap<u64, u64>)> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let batch = notes.wait(NOTE_WAIT);
        if batch.is_empty() {
            continue;
        }
        if read.len() > READ_PROCESSES {
            read.clear();
        }
        for note in batch {
            let pid = note.tgid;
            let found = lock(tracker).runtime_of(pid);
            let Some((exec_id, runtime)) = found else {
                continue;
            };
            let (image, done) = read.entry(pid).or_insert_with(|| (exec_id, HashMap::new()));
            if *image != exec_id || done.len() > READ_CODES {
                *image = exec_id;
                done.clear();
            }
            let mem = ProcessMemory::new(pid);
            let mut codes = Vec::new();
            for &PyNoteFrame {
                entry: e,
                fingerprint: seen,
            } in note.frames()
            {
                let addr = e & PY_ADDR_MASK;
                if e <= PY_CUT_DEPTH || done.insert(addr, seen) == Some(seen) {
                    continue;
                }
                match CodeInfo::read(&mem, &runtime.offsets, runtime.code_type, addr) {
                    Ok(info) => {
                        let (argcount, flags, first) = info.fingerprint;
                        let same = seen == 0 || py_fingerprint(argcount, flags, first) == seen;
                        codes.push((addr, same.then_some(info)));
                    }
                    // Freed already (a module's body after its import, say).
                    Err(CodeError::NotCode(_)) => codes.push((addr, None)),
                    // Named (or counted) at the drain instead.
                    Err(e) => tracing::debug!(pid, error = %e, "code object not read at its note"),
                }
            }
            if codes.is_empty() {
                continue;
            }
            let captured = Box::new(PyCaptured {
                pid,
                exec_id,
                runtime,
                codes,
            });
            match send.try_send(captured) {
                Ok(()) => {}
                // Named at the drain instead (unless the process is gone by then, which
                // is counted there).
                Err(TrySendError::Full(_)) => {
                    tracing::debug!(pid, "python names queue full")
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }
}

/// `emberprof.python.frames.unnamed{reason}`: Python frames drained that could not be named.
pub fn name_health(s: &PythonNameStats) -> Vec<HealthCounter> {
    [
        ("process_exited", s.unnamed_gone),
        ("code_freed", s.unnamed_not_code),
        ("unreadable", s.unnamed_unreadable),
        ("no_interpreter", s.unnamed_no_runtime),
    ]
    .into_iter()
    .map(|(reason, n)| HealthCounter {
        name: "emberprof.python.frames.unnamed",
        description: "Python frames of drained samples that could not be named, by why",
        unit: "{frame}",
        attributes: vec![("reason", reason.to_string())],
        value: HealthValue::Count(n),
    })
    .collect()
}

/// Looks at process `pid` in image `exec_id` unless it was already: the ELF reads happen
/// outside the lock, which the notes reader needs for every note.
pub fn observe(tracker: &SharedPython, pid: u32, exec_id: u32) {
    if !lock(tracker).wants_look(pid, exec_id) {
        return;
    }
    let found = python::detect(pid);
    lock(tracker).looked(pid, exec_id, found);
}

/// The tracker; a thread that panicked holding it left it consistent (each change is one
/// map update).
fn lock(tracker: &SharedPython) -> std::sync::MutexGuard<'_, PythonTracker> {
    tracker
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The kernel's description of an interpreter; `None` if an offset does not fit.
pub fn kernel_proc(r: &PythonRuntime) -> Option<PyProc> {
    let o: &PyOffsets = &r.offsets;
    let u16_of = |v: u64| u16::try_from(v).ok().filter(|v| *v != PY_NO_FIELD);
    // Frame fields are read from one read of the frame: each must lie within it.
    let in_frame = |v: u64| u16_of(v).filter(|v| u32::from(*v) + 8 <= u32::from(PY_FRAME_READ));
    let (entry_kind, entry_offset) = match o.entry {
        EntryMarker::None => (py_entry::EVERY, 0),
        EntryMarker::IsEntry(at) => (py_entry::FLAG, in_frame(at)?),
        EntryMarker::CStackOwner(at) => (py_entry::SHIM, in_frame(at)?),
    };
    let instr_kind = match o.instr_kind {
        InstrKind::LastIndex => py_instr::LASTI,
        InstrKind::PrevInstr | InstrKind::InstrPtr => py_instr::PTR,
    };
    let (code, previous, instr) = (
        in_frame(o.frame_code)?,
        in_frame(o.frame_previous)?,
        in_frame(o.frame_instr)?,
    );
    // Past the last field read: the frame may end where its memory does.
    let last = [code + 8, previous + 8, instr + 8, entry_offset + 1]
        .into_iter()
        .max()
        .unwrap_or(PY_FRAME_READ);
    Some(PyProc {
        runtime: r.runtime,
        version: u32::from(r.version.major) << 24 | u32::from(r.version.minor) << 16,
        entry_kind,
        instr_kind,
        entry_offset,
        interp_head: u16_of(o.runtime_interpreters_head)?,
        interp_next: u16_of(o.interp_next)?,
        interp_threads: u16_of(o.interp_threads_head)?,
        tstate_next: u16_of(o.tstate_next)?,
        tstate_thread_id: u16_of(o.tstate_thread_id)?,
        tstate_frame: u16_of(o.tstate_frame)?,
        cframe_current: match o.cframe_current_frame {
            Some(c) => u16_of(c)?,
            None => PY_NO_FIELD,
        },
        frame_code: code,
        frame_previous: previous,
        frame_instr: instr,
        code_adaptive: match o.code_adaptive {
            Some(a) => u16_of(a)?,
            None => 0,
        },
        frame_size: last.min(PY_FRAME_READ),
        code_argcount: u16_of(o.code_argcount)?,
        code_flags: u16_of(o.code_flags)?,
        code_firstlineno: u16_of(o.code_firstlineno)?,
        reserved: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use emberprof_symbolizer::python::{for_version, PyVersion};

    fn runtime(minor: u8) -> PythonRuntime {
        let version = PyVersion {
            major: 3,
            minor,
            micro: 0,
        };
        PythonRuntime {
            version,
            offsets: for_version(version).unwrap(),
            runtime: 0x7f00_0000_0000,
            code_type: 0x7f00_0000_1000,
            path: String::new(),
        }
    }

    #[test]
    fn every_supported_version_fits_the_kernels_description() {
        let p = kernel_proc(&runtime(12)).unwrap();
        assert_eq!(
            (p.entry_kind, p.entry_offset, p.instr_kind),
            (py_entry::SHIM, 70, py_instr::PTR)
        );
        assert_eq!((p.frame_code, p.frame_previous, p.frame_instr), (0, 8, 56));
        assert_eq!(p.cframe_current, 0);
        assert_eq!(
            p.frame_size, 71,
            "an 80-byte frame is read up to its owner byte"
        );
        let p = kernel_proc(&runtime(11)).unwrap();
        assert_eq!((p.entry_kind, p.entry_offset), (py_entry::FLAG, 68));
        assert_eq!(p.code_adaptive, 184);
        let p = kernel_proc(&runtime(13)).unwrap();
        assert_eq!((p.interp_head, p.interp_threads), (632, 7344));
        assert_eq!(p.cframe_current, PY_NO_FIELD);
        let p = kernel_proc(&runtime(10)).unwrap();
        assert_eq!(
            (p.entry_kind, p.instr_kind),
            (py_entry::EVERY, py_instr::LASTI)
        );
        assert_eq!(p.frame_size, 104, "f_lasti at 96 is read");
    }
}
