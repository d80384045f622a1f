//! Whether a process runs CPython, and where its interpreter state is: the mapped file that
//! exports `_PyRuntime` (libpython, or the executable of a static build), its version and
//! the offsets of that version.

use std::fs::File;
use std::path::PathBuf;

use object::read::ReadCache;
use object::{Object, ObjectSection, ObjectSymbol};

use super::memory::{Memory, ProcessMemory, ReadError};
use super::offsets::{self, DebugOffsetsError, PyOffsets, DEBUG_OFFSETS_LEN};
use super::version::PyVersion;
use crate::elf_info::ElfInfo;
use crate::maps::{parse_maps, MapsEntry};

/// A CPython interpreter found in a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PythonRuntime {
    pub version: PyVersion,
    pub offsets: PyOffsets,
    /// Where `_PyRuntime` is in the process.
    pub runtime: u64,
    /// Where `PyCode_Type` is: a code object's `ob_type`.
    pub code_type: u64,
    /// The file that holds the interpreter, as the process maps it.
    pub path: String,
}

/// Why a process's interpreter cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("reading /proc/{pid}/maps: {source}")]
    Maps { pid: u32, source: std::io::Error },
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{path} exports _PyRuntime but not {symbol}")]
    MissingSymbol { path: String, symbol: &'static str },
    #[error("{path}: the version is not known (no Py_Version, no version in the name)")]
    UnknownVersion { path: String },
    #[error("CPython {version} is not supported (3.10 to 3.13 are)")]
    Unsupported { version: PyVersion },
    #[error("free-threaded CPython ({path}) is not supported")]
    FreeThreaded { path: String },
    #[error("{0}")]
    DebugOffsets(DebugOffsetsError),
    #[error(transparent)]
    Read(#[from] ReadError),
}

impl DetectError {
    /// A short label of the reason, for a metric.
    pub fn reason(&self) -> &'static str {
        match self {
            DetectError::Maps { .. } => "maps",
            DetectError::File { .. } | DetectError::MissingSymbol { .. } => "file",
            DetectError::UnknownVersion { .. } => "unknown_version",
            DetectError::Unsupported { .. } => "unsupported_version",
            DetectError::FreeThreaded { .. }
            | DetectError::DebugOffsets(DebugOffsetsError::FreeThreaded) => "free_threaded",
            DetectError::DebugOffsets(_) => "debug_offsets",
            DetectError::Read(_) => "read",
        }
    }
}

/// The symbols read from the interpreter's file (link-time addresses).
struct Symbols {
    runtime: u64,
    code_type: Option<u64>,
    version: Option<u64>,
}

/// Finds the interpreter of process `pid`: `Ok(None)` when it runs no CPython.
pub fn detect(pid: u32) -> Result<Option<PythonRuntime>, DetectError> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|source| DetectError::Maps { pid, source })?;
    let maps = parse_maps(&maps);
    // Only files named like an interpreter: reading the symbols of every mapped library of
    // every process would cost more than the rest of the symbolizer. (A program that links
    // libpython statically under another name is not found.)
    let mut seen: Vec<&str> = Vec::new();
    let mut candidates: Vec<&MapsEntry> = maps
        .iter()
        .filter(|m| m.is_file() && is_python_name(&m.path))
        .filter(|m| {
            let new = !seen.contains(&m.path.as_str());
            seen.push(&m.path);
            new
        })
        .collect();
    // libpython before the executable: pyenv's `python3.X` is a stub linked to it.
    candidates.sort_by_key(|m| !file_name(&m.path).starts_with("libpython"));
    // A file that cannot be read does not hide the next one; its error is reported if no
    // other is found.
    let mut failed = None;
    for first in candidates {
        match read_symbols(pid, first) {
            Ok(Some((symbols, bias))) => return runtime_of(pid, first, &symbols, bias).map(Some),
            Ok(None) => {}
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    failed.map_or(Ok(None), Err)
}

fn file_name(path: &str) -> &str {
    let path = path.trim_end_matches(" (deleted)");
    path.rsplit('/').next().unwrap_or(path)
}

fn is_python_name(path: &str) -> bool {
    let name = file_name(path);
    name.starts_with("libpython3") || name.starts_with("python3")
}

/// Opens a mapped file as `files.rs` does: through map_files, else the process's root.
fn open_mapped(pid: u32, m: &MapsEntry) -> Option<(File, PathBuf)> {
    let shown = m.path.trim_end_matches(" (deleted)");
    [
        PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end)),
        PathBuf::from(format!("/proc/{pid}/root{shown}")),
    ]
    .into_iter()
    .find_map(|p| File::open(&p).ok().map(|f| (f, p)))
}

