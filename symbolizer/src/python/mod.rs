//! CPython: which processes run it, where their interpreter state is, and what their code
//! objects are called, read from the processes' memory without help from the application.
//! See ../shared/FACTS-python.md for the layouts and how they were checked.

mod code;
mod detect;
mod interleave;
mod linetable;
mod memory;
mod names;
mod offsets;
mod strings;
mod version;
mod walk;

pub use code::{fingerprint, instruction_index, CodeError, CodeInfo, Fingerprint};
pub use detect::{detect, DetectError, PythonRuntime};
pub use interleave::{interleave, is_eval_loop, PythonRuns};
pub use linetable::{line_locations, line_pep626};
pub use memory::{Memory, ProcessMemory, ReadError};
pub use names::{module_name, python_location, PythonNameStats, PythonNames};
pub use offsets::{for_version, from_debug_offsets, EntryMarker, InstrKind, PyOffsets};
pub use strings::{read_bytes, read_str, StrError};
pub use version::PyVersion;
pub use walk::{walk_frames, walk_threads, PyFrame, PyThread};
