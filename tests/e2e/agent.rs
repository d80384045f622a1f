//! `emberprof agent`: continuous profiling, exported every interval.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use emberprof_exporters::otlp::validate::{sample_functions, validate_profiles};

use crate::collector::TestCollector;
use crate::support::{bpf_test, loaded_bpf_programs, Workload, EMBERPROF};

#[test]
fn intervals_are_contiguous_and_sigterm_exports_the_last_one_and_unloads_everything() {
    let Some(_serial) = bpf_test() else { return };
    let collector = TestCollector::start();
    let w = Workload::start(&["cpu-split"]);
    let pid = w.pid().to_string();
    let mut agent = Command::new(EMBERPROF)
        .env("EMBERPROF_LOG", "info")
        .args([
            "agent",
            "--pid",
            &pid,
            "--interval",
            "2s",
            "--frequency",
            "99",
        ])
        .args(["--otlp-endpoint", &collector.endpoint()])
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the agent");
    let mut stderr = BufReader::new(agent.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "agent exited:\n{log}"
        );
        log.push_str(&line);
        if line.contains("agent running") {
            break;
        }
    }
    let running = Instant::now();
    // The program listing sees the agent's probes while it runs (else the check after exit
    // would prove nothing).
    assert!(
        loaded_bpf_programs().iter().any(|n| n.starts_with("ep_")),
        "{:?}",
        loaded_bpf_programs()
    );
    // Two full intervals, then SIGTERM in the middle of the third.
    std::thread::sleep(Duration::from_millis(5000));
    // SAFETY: plain kill(2) of our child.
    assert_eq!(unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) }, 0);
    let status = agent.wait().unwrap();
    let ran = running.elapsed();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    log.push_str(&rest);
    assert!(status.success(), "agent exited with {status}:\n{log}");
    drop(w);

    let mine: Vec<String> = loaded_bpf_programs()
        .into_iter()
        .filter(|n| n.starts_with("ep_"))
        .collect();
    assert!(mine.is_empty(), "still loaded after exit: {mine:?}");

    let received = collector.received();
    assert_eq!(
        received.profiles.len(),
        3,
        "two full intervals and the last partial one"
    );
    let mut ranges = Vec::new();
    for req in &received.profiles {
        validate_profiles(req).unwrap();
        let dict = req.dictionary.as_ref().unwrap();
        let profile = &req.resource_profiles[0].scope_profiles[0].profiles[0];
        let names: Vec<String> = profile
            .samples
            .iter()
            .flat_map(|s| sample_functions(dict, s))
            .collect();
        assert!(names.iter().any(|n| n == "burn_heavy"), "{names:?}");
        ranges.push((profile.time_unix_nano, profile.duration_nano));
    }
    ranges.sort();
    for pair in ranges.windows(2) {
        assert_eq!(
            pair[0].0 + pair[0].1,
            pair[1].0,
            "gap or overlap: {ranges:?}"
        );
    }
    let covered: u64 = ranges.iter().map(|r| r.1).sum();
    let ran = ran.as_nanos() as u64;
    assert!(
        covered + 300_000_000 >= ran && covered <= ran + 300_000_000,
        "intervals cover {covered} ns of a {ran} ns run: {ranges:?}"
    );
    assert!(log.contains("agent stopped after 3 intervals"), "{log}");
}

#[test]
fn the_agent_needs_somewhere_to_export() {
    let out = Command::new(EMBERPROF)
        .arg("agent")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing to export to"), "{err}");
}
