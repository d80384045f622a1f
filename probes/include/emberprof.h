/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Types and constants shared between the eBPF programs and user space, each defined here
 * once. The Rust twins live in probes/src/abi.rs; tests there compare their layout and
 * values with this header (build.rs compiles a host program against it that prints them),
 * and fail for any `EP_*` constant here that has no Rust twin.
 */
#ifndef EMBERPROF_H
#define EMBERPROF_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define EP_COMM_LEN 16
/* Matches the kernel's default kernel.perf_event_max_stack. */
#define EP_MAX_STACK_DEPTH 127

/*
 * The errno values the programs test helper results against: BPF programs have no errno.h
 * (user space compares them with libc's).
 */
#define EP_ENOENT 2
#define EP_E2BIG 7
#define EP_EFAULT 14
#define EP_EEXIST 17

/*
 * Why a sample's stack is missing, in `ep_sample_key.*_err`: the stack map had no room, or
 * the task has no such stack (-EFAULT from bpf_get_stack: a kernel thread's user stack).
 */
#define EP_STACK_ERR_MAP_FULL (-EP_E2BIG)
#define EP_STACK_ERR_NONE (-EP_EFAULT)

/* Thread-group ids the PID filter `ep_pid_filter` can hold. */
#define EP_PID_FILTER_ENTRIES 4096

/*
 * Default sizes of the double-buffered maps (entries per buffer); the loaders set the real
 * sizes from their configuration before loading.
 */
#define EP_STACK_ENTRIES 16384
#define EP_COUNT_ENTRIES 16384
#define EP_OFF_COUNT_ENTRIES 16384
#define EP_HIST_KEYS 1024

/* Default shortest block the off-CPU profiler records (`ep_min_block_ns`). */
#define EP_MIN_BLOCK_NS 1000

/* Key of the in-kernel sample counts: one entry per distinct thread + stack pair. */
struct ep_sample_key {
	__u32 tgid;
	__u32 tid;
	/*
	 * 64-bit hash of each stack, its key in the stack map of the same buffer; 0 when the
	 * stack was not stored, and then *_err says why (-errno). A hash, not a
	 * BPF_MAP_TYPE_STACK_TRACE id: those maps drop any stack whose bucket another stack holds,
	 * which loses a few percent of samples long before the map is full.
	 */
	__u64 user_stack;
	__u64 kernel_stack;
	__s32 user_err;
	__s32 kernel_err;
	char comm[EP_COMM_LEN];
	/*
	 * The process image the sample belongs to: the task's self_exec_id, which every exec
	 * advances. Samples taken before and after an exec in one drain are symbolized against
	 * the mappings of their own image.
	 */
	__u32 exec_id;
	/* EP_KEY_* bits. */
	__u32 flags;
	/*
	 * Hash of the thread's Python stack (struct ep_py_proc), its key in the stack map; 0
	 * when the process runs no Python known to the walker, or the thread runs no Python
	 * code.
	 */
	__u64 py_stack;
};

/* `flags` of a sample or off-CPU key: the thread is a kernel thread (PF_KTHREAD). */
#define EP_KEY_KTHREAD 1u

/*
 * What the announcement ring carries for a newly sampled process (or one that exec'd): its
 * image and the name of its group leader, so that a process gone before user space reads
 * /proc is still named after what it ran.
 */
struct ep_announcement {
	__u32 tgid;
	__u32 exec_id;
	char comm[EP_COMM_LEN];
};

/* Value of the stack maps: frames leaf first, zero after the last. */
struct ep_stack {
	__u64 ips[EP_MAX_STACK_DEPTH];
};

