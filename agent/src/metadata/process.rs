//! OpenTelemetry resource attributes of a process and of this host, read from /proc.
//! Everything here may be missing (the process exited, or we may not read its environment):
//! attributes that cannot be read are left out, never an error.

use std::path::Path;

use emberprof_exporters::otlp::{AttrValue, Attributes};

/// `process.command_line` is capped: some command lines are megabytes long.
const MAX_COMMAND_LINE: usize = 1024;

/// Resource attributes of one process, per the semantic conventions, with its pod's when it
/// runs in one on this node.
pub fn process_attributes(pid: u32, fallback_name: &str) -> Attributes {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let exe_path = std::fs::read_link(proc_dir.join("exe")).ok().map(|p| {
        p.to_string_lossy()
            .trim_end_matches(" (deleted)")
            .to_string()
    });
    let exe_name = exe_path
        .as_deref()
        .and_then(|p| p.rsplit('/').next())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
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
    fn own_process_has_its_attributes() {
        let attrs = process_attributes(std::process::id(), "fallback");
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
        let attrs = process_attributes(u32::MAX - 1, "gone");
        assert_eq!(
            attrs[0],
            ("service.name".into(), AttrValue::Str("gone".into()))
        );
    }
}
