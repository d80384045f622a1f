//! Turns the instruction pointers the probes capture into named frames: kernel frames from
//! kallsyms (modules and BPF programs included), user frames from ELF symbols and DWARF
//! (file:line, inlined functions, demangled names) found in the binary, a separate debug
//! file or a debuginfod server, and JIT frames from perf maps. Files are cached host-wide
//! by identity, so a library shared by many processes is parsed once, within a memory bound.

mod debug_files;
#[cfg(test)]
mod debug_info_tests;
mod debuginfod;
mod elf_info;
mod files;
mod kallsyms;
mod maps;
mod perf_map;
mod perf_map_line;
mod perf_map_open;
mod process;
mod symbolizer;

pub use debug_files::DEFAULT_DEBUG_DIRS;
pub use debuginfod::{default_cache_dir, parse_urls, DebuginfodConfig};
pub use maps::{parse_maps, MapsEntry};
pub use perf_map::PerfMapStats;
pub use process::ProcessSnapshot;
pub use symbolizer::{
    Symbolizer, SymbolizerConfig, SymbolizerStats, DEFAULT_CACHE_BYTES, DEFAULT_FILE_LIMIT,
    DEFAULT_MIN_IDLE_CALLS,
};