/* Indexes of the per-CPU counter array `ep_counters`. */
enum ep_counter {
	/* Samples of a tracked process (after the PID filter), counted once each. */
	EP_CNT_SAMPLES = 0,
	/* Samples that hit the idle task; not profiled. */
	EP_CNT_IDLE = 1,
	/* Samples whose user stack found no room in the stack map. */
	EP_CNT_USER_STACK_MAP_FULL = 2,
	/* Samples whose kernel stack found no room in the stack map. */
	EP_CNT_KERNEL_STACK_MAP_FULL = 3,
	/* Other errors capturing or storing a stack (not -EFAULT, which means "no such stack"). */
	EP_CNT_STACK_ERROR = 4,
	/* Samples lost because the count map had no room for a new key. */
	EP_CNT_COUNT_MAP_FULL = 5,
	/* New processes that could not be announced to user space (ring buffer full). */
	EP_CNT_ANNOUNCE_LOST = 6,
	/* User-stack walks that ended at a pc without a rule, a failed read, or the depth. */
	EP_CNT_UNWIND_NO_RULE = 7,
	EP_CNT_UNWIND_BAD_READ = 8,
	EP_CNT_UNWIND_DEPTH = 9,
	/* Samples of a thread of a Python process (ep_py_procs) and how their walk went. */
	EP_CNT_PY_SAMPLES = 10,
	/* The thread has no thread state (not a Python thread, or not bound yet). */
	EP_CNT_PY_NO_THREAD = 11,
	/* The walk read something it could not (the frame chain changed under it). */
	EP_CNT_PY_BAD_READ = 12,
	/* More Python frames than a stack holds. */
	EP_CNT_PY_DEPTH = 13,
	/* The Python stack found no room in the stack map. */
	EP_CNT_PY_STACK_FULL = 14,
	/* New Python stacks not noted to user space (ring full): their names are read at the
	 * drain, which a process that exits before it misses. */
	EP_CNT_PY_NOTES_LOST = 15,
	EP_CNT_MAX = 16,
};

/*
 * Off-CPU: a thread + its two stacks, stored once per buffer under a 64-bit id (a hash of
 * all of it) that the counts are keyed by, so that crediting a block hashes 8 bytes, not
 * 2 KB. The stacks are inline (not stack-map ids): a thread blocked across any number of
 * drains is still credited to the right stack.
 */
struct ep_offcpu_key {
	__u32 tgid;
	__u32 tid;
	char comm[EP_COMM_LEN];
	/* Number of valid entries in user[] and kernel[]; the rest are zero. */
	__u32 user_len;
	__u32 kernel_len;
	/* As in struct ep_sample_key. */
	__u32 exec_id;
	__u32 flags;
	__u64 user[EP_MAX_STACK_DEPTH];
	__u64 kernel[EP_MAX_STACK_DEPTH];
	/* The thread's Python stack (entries as in ep_py_proc's comment), when its process
	 * runs Python: py_len entries; the rest is not meaningful. */
	__u32 py_len;
	__u32 reserved;
	__u64 py[EP_MAX_STACK_DEPTH];
};

/*
 * Return-address slots of a thread's last user stack that a switch-out reads again before
 * it reuses that stack: the callers up to this depth are checked, not assumed.
 */
#define EP_OFF_CHECK_SLOTS 4
/* Every this many reuses of a thread's stacks, they are walked again and compared. */
#define EP_OFF_VERIFY_EVERY 64

/*
 * Where a thread entered the kernel (its user registers at the syscall or fault): while
 * this and the checked slots are unchanged, its stacks are too.
 */
struct ep_offcpu_site {
	__u64 ip;
	__u64 sp;
	__u64 bp;
	/* The syscall number (-1 for a fault or an interrupt) and its first two arguments. */
	__u64 nr;
	__u64 arg0;
	__u64 arg1;
};

/* A thread that left the CPU: when, and its last stacks (in task storage). */
struct ep_offcpu_start {
	__u64 ts;
	/* The id of `key` (0: no reusable stacks). */
	__u64 id;
	struct ep_offcpu_site site;
	/* Addresses of the return addresses of user frames 1..nslots (user[i + 1] is read at
	 * slots[i]). */
	__u64 slots[EP_OFF_CHECK_SLOTS];
	__u32 nslots;
	/* Reuses since the stacks were last walked. */
	__u32 reuses;
	/* The buffer generation `key` was last stored in, plus one (0: never). */
	__u32 stored_gen;
	/* exec_id + 1 of the image this thread last announced (0: none). */
	__u32 announced;
	/* ep_py_gen + 1 when this thread's process was last found not listed as running
	 * Python (0: not known): its reused stacks need no Python walk until the list changes. */
	__u32 py_absent;
	__u32 reserved;
	struct ep_offcpu_key key;
};

