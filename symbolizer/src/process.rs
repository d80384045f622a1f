//! What we remember of each process: its name and executable mappings, captured when it is
//! first seen so that its samples can be symbolized after it exits.

use std::sync::Arc;

use crate::files::{FileId, FileTable};
use crate::location::Module;
use crate::maps::parse_maps;

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
}

impl Process {
    /// Reads /proc/PID/{comm,maps}; a process that is gone yields an empty snapshot.
    pub(crate) fn snapshot(pid: u32, files: &mut FileTable) -> Process {
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()
            .map(|s| Arc::from(s.trim_end_matches('\n')));
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return Process {
                name,
                mappings: Vec::new(),
                seen_alive: false,
            };
        };
        let mut mappings: Vec<Mapping> = parse_maps(&text)
            .into_iter()
            .filter(|e| e.executable)
            .map(|e| {
                let file = if e.is_file() {
                    files.resolve(pid, &e)
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
        Process {
            name,
            mappings,
            seen_alive: true,
        }
    }

    pub(crate) fn find(&self, addr: u64) -> Option<&Mapping> {
        let i = self.mappings.partition_point(|m| m.start <= addr);
        let m = self.mappings.get(i.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }
}
