//! `#[repr(C)]` twins of the structs in `include/emberprof.h`, and of its constants: each
//! is defined once in the header, and the tests below fail when a Rust twin differs from it
//! or is missing.

/// Length of the kernel's task comm, including the NUL (`EP_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Most processes the kernel's PID filter holds (`EP_PID_FILTER_ENTRIES`).
pub const MAX_FILTER_PIDS: usize = 4096;

/// Default entries of each CPU-sampler stack map (`EP_STACK_ENTRIES`).
pub const DEFAULT_STACK_MAP_ENTRIES: u32 = 16384;
/// Default entries of each CPU-sampler count map (`EP_COUNT_ENTRIES`).
pub const DEFAULT_COUNT_MAP_ENTRIES: u32 = 16384;
/// Default entries of each off-CPU count map (`EP_OFF_COUNT_ENTRIES`).
pub const DEFAULT_OFF_CPU_COUNT_MAP_ENTRIES: u32 = 16384;
/// Default number of keyed latency histograms per buffer (`EP_HIST_KEYS`).
pub const DEFAULT_HIST_KEYS: u32 = 1024;
/// Default shortest block the off-CPU profiler records, ns (`EP_MIN_BLOCK_NS`).
pub const DEFAULT_MIN_BLOCK_NS: u64 = 1000;

/// Key of the in-kernel sample counts (`struct ep_sample_key`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SampleKey {
    pub tgid: u32,
    pub tid: u32,
    /// Hash of the user stack, its key in the stack map; 0 when not stored (see `user_err`).
    pub user_stack: u64,
    /// Hash of the kernel stack, its key in the stack map; 0 when not stored.
    pub kernel_stack: u64,
    /// 0, or -errno: why the user stack is missing.
    pub user_err: i32,
    /// 0, or -errno: why the kernel stack is missing.
    pub kernel_err: i32,
    pub comm: [u8; COMM_LEN],
    /// The process image (exec generation) the sample was taken in.
    pub exec_id: u32,
    /// `KEY_*` bits.
    pub flags: u32,
    /// Hash of the thread's Python stack in the stack map; 0 when it has none.
    pub py_stack: u64,
}

/// `EP_KEY_KTHREAD`: the sampled thread is a kernel thread.
pub const KEY_KTHREAD: u32 = 1;

/// One process announced by the kernel (`struct ep_announcement`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Announcement {
    pub tgid: u32,
    /// The process image it was sampled in.
    pub exec_id: u32,
    /// Its group leader's name.
    pub comm: [u8; COMM_LEN],
}

impl Announcement {
    /// The record as the ring buffer holds it, if it is whole.
    pub fn from_bytes(bytes: &[u8]) -> Option<Announcement> {
        let u32_at = |at: usize| {
            let raw: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
            Some(u32::from_ne_bytes(raw))
        };
        let mut comm = [0u8; COMM_LEN];
        comm.copy_from_slice(bytes.get(8..8 + COMM_LEN)?);
        Some(Announcement {
            tgid: u32_at(0)?,
            exec_id: u32_at(4)?,
            comm,
        })
    }

    /// The leader's name up to its NUL, lossily decoded.
    pub fn comm_str(&self) -> String {
        comm_str(&self.comm)
    }
}

/// `EP_STACK_ERR_MAP_FULL`: the stack map had no room.
pub const STACK_ERR_MAP_FULL: i32 = -libc::E2BIG;
/// `EP_STACK_ERR_NONE`: the task has no such stack.
pub const STACK_ERR_NONE: i32 = -libc::EFAULT;

/// Value of the stack maps (`struct ep_stack`): frames leaf first, zero after the last.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackTrace {
    pub ips: [u64; MAX_STACK_DEPTH],
}

impl Default for StackTrace {
    fn default() -> Self {
        StackTrace {
            ips: [0; MAX_STACK_DEPTH],
        }
    }
}

// SAFETY: plain old data, one array of u64 (size checked by the layout test).
unsafe impl aya::Pod for StackTrace {}

impl StackTrace {
    /// The frames before the first zero.
    pub fn frames(&self) -> &[u64] {
        let n = self
            .ips
            .iter()
            .position(|&ip| ip == 0)
            .unwrap_or(MAX_STACK_DEPTH);
        &self.ips[..n]
    }
}

// SAFETY: plain old data with no padding (checked by the layout test).
unsafe impl aya::Pod for SampleKey {}

impl SampleKey {
    /// The sample this key and `value` make, its stacks looked up in `stacks` (drained from
    /// the stack map of the same buffer).
    pub(crate) fn sample(
        &self,
        stacks: &std::collections::HashMap<u64, emberprof_model::CapturedStack>,
        value: u64,
        probe: Option<emberprof_model::ProbeHit>,
    ) -> emberprof_model::KernelSample {
        emberprof_model::KernelSample {
            pid: self.tgid,
            tid: self.tid,
            thread_name: self.comm_str(),
            exec_id: self.exec_id,
            kernel_thread: self.flags & KEY_KTHREAD != 0,
            user: stack_of(stacks, self.user_stack, self.user_err),
            kernel: stack_of(stacks, self.kernel_stack, self.kernel_err),
            interpreted: stack_of(stacks, self.py_stack, 0),
            value,
            probe,
        }
    }
}

/// Key of the probe profile's counts (`struct ep_probe_sample_key`): the thread's sample key
/// and the probe slot it hit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProbeSampleKey {
    pub sample: SampleKey,
    pub slot: u32,
    pub reserved: u32,
}

// SAFETY: repr(C), integers only, no padding (the layout test checks the size).
unsafe impl aya::Pod for ProbeSampleKey {}

/// Value of the probe profile's counts (`struct ep_probe_sample_value`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeSampleValue {
    pub hits: u64,
    /// Time of the calls (functions with +stacks), ns.
    pub ns: u64,
}

// SAFETY: repr(C), two u64.
unsafe impl aya::Pod for ProbeSampleValue {}

/// `ep_probe_slot_flags` bit: the slot records its hits' stacks.
pub const PROBE_STACKS_ON: u32 = 1;
/// Stacks (and stack keys) a probe profile buffer holds (`EP_PROBE_STACKS`).
pub const PROBE_STACKS: u32 = 8192;

impl SampleKey {
    /// The thread name up to its NUL, lossily decoded.
    pub fn comm_str(&self) -> String {
        comm_str(&self.comm)
    }
}

/// Indexes of the per-CPU counter array (`enum ep_counter`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Samples = 0,
    Idle = 1,
    UserStackMapFull = 2,
    KernelStackMapFull = 3,
    StackError = 4,
    CountMapFull = 5,
    AnnounceLost = 6,
    UnwindNoRule = 7,
    UnwindBadRead = 8,
    UnwindDepth = 9,
    PySamples = 10,
    PyNoThread = 11,
    PyBadRead = 12,
    PyDepth = 13,
    PyStackFull = 14,
    PyNotesLost = 15,
}

