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
    names: HashMap<u64, String>,
    /// Ids a walk did not find (deleted, or outside our cgroup namespace): not walked for again.
    missing: HashSet<u64>,
}

impl CgroupNames {
    /// Finds the cgroup2 mount in /proc/self/mountinfo; without one, ids stay numeric.
    pub fn new() -> Self {
        let root = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|text| cgroup2_mount(&text));
        if root.is_none() {
            tracing::info!("no cgroup2 filesystem mounted; cgroups are shown by id");
        }
        CgroupNames {
            root,
            names: HashMap::new(),
            missing: HashSet::new(),
        }
    }

    /// Makes sure every id in `ids` is named if it still exists (one walk at most).
    pub fn learn(&mut self, ids: impl IntoIterator<Item = u64>) {
        let unknown: Vec<u64> = ids
            .into_iter()
            .filter(|id| !self.names.contains_key(id) && !self.missing.contains(id))
            .collect();
        if unknown.is_empty() {
            return;
        }
        if let Some(root) = self.root.clone() {
            walk(&root, &root, &mut self.names);
        }
        for id in unknown {
            if !self.names.contains_key(&id) {
                self.missing.insert(id);
            }
        }
    }

    /// The path of a cgroup (`/` for the root), or `cgroup id N` if it was never seen.
    pub fn name(&self, id: u64) -> String {
        self.names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("cgroup id {id}"))
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
    fn unknown_ids_stay_numeric() {
        let names = CgroupNames {
            root: None,
            names: HashMap::new(),
            missing: HashSet::new(),
        };
        assert_eq!(names.name(42), "cgroup id 42");
    }
}
