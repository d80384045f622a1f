/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Announcing processes to user space at their first sample, so that one which lives a few
 * hundred milliseconds is captured (mappings, files, attributes) while it still runs.
 * Include after vmlinux.h, bpf_helpers.h, bpf_tracing.h, bpf_core_read.h, common.bpf.h and
 * unwind.bpf.h.
 */
#ifndef EP_ANNOUNCE_BPF_H
#define EP_ANNOUNCE_BPF_H

/* Set by the loader: only the object whose ring user space reads announces. */
const volatile __u8 ep_announce_on = 0;

/* Processes announced since their last exec. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u32);
	__type(value, __u8);
	__uint(max_entries, 65536);
} ep_announced SEC(".maps");

/* struct ep_announcement of newly seen processes, for the user-space watcher. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} ep_new_processes SEC(".maps");

#define EP_PF_EXITING 0x00000004

/*
 * Announces tgid once; a full ring counts one at `lost_idx` of the per-CPU `lost_counters`.
 * True when nothing is left to do for it (announced now or before, or announcing is off).
 */
static __always_inline bool ep_announce(struct task_struct *task, __u32 tgid, void *lost_counters,
					__u32 lost_idx)
{
	if (!ep_announce_on || bpf_map_lookup_elem(&ep_announced, &tgid))
		return true;
	/* An exiting task is still seen after sched_process_exit forgot it: announcing it
	 * again would leave a stale entry that a new process reusing the PID never clears. */
	if (BPF_CORE_READ(task, flags) & EP_PF_EXITING)
		return false;
	__u8 one = 1;
	/* BPF_NOEXIST: when two CPUs race, only the one that inserts announces. */
	if (bpf_map_update_elem(&ep_announced, &tgid, &one, BPF_NOEXIST))
		return true;
	struct ep_announcement *a = bpf_ringbuf_reserve(&ep_new_processes, sizeof(*a), 0);
	if (!a) {
		/* Try again at the next sample rather than never. */
		bpf_map_delete_elem(&ep_announced, &tgid);
		ep_percpu_inc(lost_counters, lost_idx);
		return false;
	}
	a->tgid = tgid;
	a->exec_id = (__u32)BPF_CORE_READ(task, self_exec_id);
	/* The leader's name is the process's; the sampled thread may have renamed itself. */
	struct task_struct *leader = BPF_CORE_READ(task, group_leader);
	if (bpf_probe_read_kernel_str(a->comm, sizeof(a->comm), &leader->comm) < 0)
		a->comm[0] = 0;
	bpf_ringbuf_submit(a, 0);
	return true;
}

/* An exec replaces every mapping: announce the process again at its next sample, and
 * stop walking it by the old image's tables (frame pointers until it is listed again). */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(ep_process_exec)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	bpf_map_delete_elem(&ep_announced, &tgid);
	bpf_map_delete_elem(&ep_unwind_procs, &tgid);
	/* The new image may run another Python, or none: listed again once found. */
	bpf_map_delete_elem(&ep_py_procs, &tgid);
	return 0;
}

/* A PID can be reused once its process is gone: forget it when the leader exits. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(ep_process_exit)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	if ((__u32)id == tgid) {
		bpf_map_delete_elem(&ep_announced, &tgid);
		/* A new process reusing the PID must not be walked by these mappings. */
		bpf_map_delete_elem(&ep_unwind_procs, &tgid);
		bpf_map_delete_elem(&ep_py_procs, &tgid);
	}
	return 0;
}

#endif
