//! The counters the symbolizer reports.

use crate::perf_map::PerfMapStats;

/// Counters of the symbolizer's work since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SymbolizerStats {
    /// Addresses answered from the location cache.
    pub cache_hits: u64,
    /// Addresses that had to be symbolized.
    pub cache_misses: u64,
    /// Distinct files opened (one per build ID, else per device, inode and mtime).
    pub files: u64,
    /// Times a file's symbols were loaded and parsed (the first time and re-parses).
    pub files_parsed: u64,
    /// Files named from a separate debug file (debug directory, debug link or debuginfod).
    pub debug_files: u64,
    /// Memory the caches hold now, the sum of the four parts below (measured where the
    /// program installed `heap::CountingAllocator`, else estimated from file sizes).
    pub cache_bytes: u64,
    /// Heap blazesym keeps for the files it holds parsed: symbol tables, DWARF units, lines.
    pub parsed_heap_bytes: u64,
    /// Pages of the files blazesym maps that stay resident in our memory between calls
    /// (those it touched are given back after each call unless the file is also mapped
    /// otherwise).
    pub mapped_resident_bytes: u64,
    /// The most mapped pages one call touched before they were given back.
    pub mapped_peak_bytes: u64,
    /// Heap of the resolved user locations.
    pub location_bytes: u64,
    /// Kernel symbols (kallsyms) and resolved kernel locations.
    pub kernel_bytes: u64,
    /// Times a file's parsed state was let go to stay under the byte bound.
    pub parsed_released: u64,
    /// Times a file had to be parsed again after its parsed state was let go.
    pub reparses: u64,
    /// Nanoseconds spent in symbolize calls on files not held parsed (first parses and
    /// re-parses), the CPU cost of the bound.
    pub parse_ns: u64,
    /// Unwind tables compiled (one per file, however many processes map it).
    pub unwind_tables: u64,
    /// Files whose resolved locations were let go to stay under the byte bound.
    pub evictions: u64,
    /// Processes whose mappings were captured.
    pub processes: u64,
    /// Processes that were gone before we could read their mappings.
    pub processes_gone: u64,
    /// Processes captured by the watcher while alive, before their first drain.
    pub processes_adopted: u64,
    /// Files whose symbols could not be read at all (corrupt or unsupported).
    pub file_errors: u64,
    /// Addresses left unnamed because their file's symbols could not be read.
    pub addresses_unreadable: u64,
    /// Entries in the location caches now.
    pub cache_entries: u64,
    /// Times the kernel location cache reached its limit and was emptied.
    pub cache_resets: u64,
    /// Processes whose mappings are held now.
    pub processes_held: u64,
    /// Times the open files passed their limit and every file and parsed table was let go.
    pub file_resets: u64,
    /// Frames named from a perf map (JIT code).
    pub jit_frames: u64,
    /// Debug files fetched from debuginfod.
    pub debuginfod_fetched: u64,
    /// Build IDs no debuginfod server had.
    pub debuginfod_not_found: u64,
    /// debuginfod requests that failed (unreachable, timeout, server error).
    pub debuginfod_errors: u64,
    /// debuginfod fetches under way now.
    pub debuginfod_pending: u64,
    /// Perf maps refused, lines skipped, names cut, symbols dropped, memory held.
    pub perf_maps: PerfMapStats,
}
