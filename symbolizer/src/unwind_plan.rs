//! Which unwind tables a process needs: its executable file mappings, each with its file's
//! table (compiled once per file, shared by every process mapping it) and the bias that
//! turns a runtime address into the table's address.

use std::collections::HashSet;

use crate::elf_info::ElfInfo;
use crate::files::FileId;
use crate::symbolizer::Symbolizer;
use crate::unwind::{compile_file, UnwindTable};

/// One executable mapping with a table: a runtime address `a` in `[start, end)` is at
/// table address `a - bias` (wrapping).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnwindMapping {
    pub start: u64,
    pub end: u64,
    pub bias: u64,
    /// The file, for `compile_unwind_table`.
    pub file: usize,
    /// The file's identity (device, inode, modification time) as one number: the same
    /// file in every process, stable while the symbolizer lets files go.
    pub file_key: u64,
}

/// A file identity (device, inode, modification time) as one number.
pub(crate) fn file_key(identity: &crate::files::Identity) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(identity, &mut h);
    std::hash::Hasher::finish(&h)
}

impl Symbolizer {
    /// The processes whose mappings are held now.
    pub fn pids(&self) -> HashSet<u32> {
        self.processes.keys().copied().collect()
    }

    /// What `pid`'s newest image is: it changes when the process execs or its mappings are
    /// read again (a library loaded since).
    pub fn image_key(&self, pid: u32) -> Option<(Option<u32>, usize)> {
        let image = self.processes.get(&pid)?.images.last()?;
        Some((image.exec_id, image.mappings.len()))
    }

    /// The executable file mappings of `pid`'s newest image, with the bias that takes a
    /// runtime address to its file's table (tables are relative to their lowest address,
    /// `UnwindTable::base`, so that 32 bits hold them).
    pub fn unwind_mappings(&mut self, pid: u32) -> Vec<UnwindMapping> {
        let Some(image) = self.processes.get(&pid).and_then(|p| p.images.last()) else {
            return Vec::new();
        };
        let wanted: Vec<(u64, u64, u64, FileId)> = image
            .mappings
            .iter()
            .filter_map(|m| Some((m.start, m.end, m.offset, m.file?)))
            .collect();
        let mut out = Vec::new();
        for (start, end, offset, file) in wanted {
            let f = self.files.get_mut(file);
            let info = f.info.get_or_insert_with(|| ElfInfo::read(&f.path));
            let Some(vaddr) = info
                .as_ref()
                .ok()
                .and_then(|i| i.mapping_address(offset, end.saturating_sub(start)))
            else {
                continue;
            };
            let file_key = file_key(&f.identity);
            out.push(UnwindMapping {
                start,
                end,
                // a - start + offset is the file offset; its link-time address is that
                // plus (vaddr - offset).
                bias: start.wrapping_sub(vaddr),
                file,
                file_key,
            });
        }
        out
    }

    /// Compiles the unwind table of `file` (counted: once per file identity is the
    /// caller's job); `None` if it has none. Not kept: the kernel holds the copy in use.
    pub fn compile_unwind_table(&mut self, file: usize) -> Option<UnwindTable> {
        let f = self.files.get(file);
        self.stats.unwind_tables += 1;
        match compile_file(&f.path) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::debug!(module = %f.module.path, error = %e, "no unwind table");
                None
            }
        }
    }
}
