//! Python `str` and `bytes` objects read out of a process.

use super::memory::{Memory, ReadError};
use super::offsets::PyOffsets;

/// Longest string read, in code points: names and paths are far shorter; a garbage length
/// read from a reused address must not allocate much.
pub const MAX_STR_CHARS: u64 = 4096;

/// Longest bytes object read (line tables).
pub const MAX_BYTES: u64 = 1 << 20;

/// Why a string or bytes object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StrError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("not a compact string (state {0:#x})")]
    NotCompact(u32),
    #[error("string of {0} characters (longer than the limit)")]
    TooLong(u64),
    #[error("character width {0}")]
    BadKind(u32),
    #[error("bytes object of {0} bytes (longer than the limit)")]
    TooManyBytes(u64),
}

/// The `str` object at `addr`.
pub fn read_str(mem: &impl Memory, off: &PyOffsets, addr: u64) -> Result<String, StrError> {
    let length = mem.u64_at(addr.wrapping_add(off.str_length))?;
    let state = mem.u32_at(addr.wrapping_add(off.str_state))?;
    if length > MAX_STR_CHARS {
        return Err(StrError::TooLong(length));
    }
    let kind = (state >> 2) & 7;
    let compact = state & (1 << 5) != 0;
    let ascii = state & (1 << 6) != 0;
    if !compact {
        return Err(StrError::NotCompact(state));
    }
    if ascii {
        let mut buf = vec![0u8; length as usize];
        mem.read(addr.wrapping_add(off.str_ascii_data), &mut buf)?;
        return Ok(buf.iter().map(|&b| char::from(b & 0x7f)).collect());
    }
    if !matches!(kind, 1 | 2 | 4) {
        return Err(StrError::BadKind(kind));
    }
    let mut buf = vec![0u8; (length * u64::from(kind)) as usize];
    mem.read(addr.wrapping_add(off.str_compact_data), &mut buf)?;
    Ok(match kind {
        1 => buf.iter().map(|&b| char::from(b)).collect(),
        2 => buf
            .chunks_exact(2)
            .map(|c| {
                char::from_u32(u32::from(u16::from_le_bytes([c[0], c[1]]))).unwrap_or('\u{fffd}')
            })
            .collect(),
        _ => buf
            .chunks_exact(4)
            .map(|c| {
                char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])).unwrap_or('\u{fffd}')
            })
            .collect(),
    })
}

/// The contents of the `bytes` object at `addr`.
pub fn read_bytes(mem: &impl Memory, off: &PyOffsets, addr: u64) -> Result<Vec<u8>, StrError> {
    let len = mem.u64_at(addr.wrapping_add(off.var_size))?;
    if len > MAX_BYTES {
        return Err(StrError::TooManyBytes(len));
    }
    let mut buf = vec![0u8; len as usize];
    mem.read(addr.wrapping_add(off.bytes_data), &mut buf)?;
    Ok(buf)
}
