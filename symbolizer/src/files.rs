//! The host-wide table of mapped files. A file is identified by its build ID when it has
//! one, else by device, inode and modification time, so that the same library seen in many
//! processes (or in several containers) is opened and parsed once. Each file keeps the
//! locations already resolved in it; the memory they and the parsed symbols take is
//! accounted per file so the least recently used can be let go.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::elf_info::{hex, ElfInfo};
use crate::maps::MapsEntry;
use crate::resident::Inode;
use emberprof_model::{Location, Module};

/// Index of an opened file in the table; never reused.
pub(crate) type FileId = usize;

/// Where a file's names come from, decided at its first symbolization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SymbolSource {
    /// Its own symbol tables and DWARF (addressed by file offset).
    Itself,
    /// A separate debug file, addressed by link-time address.
    DebugFile(PathBuf),
}

/// Heap cost of one resolved location where the heap is not measured (the program did not
/// install `heap::CountingAllocator`).
pub(crate) const LOCATION_BYTES: u64 = 256;

pub(crate) struct OpenFile {
    /// Held open so that `path` stays valid after the process that mapped it is gone.
    _file: File,
    /// `/proc/self/fd/N`: a path unique to this open file, which blazesym caches by.
    pub(crate) path: PathBuf,
    pub(crate) module: Arc<Module>,
    /// `/proc/PID/root` of the process it was first seen in, for debug files shipped in
    /// the same container image.
    pub(crate) root: Option<PathBuf>,
    /// Headers, read at the first symbolization.
    pub(crate) info: Option<Result<ElfInfo, String>>,
    /// Where its names come from while blazesym holds it parsed: `None` until first used,
    /// and again once the parsed state is let go.
    pub(crate) source: Option<SymbolSource>,
    /// The names are provisional: a debuginfod fetch for this file is under way.
    pub(crate) awaiting_debuginfo: bool,
    /// Its symbols could not be read: frames stay `module+offset`.
    pub(crate) broken: bool,
    pub(crate) locations: HashMap<u64, Arc<Location>>,
    /// Device and inode of the file blazesym maps for it (itself or its debug file).
    pub(crate) parsed_inode: Option<Inode>,
    /// Heap blazesym keeps for it (parsed symbol tables, DWARF units, line tables), as
    /// measured around each call; the file's size where the heap is not measured.
    pub(crate) parsed_heap: u64,
    /// Pages of the mapped file resident in our memory, as of the last look.
    pub(crate) resident: u64,
    /// Heap of the resolved locations, measured as they were made.
    pub(crate) locations_heap: u64,
    /// Symbolize call (tick) that last looked an address up in it, for the locations.
    pub(crate) last_used: u64,
    /// Symbolize call that last asked blazesym (an address not yet resolved), for the
    /// parsed state.
    pub(crate) last_parsed: u64,
    /// It was parsed before: parsing it again is a re-parse, the price of the bound.
    pub(crate) ever_parsed: bool,
    /// Device, inode and modification time: what names this file across resets.
    pub(crate) identity: Identity,
}

impl OpenFile {
    /// What this file costs in memory now: blazesym's parsed state, its mapped pages in
    /// our memory, and the locations kept.
    pub(crate) fn bytes(&self) -> u64 {
        self.parsed_bytes() + self.locations_bytes()
    }

    /// Memory of the parsed state: heap and resident mapped pages.
    pub(crate) fn parsed_bytes(&self) -> u64 {
        self.parsed_heap + self.resident
    }

    /// Memory of the resolved locations.
    pub(crate) fn locations_bytes(&self) -> u64 {
        if crate::heap::counting() {
            self.locations_heap
        } else {
            self.locations.len() as u64 * LOCATION_BYTES
        }
    }

    /// Whether blazesym holds it parsed now.
    pub(crate) fn is_parsed(&self) -> bool {
        self.source.is_some()
    }

    /// Forgets the parsed state (the caller evicts it from blazesym); the locations and
    /// the open file stay.
    pub(crate) fn release_parsed(&mut self) {
        self.source = None;
        self.parsed_heap = 0;
        self.resident = 0;
    }

    /// Forgets the resolved locations.
    pub(crate) fn forget_locations(&mut self) {
        self.locations = HashMap::new();
        self.locations_heap = 0;
    }
}

pub(crate) type Identity = (u64, u64, i64, i64);

#[derive(Default)]
pub(crate) struct FileTable {
    files: Vec<OpenFile>,
    by_identity: HashMap<Identity, Option<FileId>>,
    by_build_id: HashMap<Arc<str>, FileId>,
}

