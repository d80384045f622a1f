//! Delivery on a bad day: a collector killed and restarted, one that never answers, one
//! reached with the wrong protocol, and the end-of-run counts across a reload.

use std::io::{BufReader, Read};
use std::process::{Child, ChildStderr, ExitStatus};
use std::time::{Duration, Instant};

use emberprof_test_support::collector_process::CollectorProcess;
use emberprof_test_support::wrong_servers::WrongServer;
use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;

use crate::collector::{free_port, TestCollector};
use crate::support::{bpf_test, get, spawn_until, Workload};

crate::harness::tests![
    a_collector_killed_and_restarted_mid_run_loses_no_interval,
    shutdown_keeps_to_its_timeout_when_nothing_answers,
    tls_to_a_plaintext_collector_is_one_warning_and_not_ready,
    an_http1_server_is_one_warning_and_not_ready,
    the_summary_counts_every_batch_across_a_reload_and_the_shutdown,
];

/// Sends SIGTERM and returns the exit status, the whole log, and how long the exit took.
fn stop(
    mut agent: Child,
    mut stderr: BufReader<ChildStderr>,
    mut log: String,
) -> (ExitStatus, String, Duration) {
    let asked = Instant::now();
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) }, 0);
    let status = agent.wait().expect("waiting for emberprof");
    let took = asked.elapsed();
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    log.push_str(&rest);
    (status, log, took)
}

/// `(time_unix_nano, duration_nano)` of each profiles request, in order of arrival.
fn ranges(profiles: &[ExportProfilesServiceRequest]) -> Vec<(u64, u64)> {
    profiles
        .iter()
        .map(|r| {
            let p = &r.resource_profiles[0].scope_profiles[0].profiles[0];
            (p.time_unix_nano, p.duration_nano)
        })
        .collect()
}

/// The numbers of the OTLP end-of-run line: (sent, retries, failed, dropped).
fn otlp_summary(log: &str) -> (u64, u64, u64, u64) {
    let line = log
        .lines()
        .find(|l| l.starts_with("emberprof: OTLP "))
        .unwrap_or_else(|| panic!("no OTLP summary line:\n{log}"));
    let number_before = |word: &str| -> u64 {
        let at = line
            .find(word)
            .unwrap_or_else(|| panic!("{word:?} not in {line:?}"));
        line[..at]
            .trim_end()
            .rsplit([' ', '('])
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no number before {word:?} in {line:?}"))
    };
    (
        number_before(" batches sent"),
        number_before(" retries"),
        number_before(" failed"),
        number_before(" dropped"),
    )
}

