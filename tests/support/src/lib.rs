//! What the test suites of several emberprof crates share: an in-test OTLP collector, a
//! Kubernetes API stand-in, servers that misbehave, the test workload, the CPython
//! interpreters to test, and listings of the loaded BPF objects.
//! Dev-only (never published); it must not need clang, so it does not use the probes.

pub mod bpf;
pub mod collector;
pub mod collector_process;
pub mod kube_api;
pub mod python;
pub mod workload;
pub mod wrong_servers;

/// Polls `done` every 20 ms until it holds or `timeout` passes; whether it held.
pub fn poll_until(timeout: std::time::Duration, done: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    done()
}
