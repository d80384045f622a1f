//! Which unwind tables a process needs: its executable file mappings, each with its file's
//! table (compiled once per file, shared by every process mapping it) and the bias that
//! turns a runtime address into the table's address. The vdso has no file: its table is
//! compiled from the image in our own memory, the same for every 64-bit process on the host.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use crate::elf_info::ElfInfo;
use crate::files::FileId;
use crate::symbolizer::Symbolizer;
use crate::unwind::{compile_bytes, compile_file, UnwindTable};
use crate::vdso::Vdso;

/// Where a mapping's table comes from, for `compile_unwind_table`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableSource {
    /// A mapped file.
    File(usize),
    /// The host's vdso image.
    Vdso,
}

/// One executable mapping with a table: a runtime address `a` in `[start, end)` is at
/// table address `a - bias` (wrapping).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnwindMapping {
    pub start: u64,
    pub end: u64,
    pub bias: u64,
    /// What to compile the table from.
    pub source: TableSource,
    /// The table's identity as one number: a file's device, inode and modification time
    /// (the same file in every process, stable while the symbolizer lets files go), or the
    /// vdso's build ID (one image for the host).
    pub file_key: u64,
}

/// A process's `[vdso]` mapping at `[start, end)`, if it is `vdso` (the same size as
/// ours: a 32-bit process maps another, left to frame pointers). Keyed by the image's
/// build ID, so that its table is compiled once for the host.
pub(crate) fn vdso_mapping(vdso: &Vdso, start: u64, end: u64) -> Option<UnwindMapping> {
    if vdso.len != end - start {
        return None;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ("[vdso]", vdso.module.build_id.as_deref(), vdso.len).hash(&mut h);
    Some(UnwindMapping {
        start,
        end,
        bias: start.wrapping_sub(vdso.link_base),
        source: TableSource::Vdso,
        file_key: h.finish(),
    })
}

/// What an image maps, as one number: `Symbolizer::image_key` of `(start, end, offset,
/// file identity)` in address order.
pub(crate) fn image_key_of<'a>(
    mappings: impl Iterator<Item = (u64, u64, u64, Option<&'a crate::files::Identity>)>,
) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for m in mappings {
        m.hash(&mut h);
    }
    h.finish()
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

    /// What `pid`'s newest image maps: it changes when the process execs or its mappings
    /// are read again and differ (a library loaded since, or one unloaded and another mapped
    /// in its place, which a count of mappings would miss), not when the same mappings are
    /// read again (the watcher's capture of a process already read for `--pid`).
    pub fn image_key(&self, pid: u32) -> Option<u64> {
        let image = self.processes.get(&pid)?.images.last()?;
        Some(image_key_of(image.mappings.iter().map(|m| {
            let identity = m.file.map(|f| &self.files.get(f).identity);
            (m.start, m.end, m.offset, identity)
        })))
    }

    /// The executable file mappings of `pid`'s newest image, with the bias that takes a
    /// runtime address to its file's table (tables are relative to their lowest address,
    /// `UnwindTable::base`, so that 32 bits hold them).
    pub fn unwind_mappings(&mut self, pid: u32) -> Vec<UnwindMapping> {
        let Some(image) = self.processes.get(&pid).and_then(|p| p.images.last()) else {
            return Vec::new();
        };
        let vdso_at: Vec<(u64, u64)> = image
            .mappings
            .iter()
            .filter(|m| {
                m.file.is_none() && m.module.as_ref().is_some_and(|md| &*md.path == "[vdso]")
            })
            .map(|m| (m.start, m.end))
            .collect();
        let wanted: Vec<(u64, u64, u64, FileId)> = image
            .mappings
            .iter()
            .filter_map(|m| Some((m.start, m.end, m.offset, m.file?)))
            .collect();
        let mut out = Vec::new();
        for (start, end) in vdso_at {
            out.extend(self.vdso_mapping(start, end));
        }
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
                source: TableSource::File(file),
                file_key,
            });
        }
        out.sort_by_key(|m| m.start);
        out
    }

    /// A process's `[vdso]` mapping at `[start, end)`, if it is the host's image.
    fn vdso_mapping(&self, start: u64, end: u64) -> Option<UnwindMapping> {
        vdso_mapping(self.vdso.get_or_init(Vdso::own).as_ref()?, start, end)
    }

    /// Compiles the unwind table of `source` (counted: once per file identity is the
    /// caller's job); `None` if it has none. Not kept: the kernel holds the copy in use.
    pub fn compile_unwind_table(&mut self, source: TableSource) -> Option<UnwindTable> {
        self.stats.unwind_tables += 1;
        let (compiled, module) = match source {
            TableSource::File(file) => {
                let f = self.files.get(file);
                (compile_file(&f.path), f.module.path.clone())
            }
            TableSource::Vdso => {
                let vdso = self.vdso.get_or_init(Vdso::own).as_ref()?;
                (compile_bytes(&vdso.image), vdso.module.path.clone())
            }
        };
        match compiled {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::debug!(module = %module, error = %e, "no unwind table");
                None
            }
        }
    }
}