/* Value of the off-CPU counts (also of the per-process totals of short blocks). */
struct ep_offcpu_value {
	__u64 total_ns;
	__u64 blocks;
};

/* Indexes of the off-CPU per-CPU counters `ep_off_counters`. */
enum ep_offcpu_counter {
	/* Blocks credited to a stack. */
	EP_OFF_BLOCKS = 0,
	/* Blocks shorter than the minimum, not recorded. */
	EP_OFF_SHORT = 1,
	/* Switch-outs not recorded: the map of blocked threads was full. */
	EP_OFF_START_FULL = 2,
	/* Blocks lost: no room in the count map for a new key. */
	EP_OFF_COUNT_FULL = 3,
	/* bpf_get_stack failed with something other than "no stack". */
	EP_OFF_STACK_ERROR = 4,
	/* New processes that could not be announced to user space (ring buffer full). */
	EP_OFF_ANNOUNCE_LOST = 5,
	/* User-stack walks that ended at a pc without a rule, a failed read, or the depth. */
	EP_OFF_UNWIND_NO_RULE = 6,
	EP_OFF_UNWIND_BAD_READ = 7,
	EP_OFF_UNWIND_DEPTH = 8,
	/* Switch-outs that reused the thread's last stacks instead of walking them. */
	EP_OFF_REUSED = 9,
	/* Reused stacks that a periodic walk found different (the reuse was wrong). */
	EP_OFF_STALE = 10,
	/* Short blocks whose process total could not be kept (the map was full). */
	EP_OFF_SHORT_FULL = 11,
	/* Blocks whose stacks found no room in the buffer's stack map (counted, unattributed). */
	EP_OFF_STACKS_FULL = 12,
	/* Blocks of Python threads whose Python stack is missing or cut (not a Python
	 * thread, an unreadable frame, too deep). */
	EP_OFF_PY_INCOMPLETE = 13,
	EP_OFF_MAX = 14,
};

/*
 * Latency histograms. Durations are nanoseconds. Slot s counts values v with
 * 2^(s-1) < v <= 2^s, which is bucket index s-1 of an OpenTelemetry exponential histogram
 * at scale 0 (its buckets are (2^i, 2^(i+1)], upper bound inclusive); v == 0 goes to
 * `zero`. Slot 0 is therefore (0.5, 1], and the last slot also takes anything larger.
 */
#define EP_HIST_SLOTS 64

/* What a histogram measures. */
enum ep_hist_kind {
	/* Wakeup (or preemption) to running again, per cgroup. */
	EP_HIST_RUNQ = 0,
	/* Voluntary switch-out to switch-in, per cgroup. */
	EP_HIST_OFFCPU = 1,
	/* Block request issue to completion, per disk and direction. */
	EP_HIST_BLOCK = 2,
	/* Syscall entry to exit, per syscall and cgroup. */
	EP_HIST_SYSCALL = 3,
	/* A probed function's entry to return (--probe uprobe:), per probe slot and cgroup. */
	EP_HIST_PROBE = 4,
	/* TCP connection establishment, SYN sent to ESTABLISHED, per remote port and cgroup. */
	EP_HIST_TCP_CONNECT = 5,
	EP_HIST_KINDS = 6,
};

/* Block I/O directions in `ep_hist_key.detail`'s low byte for EP_HIST_BLOCK. */
enum ep_block_op {
	EP_BLOCK_READ = 0,
	EP_BLOCK_WRITE = 1,
	EP_BLOCK_OTHER = 2,
};

