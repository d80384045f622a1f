//! End-to-end tests: real probes, real workloads, the real `emberprof` binary.
//! They need root (or CAP_BPF + CAP_PERFMON); with `CI` set they fail without it.

mod addresses;
mod agent;
mod cpu_profile;
mod debug_access;
mod histograms;
mod input;
mod interop;
mod kubernetes;
mod off_cpu;
mod otlp;
mod perf_maps;
mod privileges;
mod pyroscope;
mod soak;
mod support;
mod symbols;

use emberprof_test_support::{collector, kube_api};
