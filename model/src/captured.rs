//! What the probes capture: stacks of addresses and what the kernel aggregated for them.

use std::sync::Arc;

/// Why a stack could not be captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StackLoss {
    /// The stack map had no room for it.
    MapFull,
    /// Capturing or storing it failed, or it was gone when read (errno).
    Error(i32),
    /// Off-CPU blocks shorter than the minimum: their time is counted per process, their
    /// stacks are not taken.
    ShortBlocks,
}

/// Why a user stack walked by unwind tables ends before its outermost frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StackCut {
    /// A pc in a file whose table has no rule there (or one the walker cannot follow).
    NoRule,
    /// A return address or saved register could not be read.
    BadRead,
    /// More frames than a stack holds.
    Depth,
}

impl StackCut {
    /// How the marker frame names it.
    pub fn describe(self) -> &'static str {
        match self {
            StackCut::NoRule => "no unwind rule",
            StackCut::BadRead => "unreadable stack",
            StackCut::Depth => "too deep",
        }
    }
}

/// One stack as a probe captured it, leaf first.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CapturedStack {
    /// No stack of this kind (a kernel thread's user stack, or a sample taken in user mode).
    None,
    /// Instruction pointers, leaf first.
    Addrs(Arc<[u64]>),
    /// Instruction pointers, leaf first, of a walk that stopped before the outermost frame.
    Cut(Arc<[u64]>, StackCut),
    /// The sample was counted but its stack was lost.
    Lost(StackLoss),
}

impl CapturedStack {
    /// The addresses, leaf first; none when there is no stack or it was lost.
    pub fn addrs(&self) -> &[u64] {
        match self {
            CapturedStack::Addrs(a) | CapturedStack::Cut(a, _) => a,
            _ => &[],
        }
    }
}

/// How an interpreter's stack ([`KernelSample::interpreted`]) is written for CPython, as the
/// kernel's walker writes it (`EP_PY_*` in probes/include/emberprof.h, whose test checks
/// these values): each frame is its code object's address and its instruction index + 1
/// above it; the small values below are not addresses.
pub mod python_stack {
    /// Follows the frame that entered the eval loop (one native eval frame runs the frames
    /// since the previous one).
    pub const ENTRY: u64 = 1;
    /// The walk stopped at a frame it could not read.
    pub const CUT_READ: u64 = 2;
    /// The walk stopped at the depth bound.
    pub const CUT_DEPTH: u64 = 3;
    /// Bits of a frame entry that hold the code object's address.
    pub const ADDR_MASK: u64 = 0xffff_ffff_ffff;
    /// Where the instruction index + 1 starts (0: not started).
    pub const INDEX_SHIFT: u32 = 48;
}

/// What the kernel aggregated for one {process image, thread, user stack, kernel stack}:
/// samples (CPU) or blocked nanoseconds (off-CPU), per [`crate::ProfileKind`].
#[derive(Clone, Debug)]
pub struct KernelSample {
    pub pid: u32,
    pub tid: u32,
    pub thread_name: String,
    /// The process image (the kernel's exec generation) the stacks were taken in.
    pub exec_id: u32,
    /// The thread is a kernel thread.
    pub kernel_thread: bool,
    pub user: CapturedStack,
    pub kernel: CapturedStack,
    /// The interpreter's own stack (Python), as its walker recorded it: entries the
    /// symbolizer decodes and places among the user frames.
    pub interpreted: CapturedStack,
    pub value: u64,
    /// The probe point whose hits these are, for probe profiles; `None` otherwise.
    pub probe: Option<ProbeHit>,
}

/// Which probe point a probe profile's sample hit, and the time its calls took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeHit {
    /// The probe's slot (its place among `--probe`s).
    pub slot: u32,
    /// Time of the calls, ns (functions with +stacks; 0 for other probes).
    pub ns: u64,
}

impl KernelSample {
    /// A sample of `pid`'s newest known image with these stacks (tests, benchmarks).
    pub fn of(pid: u32, user: &[u64], kernel: &[u64]) -> KernelSample {
        let stack = |a: &[u64]| {
            if a.is_empty() {
                CapturedStack::None
            } else {
                CapturedStack::Addrs(Arc::from(a))
            }
        };
        KernelSample {
            pid,
            tid: pid,
            thread_name: String::new(),
            exec_id: 0,
            kernel_thread: false,
            user: stack(user),
            kernel: stack(kernel),
            interpreted: CapturedStack::None,
            value: 1,
            probe: None,
        }
    }
}