/// `_PyRuntime` and friends from the file of mapping `m`, and its load bias; `None` when
/// the file does not export `_PyRuntime` (or cannot be opened: the process is gone).
fn read_symbols(pid: u32, m: &MapsEntry) -> Result<Option<(Symbols, u64)>, DetectError> {
    let Some((file, path)) = open_mapped(pid, m) else {
        return Ok(None);
    };
    let file_err = |reason: String| DetectError::File {
        path: m.path.clone(),
        reason,
    };
    let cache = ReadCache::new(file);
    let obj = object::File::parse(&cache).map_err(|e| file_err(e.to_string()))?;
    let mut runtime = None;
    let mut code_type = None;
    let mut version = None;
    for sym in obj.dynamic_symbols() {
        match sym.name() {
            Ok("_PyRuntime") => runtime = Some(sym.address()),
            Ok("PyCode_Type") => code_type = Some(sym.address()),
            Ok("Py_Version") => version = Some(sym.address()),
            _ => {}
        }
    }
    // A stripped build still has the section `_PyRuntime` is placed in (3.10+).
    let runtime = runtime.or_else(|| obj.section_by_name(".PyRuntime").map(|s| s.address()));
    let Some(runtime) = runtime else {
        return Ok(None);
    };
    let info = ElfInfo::read(&path).map_err(file_err)?;
    let Some(linked) = info.mapping_address(m.offset, m.end - m.start) else {
        return Err(file_err(format!(
            "no loadable segment holds file offset {:#x}",
            m.offset
        )));
    };
    let bias = m.start.wrapping_sub(linked);
    Ok(Some((
        Symbols {
            runtime,
            code_type,
            version,
        },
        bias,
    )))
}

fn runtime_of(
    pid: u32,
    m: &MapsEntry,
    symbols: &Symbols,
    bias: u64,
) -> Result<PythonRuntime, DetectError> {
    let mem = ProcessMemory::new(pid);
    let path = m.path.clone();
    let runtime = symbols.runtime.wrapping_add(bias);
    let Some(code_type) = symbols.code_type else {
        return Err(DetectError::MissingSymbol {
            path,
            symbol: "PyCode_Type",
        });
    };
    let from_name = PyVersion::from_file_name(file_name(&path));
    if from_name.is_some_and(|(_, free_threaded)| free_threaded) {
        return Err(DetectError::FreeThreaded { path });
    }
    let version = match symbols.version {
        Some(v) => PyVersion::from_hex(mem.u32_at(v.wrapping_add(bias))?),
        None => match from_name {
            Some((v, _)) => v,
            None => return Err(DetectError::UnknownVersion { path }),
        },
    };
    let offsets = if (version.major, version.minor) >= (3, 13) {
        // The interpreter's own table; it says which version it describes.
        let mut bytes = vec![0u8; DEBUG_OFFSETS_LEN];
        mem.read(runtime, &mut bytes)?;
        match offsets::from_debug_offsets(&bytes) {
            Ok((_, published)) => published,
            Err(DebugOffsetsError::UnknownLayout(v)) => {
                return Err(DetectError::Unsupported { version: v })
            }
            Err(e) => return Err(DetectError::DebugOffsets(e)),
        }
    } else {
        offsets::for_version(version).ok_or(DetectError::Unsupported { version })?
    };
    Ok(PythonRuntime {
        version,
        offsets,
        runtime,
        code_type: code_type.wrapping_add(bias),
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreter_files_by_name() {
        assert!(is_python_name(
            "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0"
        ));
        assert!(is_python_name(
            "/root/.pyenv/versions/3.12.1/bin/python3.12"
        ));
        assert!(is_python_name("/usr/bin/python3.11 (deleted)"));
        assert!(!is_python_name("/usr/lib/libc.so.6"));
        assert!(!is_python_name("/usr/bin/python2.7"));
    }

    #[test]
    fn a_process_without_python_is_none() {
        assert_eq!(detect(std::process::id()).unwrap(), None);
    }
}
