//! Where a probe point is in an ELF file (`--probe`): a function's entry by symbol name, or
//! a USDT probe's sites by provider and name (the `.note.stapsdt` notes of `<sys/sdt.h>`),
//! as file offsets, which is what a uprobe is attached at.

use std::fs::File;
use std::path::Path;

use object::elf::PT_LOAD;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, SectionHeader};
use object::read::ReadCache;
use object::{Endianness, Object, ObjectSection, ObjectSymbol, SymbolKind};

/// Why a probe point could not be found in a file. Messages are one line and name the fix.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a 64-bit ELF file: {reason}")]
    NotElf { path: String, reason: String },
    #[error("{symbol} is not among {path}'s symbols{stripped}")]
    NoSymbol {
        symbol: String,
        path: String,
        /// Empty, or why only part of the symbols could be searched.
        stripped: &'static str,
    },
    #[error("{symbol} in {path} is not a function defined there (an import, or data)")]
    NotAFunction { symbol: String, path: String },
    #[error("{path} has no USDT probes (no .note.stapsdt section)")]
    NoUsdt { path: String },
    #[error("{path} has no USDT probe {provider}:{name}; it has {available}")]
    NoSuchUsdt {
        path: String,
        provider: String,
        name: String,
        available: String,
    },
    #[error(
        "USDT probe {provider}:{name} in {path} is enabled by a semaphore, which emberprof \
         does not set yet: rebuild without _SDT_HAS_SEMAPHORES, or probe the function instead"
    )]
    Semaphore {
        path: String,
        provider: String,
        name: String,
    },
    #[error(
        "{path} is a Go program: a return probe breaks its goroutine stacks (Go moves them); \
         probe a USDT point or a C function it calls instead"
    )]
    Go { path: String },
    #[error("{what} of {path} at {address:#x} is in no loaded segment")]
    NoSegment {
        what: String,
        path: String,
        address: u64,
    },
}

impl TargetError {
    /// Whether trying the same file again may succeed (it could not be read now).
    pub fn is_transient(&self) -> bool {
        matches!(self, TargetError::Read { .. })
    }
}

/// One USDT probe site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsdtSite {
    /// File offset of the probe's nop.
    pub offset: u64,
}