impl From<Counter> for u32 {
    fn from(c: Counter) -> u32 {
        c as u32
    }
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 16] = [
        Counter::Samples,
        Counter::Idle,
        Counter::UserStackMapFull,
        Counter::KernelStackMapFull,
        Counter::StackError,
        Counter::CountMapFull,
        Counter::AnnounceLost,
        Counter::UnwindNoRule,
        Counter::UnwindBadRead,
        Counter::UnwindDepth,
        Counter::PySamples,
        Counter::PyNoThread,
        Counter::PyBadRead,
        Counter::PyDepth,
        Counter::PyStackFull,
        Counter::PyNotesLost,
    ];
}

/// Processes the Python walker can hold (`EP_PY_PROCS`).
pub const PY_PROCS: usize = 4096;
/// Threads a walk looks through for the sampled one (`EP_PY_MAX_THREADS`).
pub const PY_MAX_THREADS: usize = 512;
/// Most bytes of a frame the walker reads (`EP_PY_FRAME_READ`).
pub const PY_FRAME_READ: u16 = 112;
/// A field the version does not have (`EP_PY_NO_FIELD`).
pub const PY_NO_FIELD: u16 = 0xffff;

use emberprof_model::python_stack;

/// `ep_py_proc.entry_kind` (`EP_PY_ENTRY_*`).
pub mod py_entry {
    pub const EVERY: u8 = 0;
    pub const FLAG: u8 = 1;
    pub const SHIM: u8 = 2;
}

/// `ep_py_proc.instr_kind` (`EP_PY_INSTR_*`).
pub mod py_instr {
    pub const LASTI: u8 = 0;
    pub const PTR: u8 = 1;
}

/// Entries of a Python stack that are not frames (`EP_PY_ENTRY`, `EP_PY_CUT_*`): the
/// model's encoding, which the symbolizer decodes; the constants test holds it to C's.
pub const PY_ENTRY: u64 = python_stack::ENTRY;
pub const PY_CUT_READ: u64 = python_stack::CUT_READ;
pub const PY_CUT_DEPTH: u64 = python_stack::CUT_DEPTH;
/// A frame entry: the code object's address in these bits, index + 1 above them.
pub const PY_ADDR_MASK: u64 = python_stack::ADDR_MASK;
pub const PY_INDEX_SHIFT: u32 = python_stack::INDEX_SHIFT;

/// One entry of a note (`struct ep_py_note_frame`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyNoteFrame {
    pub entry: u64,
    /// Its code object's fingerprint as the kernel read it (`py_fingerprint`; 0: a
    /// marker, or not readable).
    pub fingerprint: u64,
}

/// A Python stack new to the buffer (`struct ep_py_note`), noted so its names are read
/// while the process runs. The ring holds only the first `len` frames.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PyNote {
    pub tgid: u32,
    pub len: u32,
    pub frames: [PyNoteFrame; MAX_STACK_DEPTH],
}

/// `EP_PY_FINGERPRINT`: a code object's fingerprint from co_argcount, co_flags and
/// co_firstlineno, as the kernel computes it.
pub fn py_fingerprint(argcount: u32, flags: u32, firstlineno: u32) -> u64 {
    (u64::from(firstlineno) << 32) | u64::from((argcount << 20) ^ flags)
}

impl PyNote {
    /// The note as the ring holds it (its header and `len` frames), if it is whole.
    pub fn from_bytes(bytes: &[u8]) -> Option<PyNote> {
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
        };
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_ne_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        let len = u32_at(4)?;
        let mut note = PyNote {
            tgid: u32_at(0)?,
            len,
            frames: [PyNoteFrame::default(); MAX_STACK_DEPTH],
        };
        for (i, f) in note.frames.iter_mut().take(len as usize).enumerate() {
            let at = 8 + 16 * i;
            *f = PyNoteFrame {
                entry: u64_at(at)?,
                fingerprint: u64_at(at + 8)?,
            };
        }
        Some(note)
    }

    /// The frames written (a length the kernel cannot have written is clamped).
    pub fn frames(&self) -> &[PyNoteFrame] {
        &self.frames[..(self.len as usize).min(MAX_STACK_DEPTH)]
    }
}

/// Where a CPython process keeps its threads and frames (`struct ep_py_proc`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyProc {
    pub runtime: u64,
    pub version: u32,
    pub entry_kind: u8,
    pub instr_kind: u8,
    pub entry_offset: u16,
    pub interp_head: u16,
    pub interp_next: u16,
    pub interp_threads: u16,
    pub tstate_next: u16,
    pub tstate_thread_id: u16,
    pub tstate_frame: u16,
    pub cframe_current: u16,
    pub frame_code: u16,
    pub frame_previous: u16,
    pub frame_instr: u16,
    pub code_adaptive: u16,
    pub frame_size: u16,
    pub code_argcount: u16,
    pub code_flags: u16,
    pub code_firstlineno: u16,
    pub reserved: u16,
}

// SAFETY: plain old data with no padding (checked by the layout test).
unsafe impl aya::Pod for PyProc {}

/// Distinct unwind rules the kernel holds (`EP_UNWIND_RULES`).
pub const UNWIND_RULES: usize = 16384;
/// Unwind table entries of all files together, unless the loader sets another size
/// (`EP_UNWIND_ENTRIES`): 32 MiB at 8 bytes each.
pub const UNWIND_ENTRIES: usize = 1 << 22;
/// Halvings of the kernel's rule search (`EP_UNWIND_SEARCH_STEPS`): `n` halvings find the
/// rule among up to 2^n entries, so this bounds the size the entries array may be given.
pub const UNWIND_SEARCH_STEPS: u32 = 24;
/// Most unwind table entries the kernel's array may be given (128 MiB).
pub const MAX_UNWIND_ENTRIES: u32 = 1 << UNWIND_SEARCH_STEPS;
/// Processes with unwind tables (`EP_UNWIND_PROCS`).
pub const UNWIND_PROCS: usize = 4096;
/// Executable mappings listed per process (`EP_UNWIND_MAPPINGS`).
pub const UNWIND_MAPPINGS: usize = 64;

/// The marker frame a cut walk ends in, plus its reason (`EP_UNWIND_CUT`).
pub const UNWIND_CUT: u64 = 0xffff_ffff_ffff_f000;

/// The stack a sample key refers to: its frames, or why there are none.
pub(crate) fn stack_of(
    stacks: &std::collections::HashMap<u64, emberprof_model::CapturedStack>,
    hash: u64,
    err: i32,
) -> emberprof_model::CapturedStack {
    use emberprof_model::{CapturedStack, StackLoss};
    if hash == 0 {
        return match err {
            0 | STACK_ERR_NONE => CapturedStack::None,
            STACK_ERR_MAP_FULL => CapturedStack::Lost(StackLoss::MapFull),
            e => CapturedStack::Lost(StackLoss::Error(-e)),
        };
    }
    match stacks.get(&hash) {
        Some(stack) => stack.clone(),
        None => {
            tracing::debug!(hash, "stack gone before it was read");
            CapturedStack::Lost(StackLoss::Error(libc::ENOENT))
        }
    }
}

