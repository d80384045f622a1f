//! Where a file's names come from: its own DWARF and symbol tables, a separate debug file on
//! this host (or in the process's root), or one fetched from debuginfod, after which the
//! file is named again from it.

use std::os::unix::fs::MetadataExt;

use crate::debug_files::DebugSearch;
use crate::debuginfod::Lookup;
use crate::elf_info::ElfInfo;
use crate::files::{parent_dir, FileId, SymbolSource};
use crate::symbolizer::Symbolizer;

impl Symbolizer {
    /// Files whose debug info arrived from debuginfod are named again from it.
    pub(crate) fn take_fetched_debug_files(&mut self) {
        let Some(d) = self.debuginfod.as_mut() else {
            return;
        };
        for build_id in d.arrived() {
            if let Some(id) = self.files.by_build_id(&build_id) {
                self.release_parsed(id);
                self.files.get_mut(id).forget_locations();
            }
        }
    }

    /// Decides where a file's names come from, at its first use: its own DWARF, a separate
    /// debug file here, one fetched from debuginfod, or its own symbol tables.
    pub(crate) fn prepare(&mut self, id: FileId) {
        let file = self.files.get_mut(id);
        if file.source.is_some() || file.broken {
            return;
        }
        let info = match file.info.get_or_insert_with(|| ElfInfo::read(&file.path)) {
            Ok(info) => info.clone(),
            Err(error) => {
                tracing::warn!(module = %file.module.path, %error,
                    "cannot read symbols; frames in it are named module+offset");
                file.broken = true;
                self.stats.file_errors += 1;
                return;
            }
        };
        let mut source = SymbolSource::Itself;
        file.awaiting_debuginfo = false;
        if !info.has_dwarf {
            let search = DebugSearch {
                dirs: &self.config.debug_dirs,
                root: file.root.as_deref(),
                binary_dir: parent_dir(&file.module.path),
            };
            if let Some(found) = search.find(&info) {
                source = SymbolSource::DebugFile(found);
            } else if let (Some(d), Some(build_id)) =
                (self.debuginfod.as_mut(), file.module.build_id.as_deref())
            {
                match d.lookup(build_id) {
                    Lookup::Found(path) => source = SymbolSource::DebugFile(path),
                    Lookup::Pending => file.awaiting_debuginfo = true,
                    Lookup::Missing => {}
                }
            }
        }
        let parsed = match &source {
            SymbolSource::Itself => &file.path,
            SymbolSource::DebugFile(p) => p,
        };
        let meta = std::fs::metadata(parsed).ok();
        file.parsed_inode = meta.as_ref().map(|m| (m.dev(), m.ino()));
        if !crate::heap::counting() {
            // Nothing measures the heap: count the whole file, as blazesym maps it whole.
            file.parsed_heap = meta.as_ref().map_or(0, |m| m.len());
        }
        if matches!(source, SymbolSource::DebugFile(_)) {
            self.stats.debug_files += 1;
        }
        self.stats.files_parsed += 1;
        if file.ever_parsed {
            self.stats.reparses += 1;
        }
        file.ever_parsed = true;
        tracing::debug!(module = %file.module.path, ?source, "loading symbols");
        file.source = Some(source);
    }
}