/* One histogram's identity. Fields a kind does not use are zero. */
struct ep_hist_key {
	/* cgroup v2 id (the cgroupfs inode number); 0 for block I/O. */
	__u64 cgroup;
	/* enum ep_hist_kind */
	__u32 kind;
	/* Syscall number, or for block I/O the direction (enum ep_block_op). */
	__u32 detail;
	/* Block I/O: the disk's major and first minor. */
	__u32 major;
	__u32 minor;
};

/* One log2 histogram; the overflow histograms are per CPU and summed by user space. */
struct ep_hist {
	__u64 slots[EP_HIST_SLOTS];
	/* Values of exactly 0 ns. */
	__u64 zero;
	/* Sum of all recorded values, ns. */
	__u64 sum_ns;
};

/*
 * Slots of each CPU's cache of scheduler histograms (a power of two): the run-queue and
 * off-CPU histograms a CPU used last, updated by sched_switch without a hash lookup or
 * atomics. A key whose slot another holds goes to the shared map.
 */
#define EP_HIST_CACHE_SLOTS 32

/* Bits of `ep_switch_on[0]`: the parts of the sched_switch program running. */
#define EP_SWITCH_OFF_CPU 1
#define EP_SWITCH_HISTS 2

/* One slot of that cache. */
struct ep_hist_cached {
	struct ep_hist_key key;
	/* Non-zero once `key` holds the slot (user space zeroes the slot when draining). */
	__u64 used;
	struct ep_hist hist;
};

/* Indexes of the histogram per-CPU counters `ep_hist_counters`. */
enum ep_hist_counter {
	/* Values recorded into a keyed histogram. */
	EP_HIST_RECORDED = 0,
	/* Values recorded into the per-kind overflow histogram: the key map was full. */
	EP_HIST_OVERFLOWED = 1,
	/* Waits not tracked (no task storage, the block in-flight map full, or a run-queue wait
	 * that ended before its thread's first switch-out seen); their latency is lost. */
	EP_HIST_START_FULL = 2,
	/* Events not counted: the event count map was full. */
	EP_HIST_EVENTS_FULL = 3,
	EP_HIST_COUNTER_MAX = 4,
};

/*
 * Probe points (--probe): each user-given probe has a slot, and each slot its own
 * programs (a uprobe has no cookie in the loader's API to tell probes apart).
 */
#define EP_PROBE_SLOTS 8

/* Bits of `ep_probe_slot_flags[slot]`: the slot records the stacks of its hits. */
#define EP_PROBE_STACKS_ON 1
/* Stacks kept per buffer for probe hits (a stack map of its own). */
#define EP_PROBE_STACKS 8192

/* The stacks of a probe's hits: the thread's sample key, and which probe (slot). */
struct ep_probe_sample_key {
	struct ep_sample_key sample;
	__u32 slot;
	__u32 reserved;
};

/* What those stacks did: hits, and for a function (+stacks) the time its calls took. */
struct ep_probe_sample_value {
	__u64 hits;
	__u64 ns;
};

/*
 * What an event count counts. Counts are kept beside the histograms, double-buffered with
 * them, under a `struct ep_hist_key` whose kind is one of these.
 */
enum ep_event_kind {
	/* A probe point hit (a call, for a function), per slot (detail) and cgroup. */
	EP_EVENT_PROBE_HIT = 0,
	/* TCP segments retransmitted, per remote port (detail) and cgroup. */
	EP_EVENT_TCP_RETRANSMIT = 1,
	/* TCP resets sent, and received, per remote port and cgroup. */
	EP_EVENT_TCP_RESET_SENT = 2,
	EP_EVENT_TCP_RESET_RECEIVED = 3,
	EP_EVENT_KINDS = 4,
};

/*
 * Slot of a duration (see EP_HIST_SLOTS): ceil(log2(v)), clamped to the last slot. Shared
 * by the probes and the host-side test that checks it against the OTLP bucket definition.
 */