/// A stack's frames as captured, leaf first: a walk cut short ends in its marker frame,
/// which becomes the reason.
pub fn captured_stack(frames: &[u64]) -> emberprof_model::CapturedStack {
    use emberprof_model::{CapturedStack, StackCut};
    let Some((&last, rest)) = frames.split_last() else {
        return CapturedStack::None;
    };
    let cut = match last.checked_sub(UNWIND_CUT) {
        Some(1) => StackCut::NoRule,
        Some(2) => StackCut::BadRead,
        Some(3) => StackCut::Depth,
        _ => return CapturedStack::Addrs(std::sync::Arc::from(frames)),
    };
    CapturedStack::Cut(std::sync::Arc::from(rest), cut)
}

/// `ep_unwind_rule.kind`.
pub mod rule_kind {
    pub const NONE: u8 = 0;
    pub const CFA_RSP: u8 = 1;
    pub const CFA_RBP: u8 = 2;
    pub const STOP: u8 = 3;
    pub const PLT: u8 = 4;
    pub const SIGNAL: u8 = 5;
}

/// One unwind rule (`struct ep_unwind_rule`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UnwindRule {
    pub kind: u8,
    pub rbp_saved: u8,
    pub reserved: u16,
    pub cfa_offset: i32,
    pub rbp_offset: i32,
}

/// One range of a file's table (`struct ep_unwind_entry`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindEntry {
    pub pc: u32,
    pub rule: u32,
}

/// One executable mapping of a process (`struct ep_unwind_mapping`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMapping {
    pub start: u64,
    pub end: u64,
    pub bias: u64,
    pub first: u32,
    pub count: u32,
}

/// A process's mappings with tables (`struct ep_unwind_proc`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnwindProc {
    pub count: u32,
    pub reserved: u32,
    pub mappings: [UnwindMapping; UNWIND_MAPPINGS],
}

// SAFETY: plain integers, laid out as the C structs (checked by the layout tests).
unsafe impl aya::Pod for UnwindRule {}
// SAFETY: as above.
unsafe impl aya::Pod for UnwindEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for UnwindProc {}

/// Frames per stack the kernel records (`EP_MAX_STACK_DEPTH`).
pub const MAX_STACK_DEPTH: usize = 127;

/// Key of the off-CPU counts (`struct ep_offcpu_key`): the stacks are inline.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OffCpuKey {
    pub tgid: u32,
    pub tid: u32,
    pub comm: [u8; COMM_LEN],
    pub user_len: u32,
    pub kernel_len: u32,
    /// As in [`SampleKey`].
    pub exec_id: u32,
    pub flags: u32,
    pub user: [u64; MAX_STACK_DEPTH],
    pub kernel: [u64; MAX_STACK_DEPTH],
    /// Entries of the thread's Python stack (`PY_*`), when its process runs Python.
    pub py_len: u32,
    pub reserved: u32,
    pub py: [u64; MAX_STACK_DEPTH],
}

impl Default for OffCpuKey {
    fn default() -> Self {
        OffCpuKey {
            tgid: 0,
            tid: 0,
            comm: [0; COMM_LEN],
            user_len: 0,
            kernel_len: 0,
            exec_id: 0,
            flags: 0,
            user: [0; MAX_STACK_DEPTH],
            kernel: [0; MAX_STACK_DEPTH],
            py_len: 0,
            reserved: 0,
            py: [0; MAX_STACK_DEPTH],
        }
    }
}

// SAFETY: plain old data with no padding (checked by the layout test).
unsafe impl aya::Pod for OffCpuKey {}

impl OffCpuKey {
    /// The thread name up to its NUL, lossily decoded.
    pub fn comm_str(&self) -> String {
        comm_str(&self.comm)
    }

    /// The Python stack's entries, leaf first (clamped like the others).
    pub fn py_entries(&self) -> &[u64] {
        &self.py[..(self.py_len as usize).min(MAX_STACK_DEPTH)]
    }

    /// The valid user frames, leaf first; a length the kernel cannot have written is clamped.
    pub fn user_frames(&self) -> &[u64] {
        &self.user[..(self.user_len as usize).min(MAX_STACK_DEPTH)]
    }

    /// The valid kernel frames, leaf first.
    pub fn kernel_frames(&self) -> &[u64] {
        &self.kernel[..(self.kernel_len as usize).min(MAX_STACK_DEPTH)]
    }
}

/// Value of the off-CPU counts (`struct ep_offcpu_value`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffCpuValue {
    pub total_ns: u64,
    pub blocks: u64,
}

// SAFETY: plain old data with no padding (checked by the layout test).
unsafe impl aya::Pod for OffCpuValue {}

/// Return-address slots a switch-out reads again before reusing a thread's last stacks
/// (`EP_OFF_CHECK_SLOTS`).
pub const OFF_CHECK_SLOTS: usize = 4;

/// Every this many reuses, a thread's stacks are walked again and compared
/// (`EP_OFF_VERIFY_EVERY`).
pub const OFF_VERIFY_EVERY: u32 = 64;

/// Indexes of the off-CPU per-CPU counters (`enum ep_offcpu_counter`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffCpuCounter {
    Blocks = 0,
    Short = 1,
    StartFull = 2,
    CountFull = 3,
    StackError = 4,
    AnnounceLost = 5,
    UnwindNoRule = 6,
    UnwindBadRead = 7,
    UnwindDepth = 8,
    Reused = 9,
    Stale = 10,
    ShortFull = 11,
    StacksFull = 12,
    PyIncomplete = 13,
}

impl From<OffCpuCounter> for u32 {
    fn from(c: OffCpuCounter) -> u32 {
        c as u32
    }
}

impl OffCpuCounter {
    /// Every counter, in index order.
    pub const ALL: [OffCpuCounter; 14] = [
        OffCpuCounter::Blocks,
        OffCpuCounter::Short,
        OffCpuCounter::StartFull,
        OffCpuCounter::CountFull,
        OffCpuCounter::StackError,
        OffCpuCounter::AnnounceLost,
        OffCpuCounter::UnwindNoRule,
        OffCpuCounter::UnwindBadRead,
        OffCpuCounter::UnwindDepth,
        OffCpuCounter::Reused,
        OffCpuCounter::Stale,
        OffCpuCounter::ShortFull,
        OffCpuCounter::StacksFull,
        OffCpuCounter::PyIncomplete,
    ];
}

