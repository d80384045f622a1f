//! Where the fields a Python stack walk and the name reader need lie in each CPython
//! version's structures: a table for 3.10–3.12 (measured on pyenv's and Debian's builds, see
//! the test that checks it against live interpreters), and for 3.13 the table the
//! interpreter publishes itself at the start of `_PyRuntime` (`_Py_DebugOffsets`).

use super::version::PyVersion;

/// How a frame says where it is in its code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstrKind {
    /// `f_lasti`: an int, the index of the last instruction in code units (3.10).
    LastIndex,
    /// `prev_instr`: a pointer to the code unit before the next instruction (3.11, 3.12).
    PrevInstr,
    /// `instr_ptr`: a pointer to the instruction running now (3.13).
    InstrPtr,
}

/// How the frames that only mark a C entry into the eval loop are told apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMarker {
    /// No marker: every frame is a Python function (3.10).
    None,
    /// A bool at this offset is set on the first frame of each eval call (3.11); that frame
    /// is a real function.
    IsEntry(u64),
    /// A shim frame, not a function, whose `owner` byte at this offset is 3 (3.12+).
    CStackOwner(u64),
}

/// Offsets, in bytes, of what the walker and the name reader read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PyOffsets {
    /// `_PyRuntime.interpreters.head`.
    pub runtime_interpreters_head: u64,
    /// `PyInterpreterState.next`.
    pub interp_next: u64,
    /// The head of `PyInterpreterState`'s thread list.
    pub interp_threads_head: u64,
    /// `PyThreadState.next`.
    pub tstate_next: u64,
    /// `PyThreadState.thread_id`: pthread_self(), the fs base on glibc x86-64.
    pub tstate_thread_id: u64,
    /// The thread's top frame pointer: `frame` (3.10), `cframe` (3.11, 3.12) or
    /// `current_frame` (3.13).
    pub tstate_frame: u64,
    /// `_PyCFrame.current_frame`, where the top frame is one more hop away (3.11, 3.12).
    pub cframe_current_frame: Option<u64>,
    /// The frame's code object (`f_code`, or 3.13's `f_executable`, which may be None).
    pub frame_code: u64,
    /// The caller's frame (`f_back`, `previous`).
    pub frame_previous: u64,
    /// Where the frame is in its code (see `instr_kind`).
    pub frame_instr: u64,
    pub instr_kind: InstrKind,
    pub entry: EntryMarker,
    /// `co_argcount`, `co_flags`, `co_firstlineno`: ints, also the code object's fingerprint.
    pub code_argcount: u64,
    pub code_flags: u64,
    pub code_firstlineno: u64,
    pub code_filename: u64,
    pub code_name: u64,
    /// Absent in 3.10, which has only `co_name`.
    pub code_qualname: Option<u64>,
    pub code_linetable: u64,
    /// The inline bytecode (`co_code_adaptive`), 3.11+: instruction pointers point into it.
    pub code_adaptive: Option<u64>,
    /// `ob_size` of a variable-size object (the code object's length in code units on
    /// 3.11+, a bytes object's length).
    pub var_size: u64,
    /// A bytes object's data.
    pub bytes_data: u64,
    /// `PyASCIIObject.length` and `.state`.
    pub str_length: u64,
    pub str_state: u64,
    /// Where a compact ASCII string's characters start (sizeof(PyASCIIObject)); a compact
    /// non-ASCII string's start 16 bytes later on 3.12+ and 24 on 3.10, 3.11.
    pub str_ascii_data: u64,
    pub str_compact_data: u64,
}

/// `ob_type` of every object.
pub const OB_TYPE: u64 = 8;

/// The offsets of a version from the table, for the versions this build knows (3.10–3.13;
/// 3.13 is also published by the interpreter, see `from_debug_offsets`).
pub fn for_version(v: PyVersion) -> Option<PyOffsets> {
    if v.major != 3 {
        return None;
    }
    let common = PyOffsets {
        runtime_interpreters_head: 40,
        interp_next: 0,
        interp_threads_head: 16,
        tstate_next: 8,
        tstate_thread_id: 152,
        tstate_frame: 56,
        cframe_current_frame: Some(8),
        frame_code: 32,
        frame_previous: 48,
        frame_instr: 56,
        instr_kind: InstrKind::PrevInstr,
        entry: EntryMarker::IsEntry(68),
        code_argcount: 56,
        code_flags: 48,
        code_firstlineno: 72,
        code_filename: 112,
        code_name: 120,
        code_qualname: Some(128),
        code_linetable: 136,
        code_adaptive: Some(184),
        var_size: 16,
        bytes_data: 32,
        str_length: 16,
        str_state: 32,
        str_ascii_data: 48,
        str_compact_data: 72,
    };
    Some(match v.minor {
        10 => PyOffsets {
            runtime_interpreters_head: 32,
            interp_threads_head: 8,
            tstate_thread_id: 176,
            tstate_frame: 24,
            cframe_current_frame: None,
            frame_code: 32,
            frame_previous: 24,
            frame_instr: 96,
            instr_kind: InstrKind::LastIndex,
            entry: EntryMarker::None,
            code_argcount: 16,
            code_flags: 36,
            code_firstlineno: 40,
            code_filename: 104,
            code_name: 112,
            code_qualname: None,
            code_linetable: 120,
            code_adaptive: None,
            ..common
        },
        11 => common,
        12 => PyOffsets {
            interp_threads_head: 72,
            tstate_thread_id: 136,
            cframe_current_frame: Some(0),
            frame_code: 0,
            frame_previous: 8,
            entry: EntryMarker::CStackOwner(70),
            code_argcount: 52,
            code_firstlineno: 68,
            code_adaptive: Some(192),
            str_ascii_data: 40,
            str_compact_data: 56,
            ..common
        },
        13 => PyOffsets {
            runtime_interpreters_head: 632,
            interp_next: 7264,
            interp_threads_head: 7344,
            tstate_thread_id: 152,
            tstate_frame: 72,
            cframe_current_frame: None,
            frame_code: 0,
            frame_previous: 8,
            instr_kind: InstrKind::InstrPtr,
            entry: EntryMarker::CStackOwner(70),
            code_argcount: 52,
            code_firstlineno: 68,
            code_adaptive: Some(200),
            str_ascii_data: 40,
            str_compact_data: 56,
            ..common
        },
        _ => return None,
    })
}

