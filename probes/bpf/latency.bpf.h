/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Latency histograms (part of emberprof.bpf.c) aggregated in the kernel: run-queue latency
 * and off-CPU duration per cgroup (from the one sched_switch program, switch.bpf.h), block
 * I/O latency per disk and direction (block tracepoints), and, when user space attaches
 * those two programs, syscall latency per syscall and cgroup. Each event updates one log2
 * histogram in place; nothing is streamed.
 *
 * Histograms are double-buffered like the profilers' counts (`ep_hist_control[0]` names the
 * buffer being filled) so that user space can drain one while the other fills. The number
 * of keys is capped by the map size; a value that finds no room goes to its kind's overflow
 * histogram and is counted.
 */
#ifndef EP_LATENCY_BPF_H
#define EP_LATENCY_BPF_H

#define REQ_OP_MASK 0xff
#define REQ_OP_READ 0
#define REQ_OP_WRITE 1

/*
 * What a tracked thread is waiting for, kept in task-local storage: lookups need no hash or
 * lock, and the kernel frees it when the thread exits. A zero time means "not waiting".
 */
struct ep_task_marks {
	/* Left the CPU voluntarily. */
	__u64 wait_ts;
	/* The scheduler's run-queue totals of the thread at its last switch-out
	 * (task->sched_info: run_delay, pcount). */
	__u64 run_delay;
	__u64 pcount;
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

/* Each CPU's scheduler histograms (see EP_HIST_CACHE_SLOTS), one cache per buffer. */
#define EP_HIST_CACHE_MAP(name)                          \
	struct {                                         \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); \
		__type(key, __u32);                      \
		__type(value, struct ep_hist_cached);    \
		__uint(max_entries, EP_HIST_CACHE_SLOTS); \
	} name SEC(".maps")

EP_HIST_CACHE_MAP(ep_hist_cache_0);
EP_HIST_CACHE_MAP(ep_hist_cache_1);

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

static __always_inline void ep_hist_record(struct ep_hist_key *key, __u64 delta)
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

/*
 * Records a scheduler duration (`key` of kind RUNQ or OFFCPU) in this CPU's cache, or in
 * the shared map when another key holds its slot. Only sched_switch calls this: it runs
 * with interrupts off, so no other program on this CPU writes the cache meanwhile, and
 * plain increments are safe.
 */
static __always_inline void ep_hist_record_sched(struct ep_hist_key *key, __u64 delta)
{
	__u32 zero = 0;
	__u32 *active = bpf_map_lookup_elem(&ep_hist_control, &zero);
	if (!active)
		return;
	void *cache = (*active & 1) ? (void *)&ep_hist_cache_1 : (void *)&ep_hist_cache_0;
	/* Fibonacci hashing of the cgroup id; the kind picks one of two neighbours. */
	__u32 idx = ((__u32)((key->cgroup * 0x9E3779B97F4A7C15ULL) >> 58) ^ key->kind) &
		    (EP_HIST_CACHE_SLOTS - 1);
	struct ep_hist_cached *c = bpf_map_lookup_elem(cache, &idx);
	if (c) {
		if (!c->used) {
			c->key = *key;
			c->used = 1;
		}
		if (c->key.cgroup == key->cgroup && c->key.kind == key->kind) {
			if (delta == 0)
				c->hist.zero++;
			else
				c->hist.slots[ep_hist_slot(delta) & (EP_HIST_SLOTS - 1)]++;
			c->hist.sum_ns += delta;
			ep_hist_count(EP_HIST_RECORDED);
			return;
		}
	}
	ep_hist_record(key, delta);
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

/*
 * The thread's last run-queue wait, as the scheduler accounted it (task->sched_info, the
 * figures of /proc/PID/schedstat): the run_delay added since the last switch-out when
 * exactly one arrival on a CPU happened since. No wakeup program is needed, and the wait
 * is exact even across migrations. A thread seen for the first time has no baseline unless
 * it is new (its sched_info starts at zero at fork). Needs CONFIG_SCHED_INFO (schedstats
 * or delay accounting); without it there are no run-queue histograms.
 */
static __always_inline void ep_hist_runq(struct task_struct *prev, struct ep_task_marks *m)
{
	if (!bpf_core_field_exists(prev->sched_info.pcount))
		return;
	__u64 pcount = prev->sched_info.pcount;
	__u64 delay = prev->sched_info.run_delay;
	__u64 had_pcount = m->pcount, had_delay = m->run_delay;
	m->pcount = pcount;
	m->run_delay = delay;
	if (pcount != had_pcount + 1 || delay < had_delay) {
		/* Waits since the baseline, but not one: the thread's first switch-out seen
		 * (or one missed). Counted, not attributed. */
		if (pcount > had_pcount)
			ep_hist_count(EP_HIST_START_FULL);
		return;
	}
	struct ep_hist_key key = { .cgroup = ep_task_cgroup(prev), .kind = EP_HIST_RUNQ };
	ep_hist_record_sched(&key, delay - had_delay);
}

/* At sched_switch, for a tracked `prev` leaving the CPU (`dead`: for good). */
static __always_inline void ep_hist_switch_out(struct task_struct *prev, __u64 now, bool voluntary,
					       bool dead)
{
	/* A dying thread's last wait is still recorded, but it gets no new storage. */
	struct ep_task_marks *m = ep_marks_of(prev, !dead);
	if (!m)
		return;
	ep_hist_runq(prev, m);
	m->wait_ts = voluntary && !dead ? now : 0;
}

/* At sched_switch, for `next` coming back: ends its voluntary wait. */
static __always_inline void ep_hist_switch_in(struct task_struct *next, __u64 now)
{
	/* Never creates: a task without marks has nothing to finish. */
	struct ep_task_marks *m = ep_marks_of(next, false);
	if (!m || !m->wait_ts)
		return;
	__u64 then = m->wait_ts;
	m->wait_ts = 0;
	if (now < then)
		return;
	struct ep_hist_key key = { .cgroup = ep_task_cgroup(next), .kind = EP_HIST_OFFCPU };
	ep_hist_record_sched(&key, now - then);
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
	ep_hist_record(&key, now - then);
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
	ep_hist_record(&key, now - then);
	return 0;
}

#endif
