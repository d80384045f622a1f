//! cgroup v2 ids to paths. A cgroup's id, as BPF reports it, is the inode number of its
//! directory in the cgroup2 filesystem, so a walk of that filesystem names every live one.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Directories visited per walk at most: bounds the cost on hosts with huge trees.
const MAX_WALK: usize = 100_000;

/// Caches cgroup paths by id; a miss triggers one walk of the cgroup2 tree.
pub struct CgroupNames {
    root: Option<PathBuf>,
    /// The cgroup2 mount, opened: ids are file handles on it (see `exists_by_id`).
    mount: Option<std::fs::File>,
    names: HashMap<u64, String>,
    /// Ids a walk did not find (deleted, or outside our cgroup namespace): not walked for again.
    missing: HashSet<u64>,
    /// Ids asked about: their names outlive the cgroups until `forget`; other names last
    /// until the next walk does not find them.
    wanted: HashSet<u64>,
}

/// Unknown ids remembered at most; past this the set starts again (one more walk each).
const MAX_MISSING: usize = 10_000;

impl CgroupNames {
    /// Finds the cgroup2 mount in /proc/self/mountinfo; without one, ids stay numeric.
    pub fn new() -> Self {
        let root = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|text| cgroup2_mount(&text));
        if root.is_none() {
            tracing::info!("no cgroup2 filesystem mounted; cgroups are shown by id");
        }
        let mount = root.as_ref().and_then(|r| std::fs::File::open(r).ok());
        CgroupNames {
            root,
            mount,
            names: HashMap::new(),
            missing: HashSet::new(),
            wanted: HashSet::new(),
        }
    }

    /// Makes sure every id in `ids` is named if it still exists (one walk at most).
    pub fn learn(&mut self, ids: impl IntoIterator<Item = u64>) {
        let ids: Vec<u64> = ids.into_iter().collect();
        self.wanted.extend(ids.iter().copied());
        let unknown: Vec<u64> = ids
            .into_iter()
            .filter(|id| !self.names.contains_key(id) && !self.missing.contains(id))
            .collect();
        if unknown.is_empty() {
            return;
        }
        if let Some(root) = self.root.clone() {
            let mut fresh = HashMap::new();
            walk(&root, &root, &mut fresh);
            // Keep the names of removed cgroups that still have data; drop the rest, so
            // that container churn does not grow the table.
            for (id, name) in self.names.drain() {
                if self.wanted.contains(&id) {
                    fresh.entry(id).or_insert(name);
                }
            }
            self.names = fresh;
        }
        if self.missing.len() > MAX_MISSING {
            self.missing.clear();
        }
        for id in unknown {
            if !self.names.contains_key(&id) {
                self.missing.insert(id);
            }
        }
    }

    /// Whether a cgroup has been removed. Asked of the kernel by id when we may (also for
    /// cgroups removed before a walk could name them); otherwise only a named cgroup can be
    /// known to be gone, and an unnamed one (perhaps outside our cgroup namespace) is not.
    pub fn is_gone(&self, id: u64) -> bool {
        if let Some(exists) = self.mount.as_ref().and_then(|m| exists_by_id(m, id)) {
            return !exists;
        }
        let (Some(root), Some(name)) = (&self.root, self.names.get(&id)) else {
            return false;
        };
        match std::fs::metadata(root.join(name.trim_start_matches('/'))) {
            // A cgroup made again under the same path is a different cgroup (new id).
            Ok(meta) => meta.ino() != id,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    }

    /// Lets the next walk drop the names of cgroups that are gone (delta export: no series
    /// outlives its interval).
    pub fn release_all(&mut self) {
        self.wanted.clear();
    }

    /// Lets go of a removed cgroup's name once nothing refers to it.
    pub fn forget(&mut self, id: u64) {
        self.names.remove(&id);
        self.wanted.remove(&id);
    }

    /// The path of a cgroup (`/` for the root), or `cgroup id N` if it was never seen.
    pub fn name(&self, id: u64) -> String {
        self.names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("cgroup id {id}"))
    }
}

/// Whether cgroup `id` exists, by opening it as a kernfs file handle (a cgroup2 id is one,
/// type FILEID_KERNFS) on the cgroup2 mount. Needs CAP_DAC_READ_SEARCH, and the cgroup under
/// the mount's root (from inside a cgroup namespace, cgroups outside it are refused). None
/// when the kernel will not say.
fn exists_by_id(mount: &std::fs::File, id: u64) -> Option<bool> {
    use std::os::fd::AsRawFd;
    /// `struct file_handle` with the 8-byte kernfs id as its payload.
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: u32,
        handle_type: i32,
        id: u64,
    }
    const FILEID_KERNFS: i32 = 0xfe;
    let mut handle = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id,
    };
    // SAFETY: the handle is a valid file_handle with handle_bytes of payload after its
    // header; the returned descriptor is closed right away.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            (&mut handle as *mut KernfsHandle).cast(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd >= 0 {
        // Before Linux 6.1 a removed cgroup that something still pins (a dying memory
        // cgroup) opens too, but its files are gone: every cgroup, the root included, has
        // cgroup.procs while it exists.
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fd is open, the name is NUL-terminated, st is written by the call.
        let found = unsafe { libc::fstatat(fd, c"cgroup.procs".as_ptr(), st.as_mut_ptr(), 0) };
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        return Some(found == 0);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ESTALE) | Some(libc::ENOENT) => Some(false),
        _ => None,
    }
}

