// SPDX-License-Identifier: GPL-2.0-only
/*
 * Latency histograms aggregated in the kernel: run-queue latency and off-CPU duration per
 * cgroup (scheduler BTF tracepoints), block I/O latency per disk and direction (block
 * tracepoints), and, when user space attaches those two programs, syscall latency per
 * syscall and cgroup. Each event updates one log2 histogram in place; nothing is streamed.
 *
 * Histograms are double-buffered like the profilers' counts (`ep_hist_control[0]` names the
 * buffer being filled) so that user space can drain one while the other fills. The number
 * of keys is capped by the map size; a value that finds no room goes to its kind's overflow
 * histogram and is counted.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "emberprof.h"
#include "common.bpf.h"

#define REQ_OP_MASK 0xff
#define REQ_OP_READ 0
#define REQ_OP_WRITE 1

/*
 * What a tracked thread is waiting for, kept in task-local storage: lookups need no hash or
 * lock, and the kernel frees it when the thread exits. A zero time means "not waiting".
 */
struct ep_task_marks {
	/* Became runnable (woken, or preempted and still runnable). */
	__u64 runq_ts;
	/* Left the CPU voluntarily. */
	__u64 wait_ts;
	/* Entered a syscall, and which. */
	__u64 sys_ts;
	__u64 sys_nr;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ep_task_marks);
} ep_marks SEC(".maps");

/* Block requests in flight: issue time by request address. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, __u64);
	__uint(max_entries, 16384);
} ep_bio_start SEC(".maps");

/*
 * Shared across CPUs and preallocated: a per-CPU or lazily allocated hash costs
 * keys x CPUs x 528 bytes, and lazy allocation fails under bursts of new keys in scheduler
 * context. Updates are atomic instead.
 */
#define EP_HIST_MAP(name)                                \
	struct {                                         \
		__uint(type, BPF_MAP_TYPE_HASH);         \
		__type(key, struct ep_hist_key);         \
		__type(value, struct ep_hist);           \
		__uint(max_entries, EP_HIST_KEYS);       \
	} name SEC(".maps")

EP_HIST_MAP(ep_hists_0);
EP_HIST_MAP(ep_hists_1);

/* Per kind: what did not fit in the keyed histograms. */
#define EP_OVERFLOW_MAP(name)                            \
	struct {                                         \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); \
		__type(key, __u32);                      \
		__type(value, struct ep_hist);           \
		__uint(max_entries, EP_HIST_KINDS);      \
	} name SEC(".maps")

EP_OVERFLOW_MAP(ep_hist_overflow_0);
EP_OVERFLOW_MAP(ep_hist_overflow_1);

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} ep_hist_control SEC(".maps");

/* A zeroed histogram to create keys from (too big for the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct ep_hist);
	__uint(max_entries, 1);
} ep_hist_zero SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, EP_HIST_COUNTER_MAX);
} ep_hist_counters SEC(".maps");

#define ep_hist_count(idx) ep_percpu_inc(&ep_hist_counters, (idx))

/* The task's cgroup v2 id, what bpf_get_current_cgroup_id() gives for the current task. */
static __always_inline __u64 ep_task_cgroup(struct task_struct *task)
{
	/* BTF pointers: plain loads, guarded by the JIT, cheaper than probe-read helpers. */
	return task->cgroups->dfl_cgrp->kn->id;
}

static __always_inline struct ep_hist *ep_hist_for(struct ep_hist_key *key)
{
	__u32 zero = 0;
	__u32 *active = bpf_map_lookup_elem(&ep_hist_control, &zero);
	if (!active)
		return 0;
	void *hists = (*active & 1) ? (void *)&ep_hists_1 : (void *)&ep_hists_0;
	void *overflow = (*active & 1) ? (void *)&ep_hist_overflow_1 : (void *)&ep_hist_overflow_0;

	struct ep_hist *h = bpf_map_lookup_elem(hists, key);
	if (h)
		goto recorded;
	struct ep_hist *tmpl = bpf_map_lookup_elem(&ep_hist_zero, &zero);
	if (!tmpl)
		return 0;
	long err = bpf_map_update_elem(hists, key, tmpl, BPF_NOEXIST);
	if (!err || err == -EP_EEXIST) {
		h = bpf_map_lookup_elem(hists, key);
		if (h)
			goto recorded;
	}
	__u32 kind = key->kind;
	ep_hist_count(EP_HIST_OVERFLOWED);
	return bpf_map_lookup_elem(overflow, &kind);
recorded:
	ep_hist_count(EP_HIST_RECORDED);
	return h;
}

static __always_inline void ep_record(struct ep_hist_key *key, __u64 delta)
{
	struct ep_hist *h = ep_hist_for(key);
	if (!h)
		return;
	/* Atomic: other CPUs, and block completions in interrupts, update the same key. */
	if (delta == 0)
		__sync_fetch_and_add(&h->zero, 1);
	else
		__sync_fetch_and_add(&h->slots[ep_hist_slot(delta) & (EP_HIST_SLOTS - 1)], 1);
	__sync_fetch_and_add(&h->sum_ns, delta);
}