impl FileTable {
    /// The file behind an executable mapping of `pid`, opened on first sight (or given
    /// already opened, by a watcher that caught a short-lived process). `None` when it
    /// cannot be opened (the process is gone, or we lack the privilege).
    pub(crate) fn resolve(
        &mut self,
        pid: u32,
        entry: &MapsEntry,
        opened: Option<File>,
    ) -> Option<FileId> {
        let shown = entry.path.trim_end_matches(" (deleted)");
        // map_files works for deleted files and for files in other mount namespaces;
        // the root link covers kernels or privileges where map_files is not readable.
        let candidates = [
            PathBuf::from(format!(
                "/proc/{pid}/map_files/{:x}-{:x}",
                entry.start, entry.end
            )),
            PathBuf::from(format!("/proc/{pid}/root{shown}")),
        ];
        let (file, meta) = match opened {
            Some(f) => {
                let meta = f.metadata().ok()?;
                (Some(f), meta)
            }
            None => {
                let meta = candidates.iter().find_map(|p| std::fs::metadata(p).ok());
                let Some(meta) = meta else {
                    tracing::debug!(pid, path = %shown, "cannot reach mapped file");
                    return None;
                };
                (None, meta)
            }
        };
        let identity = (meta.dev(), meta.ino(), meta.mtime(), meta.mtime_nsec());
        if let Some(id) = self.by_identity.get(&identity) {
            return *id;
        }
        let file = file.or_else(|| candidates.iter().find_map(|p| File::open(p).ok()));
        let id = match file {
            Some(file) => self.insert(pid, shown, file, identity),
            None => {
                tracing::debug!(pid, path = %shown, "cannot open mapped file");
                None
            }
        };
        self.by_identity.insert(identity, id);
        id
    }

    pub(crate) fn get(&self, id: FileId) -> &OpenFile {
        &self.files[id]
    }

    pub(crate) fn get_mut(&mut self, id: FileId) -> &mut OpenFile {
        &mut self.files[id]
    }

    /// Number of distinct files opened.
    pub(crate) fn len(&self) -> usize {
        self.files.len()
    }

    /// Every file, for accounting and eviction.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (FileId, &mut OpenFile)> {
        self.files.iter_mut().enumerate()
    }

    /// The file with this build ID, if one is open.
    pub(crate) fn by_build_id(&self, build_id: &str) -> Option<FileId> {
        self.by_build_id.get(build_id).copied()
    }

    fn insert(&mut self, pid: u32, shown: &str, file: File, identity: Identity) -> Option<FileId> {
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
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        self.files.push(OpenFile {
            _file: file,
            path,
            module: Arc::new(Module {
                path: Arc::from(shown),
                build_id,
            }),
            root: Some(root),
            info: None,
            source: None,
            awaiting_debuginfo: false,
            broken: false,
            locations: HashMap::new(),
            parsed_inode: None,
            parsed_heap: 0,
            resident: 0,
            locations_heap: 0,
            last_used: 0,
            last_parsed: 0,
            ever_parsed: false,
            identity,
        });
        Some(id)
    }
}

/// The directory part of a path as a process saw it.
pub(crate) fn parent_dir(path: &str) -> Option<&Path> {
    Path::new(path).parent().filter(|p| p.is_absolute())
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
    fn same_file_is_opened_once() {
        let mut table = FileTable::default();
        let entry = own_exe_mapping();
        let pid = std::process::id();
        let a = table
            .resolve(pid, &entry, None)
            .expect("own executable opens");
        let b = table.resolve(pid, &entry, None).unwrap();
        assert_eq!(a, b);
        // Given already opened (as the process watcher does), it is still the same file.
        let opened = File::open(&entry.path).unwrap();
        assert_eq!(table.resolve(pid, &entry, Some(opened)), Some(a));
        assert_eq!(table.len(), 1);
        assert_eq!(&*table.get(a).module.path, entry.path);
    }

    #[test]
    fn same_build_id_under_another_inode_is_shared() {
        let mut table = FileTable::default();
        let entry = own_exe_mapping();
        let pid = std::process::id();
        let a = table.resolve(pid, &entry, None).unwrap();
        assert!(
            table.get(a).module.build_id.is_some(),
            "Rust test binaries carry a build ID"
        );
        // A copy is another inode with the same build ID.
        let copy = std::env::temp_dir().join(format!("ep-files-copy-{}", std::process::id()));
        std::fs::copy(&entry.path, &copy).unwrap();
        let opened = File::open(&copy).unwrap();
        let _ = std::fs::remove_file(&copy);
        assert_eq!(table.resolve(pid, &entry, Some(opened)), Some(a));
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
        assert_eq!(table.resolve(u32::MAX - 1, &entry, None), None);
        assert_eq!(table.resolve(u32::MAX - 1, &entry, None), None);
    }
}
