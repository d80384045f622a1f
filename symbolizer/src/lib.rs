//! Turns the instruction pointers the probes capture into named frames: kernel frames from
//! kallsyms (modules and BPF programs included), user frames from ELF symbols and DWARF
//! (file:line, inlined functions, demangled names) found in the binary, a separate debug
//! file or a debuginfod server, and JIT frames from perf maps. Files are cached host-wide
//! by identity, so a library shared by many processes is parsed once, within a memory bound.

mod config;
mod debug_files;
#[cfg(test)]
mod debug_info_tests;
mod debuginfod;
mod elf_info;
mod elf_symbols;
#[cfg(test)]
mod elf_symbols_tests;
mod eviction;
#[cfg(test)]
mod eviction_tests;
mod files;
pub mod heap;
mod kallsyms;
mod kernel_symbols;
#[cfg(test)]
mod kernel_symbols_tests;
mod location_cache;
#[cfg(test)]
mod location_cache_tests;
mod maps;
mod perf_map;
mod perf_map_line;
mod perf_map_open;
/// Where `--probe` points are in ELF files.
pub mod probe_targets;
mod process;
mod process_table;
#[cfg(test)]
mod process_table_tests;
pub mod python;
mod resident;
mod stats;
mod symbol_source;
mod symbolizer;
#[cfg(test)]
mod test_support;
pub mod unwind;
mod unwind_plan;
#[cfg(test)]
mod unwind_plan_tests;
mod unwind_snapshot;
mod vdso;

// The tests measure what parsing keeps, as the agent does.
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: heap::CountingAllocator = heap::CountingAllocator;

pub use config::{SymbolizerConfig, DEFAULT_CACHE_BYTES, DEFAULT_FILE_LIMIT};
pub use debug_files::DEFAULT_DEBUG_DIRS;
pub use debuginfod::{default_cache_dir, parse_urls, DebuginfodConfig};
pub use maps::{parse_maps, MapsEntry};
pub use perf_map::PerfMapStats;
pub use process::ProcessSnapshot;
pub use stats::SymbolizerStats;
pub use symbolizer::Symbolizer;
pub use unwind_plan::{TableSource, UnwindMapping};
pub use unwind_snapshot::UnwindPlan;
