//! Names the Python frames the kernel's walker recorded (`EP_PY_*` entries: a code object's
//! address and instruction index): finds each process's interpreter once per image, reads
//! each code object once, and checks a cached name at every drain against the object's
//! fingerprint, so that a code object freed and another allocated at its address is not
//! given the old name.

use std::collections::HashMap;
use std::sync::Arc;

use emberprof_model::{Frame, FrameKind, Location};

use super::code::{fingerprint, CodeError, CodeInfo};
use super::detect::{detect, PythonRuntime};
use super::interleave::PythonRuns;
use super::memory::{ProcessMemory, ReadError};

use emberprof_model::python_stack::{ADDR_MASK, CUT_DEPTH, CUT_READ, ENTRY, INDEX_SHIFT};

/// Code objects held per process: past this the process's cache starts again.
const CODES_PER_PROCESS: usize = 1 << 14;
/// Drains a code object known freed at its note stays unnamed (its samples are in the next
/// drain or the one after).
const FREED_DRAINS: u64 = 3;
/// Drains a process may go unsampled before what is held of it is let go.
const IDLE_DRAINS: u64 = 32;

/// Why Python frames could not be named, counted per frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PythonNameStats {
    /// Frames named.
    pub named: u64,
    /// The process was gone before its code objects were read.
    pub unnamed_gone: u64,
    /// The address held no code object any more (freed, or reused by another object).
    pub unnamed_not_code: u64,
    /// Its names could not be read (another read error, a corrupt string).
    pub unnamed_unreadable: u64,
    /// The process's interpreter could not be found again in user space.
    pub unnamed_no_runtime: u64,
}

/// What a code object address names, as of the drain it was checked in.
struct Code {
    /// `None`: not readable, for `why`.
    info: Option<Arc<CodeInfo>>,
    why: Unnamed,
    checked: u64,
    /// Known at a note not to be the object sampled (freed, its address reused): not read
    /// again before this drain, or the samples of that stack would be named after the new
    /// object. Later samples at the address may be the new object's: read again then.
    freed_until: u64,
    /// Locations by instruction index (+1), built once.
    at: HashMap<u16, Arc<Location>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unnamed {
    Gone,
    NotCode,
    Unreadable,
    NoRuntime,
}

impl Unnamed {
    fn of(e: &CodeError) -> Unnamed {
        match e {
            CodeError::NotCode(_) => Unnamed::NotCode,
            CodeError::Read(r)
            | CodeError::Str {
                source: super::StrError::Read(r),
                ..
            } => Unnamed::of_read(r),
            CodeError::Str { .. } => Unnamed::Unreadable,
        }
    }

    fn of_read(e: &ReadError) -> Unnamed {
        match e {
            ReadError::Os { source, .. } if source.raw_os_error() == Some(libc::ESRCH) => {
                Unnamed::Gone
            }
            _ => Unnamed::Unreadable,
        }
    }

    fn frame(self) -> &'static str {
        match self {
            Unnamed::Gone => "[python: process exited before its code was read]",
            Unnamed::NotCode => "[python: code object freed]",
            Unnamed::Unreadable => "[python: code object unreadable]",
            Unnamed::NoRuntime => "[python: interpreter not found]",
        }
    }
}

struct Process {
    exec_id: u32,
    /// Its start time (clock ticks after boot): a reused pid is another process.
    started: Option<u64>,
    /// The drain its start time was last compared in.
    started_checked: u64,
    runtime: Result<PythonRuntime, Unnamed>,
    mem: ProcessMemory,
    codes: HashMap<u64, Code>,
    used: u64,
}

impl Process {
    fn new(pid: u32, exec_id: u32, runtime: Result<PythonRuntime, Unnamed>, drain: u64) -> Self {
        Process {
            exec_id,
            started: start_time(pid),
            started_checked: drain,
            runtime,
            mem: ProcessMemory::new(pid),
            codes: HashMap::new(),
            used: drain,
        }
    }
}

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks after boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which may hold spaces and parentheses: field 3 onwards.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Processes held at once: past this the least recently sampled goes.
const PROCESSES: usize = 4096;

/// Python names of every process seen, with their caches.
#[derive(Default)]
pub struct PythonNames {
    procs: HashMap<u32, Process>,
    drain: u64,
    stats: PythonNameStats,
    markers: HashMap<&'static str, Arc<Location>>,
}

impl PythonNames {
    /// Counters since creation.
    pub fn stats(&self) -> PythonNameStats {
        self.stats
    }

    /// Starts a drain: cached names are checked again at their next use, and processes
    /// not sampled for a while are let go.
    pub fn begin_drain(&mut self) {
        self.drain += 1;
        let drain = self.drain;
        self.procs
            .retain(|_, p| drain.saturating_sub(p.used) <= IDLE_DRAINS);
    }

