//! End-to-end tests: real probes, real workloads, the real `emberprof` binary.
//! They need root (or CAP_BPF + CAP_PERFMON); with `CI` set they fail without it.

mod addresses;
mod agent;
#[path = "../support/collector.rs"]
mod collector;
mod cpu_profile;
mod debug_access;
mod health;
mod histograms;
mod input;
mod interop;
#[path = "../support/kube_api.rs"]
mod kube_api;
mod kubernetes;
mod off_cpu;
mod otlp;
mod perf_maps;
mod privileges;
mod pyroscope;
mod soak;
mod support;
mod symbols;
