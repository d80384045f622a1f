//! Which container, and which Kubernetes pod, a process runs in, from its /proc/PID/cgroup.
//! Container runtimes name the innermost cgroup after the container ID; the kubelet names
//! the pod's cgroup after the pod UID, under a QoS level, with the systemd driver's
//! `.slice` names (dashes in the UID become underscores) or the cgroupfs driver's plain ones.

/// The container and pod a cgroup path belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerRef {
    /// 64 lower-case hex digits.
    pub container_id: Option<String>,
    /// The runtime that named the cgroup (`containerd`, `crio`, `docker`, `podman`).
    pub runtime: Option<&'static str>,
    /// The pod UID with dashes (`5f0e…-…`).
    pub pod_uid: Option<String>,
}

/// Reads the text of /proc/PID/cgroup (v2 `0::/path`, or v1 `N:controllers:/path` lines).
pub fn parse_proc_cgroup(text: &str) -> ContainerRef {
    // v2's unified line first; on v1 the first line that names a container wins.
    let mut best = ContainerRef::default();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_by_key(|l| !l.starts_with("0::"));
    for line in lines {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        let r = parse_path(path);
        if r.container_id.is_some() {
            return r;
        }
        if best.pod_uid.is_none() {
            best = r;
        }
    }
    best
}

/// Reads one cgroup path. The innermost container ID wins (a runtime nested in another
/// container names both).
pub fn parse_path(path: &str) -> ContainerRef {
    let mut out = ContainerRef::default();
    for component in path.split('/') {
        if let Some(uid) = pod_uid(component) {
            out.pod_uid = Some(uid);
        }
        if let Some((runtime, id)) = container(component) {
            out.runtime = runtime;
            out.container_id = Some(id);
        }
    }
    out
}

/// `pod<uid>` (cgroupfs) or `kubepods[-qos]-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid(component: &str) -> Option<String> {
    let name = component.strip_suffix(".slice").unwrap_or(component);
    let at = name.rfind("pod")?;
    let before = &name[..at];
    // Only the kubelet's own names: plain `pod…`, or `…kubepods…-pod…`.
    if !(before.is_empty() || (before.contains("kubepods") && before.ends_with('-'))) {
        return None;
    }
    let uid = name[at + 3..].replace('_', "-");
    is_uid(&uid).then(|| uid.to_ascii_lowercase())
}

fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A container's cgroup: `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `docker-<id>.scope`, `libpod-<id>.scope`, or a bare `<id>` (cgroupfs drivers). The
/// runtimes' monitor processes (`crio-conmon-<id>`, `libpod-conmon-<id>`) are not the
/// container.
fn container(component: &str) -> Option<(Option<&'static str>, String)> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    if name.contains("conmon") {
        return None;
    }
    let (runtime, id) = match name.rsplit_once('-') {
        Some((prefix, id)) => {
            let runtime = match prefix {
                "cri-containerd" => Some("containerd"),
                "crio" => Some("crio"),
                "docker" => Some("docker"),
                "libpod" => Some("podman"),
                _ => None,
            };
            (runtime, id)
        }
        None => (None, name),
    };
    // containerd with the cgroupfs driver writes `cri-containerd:<id>` in some versions.
    let id = id.rsplit(':').next().unwrap_or(id);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| (runtime, id.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e1a2b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";
    const UID: &str = "5f0e9c2a-1b3d-4e5f-8a7b-6c5d4e3f2a1b";
    const UID_: &str = "5f0e9c2a_1b3d_4e5f_8a7b_6c5d4e3f2a1b";

    #[test]
    fn real_path_shapes() {
        let cases: Vec<(String, Option<&str>, Option<&str>)> = vec![
            // containerd, systemd driver, each QoS level.
            (format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"), Some("containerd"), Some(UID)),
            (format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"), Some("containerd"), Some(UID)),
            (format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"), Some("containerd"), Some(UID)),
            // containerd, cgroupfs driver.
            (format!("0::/kubepods/burstable/pod{UID}/{ID}"), None, Some(UID)),
            (format!("0::/kubepods/pod{UID}/{ID}"), None, Some(UID)),
            // CRI-O, systemd driver; and its monitor, which is not the container.
            (format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope"), Some("crio"), Some(UID)),
            // kind / kubelet in a container: prefixed slices.
            (format!("0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"), Some("containerd"), Some(UID)),
            // Docker, systemd and cgroupfs drivers.
            (format!("0::/system.slice/docker-{ID}.scope"), Some("docker"), None),
            (format!("0::/docker/{ID}"), None, None),
            // Podman, rootful and rootless.
            (format!("0::/machine.slice/libpod-{ID}.scope"), Some("podman"), None),
            (format!("0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"), Some("podman"), None),
            // cgroup v1: the first line naming a container.
            (format!("12:pids:/kubepods/besteffort/pod{UID}/{ID}\n1:name=systemd:/kubepods/besteffort/pod{UID}/{ID}\n0::/"), None, Some(UID)),
            (format!("11:cpu,cpuacct:/docker/{ID}\n0::/"), None, None),
        ];
        for (text, runtime, uid) in cases {
            let r = parse_proc_cgroup(&text);
            assert_eq!(r.container_id.as_deref(), Some(ID), "{text}");
            assert_eq!(r.runtime, runtime, "{text}");
            assert_eq!(r.pod_uid.as_deref(), uid, "{text}");
        }
    }

    #[test]
    fn not_containers() {
        for text in [
            "0::/user.slice/user-1000.slice/session-3.scope",
            "0::/system.slice/sshd.service",
            "0::/",
            &format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{ID}.scope"),
            &format!("0::/machine.slice/libpod-conmon-{ID}.scope"),
            "0::/system.slice/docker-abc.scope",
            "garbage",
        ] {
            assert_eq!(parse_proc_cgroup(text).container_id, None, "{text}");
        }
        // A pod's own cgroup (the pause sandbox's parent) has the pod but no container.
        let r = parse_path(&format!("/kubepods.slice/kubepods-pod{UID_}.slice"));
        assert_eq!((r.pod_uid.as_deref(), r.container_id), (Some(UID), None));
        // A `pod` that is not the kubelet's is ignored.
        assert_eq!(parse_path(&format!("/mypod{UID}")).pod_uid, None);
    }
}
