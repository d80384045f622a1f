//! emberprof's eBPF probes: the C programs compiled by `build.rs`, the Rust twins of their
//! shared types, and the loaders that attach them and drain what they aggregate.

pub mod abi;
mod bpf_map;
pub mod cpu_sampler;
mod error;
mod kernel_maps;
pub mod off_cpu;
pub mod preflight;

pub use cpu_sampler::{CpuSampler, CpuSamplerConfig, KernelCounters, Stack, StackCount, StackLoss};
pub use error::ProbeError;
pub use off_cpu::{OffCpuConfig, OffCpuCounters, OffCpuProfiler};
