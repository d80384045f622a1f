// SPDX-License-Identifier: GPL-2.0-only
/*
 * CPU sampler: runs on every tick of the software cpu-clock perf event and
 * aggregates {process, thread, user stack, kernel stack} -> sample count in the
 * kernel. Two buffers (stack map + count map each) let user space drain one
 * while the other keeps filling; `ep_control[0]` names the buffer being filled.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "emberprof.h"
#include "common.bpf.h"

#define EFAULT 14
#define EEXIST 17
#define BPF_NOEXIST 1

#ifndef EP_STACK_ENTRIES
#define EP_STACK_ENTRIES 16384
#endif
#ifndef EP_COUNT_ENTRIES
#define EP_COUNT_ENTRIES 16384
#endif


#define EP_STACK_MAP(name)                                            \
	struct {                                                      \
		__uint(type, BPF_MAP_TYPE_STACK_TRACE);               \
		__uint(key_size, sizeof(__u32));                      \
		__uint(value_size, EP_MAX_STACK_DEPTH * sizeof(__u64)); \
		__uint(max_entries, EP_STACK_ENTRIES);                \
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

static __always_inline void ep_announce_lost(void)
{
	ep_count(EP_CNT_ANNOUNCE_LOST);
}

#include "announce.bpf.h"

static __always_inline __s32 ep_stack_id(void *ctx, void *stacks, __u64 flags, __u32 full_counter)
{
	long id = bpf_get_stackid(ctx, stacks, flags);
	if (id >= 0)
		return (__s32)id;
	if (id == -EEXIST)
		ep_count(full_counter);
	else if (id != -EFAULT)
		ep_count(EP_CNT_STACK_ERROR);
	return (__s32)id;
}

static __always_inline void ep_record(void *ctx, struct ep_sample_key *key, void *stacks, void *counts)
{
	key->user_stack_id = ep_stack_id(ctx, stacks, BPF_F_USER_STACK, EP_CNT_USER_STACK_MAP_FULL);
	key->kernel_stack_id = ep_stack_id(ctx, stacks, 0, EP_CNT_KERNEL_STACK_MAP_FULL);

	__u64 *count = bpf_map_lookup_elem(counts, key);
	if (count) {
		__sync_fetch_and_add(count, 1);
		return;
	}
	__u64 one = 1;
	long err = bpf_map_update_elem(counts, key, &one, BPF_NOEXIST);
	if (err == -EEXIST) {
		/* Another CPU inserted the same key between our lookup and update. */
		count = bpf_map_lookup_elem(counts, key);
		if (count) {
			__sync_fetch_and_add(count, 1);
			return;
		}
	}
	if (err)
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
	ep_announce((struct task_struct *)bpf_get_current_task(), tgid);

	struct ep_sample_key key = {};
	key.tgid = tgid;
	key.tid = tid;
	bpf_get_current_comm(key.comm, sizeof(key.comm));

	if (*active)
		ep_record(ctx, &key, &ep_stacks_1, &ep_counts_1);
	else
		ep_record(ctx, &key, &ep_stacks_0, &ep_counts_0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
