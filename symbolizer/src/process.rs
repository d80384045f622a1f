//! What we remember of each process: its name and executable mappings, captured when it is
//! first seen so that its samples can be symbolized after it exits.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use crate::files::{FileId, FileTable};
use crate::location::Module;
use crate::maps::{parse_maps, MapsEntry};
use crate::perf_map::PerfMap;
use crate::perf_map_open::Owner;

/// A process's name and executable mappings with their files already opened: taken by a
/// watcher the moment a process is first sampled, so that one that exits before the next
/// drain can still be symbolized. Hand it to [`crate::Symbolizer::adopt`].
pub struct ProcessSnapshot {
    pub(crate) name: Option<Arc<str>>,
    pub(crate) entries: Vec<(MapsEntry, Option<File>)>,
    pub(crate) alive: bool,
    /// The process's PID inside its own namespace, which names its perf map.
    pub(crate) ns_pid: Option<u32>,
    /// The process's effective user and group: its perf map must be theirs.
    pub(crate) owner: Option<Owner>,
}

impl ProcessSnapshot {
    /// Reads /proc/PID/{comm,maps,status} and opens every executable mapped file.
    pub fn capture(pid: u32) -> ProcessSnapshot {
        Self::read(pid, true)
    }

    /// The process's name (comm) when captured.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether the process was alive when captured.
    pub fn alive(&self) -> bool {
        self.alive
    }

    fn read(pid: u32, open_files: bool) -> ProcessSnapshot {
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()
            .map(|s| Arc::from(s.trim_end_matches('\n')));
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return ProcessSnapshot {
                name,
                entries: Vec::new(),
                alive: false,
                ns_pid: None,
                owner: None,
            };
        };
        let entries = parse_maps(&text)
            .into_iter()
            .filter(|e| e.executable)
            .map(|e| {
                let file = (open_files && e.is_file())
                    .then(|| {
                        File::open(format!("/proc/{pid}/map_files/{:x}-{:x}", e.start, e.end)).ok()
                    })
                    .flatten();
                (e, file)
            })
            .collect();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        ProcessSnapshot {
            name,
            entries,
            alive: true,
            ns_pid: ns_pid(&status),
            owner: owner(&status),
        }
    }
}

/// The innermost PID of /proc/PID/status's `NSpid:` line.
fn ns_pid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// The effective user and group of /proc/PID/status (`Uid:`/`Gid:` are real, effective,
/// saved, filesystem), as the host sees them.
fn owner(status: &str) -> Option<Owner> {
    let effective = |key: &str| -> Option<u32> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(2)?.parse().ok()
    };
    Some(Owner {
        uid: effective("Uid:")?,
        gid: effective("Gid:")?,
    })
}

pub(crate) struct Mapping {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) offset: u64,
    pub(crate) file: Option<FileId>,
    /// The module even when the file cannot be opened, for `module+offset` frames;
    /// `None` for anonymous executable memory (JIT code).
    pub(crate) module: Option<Arc<Module>>,
}

pub(crate) struct Process {
    pub(crate) name: Option<Arc<str>>,
    /// Executable mappings, sorted by start address.
    pub(crate) mappings: Vec<Mapping>,
    /// Whether /proc/PID/maps could be read at all.
    pub(crate) seen_alive: bool,
    /// Where JIT compilers write symbols for this process (`/tmp/perf-NSPID.map` inside
    /// its root), read when an address falls in anonymous executable memory.
    pub(crate) perf_map: Option<PerfMap>,
}

impl Process {
    /// Reads /proc/PID/{comm,maps}; a process that is gone yields an empty snapshot.
    pub(crate) fn snapshot(pid: u32, files: &mut FileTable) -> Process {
        Self::from_snapshot(pid, ProcessSnapshot::read(pid, false), files)
    }

    /// Resolves a snapshot's files into the host-wide table.
    pub(crate) fn from_snapshot(
        pid: u32,
        snapshot: ProcessSnapshot,
        files: &mut FileTable,
    ) -> Process {
        let mut mappings: Vec<Mapping> = snapshot
            .entries
            .into_iter()
            .map(|(e, opened)| {
                let file = if e.is_file() {
                    files.resolve(pid, &e, opened)
                } else {
                    None
                };
                let module = match file {
                    Some(id) => Some(files.get(id).module.clone()),
                    None if e.path.is_empty() => None,
                    None => Some(Arc::new(Module {
                        path: Arc::from(e.path.trim_end_matches(" (deleted)")),
                        build_id: None,
                    })),
                };
                Mapping {
                    start: e.start,
                    end: e.end,
                    offset: e.offset,
                    file,
                    module,
                }
            })
            .collect();
        mappings.sort_by_key(|m| m.start);
        // A process in the host's PID namespace writes /tmp/perf-PID.map on the host, which
        // stays readable after it exits; others are reached through their root.
        let perf_map = snapshot.ns_pid.zip(snapshot.owner).map(|(ns, owner)| {
            let path = if ns == pid {
                format!("/tmp/perf-{pid}.map")
            } else {
                format!("/proc/{pid}/root/tmp/perf-{ns}.map")
            };
            PerfMap::new(PathBuf::from(path), owner)
        });
        Process {
            name: snapshot.name,
            mappings,
            seen_alive: snapshot.alive,
            perf_map,
        }
    }

    /// Keeps what `old` (the same process, read before) has read of its perf map: mappings
    /// are read again whenever JIT code is mapped, and a big map must not be read again
    /// from the start each time.
    pub(crate) fn keep_perf_map(&mut self, old: Process) {
        if let (Some(new), Some(old_map)) = (&self.perf_map, &old.perf_map) {
            if new.same_source(old_map) {
                self.perf_map = old.perf_map;
            }
        }
    }

    pub(crate) fn find(&self, addr: u64) -> Option<&Mapping> {
        let i = self.mappings.partition_point(|m| m.start <= addr);
        let m = self.mappings.get(i.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }
}
