//! Naming user code through blazesym: file offsets of one ELF file, looked up in the symbol
//! source chosen for it (symbol_source.rs), become locations with their inlined frames.

use std::sync::Arc;
use std::time::Instant;

use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{Input, Sym, Symbolized};

use crate::files::{FileId, SymbolSource};
use crate::heap::HeapDelta;
use crate::symbolizer::Symbolizer;
use emberprof_model::{Frame, FrameKind, Location};

impl Symbolizer {
    /// Names for file offsets of one file; unnamed (module+offset) where nothing is known.
    pub(crate) fn symbolize_in_file(&mut self, id: FileId, offsets: &[u64]) -> Vec<Arc<Location>> {
        let cold = !self.files.get(id).is_parsed();
        let started = Instant::now();
        let whole = HeapDelta::start();
        self.prepare(id);
        let file = self.files.get(id);
        let module = file.module.clone();
        let results = match (&file.source, &file.info) {
            (_, _) if file.broken => None,
            (Some(SymbolSource::Itself), _) => {
                let elf = Elf::new(file.path.clone());
                Some(
                    self.blaze
                        .symbolize(&Source::Elf(elf), Input::FileOffset(offsets)),
                )
            }
            (Some(SymbolSource::DebugFile(path)), Some(Ok(info))) => {
                // The debug file has the binary's layout but no code bytes: it is indexed by
                // link-time address. Offsets outside every segment get no name.
                let vaddrs: Vec<u64> = offsets
                    .iter()
                    .map(|&o| info.virtual_address(o).unwrap_or(0))
                    .collect();
                let elf = Elf::new(path.clone());
                let r = self
                    .blaze
                    .symbolize(&Source::Elf(elf), Input::VirtOffset(&vaddrs));
                Some(r.map(|mut r| {
                    for (i, &o) in offsets.iter().enumerate() {
                        if info.virtual_address(o).is_none() {
                            if let Some(slot) = r.get_mut(i) {
                                *slot = Symbolized::Unknown(
                                    blazesym::symbolize::Reason::InvalidFileOffset,
                                );
                            }
                        }
                    }
                    r
                }))
            }
            _ => None,
        };
        let results = match results.map(|r| checked(r, offsets.len())) {
            Some(Ok(r)) => r,
            Some(Err(error)) => {
                tracing::warn!(module = %module.path, %error,
                    "cannot read symbols; frames in it are named module+offset");
                self.files.get_mut(id).broken = true;
                self.stats.file_errors += 1;
                self.stats.addresses_unreadable += offsets.len() as u64;
                Vec::new()
            }
            None => {
                self.stats.addresses_unreadable += offsets.len() as u64;
                Vec::new()
            }
        };
        if cold {
            self.stats.parse_ns += started.elapsed().as_nanos() as u64;
        }
        let made = HeapDelta::start();
        let located = self.locations_of(id, offsets, &results);
        let location_heap = made.kept();
        drop(results);
        // What blazesym kept: all this call kept, less the locations it returns.
        let parse_heap = whole.kept() - location_heap;
        let file = self.files.get_mut(id);
        if crate::heap::counting() {
            file.parsed_heap = file.parsed_heap.saturating_add_signed(parse_heap);
        }
        file.locations_heap = file.locations_heap.saturating_add_signed(location_heap);
        located
    }

    /// Locations of `offsets` in file `id`, named from blazesym's `results`.
    fn locations_of(
        &self,
        id: FileId,
        offsets: &[u64],
        results: &[Symbolized<'_>],
    ) -> Vec<Arc<Location>> {
        let module = self.files.get(id).module.clone();
        // Addresses go out as link-time addresses in their segment (file offsets when the
        // headers could not be read): the same in every process, and what a backend
        // symbolizer looks up by build ID.
        let info = match &self.files.get(id).info {
            Some(Ok(info)) => Some(info),
            _ => None,
        };
        offsets
            .iter()
            .enumerate()
            .map(|(i, &offset)| {
                let (address, segment) = match info.and_then(|info| info.placed(offset)) {
                    Some((vaddr, segment)) => (vaddr, Some(segment)),
                    None => (offset, None),
                };
                let frames = match results.get(i) {
                    Some(Symbolized::Sym(sym)) => frames_of(sym),
                    _ => Vec::new(),
                };
                Arc::new(Location {
                    kind: FrameKind::Native,
                    module: Some(module.clone()),
                    address,
                    segment,
                    frames,
                })
            })
            .collect()
    }
}

/// blazesym's answer for a batch, or why the whole batch failed.
fn checked<'a>(
    results: blazesym::Result<Vec<Symbolized<'a>>>,
    expected: usize,
) -> Result<Vec<Symbolized<'a>>, String> {
    match results {
        Ok(r) if r.len() == expected => Ok(r),
        Ok(r) => Err(format!("{} results for {expected} addresses", r.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// The frames of one symbol, innermost inlined function first.
fn frames_of(sym: &Sym<'_>) -> Vec<Frame> {
    let frame = |name: &str, info: Option<&blazesym::symbolize::CodeInfo<'_>>| Frame {
        function: Arc::from(name),
        file: info.map(|c| Arc::from(c.to_path().to_string_lossy().as_ref())),
        line: info.and_then(|c| c.line).unwrap_or(0),
    };
    let mut frames: Vec<Frame> = sym
        .inlined
        .iter()
        .rev()
        .map(|f| frame(&f.name, f.code_info.as_ref()))
        .collect();
    frames.push(frame(&sym.name, sym.code_info.as_deref()));
    frames
}