/// Size of the part of `_Py_DebugOffsets` read here (3.13's layout).
pub const DEBUG_OFFSETS_LEN: usize = 584;

/// Why published offsets were not used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DebugOffsetsError {
    #[error("no xdebugpy cookie at the start of _PyRuntime")]
    NoCookie,
    #[error("free-threaded build (not supported)")]
    FreeThreaded,
    #[error("debug offsets of {0}, whose layout this build does not know")]
    UnknownLayout(PyVersion),
}

/// The version and offsets an interpreter publishes at the start of `_PyRuntime` (3.13's
/// layout of `_Py_DebugOffsets`; later versions extend it and are refused).
pub fn from_debug_offsets(bytes: &[u8]) -> Result<(PyVersion, PyOffsets), DebugOffsetsError> {
    if bytes.len() < DEBUG_OFFSETS_LEN || &bytes[..8] != b"xdebugpy" {
        return Err(DebugOffsetsError::NoCookie);
    }
    let at = |offset: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[offset..offset + 8]);
        u64::from_le_bytes(word)
    };
    let version = PyVersion::from_hex(at(8) as u32);
    if at(16) != 0 {
        return Err(DebugOffsetsError::FreeThreaded);
    }
    if (version.major, version.minor) != (3, 13) {
        return Err(DebugOffsetsError::UnknownLayout(version));
    }
    let Some(base) = for_version(version) else {
        return Err(DebugOffsetsError::UnknownLayout(version));
    };
    let ascii = at(560);
    Ok((
        version,
        PyOffsets {
            runtime_interpreters_head: at(40),
            interp_next: at(64),
            interp_threads_head: at(72),
            tstate_next: at(168),
            tstate_frame: at(184),
            tstate_thread_id: at(192),
            frame_previous: at(232),
            frame_code: at(240),
            frame_instr: at(248),
            entry: EntryMarker::CStackOwner(at(264)),
            code_filename: at(280),
            code_name: at(288),
            code_qualname: Some(at(296)),
            code_linetable: at(304),
            code_firstlineno: at(312),
            code_argcount: at(320),
            code_adaptive: Some(at(344)),
            var_size: at(520),
            bytes_data: at(528),
            str_state: at(544),
            str_length: at(552),
            str_ascii_data: ascii,
            // PyCompactUnicodeObject: PyASCIIObject, then utf8_length and utf8.
            str_compact_data: ascii.saturating_add(16),
            ..base
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(minor: u8) -> PyVersion {
        PyVersion {
            major: 3,
            minor,
            micro: 0,
        }
    }

    #[test]
    fn known_versions_only() {
        for minor in 10..=13 {
            assert!(for_version(v(minor)).is_some(), "3.{minor}");
        }
        assert!(for_version(v(9)).is_none());
        assert!(for_version(v(14)).is_none());
    }

    /// 3.13.0's published table (as dumped from pyenv's build) gives the table's values.
    #[test]
    fn published_offsets_of_3_13_match_the_table() {
        let mut bytes = vec![0u8; DEBUG_OFFSETS_LEN];
        bytes[..8].copy_from_slice(b"xdebugpy");
        fn put(bytes: &mut [u8], offset: usize, value: u64) {
            bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
        }
        put(&mut bytes, 8, 0x030d00f0);
        for (offset, value) in [
            (40, 632),
            (64, 7264),
            (72, 7344),
            (168, 8),
            (184, 72),
            (192, 152),
            (232, 8),
            (240, 0),
            (248, 56),
            (264, 70),
            (280, 112),
            (288, 120),
            (296, 128),
            (304, 136),
            (312, 68),
            (320, 52),
            (344, 200),
            (520, 16),
            (528, 32),
            (544, 32),
            (552, 16),
            (560, 40),
        ] {
            put(&mut bytes, offset, value);
        }
        let (version, published) = from_debug_offsets(&bytes).unwrap();
        assert_eq!(version.to_string(), "3.13");
        assert_eq!(published, for_version(v(13)).unwrap());
        put(&mut bytes, 16, 1);
        assert_eq!(
            from_debug_offsets(&bytes),
            Err(DebugOffsetsError::FreeThreaded)
        );
        put(&mut bytes, 16, 0);
        put(&mut bytes, 8, 0x030e00f0);
        assert!(matches!(
            from_debug_offsets(&bytes),
            Err(DebugOffsetsError::UnknownLayout(_))
        ));
        assert_eq!(
            from_debug_offsets(&bytes[..100]),
            Err(DebugOffsetsError::NoCookie)
        );
    }
}
