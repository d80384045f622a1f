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
    /// Times a file's symbols were loaded and parsed (again after an eviction).
    pub files_parsed: u64,
    /// Files named from a separate debug file (debug directory, debug link or debuginfod).
    pub debug_files: u64,
    /// Bytes the caches account for now: parsed files, resolved locations, kernel symbols.
    pub cache_bytes: u64,
    /// Files whose parsed symbols and locations were let go to stay under the byte bound.
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
