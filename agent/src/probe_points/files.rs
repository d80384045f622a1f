//! Which files a probe's path names: in emberprof's own mount namespace and in every other
//! one a process runs in (containers), each file once. A uprobe is attached to a file (an
//! inode), so attaching once per file covers every process that maps it, later ones too.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A file's identity as the kernel attaches uprobes to it: (device, inode, size, mtime in
/// ns), device 0 on overlayfs (see `regular_file`).
pub type FileId = (u64, u64, u64, i64);

/// `statfs.f_type` of overlayfs.
const OVERLAYFS_MAGIC: i64 = 0x794c_7630;

/// One file a probe's path names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// A path emberprof can open it by (through `/proc/PID/root` for another namespace):
    /// valid while that process lives, which is as long as attaching takes.
    pub open_as: PathBuf,
    pub id: FileId,
}

/// The identity of the file at `path`, if it is a regular file. Two containers of one image
/// see one file of the image's layer through two overlay mounts: two devices, while the
/// kernel attaches a uprobe to the file underneath (one probe attached twice counts every
/// hit twice). Overlayfs keeps the underlying inode number, so on it a file is known by
/// inode, size and modification time, without the device.
pub fn regular_file(path: &Path) -> Option<FileId> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let dev = if on_overlayfs(path) { 0 } else { meta.dev() };
    let mtime = meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec();
    Some((dev, meta.ino(), meta.size(), mtime))
}

fn on_overlayfs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path and a zeroed out-parameter of the right type.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut fs) };
    rc == 0 && fs.f_type as i64 == OVERLAYFS_MAGIC
}

/// Where paths are looked for: emberprof's own root, then `/proc/PID/root` of one process
/// per other mount namespace. Read once per scan, for every probe.
pub fn roots() -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from("/")];
    let mut namespaces = BTreeSet::new();
    namespaces.extend(std::fs::read_link("/proc/self/ns/mnt").ok());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return roots;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        // A process that exits meanwhile, or one we may not look into, is skipped.
        let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/mnt")) else {
            continue;
        };
        if namespaces.insert(ns) {
            roots.push(Path::new("/proc").join(pid).join("root"));
        }
    }
    roots
}

/// Every file `path` names under `roots` (see `roots`), each once. Absolute symbolic links
/// inside another namespace resolve in emberprof's (the kernel's rule for
/// `/proc/PID/root`); name the file itself, not a link to it.
pub fn find(path: &Path, roots: &[PathBuf]) -> Vec<Found> {
    let relative = path.strip_prefix("/").unwrap_or(path);
    let mut out: Vec<Found> = Vec::new();
    let mut ids = BTreeSet::new();
    for root in roots {
        let open_as = root.join(relative);
        if let Some(id) = regular_file(&open_as) {
            if ids.insert(id) {
                out.push(Found { open_as, id });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_found_once_and_a_missing_one_not_at_all() {
        let exe = std::env::current_exe().unwrap();
        let roots = roots();
        assert_eq!(roots[0], Path::new("/"));
        let found = find(&exe, &roots);
        // Every process in our namespace sees the same file: listed once.
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].open_as, exe);
        assert!(find(Path::new("/nonexistent/emberprof/probe"), &roots).is_empty());
        // A directory is not a probe target.
        assert!(find(Path::new("/proc"), &roots).is_empty());
    }
}