/// The agent's own count of the intervals it exported.
fn intervals(log: &str) -> u64 {
    log.lines()
        .find_map(|l| {
            l.strip_prefix("emberprof: agent stopped after ")?
                .strip_suffix(" intervals")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no interval count:\n{log}"))
}

fn a_collector_killed_and_restarted_mid_run_loses_no_interval() {
    let Some(_serial) = bpf_test() else { return };
    // In its own process, so that it is really SIGKILLed: the kernel closes its sockets.
    let mut collector = CollectorProcess::start(free_port());
    let w = Workload::start(&["cpu-split"]);
    let pid = w.pid().to_string();
    let endpoint = collector.endpoint();
    let (agent, stderr, log) = spawn_until(
        &[
            "agent",
            "--pid",
            &pid,
            "--interval",
            "1s",
            "--frequency",
            "99",
            "--otlp-endpoint",
            &endpoint,
        ],
        "agent running",
    );
    assert!(
        collector.wait_for(Duration::from_secs(15), |r| r.profiles.len() >= 2),
        "no profiles before the crash:\n{log}"
    );
    // Right after a delivery, so that the kill finds no request answered but not yet
    // read by the agent (its retry would then be a true duplicate).
    let n = collector.received().profiles.len();
    collector.wait_for(Duration::from_secs(5), |r| r.profiles.len() > n);
    std::thread::sleep(Duration::from_millis(150));
    collector.kill();
    let down_from = collector.received().profiles.len();
    // Three intervals wait in the agent's queue meanwhile.
    std::thread::sleep(Duration::from_secs(3));
    collector.restart();
    assert!(
        collector.wait_for(Duration::from_secs(20), |r| r.profiles.len()
            >= down_from + 5),
        "the queued intervals did not arrive after the restart: {:?}",
        ranges(&collector.received().profiles)
    );
    let (status, log, _) = stop(agent, stderr, log);
    let (sent, retries, failed, dropped) = otlp_summary(&log);
    // The child wrote each request to its pipe before answering it; the reading thread
    // may still be behind.
    collector.wait_for(Duration::from_secs(5), |r| {
        (r.profiles.len() + r.metrics.len()) as u64 >= sent
    });
    let got = ranges(&collector.received().profiles);
    assert!(
        status.success(),
        "exit {status} after the collector came back:\n{log}"
    );
    for pair in got.windows(2) {
        assert_eq!(
            pair[0].0 + pair[0].1,
            pair[1].0,
            "an interval lost, repeated or out of order across the crash: {got:?}\n{log}"
        );
    }
    assert_eq!((failed, dropped), (0, 0), "{log}");
    assert!(retries >= 1, "the outage was not retried: {log}");
    let received = {
        let r = collector.received();
        (r.profiles.len() + r.metrics.len()) as u64
    };
    assert_eq!(sent, received, "{log}");
    assert!(
        got.len() as u64 + 1 >= intervals(&log),
        "{} profiles for {} intervals",
        got.len(),
        intervals(&log)
    );
}

fn shutdown_keeps_to_its_timeout_when_nothing_answers() {
    let Some(_serial) = bpf_test() else { return };
    let silent = WrongServer::silent();
    let w = Workload::start(&["cpu-split"]);
    let pid = w.pid().to_string();
    let url = silent.http_url();
    let (agent, stderr, log) = spawn_until(
        &[
            "agent",
            "--pid",
            &pid,
            "--interval",
            "1s",
            "--otlp-endpoint",
            &url,
            "--pyroscope-url",
            &url,
            "--shutdown-timeout",
            "2s",
        ],
        "agent running",
    );
    // Both exporters have a request hanging and more queued behind it.
    let began = Instant::now();
    while silent.connections() < 2 && began.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        silent.connections() >= 2,
        "the exporters never connected:\n{log}"
    );
    let (status, log, took) = stop(agent, stderr, log);
    assert!(
        took <= Duration::from_secs(3),
        "shutdown took {took:?} with --shutdown-timeout 2s:\n{log}"
    );
    assert!(
        !status.success(),
        "undelivered data must fail the run:\n{log}"
    );
    let (sent, _, failed, dropped) = otlp_summary(&log);
    assert_eq!(sent, 0, "{log}");
    assert!(failed + dropped >= 2, "the loss is not counted:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.starts_with("emberprof: Pyroscope ") && !l.contains(" 0 failed, 0 dropped")),
        "the Pyroscope loss is not counted:\n{log}"
    );
}

/// Runs the agent against `endpoint` until /readyz says 503 or 20 s pass; then gives it
/// two more seconds of retries. Returns the log and whether it went not-ready.
fn not_ready_against(endpoint: &str) -> (String, bool) {
    let w = Workload::start(&["cpu-split"]);
    let pid = w.pid().to_string();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (agent, mut stderr, mut log) = spawn_until(
        &[
            "agent",
            "--pid",
            &pid,
            "--interval",
            "1s",
            "--otlp-endpoint",
            endpoint,
            "--http-listen",
            &listen,
            "--shutdown-timeout",
            "1s",
        ],
        "agent running",
    );
    let began = Instant::now();
    let mut not_ready = false;
    while began.elapsed() < Duration::from_secs(20) {
        if get(port, "/readyz").0 == 503 {
            not_ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    // Killed, so that the log holds what it said while running and nothing of a shutdown.
    let mut agent = agent;
    let _ = agent.kill();
    let _ = agent.wait();
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    log.push_str(&rest);
    (log, not_ready)
}

/// The WARN lines of `log` that contain `text`.
fn warnings<'a>(log: &'a str, text: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| l.contains(" WARN ") && l.contains(text))
        .collect()
}

fn tls_to_a_plaintext_collector_is_one_warning_and_not_ready() {
    let Some(_serial) = bpf_test() else { return };
    let collector = TestCollector::start();
    let endpoint = collector.endpoint().replace("http://", "https://");
    let (log, not_ready) = not_ready_against(&endpoint);
    assert!(not_ready, "/readyz stayed 200:\n{log}");
    let said = warnings(&log, "does not speak TLS");
    assert_eq!(said.len(), 1, "one WARN line, not {}:\n{log}", said.len());
    assert!(said[0].contains("http://"), "{}", said[0]);
    assert!(
        log.matches("retrying").count() >= 2,
        "it must keep trying (the collector may be fixed):\n{log}"
    );
}

fn an_http1_server_is_one_warning_and_not_ready() {
    let Some(_serial) = bpf_test() else { return };
    let server = WrongServer::http1();
    let (log, not_ready) = not_ready_against(&server.http_url());
    assert!(not_ready, "/readyz stayed 200:\n{log}");
    let said = warnings(&log, "does not speak gRPC");
    assert_eq!(said.len(), 1, "one WARN line, not {}:\n{log}", said.len());
    assert!(said[0].contains("4317"), "{}", said[0]);
}

fn the_summary_counts_every_batch_across_a_reload_and_the_shutdown() {
    let Some(_serial) = bpf_test() else { return };
    let collector = TestCollector::start();
    let w = Workload::start(&["cpu-split"]);
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("summary-reload.yaml");
    let config = |header: &str| {
        format!(
            "otlp_endpoint: {}\notlp_header: [x-reload={header}]\ninterval: 1s\nfrequency: 99\n\
             pid: [{}]\nshutdown_timeout: 1s\nhttp_listen: 127.0.0.1:{}\n",
            collector.endpoint(),
            w.pid(),
            free_port()
        )
    };
    std::fs::write(&file, config("1")).unwrap();
    let file_arg = file.to_string_lossy().into_owned();
    let (agent, stderr, log) = spawn_until(&["agent", "--config", &file_arg], "agent running");
    assert!(collector.wait_for(Duration::from_secs(15), |r| r.profiles.len() >= 2));
    // A new header: the exporter is replaced.
    std::fs::write(&file, config("2")).unwrap();
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(agent.id() as i32, libc::SIGHUP) }, 0);
    let reloaded = collector.wait_for(Duration::from_secs(15), |r| {
        r.headers
            .iter()
            .filter(|h| h.iter().any(|(k, v)| k == "x-reload" && v == "2"))
            .count()
            >= 4
    });
    assert!(reloaded, "nothing arrived through the replaced exporter");
    // Then the collector stops answering: what is in flight and queued at shutdown is lost.
    collector.stall(true);
    std::thread::sleep(Duration::from_millis(1500));
    let (_, log, _) = stop(agent, stderr, log);
    let received = {
        let r = collector.received();
        (r.profiles.len() + r.metrics.len()) as u64
    };
    let (sent, _, failed, dropped) = otlp_summary(&log);
    assert!(log.contains("configuration reloaded"), "{log}");
    assert_eq!(
        sent, received,
        "the summary's batches sent are not what the collector received:\n{log}"
    );
    assert!(
        failed + dropped >= 1,
        "the shutdown's loss is not counted:\n{log}"
    );
    // Each interval sends its profiles (none if the last, partial one had no samples) and
    // emberprof's health.
    let n = intervals(&log);
    let given = sent + failed + dropped;
    assert!(
        given == 2 * n || given == 2 * n - 1,
        "{sent} sent + {failed} failed + {dropped} dropped for {n} intervals:\n{log}"
    );
}
