//! Keeping the caches within their bounds: past the byte bound the files used least recently
//! let their parsed symbols and locations go; past the file limit every file goes.

use crate::files::{FileId, SymbolSource, LOCATION_BYTES};
use crate::symbolizer::Symbolizer;

impl Symbolizer {
    /// Bounds the files held open: past `files`, `forget_exited` lets all of them go (live
    /// processes are captured again at their next sample).
    pub fn set_file_limit(&mut self, files: usize) {
        self.config.file_limit = files.max(1);
    }

    /// Bounds the memory of the caches; the least recently used files go first.
    pub fn set_cache_bytes(&mut self, bytes: u64) {
        self.config.cache_bytes = bytes.max(1);
    }

    /// Calls without use after which a file may be let go for the memory bound.
    pub fn set_min_idle_calls(&mut self, calls: u64) {
        self.config.min_idle_calls = calls;
    }

    /// Bytes the caches hold now: parsed files, their locations, kernel locations and symbols.
    pub(crate) fn cache_bytes(&self) -> u64 {
        let files: u64 = (0..self.files.len())
            .map(|id| self.files.get(id).bytes())
            .sum();
        files + self.kernel_cache.len() as u64 * LOCATION_BYTES + self.kallsyms.bytes()
    }

    /// Lets a file's parsed symbols and locations go; they are read again at its next use.
    pub(crate) fn unload(&mut self, id: FileId) {
        let file = self.files.get_mut(id);
        let path = match &file.source {
            Some(SymbolSource::DebugFile(p)) => Some(p.clone()),
            Some(SymbolSource::Itself) => Some(file.path.clone()),
            None => None,
        };
        file.unload();
        if let Some(path) = path {
            let evict =
                blazesym::symbolize::evict::Evict::Elf(blazesym::symbolize::evict::Elf::new(path));
            if let Err(e) = self.blaze.evict(&evict) {
                tracing::debug!(error = %e, "cannot evict parsed file");
            }
        }
    }

    /// Lets the least recently used files go until the caches fit their bound, sparing
    /// files used within the last `min_idle_calls` calls.
    pub(crate) fn evict_to_bound(&mut self) {
        let idle_before = self.tick.saturating_sub(self.config.min_idle_calls);
        let mut total = self.cache_bytes();
        if total <= self.config.cache_bytes {
            return;
        }
        let mut by_age: Vec<(u64, FileId, u64)> = self
            .files
            .iter_mut()
            .map(|(id, f)| (f.last_used, id, f.bytes()))
            .filter(|&(used, _, bytes)| bytes > 0 && used < self.tick && used <= idle_before)
            .collect();
        by_age.sort_unstable();
        for (_, id, bytes) in by_age {
            if total <= self.config.cache_bytes {
                break;
            }
            self.unload(id);
            self.stats.evictions += 1;
            total = total.saturating_sub(bytes);
        }
    }

    /// Lets every file go once the open files pass their limit (live processes are captured
    /// again at their next sample).
    pub(crate) fn reset_past_file_limit(&mut self) {
        if self.files.len() > self.config.file_limit {
            // Processes refer to files by their place in the table: all go together.
            let mut fresh = Symbolizer::with_config(self.config.clone());
            fresh.debuginfod = self.debuginfod.take();
            fresh.stats = self.stats;
            fresh.stats.file_resets += 1;
            *self = fresh;
        }
    }
}
