/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Types shared between the eBPF programs and user space. The Rust twins live in
 * probes/src/abi.rs; a test there compares their layout with this header
 * (offsets are measured by build.rs compiling this file for the host).
 */
#ifndef EMBERPROF_H
#define EMBERPROF_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define EP_COMM_LEN 16
/* Matches the kernel's default kernel.perf_event_max_stack. */
#define EP_MAX_STACK_DEPTH 127

/* Key of the in-kernel sample counts: one entry per distinct thread + stack pair. */
struct ep_sample_key {
	__u32 tgid;
	__u32 tid;
	/* >= 0: id in the stack map of the same buffer; < 0: -errno from bpf_get_stackid. */
	__s32 user_stack_id;
	__s32 kernel_stack_id;
	char comm[EP_COMM_LEN];
};

/* Indexes of the per-CPU counter array `ep_counters`. */
enum ep_counter {
	/* Samples of a tracked process (after the PID filter), counted once each. */
	EP_CNT_SAMPLES = 0,
	/* Samples that hit the idle task; not profiled. */
	EP_CNT_IDLE = 1,
	/* Samples whose user stack bucket was taken by another stack (stack map full). */
	EP_CNT_USER_STACK_MAP_FULL = 2,
	/* Samples whose kernel stack bucket was taken by another stack (stack map full). */
	EP_CNT_KERNEL_STACK_MAP_FULL = 3,
	/* Other errors from bpf_get_stackid (not -EFAULT, which means "no such stack"). */
	EP_CNT_STACK_ERROR = 4,
	/* Samples lost because the count map had no room for a new key. */
	EP_CNT_COUNT_MAP_FULL = 5,
	EP_CNT_MAX = 6,
};

/*
 * Off-CPU: the count key holds both stacks inline (bpf_get_stack), not stack-map ids, so
 * that a thread blocked across any number of drains is still credited to the right stack.
 */
struct ep_offcpu_key {
	__u32 tgid;
	__u32 tid;
	char comm[EP_COMM_LEN];
	/* Number of valid entries in user[] and kernel[]; the rest are zero. */
	__u32 user_len;
	__u32 kernel_len;
	__u64 user[EP_MAX_STACK_DEPTH];
	__u64 kernel[EP_MAX_STACK_DEPTH];
};

/* A thread that left the CPU: when, and what it was doing. */
struct ep_offcpu_start {
	__u64 ts;
	struct ep_offcpu_key key;
};

/* Value of the off-CPU count map. */
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
	EP_OFF_MAX = 5,
};

#endif