fn open(path: &Path) -> Result<ReadCache<File>, TargetError> {
    let file = File::open(path).map_err(|source| TargetError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(ReadCache::new(file))
}

fn parse<'a>(
    path: &Path,
    data: &'a ReadCache<File>,
) -> Result<ElfFile64<'a, Endianness, &'a ReadCache<File>>, TargetError> {
    ElfFile64::parse(data).map_err(|e| TargetError::NotElf {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// The file offset of the loaded byte at link-time `address`.
fn file_offset<'a>(
    elf: &ElfFile64<'a, Endianness, &'a ReadCache<File>>,
    address: u64,
) -> Option<u64> {
    let endian = elf.endian();
    let headers = elf.elf_header().program_headers(endian, elf.data()).ok()?;
    headers.iter().find_map(|ph| {
        if ph.p_type(endian) != PT_LOAD {
            return None;
        }
        let (vaddr, size) = (ph.p_vaddr(endian), ph.p_filesz(endian));
        if !(vaddr..vaddr.saturating_add(size)).contains(&address) {
            return None;
        }
        // A corrupt header can put the segment anywhere: no offset rather than a wrap.
        (address - vaddr).checked_add(ph.p_offset(endian))
    })
}

/// The file offset of function `symbol`'s entry in the ELF file at `path`: by the full
/// symbol table, else the dynamic one (a stripped file's exports).
pub fn function_offset(path: &Path, symbol: &str) -> Result<u64, TargetError> {
    let data = open(path)?;
    let elf = parse(path, &data)?;
    let show = || path.display().to_string();
    if elf.section_by_name(".go.buildinfo").is_some() || elf.section_by_name(".gopclntab").is_some()
    {
        return Err(TargetError::Go { path: show() });
    }
    let found = elf
        .symbols()
        .find(|s| s.name() == Ok(symbol))
        .or_else(|| elf.dynamic_symbols().find(|s| s.name() == Ok(symbol)));
    let Some(sym) = found else {
        let stripped = if elf.symbols().next().is_none() {
            " (it is stripped: only its exported symbols were searched; install its debug \
             symbols into the file, or probe a USDT point)"
        } else {
            ""
        };
        return Err(TargetError::NoSymbol {
            symbol: symbol.to_string(),
            path: show(),
            stripped,
        });
    };
    if sym.kind() != SymbolKind::Text || sym.is_undefined() || sym.address() == 0 {
        return Err(TargetError::NotAFunction {
            symbol: symbol.to_string(),
            path: show(),
        });
    }
    file_offset(&elf, sym.address()).ok_or_else(|| TargetError::NoSegment {
        what: symbol.to_string(),
        path: show(),
        address: sym.address(),
    })
}

/// One `.note.stapsdt` note: where, and what.
struct UsdtNote {
    pc: u64,
    base: u64,
    semaphore: u64,
    provider: String,
    name: String,
}

/// Reads a note's description: three addresses, then provider, name and arguments, each
/// NUL-terminated.
fn usdt_note(desc: &[u8]) -> Option<UsdtNote> {
    let word = |i: usize| -> Option<u64> {
        let bytes = desc.get(i * 8..i * 8 + 8)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    };
    let (pc, base, semaphore) = (word(0)?, word(1)?, word(2)?);
    let mut strings = desc.get(24..)?.split(|b| *b == 0);
    let provider = String::from_utf8_lossy(strings.next()?).into_owned();
    let name = String::from_utf8_lossy(strings.next()?).into_owned();
    Some(UsdtNote {
        pc,
        base,
        semaphore,
        provider,
        name,
    })
}

/// The sites of USDT probe `provider:name` in the ELF file at `path` (one per expansion of
/// the probe macro; inlining can make several).
pub fn usdt_sites(path: &Path, provider: &str, name: &str) -> Result<Vec<UsdtSite>, TargetError> {
    let data = open(path)?;
    let elf = parse(path, &data)?;
    let show = || path.display().to_string();
    let endian = elf.endian();
    let Some(section) = elf.section_by_name(".note.stapsdt") else {
        return Err(TargetError::NoUsdt { path: show() });
    };
    // Prelink or a linker may move the code after the notes were written: .stapsdt.base's
    // address now against the address the notes recorded.
    let base_now = elf.section_by_name(".stapsdt.base").map(|s| s.address());
    let mut sites = Vec::new();
    let mut available = Vec::new();
    let notes = section
        .elf_section_header()
        .notes(endian, elf.data())
        .ok()
        .flatten();
    let mut notes = notes.ok_or_else(|| TargetError::NoUsdt { path: show() })?;
    while let Ok(Some(note)) = notes.next() {
        if note.name() != b"stapsdt" || note.n_type(endian) != 3 {
            continue;
        }
        let Some(n) = usdt_note(note.desc()) else {
            continue;
        };
        if n.provider != provider || n.name != name {
            if available.len() < 12 {
                let id = format!("{}:{}", n.provider, n.name);
                if !available.contains(&id) {
                    available.push(id);
                }
            }
            continue;
        }
        if n.semaphore != 0 {
            return Err(TargetError::Semaphore {
                path: show(),
                provider: provider.to_string(),
                name: name.to_string(),
            });
        }
        let pc = match base_now {
            Some(now) if n.base != 0 => n.pc.wrapping_add(now).wrapping_sub(n.base),
            _ => n.pc,
        };
        let offset = file_offset(&elf, pc).ok_or_else(|| TargetError::NoSegment {
            what: format!("USDT probe {provider}:{name}"),
            path: show(),
            address: pc,
        })?;
        sites.push(UsdtSite { offset });
    }
    if sites.is_empty() {
        return Err(TargetError::NoSuchUsdt {
            path: show(),
            provider: provider.to_string(),
            name: name.to_string(),
            available: if available.is_empty() {
                "none".to_string()
            } else {
                available.join(", ")
            },
        });
    }
    sites.dedup();
    Ok(sites)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usdt_note_is_read() {
        let mut desc = Vec::new();
        desc.extend_from_slice(&0x1234u64.to_le_bytes());
        desc.extend_from_slice(&0x2000u64.to_le_bytes());
        desc.extend_from_slice(&0u64.to_le_bytes());
        desc.extend_from_slice(b"myapp\0request\0-4@%eax\0");
        let n = usdt_note(&desc).unwrap();
        assert_eq!((n.pc, n.base, n.semaphore), (0x1234, 0x2000, 0));
        assert_eq!((n.provider.as_str(), n.name.as_str()), ("myapp", "request"));
        // Cut short: no note, no panic.
        assert!(usdt_note(&desc[..20]).is_none());
        assert!(usdt_note(&desc[..24]).is_none());
    }

    #[test]
    fn a_missing_file_and_a_non_elf_file_are_errors() {
        let e = function_offset(Path::new("/nonexistent/emberprof-test"), "main").unwrap_err();
        assert!(e
            .to_string()
            .starts_with("cannot read /nonexistent/emberprof-test"));
        let dir = std::env::temp_dir().join(format!("ep-probe-target-{}", std::process::id()));
        std::fs::write(&dir, b"#!/bin/sh\necho hi\n").unwrap();
        let e = function_offset(&dir, "main").unwrap_err();
        assert!(matches!(e, TargetError::NotElf { .. }), "{e}");
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn a_function_of_this_test_binary_is_found_in_a_loaded_segment() {
        let exe = std::env::current_exe().unwrap();
        // The test binary has its full symbol table; `main` is a function in it.
        let offset = function_offset(&exe, "main").unwrap();
        assert!(offset > 0);
        let e = function_offset(&exe, "ep_no_such_function_anywhere").unwrap_err();
        assert!(matches!(e, TargetError::NoSymbol { .. }), "{e}");
        let e = usdt_sites(&exe, "p", "n").unwrap_err();
        assert!(
            matches!(
                e,
                TargetError::NoUsdt { .. } | TargetError::NoSuchUsdt { .. }
            ),
            "{e}"
        );
    }
}
