//! Code objects read out of a process: the names, file and line table a Python frame is
//! named by.

use super::linetable::{line_locations, line_pep626};
use super::memory::{Memory, ReadError};
use super::offsets::{InstrKind, PyOffsets, OB_TYPE};
use super::strings::{read_bytes, read_str, StrError};

/// Why a code object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{what}: {source}")]
    Str {
        what: &'static str,
        source: StrError,
    },
    #[error("not a code object (its type is at {0:#x})")]
    NotCode(u64),
}

/// Fields that tell two code objects at the same address apart (a freed one and a new one):
/// argument count, flags, first line.
pub type Fingerprint = (u32, u32, u32);

/// A code object's names, file and line table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeInfo {
    /// `co_name`.
    pub name: String,
    /// `co_qualname` (3.11+), else `co_name`.
    pub qualname: String,
    pub filename: String,
    pub first_line: u32,
    pub fingerprint: Fingerprint,
    linetable: Vec<u8>,
    /// 3.10's table format (PEP 626 pairs) rather than 3.11's location table.
    pep626: bool,
}

/// The fingerprint of the code object at `addr`, to check a cached name: one read of the
/// bytes that span its three fields (they lie within 28 bytes in every version).
pub fn fingerprint(
    mem: &impl Memory,
    off: &PyOffsets,
    addr: u64,
) -> Result<Fingerprint, ReadError> {
    let fields = [off.code_argcount, off.code_flags, off.code_firstlineno];
    let lo = fields.iter().copied().min().unwrap_or(0);
    let hi = fields.iter().copied().max().unwrap_or(0) + 4;
    let mut buf = [0u8; 64];
    let span = usize::try_from(hi - lo).unwrap_or(usize::MAX);
    let Some(bytes) = buf.get_mut(..span) else {
        // Fields far apart (no known version): one read each.
        return Ok((
            mem.u32_at(addr.wrapping_add(off.code_argcount))?,
            mem.u32_at(addr.wrapping_add(off.code_flags))?,
            mem.u32_at(addr.wrapping_add(off.code_firstlineno))?,
        ));
    };
    mem.read(addr.wrapping_add(lo), bytes)?;
    let at = |field: u64| {
        let i = (field - lo) as usize;
        u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]])
    };
    Ok((
        at(off.code_argcount),
        at(off.code_flags),
        at(off.code_firstlineno),
    ))
}

impl CodeInfo {
    /// Reads the code object at `addr`; `code_type` is the process's `PyCode_Type`.
    pub fn read(
        mem: &impl Memory,
        off: &PyOffsets,
        code_type: u64,
        addr: u64,
    ) -> Result<CodeInfo, CodeError> {
        let ty = mem.u64_at(addr.wrapping_add(OB_TYPE))?;
        if ty != code_type {
            return Err(CodeError::NotCode(ty));
        }
        let str_at = |field: u64, what: &'static str| -> Result<String, CodeError> {
            let ptr = mem.u64_at(addr.wrapping_add(field))?;
            read_str(mem, off, ptr).map_err(|source| CodeError::Str { what, source })
        };
        let name = str_at(off.code_name, "co_name")?;
        let qualname = match off.code_qualname {
            Some(q) => str_at(q, "co_qualname")?,
            None => name.clone(),
        };
        let filename = str_at(off.code_filename, "co_filename")?;
        let table = mem.u64_at(addr.wrapping_add(off.code_linetable))?;
        let linetable = read_bytes(mem, off, table).map_err(|source| CodeError::Str {
            what: "co_linetable",
            source,
        })?;
        let fingerprint = fingerprint(mem, off, addr)?;
        Ok(CodeInfo {
            name,
            qualname,
            filename,
            first_line: fingerprint.2,
            fingerprint,
            linetable,
            pep626: off.instr_kind == InstrKind::LastIndex,
        })
    }

    /// The line of instruction `index` (code units; negative before the first instruction,
    /// which is the definition's line).
    pub fn line(&self, index: i64) -> u32 {
        let Ok(index) = u64::try_from(index) else {
            return self.first_line;
        };
        let line = if self.pep626 {
            line_pep626(&self.linetable, self.first_line, 2 * index)
        } else {
            line_locations(&self.linetable, self.first_line, index)
        };
        line.unwrap_or(self.first_line)
    }
}

/// The instruction index a frame's position field holds: `f_lasti` as is (3.10), or a
/// pointer into the code object's inline bytecode turned into code units (3.11+).
pub fn instruction_index(off: &PyOffsets, code_addr: u64, raw: u64) -> i64 {
    match (off.instr_kind, off.code_adaptive) {
        (InstrKind::LastIndex, _) => i64::from(raw as u32 as i32),
        (_, Some(adaptive)) => {
            let start = code_addr.wrapping_add(adaptive);
            (raw.wrapping_sub(start) as i64) / 2
        }
        (_, None) => -1,
    }
}
