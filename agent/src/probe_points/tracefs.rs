//! Tracepoint probes need tracefs (the tracepoint's id is read there): mounted if missing,
//! and the tracepoint checked in it for a one-line error.

use std::path::Path;

use anyhow::bail;

const TRACEFS: &str = "/sys/kernel/tracing";

fn mounted(dir: &Path) -> bool {
    dir.join("events").is_dir()
}

/// Mounts tracefs at /sys/kernel/tracing unless it (or the debugfs copy) is there.
fn ensure_mounted() -> anyhow::Result<&'static Path> {
    for dir in [TRACEFS, "/sys/kernel/debug/tracing"] {
        if mounted(Path::new(dir)) {
            return Ok(Path::new(dir));
        }
    }
    let (source, target, fstype) = (c"nodev", c"/sys/kernel/tracing", c"tracefs");
    // SAFETY: NUL-terminated strings and no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 || !mounted(Path::new(TRACEFS)) {
        bail!(
            "tracefs is not mounted and could not be ({}): mount -t tracefs nodev {TRACEFS}, or run with CAP_SYS_ADMIN",
            std::io::Error::last_os_error()
        );
    }
    tracing::info!("mounted tracefs at {TRACEFS} for tracepoint probes");
    Ok(Path::new(TRACEFS))
}

/// Checks that tracepoint `category:name` exists.
pub fn check(category: &str, name: &str) -> anyhow::Result<()> {
    let root = ensure_mounted()?;
    let events = root.join("events");
    if !events.join(category).is_dir() {
        bail!(
            "no tracepoint category {category} (see {})",
            events.display()
        );
    }
    if !events.join(category).join(name).is_dir() {
        bail!(
            "no tracepoint {category}:{name} (see {})",
            events.join(category).display()
        );
    }
    Ok(())
}
