/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Off-CPU profiler (part of stacks.bpf.c) on the sched_switch BTF tracepoint (no kprobes needed). It runs in the
 * context of the thread leaving the CPU: that thread's stacks are captured then, and the
 * time it spent away is credited when it is switched back in. Counts are double-buffered
 * like the CPU sampler's; `ep_off_control[0]` names the buffer being filled.
 */
#ifndef EP_OFF_CPU_BPF_H
#define EP_OFF_CPU_BPF_H

/* Set by the loader before verification. */
const volatile __u8 ep_include_preempted = 0;
const volatile __u64 ep_min_block_ns = EP_MIN_BLOCK_NS;

/*
 * What each tracked thread was doing when it blocked, in task-local storage: no hash or lock
 * on the hot path, allocated once per thread and freed by the kernel when it exits. A zero
 * `ts` means "not blocked".
 */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ep_offcpu_start);
} ep_off_start SEC(".maps");

#define EP_OFF_COUNT_MAP(name)                               \
	struct {                                             \
		__uint(type, BPF_MAP_TYPE_HASH);             \
		__type(key, struct ep_offcpu_key);           \
		__type(value, struct ep_offcpu_value);       \
		__uint(max_entries, EP_OFF_COUNT_ENTRIES);   \
		__uint(map_flags, BPF_F_NO_PREALLOC);        \
	} name SEC(".maps")

EP_OFF_COUNT_MAP(ep_off_counts_0);
EP_OFF_COUNT_MAP(ep_off_counts_1);

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} ep_off_control SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, EP_OFF_MAX);
} ep_off_counters SEC(".maps");

#define ep_off_count(idx) ep_percpu_inc(&ep_off_counters, (idx))

static __always_inline __u32 ep_frames(long bytes)
{
	if (bytes < 0) {
		if (bytes != -EP_EFAULT)
			ep_off_count(EP_OFF_STACK_ERROR);
		return 0;
	}
	return (__u32)(bytes / sizeof(__u64));
}

static __always_inline void ep_switch_out(void *ctx, struct task_struct *prev)
{
	__u32 tgid = prev->tgid;

	if (!ep_pid_tracked(tgid))
		return;
	struct ep_offcpu_start *start =
		bpf_task_storage_get(&ep_off_start, prev, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!start) {
		ep_off_count(EP_OFF_START_FULL);
		return;
	}
	/*
	 * Every byte of the key is rewritten: the ids and lengths here, the comm NUL-padded by
	 * the helper, and both stack buffers, which bpf_get_stack zero-fills past the frames it
	 * writes (all of it on error) and the walker's are zeroed first. Equal stacks must give
	 * equal keys.
	 */
	start->ts = 0;
	start->key.tgid = tgid;
	start->key.tid = prev->pid;
	bpf_get_current_comm(start->key.comm, sizeof(start->key.comm));
	ep_task_image(prev, &start->key.exec_id, &start->key.flags);
	/* We run as `prev`, so the current stacks are the blocked thread's. */
	long user = 0;
	if (bpf_map_lookup_elem(&ep_unwind_procs, &tgid)) {
		/* The walker writes only its frames: the rest of the key must be zero too. */
		__builtin_memset(start->key.user, 0, sizeof(start->key.user));
		__u32 end = 0;
		long n = ep_unwind_user((struct ep_stack *)start->key.user, tgid, &end);
		if (end)
			ep_off_count(EP_OFF_UNWIND_NO_RULE + end - EP_WALK_NO_RULE);
		user = n > 0 ? n * (long)sizeof(__u64) : n;
	}
	/* By frame pointers when the process has no tables (zero-fills past its frames). */
	if (!user)
		user = bpf_get_stack(ctx, start->key.user, sizeof(start->key.user), BPF_F_USER_STACK);
	start->key.user_len = ep_frames(user);
	start->key.kernel_len = ep_frames(
		bpf_get_stack(ctx, start->key.kernel, sizeof(start->key.kernel), 0));
	/* Last, so that a half-filled record is never credited. */
	start->ts = bpf_ktime_get_ns();
}

static __always_inline void ep_credit(struct ep_offcpu_key *key, __u64 delta, void *counts)
{
	struct ep_offcpu_value *v = bpf_map_lookup_elem(counts, key);
	if (!v) {
		struct ep_offcpu_value init = {};
		long err = bpf_map_update_elem(counts, key, &init, BPF_NOEXIST);
		if (err && err != -EP_EEXIST) {
			ep_off_count(EP_OFF_COUNT_FULL);
			return;
		}
		v = bpf_map_lookup_elem(counts, key);
		if (!v)
			return;
	}
	__sync_fetch_and_add(&v->total_ns, delta);
	__sync_fetch_and_add(&v->blocks, 1);
	ep_off_count(EP_OFF_BLOCKS);
}

static __always_inline void ep_switch_in(struct task_struct *next)
{
	struct ep_offcpu_start *start = bpf_task_storage_get(&ep_off_start, next, 0, 0);
	if (!start)
		return;
	__u64 ts = start->ts;
	if (ts == 0)
		return;
	start->ts = 0;
	__u64 now = bpf_ktime_get_ns();
	if (now < ts)
		return;
	__u64 delta = now - ts;
	if (delta < ep_min_block_ns) {
		ep_off_count(EP_OFF_SHORT);
		return;
	}
	ep_announce(next, start->key.tgid, &ep_off_counters, EP_OFF_ANNOUNCE_LOST);
	__u32 zero = 0;
	__u32 *active = bpf_map_lookup_elem(&ep_off_control, &zero);
	if (!active)
		return;
	if (*active)
		ep_credit(&start->key, delta, &ep_off_counts_1);
	else
		ep_credit(&start->key, delta, &ep_off_counts_0);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(ep_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	/*
	 * pid 0 is the idle task: its "off-CPU" time is the CPU being busy. An exiting task
	 * never comes back (and its storage goes with it).
	 */
	if (!(prev_state & TASK_DEAD) && prev->pid != 0 &&
	    (ep_include_preempted || (!preempt && prev_state != TASK_RUNNING)))
		ep_switch_out(ctx, prev);
	if (next->pid != 0)
		ep_switch_in(next);
	return 0;
}

#endif