    /// Decodes one recorded Python stack of `pid` (image `exec_id`) into named runs.
    pub fn runs(&mut self, pid: u32, exec_id: u32, entries: &[u64]) -> PythonRuns {
        let mut out = PythonRuns::default();
        let mut run = Vec::new();
        for &e in entries {
            match e {
                ENTRY => out.runs.push(std::mem::take(&mut run)),
                CUT_READ => out.cut = Some(self.marker("[python stack cut: unreadable frame]")),
                CUT_DEPTH => out.cut = Some(self.marker("[python stack cut: too deep]")),
                _ => run.push(self.location(pid, exec_id, e)),
            }
        }
        if !run.is_empty() {
            out.runs.push(run);
        }
        out
    }

    fn marker(&mut self, text: &'static str) -> Arc<Location> {
        self.markers
            .entry(text)
            .or_insert_with(|| Arc::new(Location::marker(text)))
            .clone()
    }

    fn process(&mut self, pid: u32, exec_id: u32) -> &mut Process {
        let drain = self.drain;
        let stale = self.procs.get_mut(&pid).is_some_and(|p| {
            if p.exec_id != exec_id {
                return true;
            }
            // Once a drain: a pid reused by another process (a sibling may share the exec
            // id) must not be named by this one's interpreter and code objects. A process
            // gone keeps what was read of it.
            if p.started_checked != drain {
                p.started_checked = drain;
                if let (Some(then), Some(now)) = (p.started, start_time(pid)) {
                    return then != now;
                }
            }
            false
        });
        if stale {
            self.procs.remove(&pid);
        }
        if !self.procs.contains_key(&pid) {
            self.make_room();
            let runtime = match detect(pid) {
                Ok(Some(r)) => Ok(r),
                Ok(None) => Err(Unnamed::NoRuntime),
                Err(e) => {
                    tracing::debug!(pid, error = %e, "python frames of a process whose interpreter cannot be read");
                    // Mostly: the process exited before the drain, and no note of its
                    // stacks was read in time.
                    let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists();
                    Err(if gone {
                        Unnamed::Gone
                    } else {
                        Unnamed::NoRuntime
                    })
                }
            };
            self.procs
                .insert(pid, Process::new(pid, exec_id, runtime, drain));
        }
        let p = self
            .procs
            .entry(pid)
            .or_insert_with(|| Process::new(pid, exec_id, Err(Unnamed::NoRuntime), drain));
        p.used = drain;
        p
    }

    /// Lets the least recently sampled process go when the bound is reached.
    fn make_room(&mut self) {
        if self.procs.len() < PROCESSES {
            return;
        }
        if let Some(oldest) = self
            .procs
            .iter()
            .min_by_key(|(_, p)| p.used)
            .map(|(pid, _)| *pid)
        {
            self.procs.remove(&oldest);
        }
    }

    /// The location of one frame entry.
    fn location(&mut self, pid: u32, exec_id: u32, entry: u64) -> Arc<Location> {
        let addr = entry & ADDR_MASK;
        let index = (entry >> INDEX_SHIFT) as u16;
        let drain = self.drain;
        let p = self.process(pid, exec_id);
        if p.codes.len() >= CODES_PER_PROCESS {
            p.codes.clear();
        }
        let runtime = match &p.runtime {
            Ok(r) => r,
            Err(why) => {
                let why = *why;
                self.count_unnamed(why);
                return self.marker(why.frame());
            }
        };
        let fresh = match p.codes.get(&addr) {
            // Checked this drain, or unnamed (an unreadable address stays so this drain).
            Some(c) if c.checked == drain || c.freed_until > drain => false,
            Some(Code {
                info: Some(info), ..
            }) => match fingerprint(&p.mem, &runtime.offsets, addr) {
                Ok(now) => now != info.fingerprint,
                // Gone: what was read while it ran (at a note of its stack, after the
                // sample) still names it.
                Err(e) => Unnamed::of_read(&e) != Unnamed::Gone,
            },
            _ => true,
        };
        if fresh {
            let code = match CodeInfo::read(&p.mem, &runtime.offsets, runtime.code_type, addr) {
                Ok(info) => Code {
                    info: Some(Arc::new(info)),
                    why: Unnamed::NotCode,
                    checked: drain,
                    freed_until: 0,
                    at: HashMap::new(),
                },
                Err(e) => Code {
                    info: None,
                    why: Unnamed::of(&e),
                    checked: drain,
                    freed_until: 0,
                    at: HashMap::new(),
                },
            };
            p.codes.insert(addr, code);
        }
        let named = match p.codes.get_mut(&addr) {
            None => Err(Unnamed::Unreadable),
            Some(code) => {
                code.checked = drain;
                match code.info.clone() {
                    None => Err(code.why),
                    Some(info) => Ok(code
                        .at
                        .entry(index)
                        .or_insert_with(|| Arc::new(python_location(&info, i64::from(index) - 1)))
                        .clone()),
                }
            }
        };
        match named {
            Ok(location) => {
                self.stats.named += 1;
                location
            }
            Err(why) => {
                self.count_unnamed(why);
                self.marker(why.frame())
            }
        }
    }