/// Slots of a kernel histogram (`EP_HIST_SLOTS`): the model's histogram holds as many.
pub const HIST_SLOTS: usize = emberprof_model::HIST_SLOTS;

/// What a histogram measures (`enum ep_hist_kind`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HistKind {
    RunQueue = 0,
    OffCpu = 1,
    BlockIo = 2,
    Syscall = 3,
    /// A probed function's duration (`--probe uprobe:`), per probe slot and cgroup.
    Probe = 4,
    /// TCP connection establishment, per remote port and cgroup (`--tcp`).
    TcpConnect = 5,
}

impl From<HistKind> for u32 {
    fn from(c: HistKind) -> u32 {
        c as u32
    }
}

impl HistKind {
    /// Every kind, in index order.
    pub const ALL: [HistKind; 6] = [
        HistKind::RunQueue,
        HistKind::OffCpu,
        HistKind::BlockIo,
        HistKind::Syscall,
        HistKind::Probe,
        HistKind::TcpConnect,
    ];

    /// The kind with this index, if any.
    pub fn from_index(i: u32) -> Option<HistKind> {
        HistKind::ALL.get(i as usize).copied()
    }
}

/// Block I/O direction in `HistKey::detail` (`enum ep_block_op`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockOp {
    Read = 0,
    Write = 1,
    Other = 2,
}

impl BlockOp {
    /// The direction with this index; anything unknown is `Other`.
    pub fn from_index(i: u32) -> BlockOp {
        match i {
            0 => BlockOp::Read,
            1 => BlockOp::Write,
            _ => BlockOp::Other,
        }
    }
}

/// A histogram's identity (`struct ep_hist_key`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HistKey {
    pub cgroup: u64,
    pub kind: u32,
    pub detail: u32,
    pub major: u32,
    pub minor: u32,
}

// SAFETY: plain old data with no padding (checked by the layout test).
unsafe impl aya::Pod for HistKey {}

/// One CPU's log2 histogram (`struct ep_hist`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hist {
    pub slots: [u64; HIST_SLOTS],
    pub zero: u64,
    pub sum_ns: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            slots: [0; HIST_SLOTS],
            zero: 0,
            sum_ns: 0,
        }
    }
}

// SAFETY: plain old data with no padding (checked by the layout test).
unsafe impl aya::Pod for Hist {}

/// Bits of the sched_switch program's running parts (`EP_SWITCH_OFF_CPU`, `EP_SWITCH_HISTS`).
pub const SWITCH_OFF_CPU: u32 = 1;
pub const SWITCH_HISTS: u32 = 2;

/// Slots of each CPU's cache of scheduler histograms (`EP_HIST_CACHE_SLOTS`).
pub const HIST_CACHE_SLOTS: u32 = 32;

/// One slot of a CPU's histogram cache (`struct ep_hist_cached`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistCached {
    pub key: HistKey,
    /// Non-zero once `key` holds the slot.
    pub used: u64,
    pub hist: Hist,
}

// SAFETY: plain old data with no padding (checked by the layout test).
unsafe impl aya::Pod for HistCached {}

/// Indexes of the histogram per-CPU counters (`enum ep_hist_counter`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistCounter {
    Recorded = 0,
    Overflowed = 1,
    StartFull = 2,
    EventsFull = 3,
}

impl From<HistCounter> for u32 {
    fn from(c: HistCounter) -> u32 {
        c as u32
    }
}

impl HistCounter {
    /// Every counter, in index order.
    pub const ALL: [HistCounter; 4] = [
        HistCounter::Recorded,
        HistCounter::Overflowed,
        HistCounter::StartFull,
        HistCounter::EventsFull,
    ];
}

/// Probe slots (`EP_PROBE_SLOTS`): how many `--probe` points can be attached at once.
pub const PROBE_SLOTS: usize = 8;

/// What an event count counts (`enum ep_event_kind`, in `HistKey::kind` of the count maps).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    ProbeHit = 0,
    TcpRetransmit = 1,
    TcpResetSent = 2,
    TcpResetReceived = 3,
}

impl EventKind {
    /// Every kind, in index order.
    pub const ALL: [EventKind; 4] = [
        EventKind::ProbeHit,
        EventKind::TcpRetransmit,
        EventKind::TcpResetSent,
        EventKind::TcpResetReceived,
    ];

    /// The kind with this index, if any.
    pub fn from_index(i: u32) -> Option<EventKind> {
        EventKind::ALL.get(i as usize).copied()
    }
}

