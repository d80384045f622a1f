//! Bad input and unusual surroundings: a path that cannot be written, logs that are not
//! read at a terminal, config values the agent refuses. None of these load BPF programs
//! (they fail, or log, before anything is loaded).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::EMBERPROF;

/// Runs `emberprof ARGS` for at most `limit`; `None` (after killing it) if it was still
/// running then.
fn run_within(args: &[&str], limit: Duration) -> Option<std::process::Output> {
    let mut child = Command::new(EMBERPROF)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting emberprof");
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().expect("waiting for emberprof").is_some() {
            return Some(
                child
                    .wait_with_output()
                    .expect("reading emberprof's output"),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

crate::harness::tests![
    an_output_that_cannot_be_written_fails_before_recording,
    a_run_that_fails_leaves_no_empty_output_and_an_existing_file_untouched,
    logs_to_a_pipe_carry_no_colour_codes,
    without_cap_syslog_the_hidden_kernel_symbols_warning_names_the_real_cause,
];

fn an_output_that_cannot_be_written_fails_before_recording() {
    for args in [
        &[
            "record",
            "-o",
            "/nonexistent/dir/x.pb.gz",
            "--duration",
            "30",
        ][..],
        // Both kinds: the second path (x.offcpu.pb.gz) is in the same missing directory.
        &[
            "record",
            "--cpu",
            "--off-cpu",
            "-o",
            "/nonexistent/dir/x.pb.gz",
            "--duration",
            "30",
        ][..],
    ] {
        // Generous for a loaded machine, far below the 30 s of recording.
        let out = run_within(args, Duration::from_secs(8))
            .unwrap_or_else(|| panic!("{args:?} was still running after 8 s: it recorded first"));
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cannot write the output /nonexistent/dir/x.pb.gz")
                && err.contains("No such file or directory"),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}

fn a_run_that_fails_leaves_no_empty_output_and_an_existing_file_untouched() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("input-leftover");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let new = dir.join("new.pb.gz");
    let old = dir.join("old.pb.gz");
    std::fs::write(&old, b"an earlier profile").unwrap();
    for path in [&new, &old] {
        // Refused after the outputs are opened, before any probe is loaded.
        let out = run_within(
            &[
                "record",
                "-o",
                path.to_str().unwrap(),
                "--otlp-endpoint",
                "ftp://collector:4317",
            ],
            Duration::from_secs(8),
        )
        .expect("emberprof exits at once");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("must start with http://"), "{err}");
    }
    assert!(!new.exists(), "an empty {} was left behind", new.display());
    assert_eq!(std::fs::read(&old).unwrap(), b"an earlier profile");
}

fn logs_to_a_pipe_carry_no_colour_codes() {
    // A warning logged before anything is loaded: NODE_NAME without a reachable cluster.
    let out = Command::new(EMBERPROF)
        .args(["record", "--pid", "999999999", "-o", "/dev/null"])
        .env("NODE_NAME", "test-node")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("EMBERPROF_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("WARN") && err.contains("Kubernetes API is not usable"),
        "{err}"
    );
    assert!(
        !err.contains('\x1b'),
        "escape codes in a piped log: {err:?}"
    );
}

fn without_cap_syslog_the_hidden_kernel_symbols_warning_names_the_real_cause() {
    let Some(_serial) = crate::support::bpf_test() else {
        return;
    };
    let sysctl = |name: &str| -> i64 {
        std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (kptr_restrict, paranoid) = (sysctl("kptr_restrict"), sysctl("perf_event_paranoid"));
    // Without CAP_SYSLOG, kallsyms hides addresses unless kptr_restrict is 0 and
    // perf_event_paranoid at most 1 (then there is no warning to check).
    let expected = match (kptr_restrict, paranoid) {
        (0, p) if p <= 1 => {
            crate::harness::skip("kernel addresses are shown to every user here: nothing to check");
            return;
        }
        (0, p) => format!("kernel.perf_event_paranoid is {p} and emberprof lacks CAP_SYSLOG"),
        (1, _) => "kernel.kptr_restrict is 1 and emberprof lacks CAP_SYSLOG".to_string(),
        (k, _) => format!("kernel.kptr_restrict is {k}"),
    };
    let w = crate::support::Workload::start(&["syscalls"]); // kernel frames in every sample
    let caps = "-all,+bpf,+perfmon,+sys_ptrace,+dac_read_search";
    let run = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .arg(EMBERPROF)
        .args(["record", "--duration", "2", "--pid", &w.pid().to_string()])
        .args(["--format", "folded", "-o", "/dev/null"])
        .env_remove("EMBERPROF_LOG")
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    let warning = err
        .lines()
        .find(|l| l.contains("kernel symbols are hidden"))
        .unwrap_or_else(|| panic!("no warning about hidden kernel symbols: {err}"));
    assert!(warning.contains(&expected), "{warning}");
}
