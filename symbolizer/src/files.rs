//! The host-wide table of mapped files. A file is identified by its build ID when it has
//! one, else by device and inode, so that the same library seen in many processes (or in
//! several containers) is opened and parsed once.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use crate::location::Module;
use crate::maps::MapsEntry;

/// Index of an opened file in the table.
pub(crate) type FileId = usize;

pub(crate) struct OpenFile {
    /// Held open so that `path` stays valid after the process that mapped it is gone.
    _file: File,
    /// `/proc/self/fd/N`: a path unique to this open file, which blazesym caches by.
    pub(crate) path: PathBuf,
    pub(crate) module: Arc<Module>,
}

#[derive(Default)]
pub(crate) struct FileTable {
    files: Vec<OpenFile>,
    by_inode: HashMap<(u32, u32, u64), Option<FileId>>,
    by_build_id: HashMap<Arc<str>, FileId>,
}

impl FileTable {
    /// The file behind an executable mapping of `pid`, opened on first sight. `None` when it
    /// cannot be opened (the process is gone, or we lack the privilege).
    pub(crate) fn resolve(&mut self, pid: u32, entry: &MapsEntry) -> Option<FileId> {
        let inode_key = (entry.dev.0, entry.dev.1, entry.inode);
        if let Some(id) = self.by_inode.get(&inode_key) {
            return *id;
        }
        let id = self.open(pid, entry);
        self.by_inode.insert(inode_key, id);
        id
    }

    pub(crate) fn get(&self, id: FileId) -> &OpenFile {
        &self.files[id]
    }

    /// Number of distinct files opened.
    pub(crate) fn len(&self) -> usize {
        self.files.len()
    }

    fn open(&mut self, pid: u32, entry: &MapsEntry) -> Option<FileId> {
        // map_files works for deleted files and for files in other mount namespaces;
        // the root link covers kernels or privileges where map_files is not readable.
        let shown = entry.path.trim_end_matches(" (deleted)");
        let candidates = [
            PathBuf::from(format!(
                "/proc/{pid}/map_files/{:x}-{:x}",
                entry.start, entry.end
            )),
            PathBuf::from(format!("/proc/{pid}/root{shown}")),
        ];
        let file = candidates.iter().find_map(|p| File::open(p).ok());
        let Some(file) = file else {
            tracing::debug!(pid, path = %shown, "cannot open mapped file");
            return None;
        };
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let build_id: Option<Arc<str>> = match blazesym::helper::read_elf_build_id(&path) {
            Ok(Some(id)) => Some(Arc::from(hex(&id))),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(pid, path = %shown, error = %e, "cannot read build ID");
                None
            }
        };
        if let Some(existing) = build_id.as_ref().and_then(|b| self.by_build_id.get(b)) {
            return Some(*existing);
        }
        let id = self.files.len();
        if let Some(b) = &build_id {
            self.by_build_id.insert(b.clone(), id);
        }
        self.files.push(OpenFile {
            _file: file,
            path,
            module: Arc::new(Module {
                path: Arc::from(shown),
                build_id,
            }),
        });
        Some(id)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::parse_maps;

    fn own_exe_mapping() -> MapsEntry {
        let text = std::fs::read_to_string("/proc/self/maps").unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        parse_maps(&text)
            .into_iter()
            .find(|e| e.executable && e.path == exe.to_string_lossy())
            .unwrap()
    }

    #[test]
    fn same_inode_is_opened_once() {
        let mut table = FileTable::default();
        let entry = own_exe_mapping();
        let pid = std::process::id();
        let a = table.resolve(pid, &entry).expect("own executable opens");
        let b = table.resolve(pid, &entry).unwrap();
        assert_eq!(a, b);
        assert_eq!(table.len(), 1);
        assert_eq!(&*table.get(a).module.path, entry.path);
    }

    #[test]
    fn same_build_id_under_another_inode_is_shared() {
        let mut table = FileTable::default();
        let entry = own_exe_mapping();
        let pid = std::process::id();
        let a = table.resolve(pid, &entry).unwrap();
        if table.get(a).module.build_id.is_none() {
            return; // the test binary was linked without a build ID: nothing to share by
        }
        let mut other = entry.clone();
        other.inode += 1;
        assert_eq!(table.resolve(pid, &other), Some(a));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn unopenable_file_is_none_not_error() {
        let mut table = FileTable::default();
        let entry = MapsEntry {
            start: 0x1000,
            end: 0x2000,
            executable: true,
            offset: 0,
            dev: (0, 0),
            inode: 42,
            path: "/nonexistent/lib.so".into(),
        };
        assert_eq!(table.resolve(u32::MAX - 1, &entry), None);
        assert_eq!(table.resolve(u32::MAX - 1, &entry), None);
    }
}
