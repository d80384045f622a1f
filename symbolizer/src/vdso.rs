//! Naming frames in the vdso, the kernel's small shared object mapped into every process
//! (`clock_gettime`, `gettimeofday`, `getcpu`, …). It has no file: the image is read once
//! from our own memory. Every 64-bit process on the host maps the same image; a process
//! whose `[vdso]` mapping has another size (a 32-bit one) is left unnamed, and is walked by
//! frame pointers rather than by the image's unwind table.

use std::io::Read;
use std::sync::Arc;

use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

use emberprof_model::Module;

/// The vdso's functions, sorted by address (link-time, which is the offset in the mapping:
/// the image is linked at 0).
pub(crate) struct Vdso {
    pub(crate) module: Arc<Module>,
    /// Bytes of the image (the mapping's length), to tell a process's vdso is this one.
    pub(crate) len: u64,
    /// The link-time address of the mapping's first byte (0 on x86-64).
    pub(crate) link_base: u64,
    /// The image itself (two pages), for its unwind table.
    pub(crate) image: Vec<u8>,
    symbols: Vec<(u64, u64, Arc<str>)>,
}

impl Vdso {
    /// Our own vdso; `None` if it cannot be found or read (then frames there stay unnamed).
    pub(crate) fn own() -> Option<Vdso> {
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        let m = crate::parse_maps(&maps)
            .into_iter()
            .find(|m| m.path == "[vdso]")?;
        let len = m.end - m.start;
        let mut image = vec![0; usize::try_from(len).ok()?];
        let mut mem = std::fs::File::open("/proc/self/mem").ok()?;
        std::io::Seek::seek(&mut mem, std::io::SeekFrom::Start(m.start)).ok()?;
        mem.read_exact(&mut image).ok()?;
        let vdso = Vdso::parse(image, len);
        if vdso.is_none() {
            tracing::debug!("cannot read the vdso's symbols; frames in it stay unnamed");
        }
        vdso
    }

    /// The functions of a vdso image.
    pub(crate) fn parse(image: Vec<u8>, len: u64) -> Option<Vdso> {
        let obj = object::File::parse(&*image).ok()?;
        let build_id = obj
            .build_id()
            .ok()
            .flatten()
            .map(|b| Arc::from(crate::elf_info::hex(b)));
        let mut symbols: Vec<(u64, u64, Arc<str>)> = obj
            .dynamic_symbols()
            .chain(obj.symbols())
            .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
            .filter_map(|s| Some((s.address(), s.size(), Arc::from(s.name().ok()?))))
            .collect();
        // Each function is exported twice (`clock_gettime` and `__vdso_clock_gettime`):
        // keep the `__vdso_` name, as perf shows it, so that it is not taken for libc's.
        symbols.sort_by(|a, b| {
            (a.0, !a.2.starts_with("__vdso_"), &a.2).cmp(&(b.0, !b.2.starts_with("__vdso_"), &b.2))
        });
        symbols.dedup_by_key(|s| s.0);
        let link_base = obj
            .segments()
            .find(|s| s.file_range().0 == 0)
            .map_or(0, |s| s.address());
        drop(obj);
        (!symbols.is_empty()).then(|| Vdso {
            module: Arc::new(Module {
                path: Arc::from("[vdso]"),
                build_id,
            }),
            len,
            link_base,
            image,
            symbols,
        })
    }

    /// The function at `offset` in the mapping.
    pub(crate) fn lookup(&self, offset: u64) -> Option<Arc<str>> {
        let i = self
            .symbols
            .partition_point(|s| s.0 <= offset)
            .checked_sub(1)?;
        let (start, size, name) = &self.symbols[i];
        (offset < start + size).then(|| name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_vdso_names_clock_gettime_by_its_vdso_name() {
        let vdso = Vdso::own().expect("x86-64 Linux maps a vdso with symbols");
        let (start, size, name) = vdso
            .symbols
            .iter()
            .find(|s| s.2.contains("clock_gettime"))
            .expect("clock_gettime is in the vdso")
            .clone();
        assert_eq!(&*name, "__vdso_clock_gettime");
        assert_eq!(vdso.lookup(start).as_deref(), Some("__vdso_clock_gettime"));
        assert_eq!(
            vdso.lookup(start + size - 1).as_deref(),
            Some("__vdso_clock_gettime")
        );
        assert!(
            vdso.module.build_id.is_some(),
            "the kernel builds it with a build ID"
        );
        assert_eq!(vdso.lookup(vdso.len + 1), None);
    }

    #[test]
    fn an_image_that_is_not_elf_gives_no_table() {
        assert!(Vdso::parse(b"nonsense".to_vec(), 8).is_none());
    }
}