static inline __u32 ep_hist_slot(__u64 v)
{
	__u64 x;
	__u32 r = 0;

	if (v <= 1)
		return 0;
	/* floor(log2(v - 1)) + 1 == ceil(log2(v)) for v >= 2 */
	x = v - 1;
	if (x >> 32) { x >>= 32; r += 32; }
	if (x >> 16) { x >>= 16; r += 16; }
	if (x >> 8) { x >>= 8; r += 8; }
	if (x >> 4) { x >>= 4; r += 4; }
	if (x >> 2) { x >>= 2; r += 2; }
	if (x >> 1) { r += 1; }
	r += 1;
	return r < EP_HIST_SLOTS ? r : EP_HIST_SLOTS - 1;
}


/*
 * Unwind tables (issue 17): user stacks walked from .eh_frame rules where a process's
 * mapping has a table, by frame pointers elsewhere.
 *
 * Rules are few and shared by every file (a few thousand distinct on a whole host);
 * entries are a file's sorted ranges, each the start of a range (relative to the file's
 * table base) and its rule; a process lists its executable mappings, each pointing at its
 * file's entries.
 */
#define EP_UNWIND_RULES 16384
/*
 * Table entries of all files together: the compile-time size of ep_unwind_entries, which
 * the loader sets at load (--unwind-table-mib) up to 1 << EP_UNWIND_SEARCH_STEPS.
 */
#define EP_UNWIND_ENTRIES (1 << 22)
/* Halvings of the rule search: they find the rule in a table of up to 2^this entries. */
#define EP_UNWIND_SEARCH_STEPS 24
#define EP_UNWIND_PROCS 4096
#define EP_UNWIND_MAPPINGS 64

/*
 * A walk that could not be finished ends in this frame plus the reason (EP_WALK_*), in the
 * last user frame: the top page is never user code (nor kernel code), so user space can
 * tell it and name it, and stacks cut for different reasons stay apart.
 */
#define EP_UNWIND_CUT 0xfffffffffffff000ULL

/* ep_unwind_rule.kind */
#define EP_RULE_NONE 0     /* no rule: the walk ends with a marker */
#define EP_RULE_CFA_RSP 1  /* CFA = RSP + cfa_offset */
#define EP_RULE_CFA_RBP 2  /* CFA = RBP + cfa_offset */
#define EP_RULE_STOP 3     /* the outermost frame: the walk is complete */
#define EP_RULE_PLT 4      /* CFA = RSP + 8, + 8 from byte 11 of each 16-byte PLT entry */
#define EP_RULE_SIGNAL 5   /* the signal trampoline: registers in the ucontext */

struct ep_unwind_rule {
	__u8 kind;
	/* Whether the caller's RBP is saved at CFA + rbp_offset (else it is unchanged). */
	__u8 rbp_saved;
	__u16 reserved;
	__s32 cfa_offset;
	__s32 rbp_offset;
};

struct ep_unwind_entry {
	/* Start of the range, relative to the file's table base. */
	__u32 pc;
	/* Index into ep_unwind_rules. */
	__u32 rule;
};

struct ep_unwind_mapping {
	__u64 start;
	__u64 end;
	/* Runtime address minus this is the table-relative pc. */
	__u64 bias;
	/* The file's entries: ep_unwind_entries[first, first + count). */
	__u32 first;
	__u32 count;
};

struct ep_unwind_proc {
	__u32 count;
	__u32 reserved;
	/* Sorted by start. */
	struct ep_unwind_mapping mappings[EP_UNWIND_MAPPINGS];
};

/*
 * Python (CPython 3.10-3.13): where a process's interpreter keeps its threads and frames,
 * written by user space for each process found running it. The walker finds the sampled
 * thread's state in the interpreters' thread lists by its pthread_self() (the task's fs
 * base), then follows the frame chain and records each frame's code object and position.
 * Offsets are bytes into the named structure.
 */
#define EP_PY_PROCS 4096
/* Threads of all interpreters a walk looks through for the sampled one. */
#define EP_PY_MAX_THREADS 512
/* Bytes of a frame read at once: every field the walker needs lies within. */
#define EP_PY_FRAME_READ 112
/* No such field (ep_py_proc.cframe_current). */
#define EP_PY_NO_FIELD 0xffff

