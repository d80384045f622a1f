//! A Python stack walk from user space: `_PyRuntime` → interpreters → thread states → frames.
//! What the kernel-side walker does at each sample, done here for a whole process at once
//! (for tests that check the offsets against a live interpreter, and for diagnostics).

use super::code::instruction_index;
use super::memory::{Memory, ReadError};
use super::offsets::{EntryMarker, PyOffsets};

/// Bounds that keep a walk of a corrupt or changing structure finite.
pub const MAX_INTERPRETERS: usize = 64;
pub const MAX_THREADS: usize = 4096;
pub const MAX_FRAMES: usize = 256;

/// One Python frame: its code object and where it is in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PyFrame {
    pub code: u64,
    /// Instruction index, code units (negative: not started).
    pub index: i64,
}

/// One thread's Python stack, innermost frame first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PyThread {
    /// `thread_id`: pthread_self() of the thread.
    pub thread_id: u64,
    pub frames: Vec<PyFrame>,
}

/// Every thread of every interpreter, from the `_PyRuntime` at `runtime`.
pub fn walk_threads(
    mem: &impl Memory,
    off: &PyOffsets,
    runtime: u64,
) -> Result<Vec<PyThread>, ReadError> {
    let mut threads = Vec::new();
    let mut interp = mem.u64_at(runtime.wrapping_add(off.runtime_interpreters_head))?;
    for _ in 0..MAX_INTERPRETERS {
        if interp == 0 {
            break;
        }
        let mut tstate = mem.u64_at(interp.wrapping_add(off.interp_threads_head))?;
        while tstate != 0 && threads.len() < MAX_THREADS {
            threads.push(PyThread {
                thread_id: mem.u64_at(tstate.wrapping_add(off.tstate_thread_id))?,
                frames: walk_frames(mem, off, tstate)?,
            });
            tstate = mem.u64_at(tstate.wrapping_add(off.tstate_next))?;
        }
        interp = mem.u64_at(interp.wrapping_add(off.interp_next))?;
    }
    Ok(threads)
}

/// The frames of the thread state at `tstate`, innermost first, without the shim frames
/// that mark a C entry into the eval loop (3.12+).
pub fn walk_frames(
    mem: &impl Memory,
    off: &PyOffsets,
    tstate: u64,
) -> Result<Vec<PyFrame>, ReadError> {
    let mut frame = mem.u64_at(tstate.wrapping_add(off.tstate_frame))?;
    if let Some(current) = off.cframe_current_frame {
        if frame != 0 {
            frame = mem.u64_at(frame.wrapping_add(current))?;
        }
    }
    let mut frames = Vec::new();
    for _ in 0..MAX_FRAMES {
        if frame == 0 {
            break;
        }
        let shim = match off.entry {
            EntryMarker::CStackOwner(owner) => mem.u8_at(frame.wrapping_add(owner))? == 3,
            EntryMarker::None | EntryMarker::IsEntry(_) => false,
        };
        if !shim {
            let code = mem.u64_at(frame.wrapping_add(off.frame_code))?;
            let raw = mem.u64_at(frame.wrapping_add(off.frame_instr))?;
            frames.push(PyFrame {
                code,
                index: instruction_index(off, code, raw),
            });
        }
        frame = mem.u64_at(frame.wrapping_add(off.frame_previous))?;
    }
    Ok(frames)
}
