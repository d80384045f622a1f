//! How the symbolizer finds symbols and how much it may keep, and the defaults.

use std::path::PathBuf;

use crate::debug_files::DEFAULT_DEBUG_DIRS;
use crate::debuginfod::DebuginfodConfig;

/// Default bound on files held open.
pub const DEFAULT_FILE_LIMIT: usize = 4096;

/// Default memory bound of the symbol caches.
pub const DEFAULT_CACHE_BYTES: u64 = 48 << 20;

/// How the symbolizer finds symbols and how much it may keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymbolizerConfig {
    /// Directories holding separate debug files (`.build-id/xx/rest.debug` and debug-link
    /// names); searched on the host and inside the process's root.
    pub debug_dirs: Vec<PathBuf>,
    /// Fetch missing debug files by build ID; `None` to never ask.
    pub debuginfod: Option<DebuginfodConfig>,
    /// Memory the caches may hold: parsed files (heap and resident mapped pages), resolved
    /// locations and kernel symbols. Parsed state is let go first, then locations.
    pub cache_bytes: u64,
    /// Files held open before every file is let go and opened again as needed.
    pub file_limit: usize,
}

impl Default for SymbolizerConfig {
    fn default() -> Self {
        SymbolizerConfig {
            debug_dirs: DEFAULT_DEBUG_DIRS.iter().map(PathBuf::from).collect(),
            debuginfod: None,
            cache_bytes: DEFAULT_CACHE_BYTES,
            file_limit: DEFAULT_FILE_LIMIT,
        }
    }
}
