//! Checks that loading the probes can work, so that a missing privilege is reported as
//! such instead of as an opaque EPERM from the verifier.

use std::path::Path;

use thiserror::Error;

/// Where the kernel exposes its BTF; CO-RE relocations need it.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Why the probes cannot be loaded on this host, with what to do about it.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PreflightError {
    #[error(
        "emberprof needs root, or the capabilities CAP_BPF and CAP_PERFMON (missing: {})",
        missing.join(", ")
    )]
    MissingCapabilities { missing: Vec<&'static str> },
    #[error("kernel BTF not found at {KERNEL_BTF}: emberprof needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")]
    NoBtf,
    #[error("cannot read this process's capabilities from /proc/self/status: {0}")]
    Status(String),
    #[error("{what} needs Linux {}.{} or newer; this kernel is {release}", min.0, min.1)]
    KernelTooOld {
        what: &'static str,
        min: (u32, u32),
        release: String,
    },
    #[error(
        "the locked-memory limit is too low for BPF maps on this kernel (before 5.11): run \
         with `ulimit -l unlimited`, or grant CAP_SYS_RESOURCE ({0})"
    )]
    Memlock(String),
}

/// (major, minor) of a kernel release string such as `6.18.44-fc-v657`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Fails unless the running kernel is at least `min`; `what` names the feature that needs it.
pub fn check_kernel(what: &'static str, min: (u32, u32)) -> Result<(), PreflightError> {
    let release = kernel_release();
    match parse_release(&release) {
        Some(v) if v >= min => Ok(()),
        // An unreadable version is not a reason to refuse: the loader will say more.
        None => Ok(()),
        Some(_) => Err(PreflightError::KernelTooOld { what, min, release }),
    }
}

/// Before 5.11, BPF memory counts against RLIMIT_MEMLOCK: lift it (needs CAP_SYS_RESOURCE
/// unless the limit is already unlimited).
pub fn ensure_memlock() -> Result<(), PreflightError> {
    if parse_release(&kernel_release()).is_none_or(|v| v >= (5, 11)) {
        return Ok(());
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        Ok(())
    } else {
        Err(PreflightError::Memlock(
            std::io::Error::last_os_error().to_string(),
        ))
    }
}

/// Fails with a clear error when the kernel or our privileges cannot run the probes:
/// Linux 5.8 or newer (CAP_BPF/CAP_PERFMON, BTF-typed tracepoints), the capabilities, BTF,
/// and the locked-memory limit on kernels that still charge BPF maps to it.
pub fn check() -> Result<(), PreflightError> {
    check_kernel("emberprof", (5, 8))?;
    check_capability_bits(own_capabilities()?)?;
    ensure_memlock()?;
    if !Path::new(KERNEL_BTF).exists() {
        return Err(PreflightError::NoBtf);
    }
    Ok(())
}

/// The effective capability bits in the text of /proc/PID/status.
pub fn effective_capabilities(status: &str) -> Result<u64, PreflightError> {
    emberprof_model::effective_capabilities(status)
        .ok_or_else(|| PreflightError::Status("no readable CapEff line".into()))
}

/// This process's effective capability bits.
pub fn own_capabilities() -> Result<u64, PreflightError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| PreflightError::Status(e.to_string()))?;
    effective_capabilities(&status)
}

/// Checks the effective capability set in the text of /proc/PID/status.
pub fn check_capabilities(status: &str) -> Result<(), PreflightError> {
    check_capability_bits(effective_capabilities(status)?)
}

/// Without these, other users' processes are sampled but their files cannot be read, so
/// their frames stay unnamed. Root has them; returns the ones this process lacks.
pub fn missing_file_access() -> Vec<&'static str> {
    let Ok(eff) = own_capabilities() else {
        return Vec::new();
    };
    [
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
        (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
    ]
    .into_iter()
    .filter(|(cap, _)| eff & (1u64 << cap) == 0)
    .map(|(_, name)| name)
    .collect()
}

fn check_capability_bits(eff: u64) -> Result<(), PreflightError> {
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    // CAP_SYS_ADMIN implies both on kernels that predate CAP_BPF/CAP_PERFMON.
    if has(CAP_SYS_ADMIN) {
        return Ok(());
    }
    let missing: Vec<&'static str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(cap, _)| !has(*cap))
        .map(|(_, name)| name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::MissingCapabilities { missing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_parse_and_compare() {
        assert_eq!(parse_release("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(parse_release("garbage"), None);
        assert!(parse_release("5.17.1").unwrap() < (5, 18));
        check_kernel("this test", (3, 0)).unwrap();
        let e = check_kernel("the future", (99, 0)).unwrap_err().to_string();
        assert!(
            e.starts_with("the future needs Linux 99.0 or newer; this kernel is "),
            "{e}"
        );
    }

    #[test]
    fn root_passes() {
        assert_eq!(
            check_capabilities("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            Ok(())
        );
    }

    #[test]
    fn bpf_and_perfmon_pass_without_sys_admin() {
        let eff = (1u64 << CAP_BPF) | (1u64 << CAP_PERFMON);
        assert_eq!(
            check_capabilities(&format!("CapEff:\t{eff:016x}\n")),
            Ok(())
        );
    }

    #[test]
    fn missing_caps_are_named() {
        let eff = 1u64 << CAP_BPF;
        let err = check_capabilities(&format!("CapEff:\t{eff:016x}\n")).unwrap_err();
        assert_eq!(
            err,
            PreflightError::MissingCapabilities {
                missing: vec!["CAP_PERFMON"]
            }
        );
        let msg = check_capabilities("CapEff:\t0000000000000000\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("needs root") && msg.contains("CAP_BPF, CAP_PERFMON"),
            "{msg}"
        );
    }

    #[test]
    fn garbage_status_is_an_error_not_a_panic() {
        assert!(matches!(
            check_capabilities("nothing"),
            Err(PreflightError::Status(_))
        ));
        assert!(matches!(
            check_capabilities("CapEff: zz"),
            Err(PreflightError::Status(_))
        ));
    }
}
