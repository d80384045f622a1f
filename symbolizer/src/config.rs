//! How the symbolizer finds symbols and how much it may keep, and the defaults.

use std::path::PathBuf;

use crate::debug_files::DEFAULT_DEBUG_DIRS;
use crate::debuginfod::DebuginfodConfig;

/// Default bound on files held open.
pub const DEFAULT_FILE_LIMIT: usize = 4096;

/// Default memory bound of the symbol caches.
pub const DEFAULT_CACHE_BYTES: u64 = 128 << 20;

/// Default idle time, in symbolize calls, before a file may be let go (a minute of 1 s drains).
pub const DEFAULT_MIN_IDLE_CALLS: u64 = 60;

/// How the symbolizer finds symbols and how much it may keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymbolizerConfig {
    /// Directories holding separate debug files (`.build-id/xx/rest.debug` and debug-link
    /// names); searched on the host and inside the process's root.
    pub debug_dirs: Vec<PathBuf>,
    /// Fetch missing debug files by build ID; `None` to never ask.
    pub debuginfod: Option<DebuginfodConfig>,
    /// Memory the caches may hold: parsed files and resolved locations, least recently used
    /// let go first.
    pub cache_bytes: u64,
    /// Files held open before every file is let go and opened again as needed.
    pub file_limit: usize,
    /// A file is let go for the memory bound only after this many symbolize calls (drains)
    /// without use: the working set stays even past the bound, since letting it go would
    /// parse it again at every drain (and a binary bigger than the bound would never stop
    /// being parsed).
    pub min_idle_calls: u64,
}

impl Default for SymbolizerConfig {
    fn default() -> Self {
        SymbolizerConfig {
            debug_dirs: DEFAULT_DEBUG_DIRS.iter().map(PathBuf::from).collect(),
            debuginfod: None,
            cache_bytes: DEFAULT_CACHE_BYTES,
            file_limit: DEFAULT_FILE_LIMIT,
            min_idle_calls: DEFAULT_MIN_IDLE_CALLS,
        }
    }
}
