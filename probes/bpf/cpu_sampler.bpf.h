/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * CPU sampler (part of emberprof.bpf.c): runs on every tick of the software cpu-clock perf
 * event and aggregates {process, thread, user stack, kernel stack} -> sample count in the
 * kernel. Two buffers (stack map + count map each) let user space drain one
 * while the other keeps filling; `ep_control[0]` names the buffer being filled.
 */
#ifndef EP_CPU_SAMPLER_BPF_H
#define EP_CPU_SAMPLER_BPF_H

/* Distinct stacks by content hash (see struct ep_sample_key for why not a stack-trace map). */
#define EP_STACK_MAP(name)                                    \
	struct {                                              \
		__uint(type, BPF_MAP_TYPE_HASH);              \
		__type(key, __u64);                           \
		__type(value, struct ep_stack);               \
		__uint(max_entries, EP_STACK_ENTRIES);        \
	} name SEC(".maps")

#define EP_COUNT_MAP(name)                                   \
	struct {                                             \
		__uint(type, BPF_MAP_TYPE_HASH);             \
		__type(key, struct ep_sample_key);           \
		__type(value, __u64);                        \
		__uint(max_entries, EP_COUNT_ENTRIES);       \
	} name SEC(".maps")

EP_STACK_MAP(ep_stacks_0);
EP_STACK_MAP(ep_stacks_1);
EP_COUNT_MAP(ep_counts_0);
EP_COUNT_MAP(ep_counts_1);

/* Where a stack is captured before it is hashed (too big for the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct ep_stack);
	__uint(max_entries, 1);
} ep_stack_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} ep_control SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, EP_CNT_MAX);
} ep_counters SEC(".maps");

#define ep_count(idx) ep_percpu_inc(&ep_counters, (idx))

/* 64-bit multiply-rotate mix per frame, then a finalizer, seeded with the depth. */
static __always_inline __u64 ep_stack_hash(const struct ep_stack *s, __u32 frames)
{
	__u64 h = 0x9e3779b97f4a7c15ULL ^ ((__u64)frames * 0xff51afd7ed558ccdULL);

	for (__u32 i = 0; i < EP_MAX_STACK_DEPTH; i++) {
		if (i >= frames)
			break;
		__u64 k = s->ips[i] * 0x87c37b91114253d5ULL;
		k = (k << 31) | (k >> 33);
		h ^= k * 0x4cf5ad432745937fULL;
		h = ((h << 27) | (h >> 37)) * 5 + 0x52dce729;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	/* 0 means "no stack" in the sample key. */
	return h ? h : 1;
}

/*
 * Captures one stack and stores it under its hash: *id is the hash, or 0 with *err set to
 * why there is none. What goes wrong is counted in `counters` (indexes enum ep_counter):
 * the CPU sampler's, or the probe profile's.
 */
static __always_inline void ep_stack_counted(void *ctx, __u32 tgid, void *stacks, __u64 flags,
					     void *counters, __u32 full_counter, __u64 *id,
					     __s32 *err)
{
	__u32 zero = 0;
	struct ep_stack *buf = bpf_map_lookup_elem(&ep_stack_scratch, &zero);

	*id = 0;
	*err = 0;
	if (!buf) {
		/* Cannot happen with a one-entry per-CPU array; counted, never silent. */
		*err = -EP_ENOENT;
		ep_percpu_inc(counters, EP_CNT_STACK_ERROR);
		return;
	}
	long bytes = 0;
	if (flags & BPF_F_USER_STACK) {
		/* By the process's unwind tables, if it has any (0 frames: it has none). */
		__u32 end = 0;
		long n = ep_unwind_user(buf, tgid, &end, NULL);
		if (end)
			ep_percpu_inc(counters, EP_CNT_UNWIND_NO_RULE + end - EP_WALK_NO_RULE);
		bytes = n > 0 ? n * (long)sizeof(__u64) : n;
	}
	/* Zero-fills past the last frame, so equal stacks are equal values. */
	if (!bytes)
		bytes = bpf_get_stack(ctx, buf->ips, sizeof(buf->ips), flags);
	if (bytes <= 0) {
		*err = bytes ? (__s32)bytes : EP_STACK_ERR_NONE;
		if (bytes && bytes != -EP_EFAULT)
			ep_percpu_inc(counters, EP_CNT_STACK_ERROR);
		return;
	}
	__u64 h = ep_stack_hash(buf, (__u32)(bytes / sizeof(__u64)));
	long r = bpf_map_update_elem(stacks, &h, buf, BPF_NOEXIST);
	if (r && r != -EP_EEXIST) {
		*err = (__s32)r;
		ep_percpu_inc(counters, r == -EP_E2BIG ? full_counter : EP_CNT_STACK_ERROR);
		return;
	}
	*id = h;
}

/* ep_stack_counted with the CPU sampler's counters. */
static __always_inline void ep_stack(void *ctx, __u32 tgid, void *stacks, __u64 flags,
				     __u32 full_counter, __u64 *id, __s32 *err)
{
	ep_stack_counted(ctx, tgid, stacks, flags, &ep_counters, full_counter, id, err);
}

/* Walks and stores the thread's Python stack, if its process runs Python (python.bpf.h). */
static __always_inline void ep_py_stack(__u32 tgid, void *stacks, __u64 *id)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u32 zero = 0, status;
	struct ep_stack *buf = bpf_map_lookup_elem(&ep_stack_scratch, &zero);

	if (!buf)
		return;
	long n = ep_py_walk(task, tgid, buf, &status);
	if (status == EP_PY_NOT_PYTHON)
		return;
	ep_count(EP_CNT_PY_SAMPLES);
	if (status != EP_PY_OK)
		ep_count(EP_CNT_PY_NO_THREAD + status - EP_PY_NO_THREAD);
	if (n <= 0)
		return;
	__u64 h = ep_stack_hash(buf, (__u32)n);
	long r = bpf_map_update_elem(stacks, &h, buf, BPF_NOEXIST);
	if (r && r != -EP_EEXIST) {
		ep_count(r == -EP_E2BIG ? EP_CNT_PY_STACK_FULL : EP_CNT_STACK_ERROR);
		return;
	}
	/* Also when another process stored it first (forked workers share code addresses):
	 * the note is per process, and ep_py_note skips those noted already. */
	if (!ep_py_note(tgid, h, buf->ips, (__u32)n))
		ep_count(EP_CNT_PY_NOTES_LOST);
	*id = h;
}

