//! Clear errors when emberprof cannot run, before anything is loaded.

use std::process::Command;

use crate::support::EMBERPROF;

crate::harness::tests![
    unprivileged_run_names_what_is_missing,
    a_pid_that_does_not_exist_is_a_clear_error,
];

fn unprivileged_run_names_what_is_missing() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        // Drop to nobody with no capabilities at all.
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ]);
        c.arg(EMBERPROF);
        c
    } else {
        Command::new(EMBERPROF)
    };
    let out = cmd
        .args(["record", "--duration", "1", "--output", "/dev/null"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("needs root, or the capabilities CAP_BPF and CAP_PERFMON (missing: CAP_BPF, CAP_PERFMON)"),
        "unexpected error: {stderr}"
    );
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one line, not a backtrace: {stderr}"
    );
}

fn a_pid_that_does_not_exist_is_a_clear_error() {
    let out = Command::new(EMBERPROF)
        .args(["record", "--pid", "999999999", "--output", "/dev/null"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no process with PID 999999999"), "{stderr}");
}
