//! What the symbolizer needs to know of an ELF file before symbolizing in it: its build ID,
//! its debug link, whether it carries its own debug info, and its loadable segments.

use std::fs::File;
use std::path::Path;

use object::read::ReadCache;
use object::{Object, ObjectSection, ObjectSegment};

/// A loadable segment: where its bytes are in the file and where they are in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    pub(crate) file_offset: u64,
    pub(crate) file_size: u64,
    pub(crate) vaddr: u64,
}

/// The parts of an ELF header and section table the symbolizer uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ElfInfo {
    pub(crate) build_id: Option<Vec<u8>>,
    /// `.gnu_debuglink`: the debug file's name and its CRC32.
    pub(crate) debug_link: Option<(String, u32)>,
    /// Whether `.debug_info` is present (possibly compressed).
    pub(crate) has_dwarf: bool,
    /// Whether `.symtab` is present (stripped files keep only `.dynsym`).
    pub(crate) has_symtab: bool,
    pub(crate) segments: Vec<Segment>,
}

impl ElfInfo {
    /// Reads the headers of the ELF file at `path`, touching only the parts it needs.
    pub(crate) fn read(path: &Path) -> Result<ElfInfo, String> {
        let file = File::open(path).map_err(|e| e.to_string())?;
        let cache = ReadCache::new(file);
        let obj = object::File::parse(&cache).map_err(|e| e.to_string())?;
        let build_id = obj.build_id().ok().flatten().map(<[u8]>::to_vec);
        let debug_link = obj
            .gnu_debuglink()
            .ok()
            .flatten()
            .map(|(name, crc)| (String::from_utf8_lossy(name).into_owned(), crc));
        let has_dwarf = obj
            .section_by_name(".debug_info")
            .or_else(|| obj.section_by_name(".zdebug_info"))
            .is_some_and(|s| s.size() > 0 && s.file_range().is_some());
        let has_symtab = obj.symbol_table().is_some();
        let segments = obj
            .segments()
            .filter_map(|s| {
                let (file_offset, file_size) = s.file_range();
                (file_size > 0).then_some(Segment {
                    file_offset,
                    file_size,
                    vaddr: s.address(),
                })
            })
            .collect();
        Ok(ElfInfo {
            build_id,
            debug_link,
            has_dwarf,
            has_symtab,
            segments,
        })
    }

    /// The link-time address of a file offset, which is what a separate debug file (same
    /// layout, no code bytes) is indexed by.
    pub(crate) fn virtual_address(&self, file_offset: u64) -> Option<u64> {
        self.placed(file_offset).map(|(vaddr, _)| vaddr)
    }

    /// The link-time address of a file offset and the segment holding it.
    pub(crate) fn placed(&self, file_offset: u64) -> Option<(u64, emberprof_model::Segment)> {
        let s = self
            .segments
            .iter()
            .find(|s| file_offset >= s.file_offset && file_offset - s.file_offset < s.file_size)?;
        let segment = emberprof_model::Segment {
            start: s.vaddr,
            limit: s.vaddr.saturating_add(s.file_size),
            file_offset: s.file_offset,
        };
        Some((file_offset - s.file_offset + s.vaddr, segment))
    }

    /// The link-time address of the first byte of a mapping of `len` bytes from
    /// `file_offset`, placed by the segment it maps the most of: a mapping starts at a page
    /// boundary, and LLD starts a segment inside the page that ends the one before it, so
    /// the offset alone may lie in the wrong segment.
    pub(crate) fn mapping_address(&self, file_offset: u64, len: u64) -> Option<u64> {
        let end = file_offset.saturating_add(len);
        let s = self
            .segments
            .iter()
            .filter_map(|s| {
                let lo = file_offset.max(s.file_offset);
                let hi = end.min(s.file_offset.saturating_add(s.file_size));
                (hi > lo).then(|| (hi - lo, s))
            })
            .max_by_key(|(overlap, _)| *overlap)?
            .1;
        Some(
            s.vaddr
                .wrapping_sub(s.file_offset)
                .wrapping_add(file_offset),
        )
    }
}

/// Lower-case hex of a build ID, as debug directories and debuginfod name it.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_executable() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let info = ElfInfo::read(&exe).unwrap();
        assert!(info.build_id.as_ref().is_some_and(|b| b.len() >= 8));
        assert!(info.has_symtab && info.has_dwarf);
        assert!(!info.segments.is_empty());
        // Our own function's runtime address minus the load bias is its link-time address.
        let first = info.segments[0];
        assert_eq!(info.virtual_address(first.file_offset), Some(first.vaddr));
        assert_eq!(info.virtual_address(u64::MAX), None);
    }

    /// The layout rustc's LLD gives a PIE (the Rust test workload's headers): code from
    /// 0x154a0 at 0x164a0, mapped from the page at 0x15000 to 0x16000.
    #[test]
    fn a_mapping_is_placed_by_the_segment_it_maps_most_of() {
        let seg = |file_offset, file_size, vaddr| Segment {
            file_offset,
            file_size,
            vaddr,
        };
        let info = ElfInfo {
            segments: vec![
                seg(0, 0x1549c, 0),
                seg(0x154a0, 0x41660, 0x164a0),
                seg(0x56b00, 0x2b40, 0x58b00),
                seg(0x59640, 0x9c8, 0x5c640),
            ],
            ..ElfInfo::default()
        };
        assert_eq!(info.mapping_address(0, 0x16000), Some(0));
        assert_eq!(info.mapping_address(0x15000, 0x42000), Some(0x16000));
        // The offset alone lies in the read-only segment.
        assert_eq!(info.virtual_address(0x15000), Some(0x15000));
        assert_eq!(info.mapping_address(0x56000, 0x4000), Some(0x58000));
        assert_eq!(info.mapping_address(0x59000, 0x2000), Some(0x5c000));
        assert_eq!(info.mapping_address(0x60000, 0x1000), None);
    }

    #[test]
    fn corrupt_file_is_an_error_not_a_panic() {
        let path = std::env::temp_dir().join(format!("ep-elfinfo-{}", std::process::id()));
        let mut junk = b"\x7fELF\x02\x01\x01".to_vec();
        junk.resize(300, 0xa5);
        std::fs::write(&path, &junk).unwrap();
        assert!(ElfInfo::read(&path).is_err());
        let _ = std::fs::remove_file(&path);
    }
}