/* ep_py_proc.entry_kind: how the frames that start an eval-loop call are told. */
#define EP_PY_ENTRY_EVERY 0    /* every frame is one call of the eval loop (3.10) */
#define EP_PY_ENTRY_FLAG 1     /* a bool at entry_offset marks the call's first frame (3.11) */
#define EP_PY_ENTRY_SHIM 2     /* a shim frame, owner byte at entry_offset == 3 (3.12+) */

/* ep_py_proc.instr_kind */
#define EP_PY_INSTR_LASTI 0    /* an int: the index of the last instruction (3.10) */
#define EP_PY_INSTR_PTR 1      /* a pointer into the code object's inline bytecode (3.11+) */

/*
 * A Python stack's entries, innermost first: a frame is its code object's address in the
 * low 48 bits and its instruction index + 1 in the high 16 (0: not started; saturated),
 * EP_PY_ENTRY follows the frame that entered the eval loop (one native eval frame holds
 * the frames since the previous one), and a walk that stopped early ends in EP_PY_CUT_*.
 * None of these small values is an object address.
 */
#define EP_PY_ENTRY 1ULL
#define EP_PY_CUT_READ 2ULL
#define EP_PY_CUT_DEPTH 3ULL
#define EP_PY_ADDR_MASK 0xffffffffffffULL
#define EP_PY_INDEX_SHIFT 48

/*
 * A Python stack new to the current buffer, noted to user space right away so that its
 * code objects are read while the process runs: a process that exits before the next
 * drain is still named.
 */
struct ep_py_note_frame {
	/* An entry of the stack (frame or marker, as in ep_py_proc's comment). */
	__u64 entry;
	/*
	 * The code object's fingerprint as the kernel read it right after the sample
	 * (EP_PY_FINGERPRINT; 0 for a marker or an unreadable object): a code object freed and
	 * another allocated at its address before user space reads it is told apart.
	 */
	__u64 fingerprint;
};

/* Written to the ring only up to frames[len]: most Python stacks are far from the bound. */
struct ep_py_note {
	__u32 tgid;
	__u32 len;
	struct ep_py_note_frame frames[EP_MAX_STACK_DEPTH];
};

/* A code object's fingerprint from co_argcount, co_flags and co_firstlineno. */
#define EP_PY_FINGERPRINT(argcount, flags, firstlineno) \
	(((__u64)(firstlineno) << 32) | (__u32)(((__u32)(argcount) << 20) ^ (__u32)(flags)))

struct ep_py_proc {
	/* Where _PyRuntime is in the process. */
	__u64 runtime;
	/* PY_VERSION_HEX, for diagnostics. */
	__u32 version;
	__u8 entry_kind;
	__u8 instr_kind;
	__u16 entry_offset;
	/* _PyRuntime.interpreters.head, PyInterpreterState.next, its thread list head. */
	__u16 interp_head;
	__u16 interp_next;
	__u16 interp_threads;
	/* PyThreadState.next, .thread_id, and its top frame (or cframe) pointer. */
	__u16 tstate_next;
	__u16 tstate_thread_id;
	__u16 tstate_frame;
	/* _PyCFrame.current_frame (3.11, 3.12), else EP_PY_NO_FIELD. */
	__u16 cframe_current;
	/* The frame's code object, caller, position. */
	__u16 frame_code;
	__u16 frame_previous;
	__u16 frame_instr;
	/* co_code_adaptive: where a 3.11+ position pointer's code units start. */
	__u16 code_adaptive;
	/* Bytes of a frame the walker reads: past the last field it needs, at most
	 * EP_PY_FRAME_READ (a 3.11+ frame may end where its memory does). */
	__u16 frame_size;
	/* co_argcount, co_flags, co_firstlineno (ints): a code object's fingerprint. */
	__u16 code_argcount;
	__u16 code_flags;
	__u16 code_firstlineno;
	__u16 reserved;
};

#endif
