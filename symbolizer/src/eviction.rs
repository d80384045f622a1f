//! Keeping the caches within their bounds: past the byte bound the files parsed least
//! recently let their parsed state go, then, if needed, the files used least recently their
//! locations; past the file limit every file goes.

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

    /// Bytes the caches hold now: each file's parsed state (heap and resident mapped
    /// pages) and locations, kernel locations and symbols.
    pub(crate) fn cache_bytes(&self) -> u64 {
        let files: u64 = (0..self.files.len())
            .map(|id| self.files.get(id).bytes())
            .sum();
        files + self.kernel_cache.len() as u64 * LOCATION_BYTES + self.kallsyms.bytes()
    }

    /// Lets blazesym's parsed state of a file go (heap and mapping); its locations stay.
    pub(crate) fn release_parsed(&mut self, id: FileId) {
        let file = self.files.get_mut(id);
        let path = match &file.source {
            Some(SymbolSource::DebugFile(p)) => Some(p.clone()),
            Some(SymbolSource::Itself) => Some(file.path.clone()),
            None => None,
        };
        file.release_parsed();
        if let Some(path) = path {
            let evict =
                blazesym::symbolize::evict::Evict::Elf(blazesym::symbolize::evict::Elf::new(path));
            if let Err(e) = self.blaze.evict(&evict) {
                tracing::debug!(error = %e, "cannot evict parsed file");
            }
        }
    }

    /// Gives back the pages of parsed files that blazesym touched in this call. They were
    /// read in place and are not needed to answer from the parsed state; whatever is read
    /// next faults in again from the page cache (which belongs to no process). What stays
    /// resident (a file also mapped otherwise, e.g. a library we run) is counted.
    fn drop_mapped_pages(&mut self) {
        // Only files blazesym read in this call can have pages resident again: most drains
        // are answered from the location cache and need no look at smaps.
        let tick = self.tick;
        let mut parsed = self
            .files
            .iter_mut()
            .filter(|(_, f)| f.is_parsed() && f.last_parsed == tick)
            .peekable();
        if parsed.peek().is_none() {
            return;
        }
        let mut mapped = crate::resident::mapped_files();
        let mut touched = 0;
        for (_, f) in parsed {
            let Some(m) = f.parsed_inode.and_then(|i| mapped.remove(&i)) else {
                f.resident = 0;
                continue;
            };
            touched += m.resident;
            for range in &m.shared_read_only {
                crate::resident::drop_pages(*range);
            }
            f.resident = if m.shared_read_only.is_empty() {
                m.resident
            } else {
                0
            };
        }
        self.stats.mapped_peak_bytes = self.stats.mapped_peak_bytes.max(touched);
    }

    /// Keeps the caches within their bound. Parsed state goes first, least recently
    /// parsed first: the locations already resolved keep answering, and only an address
    /// never seen before parses the file again. If that is not enough, the locations of
    /// the least recently used files go too.
    pub(crate) fn evict_to_bound(&mut self) {
        self.drop_mapped_pages();
        if self.cache_bytes() > self.config.cache_bytes {
            self.let_go_to_bound();
            crate::heap::give_back_freed();
        }
    }

    fn let_go_to_bound(&mut self) {
        let bound = self.config.cache_bytes;
        let mut total = self.cache_bytes();
        let mut parsed: Vec<(u64, FileId, u64)> = self
            .files
            .iter_mut()
            .filter(|(_, f)| f.is_parsed())
            .map(|(id, f)| (f.last_parsed, id, f.parsed_bytes()))
            .collect();
        parsed.sort_unstable();
        for (_, id, bytes) in parsed {
            if total <= bound {
                return;
            }
            self.release_parsed(id);
            self.stats.parsed_released += 1;
            total = total.saturating_sub(bytes);
        }
        let mut located: Vec<(u64, FileId, u64)> = self
            .files
            .iter_mut()
            .filter(|(_, f)| !f.locations.is_empty())
            .map(|(id, f)| (f.last_used, id, f.locations_bytes()))
            .collect();
        located.sort_unstable();
        for (_, id, bytes) in located {
            if total <= bound {
                return;
            }
            self.files.get_mut(id).forget_locations();
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
