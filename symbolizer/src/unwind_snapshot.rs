//! Which unwind tables a process needs, from the snapshot captured when it was announced:
//! a new process is listed in the kernel's walker right then, not when the symbolizer
//! (busy on the main thread) takes the snapshot over.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::elf_info::ElfInfo;
use crate::files::Identity;
use crate::process::ProcessSnapshot;
use crate::unwind::{compile_bytes, compile_file, UnwindTable};
use crate::unwind_plan::{file_key, image_key_of, vdso_mapping, TableSource, UnwindMapping};
use crate::vdso::Vdso;

/// Our vdso, read once for every plan (the symbolizer keeps its own).
static VDSO: std::sync::OnceLock<Option<Vdso>> = std::sync::OnceLock::new();

/// The ELF headers of files met in earlier plans, by identity: a host starting many
/// processes of the same few files would otherwise read the same headers (a fraction of a
/// millisecond each) for every process. `None`: not an ELF file we can place.
static ELF_INFOS: std::sync::Mutex<Option<HashMap<Identity, Option<std::sync::Arc<ElfInfo>>>>> =
    std::sync::Mutex::new(None);

/// Files whose headers are kept; past that the cache starts again (a file's identity
/// changes when it is replaced, so old entries would only be wasted room).
const ELF_INFO_LIMIT: usize = 4096;

/// The headers of `file` (identity `identity`), read once per identity.
fn elf_info(file: &File, identity: Identity) -> Option<std::sync::Arc<ElfInfo>> {
    let mut cache = ELF_INFOS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(info) = cache.get(&identity) {
        return info.clone();
    }
    if cache.len() >= ELF_INFO_LIMIT {
        cache.clear();
    }
    let info = ElfInfo::read(&fd_path(file)).ok().map(std::sync::Arc::new);
    cache.insert(identity, info.clone());
    info
}

/// A captured process's executable file mappings with their files, for the unwind loader
/// (on a thread of its own: compiling a large table takes longer than a capture).
pub struct UnwindPlan {
    /// What image this is, as `Symbolizer::image_key` says once the snapshot is adopted.
    pub image_key: u64,
    /// As `Symbolizer::unwind_mappings` gives them (the same file keys); a file `source`
    /// indexes the plan's own files.
    pub mappings: Vec<UnwindMapping>,
    files: Vec<File>,
}

impl UnwindPlan {
    /// Compiles the table `source` names; `None` if it has none.
    pub fn compile_unwind_table(&self, source: TableSource) -> Option<UnwindTable> {
        let compiled = match source {
            TableSource::File(file) => compile_file(&fd_path(self.files.get(file)?)),
            TableSource::Vdso => compile_bytes(&VDSO.get_or_init(Vdso::own).as_ref()?.image),
        };
        match compiled {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::debug!(error = %e, "no unwind table");
                None
            }
        }
    }
}

impl ProcessSnapshot {
    /// The unwind plan of a live process (its files opened again, so that the snapshot can
    /// go to the symbolizer meanwhile); `None` once it is gone.
    pub fn unwind_plan(&self) -> Option<UnwindPlan> {
        if !self.alive {
            return None;
        }
        let mut entries: Vec<(&crate::maps::MapsEntry, Option<(&File, Identity)>)> = self
            .entries
            .iter()
            .map(|(e, opened)| {
                let identity = opened.as_ref().filter(|_| e.is_file()).and_then(|f| {
                    let meta = f.metadata().ok()?;
                    Some((f, (meta.dev(), meta.ino(), meta.mtime(), meta.mtime_nsec())))
                });
                (e, identity)
            })
            .collect();
        entries.sort_by_key(|(e, _)| e.start);
        let mut plan = UnwindPlan {
            image_key: image_key_of(
                entries
                    .iter()
                    .map(|(e, f)| (e.start, e.end, e.offset, f.as_ref().map(|(_, i)| i))),
            ),
            mappings: Vec::new(),
            files: Vec::new(),
        };
        for (entry, opened) in &entries {
            if entry.path == "[vdso]" {
                if let Some(vdso) = VDSO.get_or_init(Vdso::own) {
                    plan.mappings
                        .extend(vdso_mapping(vdso, entry.start, entry.end));
                }
                continue;
            }
            let Some((file, identity)) = opened else {
                continue;
            };
            let info = elf_info(file, *identity);
            let Some(vaddr) = info.as_ref().and_then(|i| {
                i.mapping_address(entry.offset, entry.end.saturating_sub(entry.start))
            }) else {
                continue;
            };
            let Ok(own) = file.try_clone() else { continue };
            plan.mappings.push(UnwindMapping {
                start: entry.start,
                end: entry.end,
                bias: entry.start.wrapping_sub(vaddr),
                source: TableSource::File(plan.files.len()),
                file_key: file_key(identity),
            });
            plan.files.push(own);
        }
        Some(plan)
    }
}

/// The open file by its descriptor: it stays readable after the process is gone.
fn fd_path(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_files_headers_are_read_once_per_identity() {
        let exe = std::env::current_exe().unwrap();
        let file = File::open(&exe).unwrap();
        let meta = file.metadata().unwrap();
        let identity = (meta.dev(), meta.ino(), meta.mtime(), meta.mtime_nsec());
        let first = elf_info(&file, identity).expect("our own executable is ELF");
        let again = elf_info(&file, identity).unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &again));
        assert!(!first.segments.is_empty());
    }
}