/* The task's marks, created if `create`; NULL (and counted) if they cannot be had. */
static __always_inline struct ep_task_marks *ep_marks_of(struct task_struct *task, bool create)
{
	struct ep_task_marks *m =
		bpf_task_storage_get(&ep_marks, task, 0,
				     create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
	if (!m && create)
		ep_hist_count(EP_HIST_START_FULL);
	return m;
}

/* Records the time since *mark, if set, and clears it. */
static __always_inline void ep_finish(__u64 *mark, __u64 now, __u64 cgroup, __u32 kind)
{
	__u64 then = *mark;
	if (then == 0)
		return;
	*mark = 0;
	if (now < then)
		return;
	struct ep_hist_key key = { .cgroup = cgroup, .kind = kind };
	ep_record(&key, now - then);
}

static __always_inline void ep_woken(struct task_struct *p)
{
	if (p->pid == 0 || !ep_pid_tracked(p->tgid))
		return;
	struct ep_task_marks *m = ep_marks_of(p, true);
	if (m)
		m->runq_ts = bpf_ktime_get_ns();
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(ep_hist_wakeup, struct task_struct *p)
{
	ep_woken(p);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(ep_hist_wakeup_new, struct task_struct *p)
{
	ep_woken(p);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(ep_hist_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	__u64 now = bpf_ktime_get_ns();

	/* An exiting task's storage goes with it; the idle task is never tracked. */
	if (!(prev_state & TASK_DEAD) && prev->pid != 0 && ep_pid_tracked(prev->tgid)) {
		struct ep_task_marks *m = ep_marks_of(prev, true);
		if (m) {
			/*
			 * Preempted, even with a sleeping state already set, it stays on the run
			 * queue and waits there from now on. Each branch also clears the other
			 * mark, so that a stale one (say, a wakeup of a task that was running)
			 * never spans time the task spent on the CPU.
			 */
			if (preempt || prev_state == TASK_RUNNING) {
				m->runq_ts = now;
				m->wait_ts = 0;
			} else {
				m->wait_ts = now;
				m->runq_ts = 0;
			}
		}
	}

	if (next->pid != 0) {
		/* Never creates: a task without marks has nothing to finish. */
		struct ep_task_marks *m = ep_marks_of(next, false);
		if (m && (m->runq_ts || m->wait_ts)) {
			__u64 cgroup = ep_task_cgroup(next);
			ep_finish(&m->runq_ts, now, cgroup, EP_HIST_RUNQ);
			ep_finish(&m->wait_ts, now, cgroup, EP_HIST_OFFCPU);
		}
	}
	return 0;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(ep_hist_rq_issue, struct request *rq)
{
	__u64 id = (__u64)rq;
	__u64 now = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&ep_bio_start, &id, &now, BPF_ANY))
		ep_hist_count(EP_HIST_START_FULL);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(ep_hist_rq_complete, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
	__u64 id = (__u64)rq;
	__u64 *ts = bpf_map_lookup_elem(&ep_bio_start, &id);
	if (!ts)
		return 0;
	__u64 then = *ts;
	__u64 now = bpf_ktime_get_ns();
	bpf_map_delete_elem(&ep_bio_start, &id);
	if (now < then)
		return 0;

	struct gendisk *disk = BPF_CORE_READ(rq, q, disk);
	__u32 op = BPF_CORE_READ(rq, cmd_flags) & REQ_OP_MASK;
	struct ep_hist_key key = {
		.kind = EP_HIST_BLOCK,
		.detail = op == REQ_OP_READ ? EP_BLOCK_READ
			  : op == REQ_OP_WRITE ? EP_BLOCK_WRITE
					       : EP_BLOCK_OTHER,
	};
	if (disk) {
		key.major = BPF_CORE_READ(disk, major);
		key.minor = BPF_CORE_READ(disk, first_minor);
	}
	ep_record(&key, now - then);
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(ep_hist_sys_enter, struct pt_regs *regs, long id)
{
	if (!ep_pid_tracked(bpf_get_current_pid_tgid() >> 32))
		return 0;
	struct ep_task_marks *m = ep_marks_of(bpf_get_current_task_btf(), true);
	if (m) {
		m->sys_nr = (__u64)id;
		m->sys_ts = bpf_ktime_get_ns();
	}
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(ep_hist_sys_exit, struct pt_regs *regs, long ret)
{
	struct ep_task_marks *m = ep_marks_of(bpf_get_current_task_btf(), false);
	if (!m || m->sys_ts == 0)
		return 0;
	__u64 then = m->sys_ts;
	__u64 now = bpf_ktime_get_ns();
	m->sys_ts = 0;
	if (now < then)
		return 0;
	struct ep_hist_key key = {
		.cgroup = bpf_get_current_cgroup_id(),
		.kind = EP_HIST_SYSCALL,
		.detail = (__u32)m->sys_nr,
	};
	ep_record(&key, now - then);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
