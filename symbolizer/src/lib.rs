//! Turns the instruction pointers the probes capture into named frames: kernel frames from
//! kallsyms, user frames from ELF symbols and DWARF (file:line, inlined functions, demangled
//! names), cached per mapped file so a library shared by many processes is parsed once.

mod files;
mod location;
mod maps;
mod process;
mod symbolizer;

pub use location::{Frame, FrameKind, Location, Module, Stack};
pub use maps::{parse_maps, MapsEntry};
pub use symbolizer::{
    StackRequest, Symbolizer, SymbolizerStats, DEFAULT_CACHE_ENTRIES, DEFAULT_FILE_LIMIT,
};
