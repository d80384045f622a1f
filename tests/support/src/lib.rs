//! What the test suites of several emberprof crates share: an in-test OTLP collector, a
//! Kubernetes API stand-in, servers that misbehave, the test workload, and listings of the
//! loaded BPF objects.
//! Dev-only (never published); it must not need clang, so it does not use the probes.

pub mod bpf;
pub mod collector;
pub mod collector_process;
pub mod kube_api;
pub mod workload;
pub mod wrong_servers;