/// The mount point of the first cgroup2 filesystem in a mountinfo text.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "36 25 0:31 / /sys/fs/cgroup rw,... shared:9 - cgroup2 cgroup2 rw"
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        left.split_whitespace()
            .nth(4)
            .map(|p| PathBuf::from(unescape(p)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn walk(root: &Path, start: &Path, names: &mut HashMap<u64, String>) {
    let mut stack = vec![start.to_path_buf()];
    let mut visited = 0;
    while let Some(dir) = stack.pop() {
        visited += 1;
        if visited > MAX_WALK {
            tracing::warn!(
                limit = MAX_WALK,
                "cgroup tree too large to name every cgroup"
            );
            return;
        }
        // A cgroup removed mid-walk is simply not named.
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        let relative = dir.strip_prefix(root).unwrap_or(&dir);
        names.insert(meta.ino(), format!("/{}", relative.display()));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let text = "25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                    35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n\
                    36 25 0:31 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu\n";
        assert_eq!(
            cgroup2_mount(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("36 25 0:31 / /x rw - cgroup cgroup rw\n"),
            None
        );
        assert_eq!(cgroup2_mount("garbage\n"), None);
        assert_eq!(
            cgroup2_mount("1 2 0:3 / /a\\040b rw - cgroup2 cgroup2 rw\n"),
            Some(PathBuf::from("/a b"))
        );
    }

    #[test]
    fn names_the_tree_by_inode() {
        let dir = std::env::temp_dir().join(format!("ep-cgroups-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        let mut names = HashMap::new();
        walk(&dir, &dir, &mut names);
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(names[&ino(&dir)], "/");
        assert_eq!(names[&ino(&dir.join("a/b"))], "/a/b");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_kernel_says_by_id_whether_a_cgroup_exists() {
        let Some(root) = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|t| cgroup2_mount(&t))
        else {
            assert!(std::env::var_os("CI").is_none(), "CI needs a cgroup2 mount");
            return;
        };
        let dir = root.join(format!("ep-unit-{}.scope", std::process::id()));
        if let Err(e) = std::fs::create_dir(&dir) {
            // Creating cgroups needs root; CI has it.
            assert!(std::env::var_os("CI").is_none(), "creating a cgroup: {e}");
            return;
        }
        let id = std::fs::metadata(&dir).unwrap().ino();
        let mount = std::fs::File::open(&root).unwrap();
        let before = exists_by_id(&mount, id);
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(before, Some(true));
        assert_eq!(exists_by_id(&mount, id), Some(false));
        let names = CgroupNames {
            root: Some(root),
            mount: Some(mount),
            names: HashMap::new(),
            missing: HashSet::new(),
            wanted: HashSet::new(),
        };
        // Never named, yet known to be gone.
        assert!(names.is_gone(id));
    }

    #[test]
    fn unknown_ids_stay_numeric() {
        let names = CgroupNames {
            root: None,
            mount: None,
            names: HashMap::new(),
            missing: HashSet::new(),
            wanted: HashSet::new(),
        };
        assert_eq!(names.name(42), "cgroup id 42");
        assert!(!names.is_gone(42));
    }

    #[test]
    fn removed_cgroups_are_gone_and_their_names_kept_while_wanted() {
        let dir = std::env::temp_dir().join(format!("ep-cgroups-gone-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a")).unwrap();
        std::fs::create_dir_all(dir.join("b")).unwrap();
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let (a, b) = (ino(&dir.join("a")), ino(&dir.join("b")));
        let mut names = CgroupNames {
            root: Some(dir.clone()),
            mount: None,
            names: HashMap::new(),
            missing: HashSet::new(),
            wanted: HashSet::new(),
        };
        names.learn([a]);
        assert_eq!(names.name(b), "/b", "a walk names the whole tree");
        assert!(!names.is_gone(a));
        std::fs::remove_dir(dir.join("a")).unwrap();
        std::fs::remove_dir(dir.join("b")).unwrap();
        assert!(names.is_gone(a));
        // The next walk (for an unknown id) keeps the wanted name and drops the other.
        names.learn([u64::MAX]);
        assert_eq!(names.name(a), "/a");
        assert_eq!(names.name(b), format!("cgroup id {b}"));
        names.forget(a);
        assert_eq!(names.name(a), format!("cgroup id {a}"));
        // A path now holding another directory: a different cgroup, so the old id is gone.
        std::fs::create_dir_all(dir.join("c")).unwrap();
        let c = ino(&dir.join("c"));
        names.learn([c]);
        // d exists alongside c, so its inode differs.
        std::fs::create_dir_all(dir.join("d")).unwrap();
        std::fs::remove_dir(dir.join("c")).unwrap();
        std::fs::rename(dir.join("d"), dir.join("c")).unwrap();
        assert!(names.is_gone(c));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
