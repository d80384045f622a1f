//! emberprof's eBPF probes: the C programs compiled by `build.rs`, the Rust twins of their
//! shared types, and the loaders that attach them and drain what they aggregate.

// Modules in layers (blank lines); each uses only modules of the layers above it, so their
// dependencies form no cycle.

// The C side's twins and facts about the host.
pub mod abi;
pub mod preflight;
pub mod syscalls;

mod error;
mod hist_series;

// Map plumbing.
mod bpf_map;
mod maps;

// What several loaders share.
mod double_buffer;
mod new_processes;
mod pid_filter;

mod loader;

// The loaders.
pub mod cpu_sampler;
pub mod latency;
pub mod off_cpu;

pub use cpu_sampler::{CpuSampler, CpuSamplerConfig, KernelCounters};
pub use error::ProbeError;
pub use hist_series::HistSeries;
pub use latency::{HistogramDrain, LatencyConfig, LatencyCounters, LatencyHistograms};
pub use new_processes::NewProcesses;
pub use off_cpu::{OffCpuConfig, OffCpuCounters, OffCpuProfiler};
