//! OpenTelemetry resource attributes of a process and of this host, read from /proc.
//! Everything here may be missing (the process exited, or we may not read its environment):
//! attributes that cannot be read are left out, never an error.

use std::path::Path;

use emberprof_model::{AttrValue, Attributes};

/// `process.command_line` is capped: some command lines are megabytes long.
const MAX_COMMAND_LINE: usize = 1024;

/// `service.name` of every kernel thread: one service, whatever the thread.
pub const KERNEL_SERVICE: &str = "kernel";

/// `PF_KTHREAD` in the flags of /proc/PID/stat.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Resource attributes of one process, per the semantic conventions, with its pod's when it
/// runs in one on this node. `fallback_name` (what the kernel called it) names a process
/// that is gone before its executable could be read; `kernel_thread` says the kernel flagged
/// it as a kernel thread (it is also checked here while the thread runs).
pub fn process_attributes(pid: u32, fallback_name: &str, kernel_thread: bool) -> Attributes {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    if kernel_thread || is_kernel_thread(&proc_dir) {
        return vec![
            ("service.name".into(), AttrValue::Str(KERNEL_SERVICE.into())),
            ("process.pid".into(), AttrValue::Int(i64::from(pid))),
            (
                "process.executable.name".into(),
                AttrValue::Str(kernel_thread_kind(fallback_name).to_string()),
            ),
        ];
    }
    let exe_path = std::fs::read_link(proc_dir.join("exe")).ok().map(|p| {
        p.to_string_lossy()
            .trim_end_matches(" (deleted)")
            .to_string()
    });
    let exe_name = exe_path
        .as_deref()
        .and_then(executable_name)
        .unwrap_or_else(|| fallback_name.to_string());
    let own_service = std::fs::read(proc_dir.join("environ"))
        .ok()
        .and_then(|env| env_var(&env, "OTEL_SERVICE_NAME"));
    let has_own_service = own_service.is_some();
    let service = own_service.unwrap_or_else(|| exe_name.clone());

    let mut attrs: Attributes = vec![
        ("service.name".into(), AttrValue::Str(service)),
        ("process.pid".into(), AttrValue::Int(i64::from(pid))),
        ("process.executable.name".into(), AttrValue::Str(exe_name)),
    ];
    if let Some(path) = exe_path {
        attrs.push(("process.executable.path".into(), AttrValue::Str(path)));
    }
    if let Ok(raw) = std::fs::read(proc_dir.join("cmdline")) {
        let line = command_line(&raw);
        if !line.is_empty() {
            attrs.push(("process.command_line".into(), AttrValue::Str(line)));
        }
    }
    if let Ok(cgroup) = std::fs::read_to_string(proc_dir.join("cgroup")) {
        let container = crate::kubernetes::parse_proc_cgroup(&cgroup);
        if let Some(id) = &container.container_id {
            attrs.push(("container.id".into(), AttrValue::Str(id.clone())));
        }
        if let Some(k) = crate::kubernetes::get() {
            k.decorate(&container, has_own_service, &mut attrs);
        }
    }
    attrs
}

/// Whether /proc/PID/stat flags the task as a kernel thread.
fn is_kernel_thread(proc_dir: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    // The flags are the 9th field; the 2nd (comm, in parentheses) may hold spaces.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(6)?.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// What a kernel thread is, without its instance: `kworker/u8:2-events_unbound` and
/// `kworker/1:0H` are `kworker`, `ksoftirqd/0` is `ksoftirqd`, `kswapd0` is `kswapd`,
/// `jbd2/vda1-8` is `jbd2`, `scsi_eh_1` is `scsi_eh`. A bounded set of names, stable across
/// restarts.
pub fn kernel_thread_kind(comm: &str) -> &str {
    // `kind/instance`: the kind as it is (`jbd2`); else a trailing instance number.
    if let Some((head, _)) = comm.split_once(['/', ':']) {
        if !head.is_empty() {
            return head;
        }
    }
    let head = comm;
    let trimmed = head.trim_end_matches(|c: char| c.is_ascii_digit());
    let trimmed = trimmed.trim_end_matches(['_', '-']);
    if trimmed.is_empty() {
        head
    } else {
        trimmed
    }
}

/// The executable's name from its path: its base name, and for an executable run from a
/// memfd (`/memfd:runc_cloned:/proc/self/exe`) the memfd's own name up to its first colon.
fn executable_name(path: &str) -> Option<String> {
    if let Some(memfd) = path.strip_prefix("/memfd:") {
        let name = memfd.split(':').next().unwrap_or(memfd).trim();
        return (!name.is_empty()).then(|| name.to_string());
    }
    path.rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .map(str::to_string)
}

/// This host's name: in Kubernetes the node's (`NODE_NAME`; inside a pod the kernel's
/// hostname is the pod's), else the kernel's.
pub fn hostname() -> Option<String> {
    if let Some(node) = std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
    {
        return Some(node.trim().to_string());
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|n| n.trim().to_string())
}

/// Attributes every resource shares: host.name, host.id.
pub fn host_attributes() -> Attributes {
    let mut attrs = Attributes::new();
    if let Some(name) = hostname() {
        attrs.push(("host.name".into(), AttrValue::Str(name)));
    }
    for path in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        if let Ok(id) = std::fs::read_to_string(path) {
            let id = id.trim();
            if !id.is_empty() {
                attrs.push(("host.id".into(), AttrValue::Str(id.to_string())));
                break;
            }
        }
    }
    attrs
}

