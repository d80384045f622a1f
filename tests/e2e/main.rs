//! End-to-end tests: real probes, real workloads, the real `emberprof` binary.
//! They need root (or CAP_BPF + CAP_PERFMON); without it they are reported as ignored, and
//! with `CI` set they fail.

// A test function left out of its module's `tests![...]` would never run (harness.rs).
#![deny(dead_code)]

mod addresses;
mod agent;
mod cpu_profile;
mod debug_access;
mod delivery;
mod harness;
mod health;
mod histograms;
mod input;
mod interop;
mod kubernetes;
mod off_cpu;
mod otlp;
mod perf_maps;
mod privileges;
mod probes;
mod pyroscope;
mod python;
mod soak;
mod support;
mod symbols;
mod tcp;
mod unwind_switches;
mod unwinding;
mod unwinding_rust;
mod unwinding_vdso_dlopen;

use std::process::ExitCode;

use emberprof_test_support::{collector, kube_api};

fn main() -> ExitCode {
    // The child collector of `delivery.rs`'s crash test runs here and never returns.
    emberprof_test_support::collector_process::serve_if_asked();
    let (args, filters) = harness::arguments();
    if !args.list {
        support::bpf_banner();
    }
    let modules = [
        addresses::TESTS,
        agent::TESTS,
        cpu_profile::TESTS,
        debug_access::TESTS,
        delivery::TESTS,
        health::TESTS,
        histograms::TESTS,
        input::TESTS,
        interop::TESTS,
        kubernetes::TESTS,
        off_cpu::TESTS,
        otlp::TESTS,
        perf_maps::TESTS,
        privileges::TESTS,
        probes::TESTS,
        pyroscope::TESTS,
        python::TESTS,
        soak::TESTS,
        symbols::TESTS,
        tcp::TESTS,
        unwind_switches::TESTS,
        unwinding::TESTS,
        unwinding_rust::TESTS,
        unwinding_vdso_dlopen::TESTS,
    ];
    let trials = harness::trials(&modules, &args, &filters);
    libtest_mimic::run(&args, trials).exit_code()
}