    fn count_unnamed(&mut self, why: Unnamed) {
        match why {
            Unnamed::Gone => self.stats.unnamed_gone += 1,
            Unnamed::NotCode => self.stats.unnamed_not_code += 1,
            Unnamed::Unreadable => self.stats.unnamed_unreadable += 1,
            Unnamed::NoRuntime => self.stats.unnamed_no_runtime += 1,
        }
    }

    /// Takes code objects read while process `pid` (image `exec_id`) ran, with its
    /// interpreter: they name its frames at the drain even if it is gone by then.
    pub fn adopt(
        &mut self,
        pid: u32,
        exec_id: u32,
        runtime: PythonRuntime,
        codes: Vec<(u64, Option<CodeInfo>)>,
    ) {
        let drain = self.drain;
        let replaced = self.procs.get(&pid).is_some_and(|p| {
            p.exec_id != exec_id
                || p.runtime
                    .as_ref()
                    .is_ok_and(|r| r.runtime != runtime.runtime || r.version != runtime.version)
        });
        if replaced {
            self.procs.remove(&pid);
        }
        if !self.procs.contains_key(&pid) {
            self.make_room();
        }
        let p = self
            .procs
            .entry(pid)
            .or_insert_with(|| Process::new(pid, exec_id, Err(Unnamed::NoRuntime), drain));
        if p.runtime.is_err() {
            p.runtime = Ok(runtime);
        }
        p.used = drain;
        for (addr, info) in codes {
            if p.codes.len() >= CODES_PER_PROCESS {
                break;
            }
            p.codes.insert(
                addr,
                Code {
                    freed_until: if info.is_none() {
                        drain + FREED_DRAINS
                    } else {
                        0
                    },
                    info: info.map(Arc::new),
                    why: Unnamed::NotCode,
                    // Checked at its first use in a drain, like any cached name.
                    checked: 0,
                    at: HashMap::new(),
                },
            );
        }
    }
}

/// A Python frame as profiles show it: `module.qualname`, its file and line.
pub fn python_location(info: &CodeInfo, index: i64) -> Location {
    Location {
        kind: FrameKind::Python,
        module: None,
        address: 0,
        segment: None,
        frames: vec![Frame {
            function: Arc::from(format!("{}.{}", module_name(&info.filename), info.qualname)),
            file: Some(Arc::from(info.filename.as_str())),
            line: info.line(index),
        }],
    }
}

/// The module a file holds, as Python names it: `pkg/mod.py` is `mod`, a package's
/// `__init__.py` is the package, `<frozen importlib._bootstrap>` is `importlib._bootstrap`.
pub fn module_name(filename: &str) -> &str {
    if let Some(frozen) = filename
        .strip_prefix("<frozen ")
        .and_then(|f| f.strip_suffix('>'))
    {
        return frozen;
    }
    if filename.starts_with('<') {
        return filename;
    }
    let mut parts = filename.rsplit('/');
    let file = parts.next().unwrap_or(filename);
    let stem = file.strip_suffix(".py").unwrap_or(file);
    if stem == "__init__" {
        return parts.next().filter(|p| !p.is_empty()).unwrap_or(stem);
    }
    stem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_are_named_as_python_names_them() {
        assert_eq!(module_name("/srv/app/work.py"), "work");
        assert_eq!(module_name("/usr/lib/python3.11/json/__init__.py"), "json");
        assert_eq!(
            module_name("<frozen importlib._bootstrap>"),
            "importlib._bootstrap"
        );
        assert_eq!(module_name("<string>"), "<string>");
        assert_eq!(module_name("script"), "script");
    }

    #[test]
    fn a_process_that_is_gone_gives_unnamed_frames_with_the_reason() {
        let mut names = PythonNames::default();
        names.begin_drain();
        let runs = names.runs(
            u32::MAX - 3,
            0,
            &[0x7f00_0000_1000 | (5 << 48), ENTRY, CUT_DEPTH],
        );
        assert_eq!(runs.runs.len(), 1);
        assert_eq!(
            &*runs.runs[0][0].frames[0].function,
            "[python: process exited before its code was read]"
        );
        assert!(runs.cut.is_some());
        assert_eq!(names.stats().unnamed_gone, 1);
    }

    #[test]
    fn a_code_object_known_freed_at_its_note_stays_unnamed() {
        let mut names = PythonNames::default();
        names.begin_drain();
        let me = std::process::id();
        let runtime = PythonRuntime {
            version: super::super::PyVersion {
                major: 3,
                minor: 12,
                micro: 0,
            },
            offsets: super::super::for_version(super::super::PyVersion {
                major: 3,
                minor: 12,
                micro: 0,
            })
            .unwrap(),
            runtime: 0,
            code_type: 0,
            path: String::new(),
        };
        // Our own memory at that address could read as anything: the note said freed.
        let addr = &names as *const PythonNames as u64;
        names.adopt(me, 0, runtime, vec![(addr, None)]);
        let runs = names.runs(me, 0, &[addr | (1 << 48), ENTRY]);
        assert_eq!(
            &*runs.runs[0][0].frames[0].function,
            "[python: code object freed]"
        );
        assert_eq!(names.stats().unnamed_not_code, 1);
    }
}
