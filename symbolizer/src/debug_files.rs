//! Finding the separate debug file of a stripped binary, the way gdb and the distributions
//! lay them out: `DIR/.build-id/xx/rest.debug`, then the `.gnu_debuglink` name beside the
//! binary, in its `.debug/` subdirectory, and under each debug directory.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::elf_info::{hex, ElfInfo};

/// Debug directories searched when none are configured (Debian, Fedora and gdb's defaults).
pub const DEFAULT_DEBUG_DIRS: &[&str] = &["/usr/lib/debug", "/lib/debug"];

/// Where to look for the debug file of a binary.
pub(crate) struct DebugSearch<'a> {
    /// Configured debug directories, on the host.
    pub(crate) dirs: &'a [PathBuf],
    /// The root the binary was seen under (`/proc/PID/root`), for debug files shipped inside
    /// a container image; `None` for the host.
    pub(crate) root: Option<&'a Path>,
    /// The binary's directory as its process saw it (`/usr/bin`).
    pub(crate) binary_dir: Option<&'a Path>,
}

impl DebugSearch<'_> {
    /// The first candidate whose build ID (or debug-link CRC) matches the binary.
    pub(crate) fn find(&self, binary: &ElfInfo) -> Option<PathBuf> {
        if let Some(id) = binary.build_id.as_deref().filter(|id| id.len() >= 2) {
            let hex = hex(id);
            let rel = format!(".build-id/{}/{}.debug", &hex[..2], &hex[2..]);
            for dir in self.rooted(self.dirs) {
                let candidate = dir.join(&rel);
                if ElfInfo::read(&candidate).is_ok_and(|d| d.build_id.as_deref() == Some(id)) {
                    return Some(candidate);
                }
            }
        }
        let (name, crc) = binary.debug_link.as_ref()?;
        if name.contains('/') {
            return None; // a link is a file name; anything else is not to be followed
        }
        let mut candidates = Vec::new();
        if let Some(dir) = self.binary_dir {
            let local = self.under_root(dir);
            candidates.push(local.join(name));
            candidates.push(local.join(".debug").join(name));
            for debug_dir in self.rooted(self.dirs) {
                candidates.push(debug_dir.join(relative(dir)).join(name));
            }
        }
        for debug_dir in self.rooted(self.dirs) {
            candidates.push(debug_dir.join(name));
        }
        candidates
            .into_iter()
            .find(|c| crc32_of(c).is_some_and(|got| got == *crc))
    }

    /// The debug directories on the host, then inside the binary's root when it has one.
    fn rooted(&self, dirs: &[PathBuf]) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = dirs.to_vec();
        if self.root.is_some() {
            out.extend(dirs.iter().map(|d| self.under_root(d)));
        }
        out
    }

    fn under_root(&self, path: &Path) -> PathBuf {
        match self.root {
            Some(root) => root.join(relative(path)),
            None => path.to_path_buf(),
        }
    }
}

fn relative(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}

/// CRC32 (the one `.gnu_debuglink` uses) of a whole file; `None` if it cannot be read.
fn crc32_of(path: &Path) -> Option<u32> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut crc = flate2::Crc::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            return Some(crc.sum());
        }
        crc.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_gnu_debuglink_definition() {
        let path = std::env::temp_dir().join(format!("ep-crc-{}", std::process::id()));
        std::fs::write(&path, b"123456789").unwrap();
        // The standard CRC-32 check value.
        assert_eq!(crc32_of(&path), Some(0xcbf4_3926));
        let _ = std::fs::remove_file(&path);
        assert_eq!(crc32_of(Path::new("/nonexistent/x.debug")), None);
    }

    #[test]
    fn link_with_a_slash_is_not_followed() {
        let info = ElfInfo {
            debug_link: Some(("../../etc/passwd".into(), 0)),
            ..ElfInfo::default()
        };
        let search = DebugSearch {
            dirs: &[PathBuf::from("/usr/lib/debug")],
            root: None,
            binary_dir: Some(Path::new("/usr/bin")),
        };
        assert_eq!(search.find(&info), None);
    }
}
