//! emberprof's eBPF probes: the C programs compiled by `build.rs`, the Rust twins of their
//! shared types, and the loaders that attach them and drain what they aggregate.

pub mod abi;
mod bpf_map;
pub mod cpu_sampler;
mod error;
mod kernel_maps;
pub mod latency;
mod new_processes;
pub mod off_cpu;
pub mod preflight;
pub mod syscalls;

pub use cpu_sampler::{CpuSampler, CpuSamplerConfig, KernelCounters};
pub use error::ProbeError;
pub use kernel_maps::set_profile_self;
pub use latency::{HistogramDrain, LatencyConfig, LatencyCounters, LatencyHistograms};
pub use new_processes::NewProcesses;
pub use off_cpu::{OffCpuConfig, OffCpuCounters, OffCpuProfiler};