static __always_inline void ep_record(void *ctx, struct ep_sample_key *key, void *stacks,
				      void *counts)
{
	ep_stack(ctx, key->tgid, stacks, BPF_F_USER_STACK, EP_CNT_USER_STACK_MAP_FULL,
		 &key->user_stack, &key->user_err);
	ep_stack(ctx, key->tgid, stacks, 0, EP_CNT_KERNEL_STACK_MAP_FULL, &key->kernel_stack,
		 &key->kernel_err);
	ep_py_stack(key->tgid, stacks, &key->py_stack);

	if (ep_map_add(counts, key, 1))
		ep_count(EP_CNT_COUNT_MAP_FULL);
}

SEC("perf_event")
int ep_cpu_sample(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	__u32 tid = (__u32)id;

	if (tid == 0) {
		ep_count(EP_CNT_IDLE);
		return 0;
	}
	if (!ep_pid_tracked(tgid))
		return 0;

	__u32 zero = 0;
	__u32 *active = bpf_map_lookup_elem(&ep_control, &zero);
	if (!active)
		return 0;

	ep_count(EP_CNT_SAMPLES);
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	ep_announce(task, tgid, &ep_counters, EP_CNT_ANNOUNCE_LOST);

	struct ep_sample_key key = {};
	key.tgid = tgid;
	key.tid = tid;
	bpf_get_current_comm(key.comm, sizeof(key.comm));
	ep_task_image(task, &key.exec_id, &key.flags);

	if (*active & 1)
		ep_record(ctx, &key, &ep_stacks_1, &ep_counts_1);
	else
		ep_record(ctx, &key, &ep_stacks_0, &ep_counts_0);
	return 0;
}

#endif