fn comm_str(comm: &[u8; COMM_LEN]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    mod c {
        include!(concat!(env!("OUT_DIR"), "/c_layout.rs"));
    }

    #[test]
    fn sample_key_matches_c_layout() {
        assert_eq!(size_of::<SampleKey>(), c::EP_SAMPLE_KEY_SIZE);
        assert_eq!(offset_of!(SampleKey, tgid), c::EP_SAMPLE_KEY_TGID_OFFSET);
        assert_eq!(offset_of!(SampleKey, tid), c::EP_SAMPLE_KEY_TID_OFFSET);
        assert_eq!(
            offset_of!(SampleKey, user_stack),
            c::EP_SAMPLE_KEY_USER_STACK_OFFSET
        );
        assert_eq!(
            offset_of!(SampleKey, kernel_stack),
            c::EP_SAMPLE_KEY_KERNEL_STACK_OFFSET
        );
        assert_eq!(
            offset_of!(SampleKey, user_err),
            c::EP_SAMPLE_KEY_USER_ERR_OFFSET
        );
        assert_eq!(
            offset_of!(SampleKey, kernel_err),
            c::EP_SAMPLE_KEY_KERNEL_ERR_OFFSET
        );
        assert_eq!(offset_of!(SampleKey, comm), c::EP_SAMPLE_KEY_COMM_OFFSET);
        assert_eq!(
            offset_of!(SampleKey, exec_id),
            c::EP_SAMPLE_KEY_EXEC_ID_OFFSET
        );
        assert_eq!(offset_of!(SampleKey, flags), c::EP_SAMPLE_KEY_FLAGS_OFFSET);
        assert_eq!(
            offset_of!(SampleKey, py_stack),
            c::EP_SAMPLE_KEY_PY_STACK_OFFSET
        );
        assert_eq!(size_of::<Announcement>(), c::EP_ANNOUNCEMENT_SIZE);
        assert_eq!(
            offset_of!(Announcement, tgid),
            c::EP_ANNOUNCEMENT_TGID_OFFSET
        );
        assert_eq!(
            offset_of!(Announcement, exec_id),
            c::EP_ANNOUNCEMENT_EXEC_ID_OFFSET
        );
        assert_eq!(
            offset_of!(Announcement, comm),
            c::EP_ANNOUNCEMENT_COMM_OFFSET
        );
        assert_eq!(size_of::<StackTrace>(), c::EP_STACK_SIZE);
        assert_eq!(offset_of!(StackTrace, ips), c::EP_STACK_IPS_OFFSET);
    }

    /// Every `EP_*` constant of the header, with its Rust twin (counter enums by variant, so
    /// that each index is checked against its C enumerator, not just the count).
    const TWINS: &[(&str, i64)] = &[
        ("EP_COMM_LEN", COMM_LEN as i64),
        ("EP_MAX_STACK_DEPTH", MAX_STACK_DEPTH as i64),
        ("EP_ENOENT", libc::ENOENT as i64),
        ("EP_E2BIG", libc::E2BIG as i64),
        ("EP_EFAULT", libc::EFAULT as i64),
        ("EP_EEXIST", libc::EEXIST as i64),
        ("EP_STACK_ERR_MAP_FULL", STACK_ERR_MAP_FULL as i64),
        ("EP_STACK_ERR_NONE", STACK_ERR_NONE as i64),
        ("EP_PID_FILTER_ENTRIES", MAX_FILTER_PIDS as i64),
        ("EP_STACK_ENTRIES", DEFAULT_STACK_MAP_ENTRIES as i64),
        ("EP_COUNT_ENTRIES", DEFAULT_COUNT_MAP_ENTRIES as i64),
        (
            "EP_OFF_COUNT_ENTRIES",
            DEFAULT_OFF_CPU_COUNT_MAP_ENTRIES as i64,
        ),
        ("EP_HIST_KEYS", DEFAULT_HIST_KEYS as i64),
        ("EP_MIN_BLOCK_NS", DEFAULT_MIN_BLOCK_NS as i64),
        ("EP_KEY_KTHREAD", KEY_KTHREAD as i64),
        ("EP_CNT_SAMPLES", Counter::Samples as i64),
        ("EP_CNT_IDLE", Counter::Idle as i64),
        (
            "EP_CNT_USER_STACK_MAP_FULL",
            Counter::UserStackMapFull as i64,
        ),
        (
            "EP_CNT_KERNEL_STACK_MAP_FULL",
            Counter::KernelStackMapFull as i64,
        ),
        ("EP_CNT_STACK_ERROR", Counter::StackError as i64),
        ("EP_CNT_COUNT_MAP_FULL", Counter::CountMapFull as i64),
        ("EP_CNT_ANNOUNCE_LOST", Counter::AnnounceLost as i64),
        ("EP_CNT_UNWIND_NO_RULE", Counter::UnwindNoRule as i64),
        ("EP_CNT_UNWIND_BAD_READ", Counter::UnwindBadRead as i64),
        ("EP_CNT_UNWIND_DEPTH", Counter::UnwindDepth as i64),
        ("EP_CNT_PY_SAMPLES", Counter::PySamples as i64),
        ("EP_CNT_PY_NO_THREAD", Counter::PyNoThread as i64),
        ("EP_CNT_PY_BAD_READ", Counter::PyBadRead as i64),
        ("EP_CNT_PY_DEPTH", Counter::PyDepth as i64),
        ("EP_CNT_PY_STACK_FULL", Counter::PyStackFull as i64),
        ("EP_CNT_PY_NOTES_LOST", Counter::PyNotesLost as i64),
        ("EP_PY_PROCS", PY_PROCS as i64),
        ("EP_PY_MAX_THREADS", PY_MAX_THREADS as i64),
        ("EP_PY_FRAME_READ", PY_FRAME_READ as i64),
        ("EP_PY_NO_FIELD", PY_NO_FIELD as i64),
        ("EP_PY_ENTRY_EVERY", py_entry::EVERY as i64),
        ("EP_PY_ENTRY_FLAG", py_entry::FLAG as i64),
        ("EP_PY_ENTRY_SHIM", py_entry::SHIM as i64),
        ("EP_PY_INSTR_LASTI", py_instr::LASTI as i64),
        ("EP_PY_INSTR_PTR", py_instr::PTR as i64),
        ("EP_PY_ENTRY", PY_ENTRY as i64),
        ("EP_PY_CUT_READ", PY_CUT_READ as i64),
        ("EP_PY_CUT_DEPTH", PY_CUT_DEPTH as i64),
        ("EP_PY_ADDR_MASK", PY_ADDR_MASK as i64),
        ("EP_PY_INDEX_SHIFT", PY_INDEX_SHIFT as i64),
        ("EP_UNWIND_RULES", UNWIND_RULES as i64),
        ("EP_UNWIND_ENTRIES", UNWIND_ENTRIES as i64),
        ("EP_UNWIND_SEARCH_STEPS", UNWIND_SEARCH_STEPS as i64),
        ("EP_UNWIND_PROCS", UNWIND_PROCS as i64),
        ("EP_UNWIND_MAPPINGS", UNWIND_MAPPINGS as i64),
        ("EP_RULE_NONE", rule_kind::NONE as i64),
        ("EP_RULE_CFA_RSP", rule_kind::CFA_RSP as i64),
        ("EP_RULE_CFA_RBP", rule_kind::CFA_RBP as i64),
        ("EP_RULE_STOP", rule_kind::STOP as i64),
        ("EP_RULE_PLT", rule_kind::PLT as i64),
        ("EP_RULE_SIGNAL", rule_kind::SIGNAL as i64),
        ("EP_CNT_MAX", Counter::ALL.len() as i64),
        ("EP_OFF_BLOCKS", OffCpuCounter::Blocks as i64),
        ("EP_OFF_SHORT", OffCpuCounter::Short as i64),
        ("EP_OFF_START_FULL", OffCpuCounter::StartFull as i64),
        ("EP_OFF_COUNT_FULL", OffCpuCounter::CountFull as i64),
        ("EP_OFF_STACK_ERROR", OffCpuCounter::StackError as i64),
        ("EP_OFF_ANNOUNCE_LOST", OffCpuCounter::AnnounceLost as i64),
        ("EP_OFF_UNWIND_NO_RULE", OffCpuCounter::UnwindNoRule as i64),
        (
            "EP_OFF_UNWIND_BAD_READ",
            OffCpuCounter::UnwindBadRead as i64,
        ),
        ("EP_OFF_UNWIND_DEPTH", OffCpuCounter::UnwindDepth as i64),
        ("EP_OFF_CHECK_SLOTS", OFF_CHECK_SLOTS as i64),
        ("EP_OFF_VERIFY_EVERY", OFF_VERIFY_EVERY as i64),
        ("EP_OFF_REUSED", OffCpuCounter::Reused as i64),
        ("EP_OFF_STALE", OffCpuCounter::Stale as i64),
        ("EP_OFF_SHORT_FULL", OffCpuCounter::ShortFull as i64),
        ("EP_OFF_STACKS_FULL", OffCpuCounter::StacksFull as i64),
        ("EP_OFF_PY_INCOMPLETE", OffCpuCounter::PyIncomplete as i64),
        ("EP_UNWIND_CUT", UNWIND_CUT as i64),
        ("EP_OFF_MAX", OffCpuCounter::ALL.len() as i64),
        ("EP_HIST_SLOTS", HIST_SLOTS as i64),
        ("EP_HIST_CACHE_SLOTS", HIST_CACHE_SLOTS as i64),
        ("EP_SWITCH_OFF_CPU", SWITCH_OFF_CPU as i64),
        ("EP_SWITCH_HISTS", SWITCH_HISTS as i64),
        ("EP_HIST_RUNQ", HistKind::RunQueue as i64),
        ("EP_HIST_OFFCPU", HistKind::OffCpu as i64),
        ("EP_HIST_BLOCK", HistKind::BlockIo as i64),
        ("EP_HIST_SYSCALL", HistKind::Syscall as i64),
        ("EP_HIST_PROBE", HistKind::Probe as i64),
        ("EP_HIST_TCP_CONNECT", HistKind::TcpConnect as i64),
        ("EP_HIST_KINDS", HistKind::ALL.len() as i64),
        ("EP_PROBE_SLOTS", PROBE_SLOTS as i64),
        ("EP_PROBE_STACKS_ON", PROBE_STACKS_ON as i64),
        ("EP_PROBE_STACKS", PROBE_STACKS as i64),
        ("EP_EVENT_PROBE_HIT", EventKind::ProbeHit as i64),
        ("EP_EVENT_TCP_RETRANSMIT", EventKind::TcpRetransmit as i64),
        ("EP_EVENT_TCP_RESET_SENT", EventKind::TcpResetSent as i64),
        (
            "EP_EVENT_TCP_RESET_RECEIVED",
            EventKind::TcpResetReceived as i64,
        ),
        ("EP_EVENT_KINDS", EventKind::ALL.len() as i64),
        ("EP_BLOCK_READ", BlockOp::Read as i64),
        ("EP_BLOCK_WRITE", BlockOp::Write as i64),
        ("EP_BLOCK_OTHER", BlockOp::Other as i64),
        ("EP_HIST_RECORDED", HistCounter::Recorded as i64),
        ("EP_HIST_OVERFLOWED", HistCounter::Overflowed as i64),
        ("EP_HIST_START_FULL", HistCounter::StartFull as i64),
        ("EP_HIST_EVENTS_FULL", HistCounter::EventsFull as i64),
        ("EP_HIST_COUNTER_MAX", HistCounter::ALL.len() as i64),
    ];

    #[test]
    fn every_c_constant_has_a_rust_twin_of_the_same_value() {
        let mut wrong = Vec::new();
        for (name, value) in c::CONSTANTS {
            match TWINS.iter().find(|(n, _)| n == name) {
                None => wrong.push(format!(
                    "{name} (= {value}) in emberprof.h has no Rust twin: add one to abi.rs and to TWINS"
                )),
                Some((_, twin)) if twin != value => {
                    wrong.push(format!("{name}: Rust says {twin}, C says {value}"))
                }
                Some(_) => {}
            }
        }
        for (name, _) in TWINS {
            if !c::CONSTANTS.iter().any(|(n, _)| n == name) {
                wrong.push(format!("{name} is not in emberprof.h"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    /// The kernel's rule search (`ep_bsearch_step` in unwind.bpf.h), halving by halving:
    /// the entry it ends on and whether it ended within `steps` halvings.
    fn rule_search(count: u32, target: u32, steps: u32) -> (u32, bool) {
        let (mut lo, mut hi) = (0u32, count);
        for _ in 0..steps {
            if lo + 1 >= hi {
                return (lo, true);
            }
            let mid = lo + (hi - lo) / 2;
            // Entry i starts at pc i: the last at or below target is target itself.
            if mid <= target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        (lo, lo + 1 >= hi)
    }

    #[test]
    fn the_rule_search_ends_within_its_halvings_at_the_largest_size() {
        let max = MAX_UNWIND_ENTRIES;
        assert!(UNWIND_ENTRIES as u32 <= max);
        // The last entry is the longest way down (each halving keeps the upper half, which
        // is the larger one when the range is odd); odd sizes near the top too.
        for count in [max, max - 1, max / 2 + 1, UNWIND_ENTRIES as u32, 3, 1] {
            for target in [count - 1, count / 2, 0] {
                let (found, done) = rule_search(count, target, UNWIND_SEARCH_STEPS);
                assert!(done && found == target, "{count} entries, entry {target}");
            }
        }
        // One more doubling would need one more halving.
        let (_, done) = rule_search(max * 2 - 1, max * 2 - 2, UNWIND_SEARCH_STEPS);
        assert!(!done);
    }

    #[test]
    fn enums_list_their_variants_in_index_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
        for (i, c) in OffCpuCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
        for (i, k) in HistKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
        for (i, k) in HistCounter::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
        for (i, k) in EventKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
    }

    #[test]
    fn stack_frames_stop_at_the_first_zero() {
        let mut s = StackTrace::default();
        assert!(s.frames().is_empty());
        s.ips[..3].copy_from_slice(&[0x10, 0x20, 0x30]);
        assert_eq!(s.frames(), [0x10, 0x20, 0x30]);
        s.ips = [1; MAX_STACK_DEPTH];
        assert_eq!(s.frames().len(), MAX_STACK_DEPTH);
    }

    #[test]
    fn py_note_matches_c_layout() {
        assert_eq!(size_of::<PyNote>(), c::EP_PY_NOTE_SIZE);
        assert_eq!(offset_of!(PyNote, tgid), c::EP_PY_NOTE_TGID_OFFSET);
        assert_eq!(offset_of!(PyNote, len), c::EP_PY_NOTE_LEN_OFFSET);
        assert_eq!(offset_of!(PyNote, frames), c::EP_PY_NOTE_FRAMES_OFFSET);
        assert_eq!(size_of::<PyNoteFrame>(), c::EP_PY_NOTE_FRAME_SIZE);
        assert_eq!(
            offset_of!(PyNoteFrame, entry),
            c::EP_PY_NOTE_FRAME_ENTRY_OFFSET
        );
        assert_eq!(
            offset_of!(PyNoteFrame, fingerprint),
            c::EP_PY_NOTE_FRAME_FINGERPRINT_OFFSET
        );
        for (args, c_value) in c::PY_FINGERPRINTS {
            assert_eq!(py_fingerprint(args.0, args.1, args.2), *c_value);
        }
        // Two frames written, as the ring holds them: no more bytes than those.
        let mut bytes = vec![0u8; 8 + 2 * 16];
        bytes[0..4].copy_from_slice(&7u32.to_ne_bytes());
        bytes[4..8].copy_from_slice(&2u32.to_ne_bytes());
        bytes[8..16].copy_from_slice(&0x55u64.to_ne_bytes());
        bytes[16..24].copy_from_slice(&9u64.to_ne_bytes());
        bytes[24..32].copy_from_slice(&1u64.to_ne_bytes());
        let note = PyNote::from_bytes(&bytes).unwrap();
        let got: Vec<(u64, u64)> = note
            .frames()
            .iter()
            .map(|f| (f.entry, f.fingerprint))
            .collect();
        assert_eq!((note.tgid, got), (7, vec![(0x55, 9), (1, 0)]));
        assert!(
            PyNote::from_bytes(&bytes[..30]).is_none(),
            "a cut note is refused"
        );
    }

    #[test]
    fn py_proc_matches_c_layout() {
        assert_eq!(size_of::<PyProc>(), c::EP_PY_PROC_SIZE);
        let rust = [
            offset_of!(PyProc, runtime),
            offset_of!(PyProc, version),
            offset_of!(PyProc, entry_kind),
            offset_of!(PyProc, instr_kind),
            offset_of!(PyProc, entry_offset),
            offset_of!(PyProc, interp_head),
            offset_of!(PyProc, interp_next),
            offset_of!(PyProc, interp_threads),
            offset_of!(PyProc, tstate_next),
            offset_of!(PyProc, tstate_thread_id),
            offset_of!(PyProc, tstate_frame),
            offset_of!(PyProc, cframe_current),
            offset_of!(PyProc, frame_code),
            offset_of!(PyProc, frame_previous),
            offset_of!(PyProc, frame_instr),
            offset_of!(PyProc, code_adaptive),
            offset_of!(PyProc, frame_size),
            offset_of!(PyProc, code_argcount),
            offset_of!(PyProc, code_flags),
            offset_of!(PyProc, code_firstlineno),
        ];
        let c = [
            c::EP_PY_PROC_RUNTIME_OFFSET,
            c::EP_PY_PROC_VERSION_OFFSET,
            c::EP_PY_PROC_ENTRY_KIND_OFFSET,
            c::EP_PY_PROC_INSTR_KIND_OFFSET,
            c::EP_PY_PROC_ENTRY_OFFSET_OFFSET,
            c::EP_PY_PROC_INTERP_HEAD_OFFSET,
            c::EP_PY_PROC_INTERP_NEXT_OFFSET,
            c::EP_PY_PROC_INTERP_THREADS_OFFSET,
            c::EP_PY_PROC_TSTATE_NEXT_OFFSET,
            c::EP_PY_PROC_TSTATE_THREAD_ID_OFFSET,
            c::EP_PY_PROC_TSTATE_FRAME_OFFSET,
            c::EP_PY_PROC_CFRAME_CURRENT_OFFSET,
            c::EP_PY_PROC_FRAME_CODE_OFFSET,
            c::EP_PY_PROC_FRAME_PREVIOUS_OFFSET,
            c::EP_PY_PROC_FRAME_INSTR_OFFSET,
            c::EP_PY_PROC_CODE_ADAPTIVE_OFFSET,
            c::EP_PY_PROC_FRAME_SIZE_OFFSET,
            c::EP_PY_PROC_CODE_ARGCOUNT_OFFSET,
            c::EP_PY_PROC_CODE_FLAGS_OFFSET,
            c::EP_PY_PROC_CODE_FIRSTLINENO_OFFSET,
        ];
        assert_eq!(rust, c);
    }

    #[test]
    fn offcpu_types_match_c_layout() {
        assert_eq!(size_of::<OffCpuKey>(), c::EP_OFFCPU_KEY_SIZE);
        assert_eq!(offset_of!(OffCpuKey, tgid), c::EP_OFFCPU_KEY_TGID_OFFSET);
        assert_eq!(offset_of!(OffCpuKey, tid), c::EP_OFFCPU_KEY_TID_OFFSET);
        assert_eq!(offset_of!(OffCpuKey, comm), c::EP_OFFCPU_KEY_COMM_OFFSET);
        assert_eq!(
            offset_of!(OffCpuKey, user_len),
            c::EP_OFFCPU_KEY_USER_LEN_OFFSET
        );
        assert_eq!(
            offset_of!(OffCpuKey, kernel_len),
            c::EP_OFFCPU_KEY_KERNEL_LEN_OFFSET
        );
        assert_eq!(
            offset_of!(OffCpuKey, exec_id),
            c::EP_OFFCPU_KEY_EXEC_ID_OFFSET
        );
        assert_eq!(offset_of!(OffCpuKey, flags), c::EP_OFFCPU_KEY_FLAGS_OFFSET);
        assert_eq!(offset_of!(OffCpuKey, user), c::EP_OFFCPU_KEY_USER_OFFSET);
        assert_eq!(
            offset_of!(OffCpuKey, kernel),
            c::EP_OFFCPU_KEY_KERNEL_OFFSET
        );
        assert_eq!(
            offset_of!(OffCpuKey, py_len),
            c::EP_OFFCPU_KEY_PY_LEN_OFFSET
        );
        assert_eq!(offset_of!(OffCpuKey, py), c::EP_OFFCPU_KEY_PY_OFFSET);
        assert_eq!(size_of::<ProbeSampleKey>(), c::EP_PROBE_SAMPLE_KEY_SIZE);
        assert_eq!(
            offset_of!(ProbeSampleKey, sample),
            c::EP_PROBE_SAMPLE_KEY_SAMPLE_OFFSET
        );
        assert_eq!(
            offset_of!(ProbeSampleKey, slot),
            c::EP_PROBE_SAMPLE_KEY_SLOT_OFFSET
        );
        assert_eq!(
            offset_of!(ProbeSampleKey, reserved),
            c::EP_PROBE_SAMPLE_KEY_RESERVED_OFFSET
        );
        assert_eq!(size_of::<ProbeSampleValue>(), c::EP_PROBE_SAMPLE_VALUE_SIZE);
        assert_eq!(
            offset_of!(ProbeSampleValue, hits),
            c::EP_PROBE_SAMPLE_VALUE_HITS_OFFSET
        );
        assert_eq!(
            offset_of!(ProbeSampleValue, ns),
            c::EP_PROBE_SAMPLE_VALUE_NS_OFFSET
        );
        assert_eq!(size_of::<OffCpuValue>(), c::EP_OFFCPU_VALUE_SIZE);
        assert_eq!(
            offset_of!(OffCpuValue, total_ns),
            c::EP_OFFCPU_VALUE_TOTAL_NS_OFFSET
        );
        assert_eq!(
            offset_of!(OffCpuValue, blocks),
            c::EP_OFFCPU_VALUE_BLOCKS_OFFSET
        );
    }

    #[test]
    fn offcpu_frames_are_clamped() {
        let key = OffCpuKey {
            user_len: 3,
            kernel_len: 1000,
            ..Default::default()
        };
        assert_eq!(key.user_frames().len(), 3);
        assert_eq!(key.kernel_frames().len(), MAX_STACK_DEPTH);
    }

    #[test]
    fn announcements_decode_whole_records_only() {
        let mut raw = Vec::new();
        raw.extend_from_slice(&42u32.to_ne_bytes());
        raw.extend_from_slice(&7u32.to_ne_bytes());
        raw.extend_from_slice(b"worker\0\0\0\0\0\0\0\0\0\0");
        let a = Announcement::from_bytes(&raw).unwrap();
        assert_eq!(
            (a.tgid, a.exec_id, a.comm_str().as_str()),
            (42, 7, "worker")
        );
        assert_eq!(Announcement::from_bytes(&raw[..20]), None);
    }

    #[test]
    fn comm_stops_at_nul() {
        let mut key = SampleKey::default();
        key.comm[..4].copy_from_slice(b"abc\0");
        key.comm[4] = b'x';
        assert_eq!(key.comm_str(), "abc");
        key.comm = [b'a'; COMM_LEN];
        assert_eq!(key.comm_str().len(), COMM_LEN);
    }

    #[test]
    fn unwind_types_match_c_layout() {
        assert_eq!(size_of::<UnwindRule>(), c::EP_UNWIND_RULE_SIZE);
        assert_eq!(offset_of!(UnwindRule, kind), c::EP_UNWIND_RULE_KIND_OFFSET);
        assert_eq!(
            offset_of!(UnwindRule, rbp_saved),
            c::EP_UNWIND_RULE_RBP_SAVED_OFFSET
        );
        assert_eq!(
            offset_of!(UnwindRule, cfa_offset),
            c::EP_UNWIND_RULE_CFA_OFFSET_OFFSET
        );
        assert_eq!(
            offset_of!(UnwindRule, rbp_offset),
            c::EP_UNWIND_RULE_RBP_OFFSET_OFFSET
        );
        assert_eq!(size_of::<UnwindEntry>(), c::EP_UNWIND_ENTRY_SIZE);
        assert_eq!(offset_of!(UnwindEntry, pc), c::EP_UNWIND_ENTRY_PC_OFFSET);
        assert_eq!(
            offset_of!(UnwindEntry, rule),
            c::EP_UNWIND_ENTRY_RULE_OFFSET
        );
        assert_eq!(size_of::<UnwindMapping>(), c::EP_UNWIND_MAPPING_SIZE);
        assert_eq!(
            offset_of!(UnwindMapping, start),
            c::EP_UNWIND_MAPPING_START_OFFSET
        );
        assert_eq!(
            offset_of!(UnwindMapping, end),
            c::EP_UNWIND_MAPPING_END_OFFSET
        );
        assert_eq!(
            offset_of!(UnwindMapping, bias),
            c::EP_UNWIND_MAPPING_BIAS_OFFSET
        );
        assert_eq!(
            offset_of!(UnwindMapping, first),
            c::EP_UNWIND_MAPPING_FIRST_OFFSET
        );
        assert_eq!(
            offset_of!(UnwindMapping, count),
            c::EP_UNWIND_MAPPING_COUNT_OFFSET
        );
        assert_eq!(size_of::<UnwindProc>(), c::EP_UNWIND_PROC_SIZE);
        assert_eq!(
            offset_of!(UnwindProc, count),
            c::EP_UNWIND_PROC_COUNT_OFFSET
        );
        assert_eq!(
            offset_of!(UnwindProc, mappings),
            c::EP_UNWIND_PROC_MAPPINGS_OFFSET
        );
    }

    #[test]
    fn histogram_types_match_c_layout() {
        assert_eq!(size_of::<HistKey>(), c::EP_HIST_KEY_SIZE);
        assert_eq!(offset_of!(HistKey, cgroup), c::EP_HIST_KEY_CGROUP_OFFSET);
        assert_eq!(offset_of!(HistKey, kind), c::EP_HIST_KEY_KIND_OFFSET);
        assert_eq!(offset_of!(HistKey, detail), c::EP_HIST_KEY_DETAIL_OFFSET);
        assert_eq!(offset_of!(HistKey, major), c::EP_HIST_KEY_MAJOR_OFFSET);
        assert_eq!(offset_of!(HistKey, minor), c::EP_HIST_KEY_MINOR_OFFSET);
        assert_eq!(size_of::<Hist>(), c::EP_HIST_SIZE);
        assert_eq!(offset_of!(Hist, slots), c::EP_HIST_SLOTS_OFFSET);
        assert_eq!(offset_of!(Hist, zero), c::EP_HIST_ZERO_OFFSET);
        assert_eq!(offset_of!(Hist, sum_ns), c::EP_HIST_SUM_NS_OFFSET);
        assert_eq!(size_of::<HistCached>(), c::EP_HIST_CACHED_SIZE);
        assert_eq!(offset_of!(HistCached, key), c::EP_HIST_CACHED_KEY_OFFSET);
        assert_eq!(offset_of!(HistCached, used), c::EP_HIST_CACHED_USED_OFFSET);
        assert_eq!(offset_of!(HistCached, hist), c::EP_HIST_CACHED_HIST_OFFSET);
    }

    /// The kernel's slot for a value must be the OTLP scale-0 bucket (2^i, 2^(i+1)] that
    /// holds it, shifted by one (slot = index + 1).
    #[test]
    fn c_slot_function_is_the_otlp_scale_zero_bucket() {
        for &(v, slot) in c::SLOT_SAMPLES {
            if v == 0 {
                continue; // zero has its own counter; the slot function is not used for it
            }
            if slot == 0 {
                assert_eq!(v, 1, "only 1 ns is in (0.5, 1]");
                continue;
            }
            // Bucket index slot - 1 is (2^(slot-1), 2^slot]; exact in u128.
            let (lower, upper) = (1u128 << (slot - 1), 1u128 << slot);
            let v = u128::from(v);
            assert!(v > lower, "{v} in slot {slot}: above ({lower}, {upper}]");
            if slot < HIST_SLOTS - 1 {
                assert!(v <= upper, "{v} in slot {slot}: below ({lower}, {upper}]");
            }
        }
        let slot_of = |v: u64| c::SLOT_SAMPLES.iter().find(|s| s.0 == v).map(|s| s.1);
        assert_eq!(slot_of(1), Some(0));
        assert_eq!(slot_of(2), Some(1));
        assert_eq!(slot_of(1024), Some(10));
        assert_eq!(slot_of(1025), Some(11));
        // 10 ms sits in (2^23, 2^24] ns, 20 ms in (2^24, 2^25].
        assert_eq!(slot_of(10_000_000), Some(24));
        assert_eq!(slot_of(20_000_000), Some(25));
        assert_eq!(slot_of(u64::MAX), Some(HIST_SLOTS - 1));
        // User space puts a value in the slot the kernel does.
        for &(v, slot) in c::SLOT_SAMPLES.iter().filter(|s| s.0 > 0) {
            assert_eq!(emberprof_model::Log2Histogram::slot_of(v), slot, "{v}");
        }
    }
}
