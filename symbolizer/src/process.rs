//! What we remember of each process: the name and executable mappings of each image it ran
//! (an exec starts a new one), captured when it is first seen so that its samples can be
//! symbolized after it exits, and those of an image it exec'd away from after the exec.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use crate::files::{FileId, FileTable};
use crate::maps::{parse_maps, MapsEntry};
use crate::perf_map::PerfMap;
use crate::perf_map_open::Owner;
use emberprof_model::Module;

/// A process's name and executable mappings with their files already opened: taken by a
/// watcher the moment a process is first sampled, so that one that exits before the next
/// drain can still be symbolized. Hand it to [`crate::Symbolizer::adopt`].
pub struct ProcessSnapshot {
    pub(crate) name: Option<Arc<str>>,
    pub(crate) entries: Vec<(MapsEntry, Option<File>)>,
    pub(crate) alive: bool,
    /// The process's PID inside its own namespace, which names its perf map.
    pub(crate) ns_pid: Option<u32>,
    /// The image (exec generation) the kernel announced, when captured for an announcement.
    pub(crate) exec_id: Option<u32>,
    /// The process's effective user and group: its perf map must be theirs.
    pub(crate) owner: Option<Owner>,
}

impl ProcessSnapshot {
    /// Reads /proc/PID/{comm,maps,status} and opens every executable mapped file.
    pub fn capture(pid: u32) -> ProcessSnapshot {
        Self::read(pid, true)
    }

    /// Like [`capture`](Self::capture), for the image `exec_id` the kernel announced with the
    /// leader's name `comm`: the name stays known even if the process is already gone.
    pub fn capture_announced(pid: u32, exec_id: u32, comm: &str) -> ProcessSnapshot {
        let mut s = Self::read(pid, true);
        s.exec_id = Some(exec_id);
        if s.name.is_none() && !comm.is_empty() {
            s.name = Some(Arc::from(comm));
        }
        s
    }

    /// The process's name (comm) when captured.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether the process was alive when captured.
    pub fn alive(&self) -> bool {
        self.alive
    }

    /// Reads /proc/PID/{comm,maps,status} without opening the mapped files (they are opened
    /// by path when resolved).
    pub(crate) fn read_unopened(pid: u32) -> ProcessSnapshot {
        Self::read(pid, false)
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
                exec_id: None,
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
            exec_id: None,
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

/// Images kept per process at most. An image is dropped anyway once no sample of it can
/// still come (see [`Process::prune`]); this bounds a process that execs many times a drain.
const MAX_IMAGES: usize = 32;

/// What one process ran between two execs.
pub(crate) struct Image {
    /// The kernel's exec generation, when the image was captured for an announcement.
    pub(crate) exec_id: Option<u32>,
    pub(crate) name: Option<Arc<str>>,
    /// Executable mappings, sorted by start address.
    pub(crate) mappings: Vec<Mapping>,
    /// Whether /proc/PID/maps could be read at all.
    pub(crate) seen_alive: bool,
    /// The symbolize call before which a newer image was added, if one was.
    pub(crate) superseded_at: Option<u64>,
}

impl Image {
    pub(crate) fn find(&self, addr: u64) -> Option<&Mapping> {
        let i = self.mappings.partition_point(|m| m.start <= addr);
        let m = self.mappings.get(i.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }
}

pub(crate) struct Process {
    /// Oldest first; the last is the newest known.
    pub(crate) images: Vec<Image>,
    /// Where JIT compilers write symbols for this process (`/tmp/perf-NSPID.map` inside
    /// its root), read when an address falls in anonymous executable memory.
    pub(crate) perf_map: Option<PerfMap>,
}

impl Process {
    /// Reads /proc/PID/{comm,maps}; a process that is gone yields an empty image.
    pub(crate) fn snapshot(pid: u32, files: &mut FileTable) -> Process {
        Self::from_snapshot(pid, ProcessSnapshot::read(pid, false), files)
    }

    /// Resolves a snapshot's files into the host-wide table.
    pub(crate) fn from_snapshot(
        pid: u32,
        snapshot: ProcessSnapshot,
        files: &mut FileTable,
    ) -> Process {
        let mut p = Process {
            images: Vec::new(),
            perf_map: None,
        };
        p.add(pid, snapshot, files, 0);
        p
    }

    /// Adds a snapshot as the newest image, before symbolize call `tick`: it replaces an
    /// image of the same exec generation, and an untagged newest image (what a re-read of
    /// /proc found); the oldest go beyond `MAX_IMAGES`.
    pub(crate) fn add(
        &mut self,
        pid: u32,
        snapshot: ProcessSnapshot,
        files: &mut FileTable,
        tick: u64,
    ) {
        let exec_id = snapshot.exec_id;
        if let (Some(ns), Some(owner)) = (snapshot.ns_pid, snapshot.owner) {
            // A process in the host's PID namespace writes /tmp/perf-PID.map on the host,
            // which stays readable after it exits; others are reached through their root.
            let path = PathBuf::from(if ns == pid {
                format!("/tmp/perf-{pid}.map")
            } else {
                format!("/proc/{pid}/root/tmp/perf-{ns}.map")
            });
            let map = PerfMap::new(path, owner);
            // Mappings are read again whenever JIT code is mapped: what was read of a big
            // map is kept rather than read again from the start.
            if !self.perf_map.as_ref().is_some_and(|m| m.same_source(&map)) {
                self.perf_map = Some(map);
            }
        }
        let image = image_of(pid, snapshot, files);
        self.images
            .retain(|i| exec_id.is_none() || i.exec_id != exec_id);
        if self.images.last().is_some_and(|i| i.exec_id.is_none()) {
            self.images.pop();
        }
        if let Some(previous) = self.images.last_mut() {
            previous.superseded_at.get_or_insert(tick);
        }
        self.images.push(image);
        if self.images.len() > MAX_IMAGES {
            self.images.remove(0);
        }
    }

    /// Drops images that can have no more samples, at symbolize call `tick`. An exec ends
    /// every thread of the old image, so its last samples are in the kernel maps before the
    /// new image is announced; the drain after its successor was added reads them all. One
    /// more drain is kept for slack.
    pub(crate) fn prune(&mut self, tick: u64) {
        self.images
            .retain(|i| i.superseded_at.is_none_or(|at| at + 2 >= tick));
    }

    /// The image a sample of exec generation `exec_id` was taken in: the one captured for
    /// it, else the newest.
    pub(crate) fn image_index(&self, exec_id: Option<u32>) -> Option<usize> {
        let newest = self.images.len().checked_sub(1)?;
        Some(
            exec_id
                .and_then(|e| self.images.iter().rposition(|i| i.exec_id == Some(e)))
                .unwrap_or(newest),
        )
    }

    /// The newest image.
    pub(crate) fn newest(&self) -> Option<&Image> {
        self.images.last()
    }
}

fn image_of(pid: u32, snapshot: ProcessSnapshot, files: &mut FileTable) -> Image {
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
    Image {
        exec_id: snapshot.exec_id,
        name: snapshot.name,
        mappings,
        seen_alive: snapshot.alive,
        superseded_at: None,
    }
}
