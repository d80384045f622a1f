//! Opening a perf map safely. The path is chosen by the profiled process (any user can put
//! a FIFO, a device symlink or someone else's file there), and the agent usually runs as
//! root: nothing may block, nothing but a regular file may be opened (opening some devices
//! has side effects), and names are only taken from a file its process's user controls.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Who may have written a process's perf map: its effective user and group (host view).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// Why a perf map was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A FIFO, device, socket or directory (directly or through a symlink).
    NotRegular,
    /// Owned by neither the process's user nor root.
    Owner,
    /// Writable by other users (world-writable, or group-writable by a group that is
    /// neither the process's own nor root's).
    Writable,
}

impl Refusal {
    /// The reason as a metric label and log word.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::NotRegular => "not_regular",
            Refusal::Owner => "owner",
            Refusal::Writable => "writable",
        }
    }
}

/// Which file a path named: it is read again from the start when this changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

/// A perf map opened for reading.
pub(crate) struct Opened {
    pub(crate) file: File,
    pub(crate) identity: Identity,
}

/// What opening a perf map found.
pub(crate) enum Outcome {
    Opened(Opened),
    /// No file there (or one we may not open): the process has no perf map now.
    Absent,
    Refused(Refusal, Identity),
}

/// Opens the perf map at `path` if it is a regular file `owner` controls. Never blocks on
/// the file's kind: the path is resolved with O_PATH (which opens nothing, so a FIFO or
/// device is never opened), checked on that descriptor, and only then opened for reading
/// through it, non-blocking, after checking it still names the same inode.
pub(crate) fn open_checked(path: &Path, owner: Owner) -> Outcome {
    let located = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::debug!(path = %path.display(), error = %e, "cannot resolve perf map");
            }
            return Outcome::Absent;
        }
    };
    let Ok(meta) = located.metadata() else {
        return Outcome::Absent;
    };
    let identity = Identity {
        dev: meta.dev(),
        ino: meta.ino(),
    };
    if let Some(refusal) = judge(&meta, owner) {
        return Outcome::Refused(refusal, identity);
    }
    // The magic link reopens exactly the inode checked above, whatever the path names now.
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(format!("/proc/self/fd/{}", located.as_raw_fd()))
    {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "cannot open perf map");
            return Outcome::Absent;
        }
    };
    match file.metadata() {
        Ok(m) if m.dev() == identity.dev && m.ino() == identity.ino && m.file_type().is_file() => {
            Outcome::Opened(Opened { file, identity })
        }
        _ => Outcome::Absent,
    }
}

/// Why a file must not be used as `owner`'s perf map, if it must not.
fn judge(meta: &std::fs::Metadata, owner: Owner) -> Option<Refusal> {
    if !meta.file_type().is_file() {
        return Some(Refusal::NotRegular);
    }
    if meta.uid() != owner.uid && meta.uid() != 0 {
        return Some(Refusal::Owner);
    }
    let mode = meta.mode();
    // Group-writable is common (umask 002 with a private group per user) and safe when the
    // group is the process's own or root's; any other group may hold other users.
    let group_ok = meta.gid() == owner.gid || meta.gid() == 0;
    if mode & 0o002 != 0 || (mode & 0o020 != 0 && !group_ok) {
        return Some(Refusal::Writable);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const ME: Owner = Owner {
        uid: 4242,
        gid: 4343,
    };

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ep-pmopen-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn chown(path: &Path, uid: u32, gid: u32) {
        // Tests that need another owner need root: fail, never skip.
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {} (tests run as root): {e}", path.display()));
    }

    fn outcome(path: &Path, owner: Owner) -> Result<(), Refusal> {
        match open_checked(path, owner) {
            Outcome::Opened(_) => Ok(()),
            Outcome::Refused(r, _) => Err(r),
            Outcome::Absent => panic!("{} absent", path.display()),
        }
    }

    #[test]
    fn fifos_and_devices_are_refused_without_being_opened() {
        let d = dir("kinds");
        let fifo = d.join("perf-1.map");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        chown(&fifo, ME.uid, ME.gid);
        // Opening the FIFO for reading would block until a writer came: this must return.
        assert_eq!(outcome(&fifo, ME), Err(Refusal::NotRegular));
        let link = d.join("perf-2.map");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        assert_eq!(outcome(&link, ME), Err(Refusal::NotRegular));
        let zero = d.join("perf-3.map");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert_eq!(outcome(&zero, ME), Err(Refusal::NotRegular));
        assert_eq!(outcome(&d, ME), Err(Refusal::NotRegular), "a directory");
        assert!(matches!(open_checked(&d.join("none"), ME), Outcome::Absent));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn only_the_processs_user_or_root_may_own_it_and_others_may_not_write() {
        let d = dir("owner");
        let path = d.join("perf-1.map");
        std::fs::write(&path, "1000 10 f\n").unwrap();
        let set_mode =
            |m: u32| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).unwrap();
        set_mode(0o644);
        chown(&path, ME.uid, ME.gid);
        assert_eq!(outcome(&path, ME), Ok(()));
        chown(&path, 0, 0);
        assert_eq!(outcome(&path, ME), Ok(()), "root's file");
        chown(&path, ME.uid + 1, ME.gid);
        assert_eq!(outcome(&path, ME), Err(Refusal::Owner));
        chown(&path, ME.uid, ME.gid);
        set_mode(0o646);
        assert_eq!(outcome(&path, ME), Err(Refusal::Writable));
        set_mode(0o664);
        assert_eq!(outcome(&path, ME), Ok(()), "writable by its own group");
        chown(&path, ME.uid, ME.gid + 1);
        assert_eq!(outcome(&path, ME), Err(Refusal::Writable), "another group");
        set_mode(0o644);
        assert_eq!(outcome(&path, ME), Ok(()));
        // A symlink to someone else's file is judged by the file.
        let other = d.join("other.map");
        std::fs::write(&other, "1000 10 forged\n").unwrap();
        chown(&other, ME.uid + 1, ME.gid + 1);
        let link = d.join("perf-2.map");
        std::os::unix::fs::symlink(&other, &link).unwrap();
        assert_eq!(outcome(&link, ME), Err(Refusal::Owner));
        let _ = std::fs::remove_dir_all(&d);
    }
}