fn env_var(environ: &[u8], name: &str) -> Option<String> {
    environ.split(|&b| b == 0).find_map(|entry| {
        let entry = std::str::from_utf8(entry).ok()?;
        let (k, v) = entry.split_once('=')?;
        (k == name && !v.is_empty()).then(|| v.to_string())
    })
}

/// NUL-separated arguments joined by spaces, capped at a character boundary.
fn command_line(raw: &[u8]) -> String {
    let joined = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(" ");
    if joined.len() <= MAX_COMMAND_LINE {
        return joined;
    }
    let mut end = MAX_COMMAND_LINE;
    while !joined.is_char_boundary(end) {
        end -= 1;
    }
    joined[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_otel_service_name_from_environ() {
        let env = b"PATH=/bin\0OTEL_SERVICE_NAME=checkout\0HOME=/\0";
        assert_eq!(
            env_var(env, "OTEL_SERVICE_NAME").as_deref(),
            Some("checkout")
        );
        assert_eq!(env_var(b"OTEL_SERVICE_NAME=\0", "OTEL_SERVICE_NAME"), None);
    }

    #[test]
    fn command_line_is_joined_and_capped() {
        assert_eq!(command_line(b"app\0--flag\0x\0"), "app --flag x");
        let long = "é".repeat(2000);
        let capped = command_line(long.as_bytes());
        assert!(capped.len() <= MAX_COMMAND_LINE);
    }

    #[test]
    fn kernel_threads_are_one_service_of_stable_kinds() {
        for (comm, kind) in [
            ("kworker/u8:2-events_unbound", "kworker"),
            ("kworker/1:0H-kblockd", "kworker"),
            ("ksoftirqd/0", "ksoftirqd"),
            ("migration/1", "migration"),
            ("rcu_preempt", "rcu_preempt"),
            ("kswapd0", "kswapd"),
            ("jbd2/vda1-8", "jbd2"),
            ("scsi_eh_1", "scsi_eh"),
            ("irq/24-ahci[0000:00:1f.2]", "irq"),
            ("0", "0"),
        ] {
            assert_eq!(kernel_thread_kind(comm), kind, "{comm}");
        }
        let attrs = process_attributes(u32::MAX - 3, "kworker/u8:0-ext4-rsv-conver", true);
        assert_eq!(
            attrs[0],
            ("service.name".into(), AttrValue::Str("kernel".into()))
        );
        assert!(attrs.contains(&(
            "process.executable.name".into(),
            AttrValue::Str("kworker".into())
        )));
        // kthreadd (PID 2) is flagged by /proc too.
        let kthreadd = process_attributes(2, "kthreadd", false);
        assert_eq!(
            kthreadd[0],
            ("service.name".into(), AttrValue::Str("kernel".into()))
        );
    }

    #[test]
    fn memfd_executables_are_named_by_their_memfd() {
        assert_eq!(
            executable_name("/memfd:runc_cloned:/proc/self/exe").as_deref(),
            Some("runc_cloned")
        );
        assert_eq!(
            executable_name("/usr/bin/python3.11").as_deref(),
            Some("python3.11")
        );
        assert_eq!(executable_name("/"), None);
    }

    #[test]
    fn own_process_has_its_attributes() {
        let attrs = process_attributes(std::process::id(), "fallback", false);
        let get = |k: &str| {
            attrs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            get("process.pid"),
            Some(AttrValue::Int(i64::from(std::process::id())))
        );
        assert!(get("process.executable.path").is_some());
        assert!(get("process.command_line").is_some());
    }

    #[test]
    fn exited_process_falls_back_to_its_name() {
        let attrs = process_attributes(u32::MAX - 1, "gone", false);
        assert_eq!(
            attrs[0],
            ("service.name".into(), AttrValue::Str("gone".into()))
        );
    }
}
