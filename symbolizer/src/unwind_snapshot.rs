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
use crate::unwind::{compile_file, UnwindTable};
use crate::unwind_plan::{file_key, UnwindMapping};

/// A captured process's executable file mappings with their files, for the unwind loader
/// (on a thread of its own: compiling a large table takes longer than a capture).
pub struct UnwindPlan {
    /// What image this is, as `Symbolizer::image_key` says once the snapshot is adopted.
    pub image_key: (Option<u32>, usize),
    /// As `Symbolizer::unwind_mappings` gives them (the same file keys); `file` indexes
    /// `files`.
    pub mappings: Vec<UnwindMapping>,
    files: Vec<File>,
}

impl UnwindPlan {
    /// Compiles the table of `file`; `None` if it has none.
    pub fn compile_unwind_table(&self, file: usize) -> Option<UnwindTable> {
        match compile_file(&fd_path(self.files.get(file)?)) {
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
        let mut infos: HashMap<Identity, Option<ElfInfo>> = HashMap::new();
        let mut plan = UnwindPlan {
            image_key: (self.exec_id, self.entries.len()),
            mappings: Vec::new(),
            files: Vec::new(),
        };
        for (entry, opened) in &self.entries {
            let Some(file) = opened else { continue };
            let Ok(meta) = file.metadata() else { continue };
            let identity: Identity = (meta.dev(), meta.ino(), meta.mtime(), meta.mtime_nsec());
            let info = infos
                .entry(identity)
                .or_insert_with(|| ElfInfo::read(&fd_path(file)).ok());
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
                file: plan.files.len(),
                file_key: file_key(&identity),
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
