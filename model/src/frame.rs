//! Stacks as the symbolizer names them and the exporters write them: frames, locations,
//! the modules they are in.

use std::fmt;
use std::sync::Arc;

/// What a location is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrameKind {
    /// Machine code of a user process (compiled, or JIT code).
    Native,
    /// Kernel code.
    Kernel,
    /// A Python function, run by CPython's eval loop.
    Python,
    /// Not code: a marker standing where a stack was lost or cut.
    Synthetic,
}

impl FrameKind {
    /// The OpenTelemetry `profile.frame.type` of this kind.
    pub fn otel_frame_type(self) -> &'static str {
        match self {
            FrameKind::Native => "native",
            FrameKind::Kernel => "kernel",
            FrameKind::Python => "cpython",
            FrameKind::Synthetic => "abort-marker",
        }
    }
}

/// A mapped file (or the kernel image) that code was executed from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Module {
    /// Path as the process saw it (`/usr/lib/libc.so.6`), or `[kernel.kallsyms]`, `[vdso]`.
    pub path: Arc<str>,
    /// GNU build ID, lower-case hex, when the file has one.
    pub build_id: Option<Arc<str>>,
}

impl Module {
    /// Last path component, as profilers show modules.
    pub fn base_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// An executable ELF segment in link-time addresses: where a user frame's `address` lies
/// (pprof's mapping start, limit and file offset), the same in every process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Segment {
    /// Link-time address of the segment's first byte.
    pub start: u64,
    /// Link-time address just past its bytes in the file.
    pub limit: u64,
    /// Where its bytes start in the file.
    pub file_offset: u64,
}

/// One function at one address: a real function, or a function inlined into it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    pub function: Arc<str>,
    pub file: Option<Arc<str>>,
    /// 0 when unknown.
    pub line: u32,
}

/// One address of a stack and what it resolved to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    pub kind: FrameKind,
    pub module: Option<Arc<Module>>,
    /// User code in a file: its link-time (ELF virtual) address, the same in every process
    /// whatever the load address, and what debuggers and backend symbolizers look up (the
    /// file offset when the file's headers cannot be read). Kernel code and anonymous
    /// memory: the absolute address.
    pub address: u64,
    /// User code in a file: the segment holding `address`, so that address − start +
    /// file_offset is the file offset. `None` elsewhere.
    pub segment: Option<Segment>,
    /// Innermost first: inlined callees before the function they were inlined into.
    /// Empty when the address could not be named.
    pub frames: Vec<Frame>,
}

impl Location {
    /// A location that stands for something that is not code, such as a lost stack.
    pub fn marker(text: &str) -> Self {
        Location {
            kind: FrameKind::Synthetic,
            module: None,
            address: 0,
            segment: None,
            frames: vec![Frame {
                function: Arc::from(text),
                file: None,
                line: 0,
            }],
        }
    }

    /// Whether no function name is known.
    pub fn is_unknown(&self) -> bool {
        self.frames.is_empty()
    }
}

/// Frame names of an unnamed location: `module+0xaddress`, or `[unknown]`.
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.frames.first(), &self.module) {
            (Some(frame), _) => f.write_str(&frame.function),
            (None, Some(m)) => write!(f, "{}+{:#x}", m.base_name(), self.address),
            (None, None) => f.write_str("[unknown]"),
        }
    }
}

/// A symbolized stack, leaf first: kernel locations, then user locations.
pub type Stack = Arc<[Arc<Location>]>;
