//! emberprof's eBPF probes: the C programs compiled by `build.rs`, the Rust twins of their
//! shared types, and the loaders that attach them and drain what they aggregate.

// Modules in layers (separated by blank lines); each uses only modules of the layers above
// it, so their dependencies form no cycle.

// The C side's twins, facts about the host, the raw map syscalls.
pub mod abi;
mod bpf_map;
pub mod preflight;
pub mod syscalls;

mod error;
mod hist_series;

// Typed map access, the PID filter every program shares, the loaded object.
mod maps;
mod pid_filter;
mod shared_ebpf;

// What the loaders share: the buffer switch, process announcements, start checks, the
// unwinder's maps.
mod double_buffer;
mod loader;
mod new_processes;
/// The `--probe` points' programs.
pub mod probe_points;
/// The Python walker's list of processes.
pub mod python_maps;
pub mod unwind_maps;

// The contract the loaders fulfil.
pub mod profiler;

// The loaders.
pub mod cpu_sampler;
pub mod latency;
pub mod off_cpu;
/// The probe profile: stacks of probe hits.
pub mod probe_stacks;

// The one object of every loader.
pub mod object;

pub use cpu_sampler::{CpuSampler, CpuSamplerConfig, KernelCounters};
pub use error::ProbeError;
pub use hist_series::{EventSeries, HistSeries, HistogramDrain};
pub use latency::{LatencyConfig, LatencyCounters, LatencyHistograms};
pub use new_processes::NewProcesses;
pub use object::Probes;
pub use off_cpu::{OffCpuConfig, OffCpuCounters, OffCpuProfiler};
pub use probe_points::ProbePoints;
pub use probe_stacks::ProbeStacks;
pub use profiler::{Drained, Profiler, UnwindTarget};
pub use python_maps::{PythonNotes, PythonProcs};
pub use unwind_maps::UnwindMaps;

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The modules of each layer above, top first: the blank-line groups of `mod` lines.
    fn layers() -> Vec<Vec<&'static str>> {
        let mut layers = Vec::new();
        let mut layer = Vec::new();
        for line in include_str!("lib.rs").lines().map(str::trim) {
            if line.is_empty() {
                if !layer.is_empty() {
                    layers.push(std::mem::take(&mut layer));
                }
                continue;
            }
            let decl = line.strip_prefix("pub ").unwrap_or(line);
            if let Some(name) = decl.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
                layer.push(name);
            }
        }
        layers
    }

    /// The first segment of each `crate::` path in `source`, `crate::{a, b::{c}}` included.
    fn crate_modules(source: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for line in source.lines().filter(|l| !l.trim_start().starts_with("//")) {
            let mut rest = line;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                let ident = |s: &str| -> String {
                    s.chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect()
                };
                let Some(group) = rest.strip_prefix('{') else {
                    out.insert(ident(rest));
                    continue;
                };
                // Top-level items of the group: split at commas outside nested braces.
                let mut depth = 0;
                let mut start = 0;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth > 0 => depth -= 1,
                        ',' | '}' if depth == 0 => {
                            out.insert(ident(group[start..i].trim()));
                            start = i + 1;
                            if c == '}' {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        out.retain(|m| !m.is_empty() && m != "self");
        out
    }

    #[test]
    fn each_module_uses_only_the_layers_above_it() {
        let layers = layers();
        assert!(layers.len() > 3, "lib.rs lost its layers: {layers:?}");
        let layer_of = |m: &str| layers.iter().position(|l| l.contains(&m));
        let mut wrong = Vec::new();
        for (depth, layer) in layers.iter().enumerate() {
            for module in layer {
                let path = format!("{}/src/{module}.rs", env!("CARGO_MANIFEST_DIR"));
                let source = std::fs::read_to_string(&path).unwrap();
                for used in crate_modules(&source) {
                    match layer_of(&used) {
                        Some(d) if d < depth => {}
                        // Its own tests may name the module itself.
                        _ if used == *module => {}
                        Some(d) => wrong.push(format!(
                            "{module} (layer {depth}) uses {used} (layer {d}): move one of them"
                        )),
                        None => wrong.push(format!("{module} uses crate::{used}, not a module")),
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn imports_are_read_through_groups() {
        let found = crate_modules(
            "use crate::abi::X;\nuse crate::{maps::{a, b}, pid_filter::{self, P}, error};\n// crate::commented\nlet x = crate::loader::f();",
        );
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            ["abi", "error", "loader", "maps", "pid_filter"]
        );
    }
}
