/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * What every emberprof program shares: the PID filter (filled by the loader, see
 * pid_filter.rs), per-CPU counter increments and the kernel constants vmlinux.h lacks.
 * Include after vmlinux.h, bpf_helpers.h, bpf_core_read.h and emberprof.h.
 */
#ifndef EP_COMMON_BPF_H
#define EP_COMMON_BPF_H

/* Task states (include/linux/sched.h): macros, so not in vmlinux.h. */
#define TASK_RUNNING 0
#define TASK_DEAD 0x80

/* Set by the loader before verification: trace only the tgids in ep_pid_filter. */
const volatile __u8 ep_filter_pids = 0;

/* Thread-group ids to trace when ep_filter_pids is set. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u8);
	__uint(max_entries, EP_PID_FILTER_ENTRIES);
} ep_pid_filter SEC(".maps");

/* Set by the loader: emberprof's own process, left out unless asked for (0: none). */
const volatile __u32 ep_skip_tgid = 0;

static __always_inline bool ep_pid_tracked(__u32 tgid)
{
	if (ep_skip_tgid && tgid == ep_skip_tgid)
		return false;
	return !ep_filter_pids || bpf_map_lookup_elem(&ep_pid_filter, &tgid);
}

#define EP_PF_KTHREAD 0x00200000

/* The image (exec generation) a task runs and whether it is a kernel thread (EP_KEY_*). */
static __always_inline void ep_task_image(struct task_struct *task, __u32 *exec_id, __u32 *flags)
{
	*exec_id = (__u32)BPF_CORE_READ(task, self_exec_id);
	*flags = (BPF_CORE_READ(task, flags) & EP_PF_KTHREAD) ? EP_KEY_KTHREAD : 0;
}

/* Adds one to entry `idx` of a per-CPU __u64 array. */
static __always_inline void ep_percpu_inc(void *counters, __u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(counters, &idx);
	if (v)
		__sync_fetch_and_add(v, 1);
}

/*
 * Adds `n` to the __u64 under `key` in hash map `map`, creating it: 0, or the error of the
 * insert (the map full) for the caller to count. Another CPU may insert the same key
 * between the lookup and the insert: then the entry is found again.
 */
static __always_inline long ep_map_add(void *map, void *key, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(map, key);
	if (v) {
		__sync_fetch_and_add(v, n);
		return 0;
	}
	long err = bpf_map_update_elem(map, key, &n, BPF_NOEXIST);
	if (err == -EP_EEXIST) {
		v = bpf_map_lookup_elem(map, key);
		if (v) {
			__sync_fetch_and_add(v, n);
			return 0;
		}
	}
	return err;
}

#endif
