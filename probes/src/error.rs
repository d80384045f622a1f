use thiserror::Error;

/// Errors from loading, attaching or reading the probes.
#[derive(Debug, Error)]
pub enum ProbeError {
    #[error(transparent)]
    Preflight(#[from] crate::preflight::PreflightError),
    #[error("loading the eBPF object failed: {0} (needs root, or CAP_BPF and CAP_PERFMON)")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("{what}: {source}")]
    Attach {
        what: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("probe slot {slot} does not exist (there are {max})")]
    ProbeSlot { slot: usize, max: usize },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("reading kernel BTF: {0}")]
    Btf(String),
    #[error("eBPF map {0} is missing from the object or has an unexpected type")]
    MissingMap(&'static str),
    #[error("eBPF map {name}: {op} failed: {source}")]
    MapSyscall {
        name: &'static str,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("listing online CPUs ({path}): {source}")]
    OnlineCpus {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("sampling frequency must be between 1 and {max} Hz, got {got}")]
    Frequency { got: u64, max: u64 },
    #[error("{what} map size must be between 1 and {max} entries, got {got}")]
    MapSize {
        what: &'static str,
        got: u32,
        max: u32,
    },
    #[error("at most {max} PIDs can be filtered in the kernel, got {got}")]
    TooManyPids { got: usize, max: usize },
}
