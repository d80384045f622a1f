/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Off-CPU profiler (part of emberprof.bpf.c), run by the sched_switch program
 * (switch.bpf.h) in the context of the thread leaving the CPU: that thread's stacks are
 * captured then, and the time it spent away is credited when it is switched back in. Counts are double-buffered
 * like the CPU sampler's; `ep_off_control[0]` names the buffer being filled.
 */
#ifndef EP_OFF_CPU_BPF_H
#define EP_OFF_CPU_BPF_H

/* Set by the loader before verification. */
const volatile __u8 ep_include_preempted = 0;
const volatile __u64 ep_min_block_ns = EP_MIN_BLOCK_NS;

/*
 * What each tracked thread was doing when it blocked, and its last stacks, in task-local
 * storage: no hash or lock on the hot path, allocated once per thread and freed by the
 * kernel when it exits. A zero `ts` means "not blocked".
 */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ep_offcpu_start);
} ep_off_start SEC(".maps");

/* Blocked time and blocks by stack id (see struct ep_offcpu_key). */
#define EP_OFF_COUNT_MAP(name)                               \
	struct {                                             \
		__uint(type, BPF_MAP_TYPE_HASH);             \
		__type(key, __u64);                          \
		__type(value, struct ep_offcpu_value);       \
		__uint(max_entries, EP_OFF_COUNT_ENTRIES);   \
		__uint(map_flags, BPF_F_NO_PREALLOC);        \
	} name SEC(".maps")

/* The thread and stacks of each id credited in the buffer. */
#define EP_OFF_STACKS_MAP(name)                              \
	struct {                                             \
		__uint(type, BPF_MAP_TYPE_HASH);             \
		__type(key, __u64);                          \
		__type(value, struct ep_offcpu_key);         \
		__uint(max_entries, EP_OFF_COUNT_ENTRIES);   \
		__uint(map_flags, BPF_F_NO_PREALLOC);        \
	} name SEC(".maps")

/* Blocks shorter than the minimum, per process image (tgid << 32 | exec_id): counted,
 * never attributed to stacks. */
#define EP_OFF_SHORT_MAP(name)                               \
	struct {                                             \
		__uint(type, BPF_MAP_TYPE_HASH);             \
		__type(key, __u64);                          \
		__type(value, struct ep_offcpu_value);       \
		__uint(max_entries, EP_OFF_COUNT_ENTRIES);   \
	} name SEC(".maps")

EP_OFF_COUNT_MAP(ep_off_counts_0);
EP_OFF_COUNT_MAP(ep_off_counts_1);
EP_OFF_STACKS_MAP(ep_off_stacks_0);
EP_OFF_STACKS_MAP(ep_off_stacks_1);
EP_OFF_SHORT_MAP(ep_off_short_0);
EP_OFF_SHORT_MAP(ep_off_short_1);

/* [0]: the buffer generation; its low bit is the buffer being filled. */
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

/* The checked slots lie within this many bytes of the first: read them in one copy. */
#define EP_OFF_SLOT_SPAN 512

/* Per-CPU room for that copy. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64[EP_OFF_SLOT_SPAN / 8]);
	__uint(max_entries, 1);
} ep_off_scratch SEC(".maps");

static __always_inline __u32 ep_frames(long bytes)
{
	if (bytes < 0) {
		if (bytes != -EP_EFAULT)
			ep_off_count(EP_OFF_STACK_ERROR);
		return 0;
	}
	return (__u32)(bytes / sizeof(__u64));
}

#define EP_FNV_PRIME 0x100000001b3ULL

/* FNV-1a over 64-bit words: the id of a thread + stacks (never 0, which means none). */
static __always_inline __u64 ep_offcpu_id(struct ep_offcpu_key *k)
{
	__u64 h = 0xcbf29ce484222325ULL;
	__u64 *comm = (__u64 *)k->comm;

	h = (h ^ (((__u64)k->tgid << 32) | k->tid)) * EP_FNV_PRIME;
	h = (h ^ comm[0]) * EP_FNV_PRIME;
	h = (h ^ comm[1]) * EP_FNV_PRIME;
	h = (h ^ (((__u64)k->exec_id << 32) | k->flags)) * EP_FNV_PRIME;
	h = (h ^ (((__u64)k->user_len << 32) | k->kernel_len)) * EP_FNV_PRIME;
	for (__u32 i = 0; i < EP_MAX_STACK_DEPTH; i++) {
		if (i >= k->user_len)
			break;
		h = (h ^ k->user[i]) * EP_FNV_PRIME;
	}
	for (__u32 i = 0; i < EP_MAX_STACK_DEPTH; i++) {
		if (i >= k->kernel_len)
			break;
		h = (h ^ k->kernel[i]) * EP_FNV_PRIME;
	}
	h = (h ^ k->py_len) * EP_FNV_PRIME;
	for (__u32 i = 0; i < EP_MAX_STACK_DEPTH; i++) {
		if (i >= k->py_len)
			break;
		h = (h ^ k->py[i]) * EP_FNV_PRIME;
	}
	return h ? h : 1;
}

/* Where `task` entered the kernel; false for a thread without user registers. */
static __always_inline bool ep_site_of(struct task_struct *task, struct ep_offcpu_site *site)
{
	if (!task->mm)
		return false;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	if (!regs)
		return false;
	site->ip = regs->ip;
	site->sp = regs->sp;
	site->bp = regs->bp;
	site->nr = regs->orig_ax;
	site->arg0 = regs->di;
	site->arg1 = regs->si;
	return true;
}

/*
 * Whether the thread's last stacks are still its stacks: same image, same name, the same
 * site of entry into the kernel, and the same callers in the checked slots.
 */
static __always_inline bool ep_reusable(struct ep_offcpu_start *s, struct ep_offcpu_site *site,
					__u64 *comm, __u32 exec_id)
{
	if (!s->id || s->key.exec_id != exec_id || s->site.ip != site->ip ||
	    s->site.sp != site->sp || s->site.bp != site->bp || s->site.nr != site->nr ||
	    s->site.arg0 != site->arg0 || s->site.arg1 != site->arg1)
		return false;
	__u64 *had = (__u64 *)s->key.comm;
	if (had[0] != comm[0] || had[1] != comm[1])
		return false;
	__u32 n = s->nslots;
	if (n == 0 || n > EP_OFF_CHECK_SLOTS)
		return false;
	/*
	 * Each user-memory read costs some 60 ns here: the slots (ascending, a few frames
	 * apart) are copied at once when they fit in EP_OFF_SLOT_SPAN bytes, else one by one.
	 */
	__u64 first = s->slots[0];
	__u64 last = s->slots[(n - 1) & (EP_OFF_CHECK_SLOTS - 1)];
	__u32 zero = 0;
	__u64 *copy = bpf_map_lookup_elem(&ep_off_scratch, &zero);
	if (copy && last >= first && last - first < EP_OFF_SLOT_SPAN && !(first & 7) &&
	    !((last - first) & 7)) {
		__u32 span = (__u32)(last - first) + 8;
		if (span > EP_OFF_SLOT_SPAN)
			return false;
		if (bpf_probe_read_user(copy, span, (void *)first))
			return false;
		for (__u32 i = 0; i < EP_OFF_CHECK_SLOTS; i++) {
			if (i >= n)
				break;
			__u64 off = s->slots[i] - first;
			if (off >= EP_OFF_SLOT_SPAN || (off & 7))
				return false;
			/* The mask gives the verifier its bound (off is 8-aligned below the span);
			 * the barrier keeps the compiler from dropping it as redundant. */
			asm volatile("" : "+r"(off));
			__u64 ra = *(__u64 *)((char *)copy + (off & (EP_OFF_SLOT_SPAN - 8)));
			if (ra != s->key.user[i + 1])
				return false;
		}
		return true;
	}
	for (__u32 i = 0; i < EP_OFF_CHECK_SLOTS; i++) {
		if (i >= n)
			break;
		__u64 ra;
		if (bpf_probe_read_user(&ra, sizeof(ra), (void *)s->slots[i]) ||
		    ra != s->key.user[i + 1])
			return false;
	}
	return true;
}

/*
 * Walks `prev`'s Python stack into s->key.py if its process runs Python (python.bpf.h);
 * py_len 0 otherwise. Entries past py_len are left as they were: the id and user space
 * read py_len of them.
 */
static __always_inline void ep_walk_python(struct task_struct *prev, struct ep_offcpu_start *s,
					   __u32 tgid)
{
	__u32 status;
	long n = ep_py_walk(prev, tgid, (struct ep_stack *)s->key.py, &status);

	s->key.py_len = n > 0 ? (__u32)n : 0;
	if (status != EP_PY_OK && status != EP_PY_NOT_PYTHON)
		ep_off_count(EP_OFF_PY_INCOMPLETE);
}

/*
 * Notes the Python stack just walked to user space (see ep_py_note), here at switch-out:
 * its code objects are read in the current task's memory, which at switch-in is another's.
 */
static __always_inline void ep_note_python(struct ep_offcpu_start *s)
{
	if (s->key.py_len && !ep_py_note(s->key.tgid, s->id, s->key.py, s->key.py_len))
		ep_count(EP_CNT_PY_NOTES_LOST);
}

/* Walks both stacks of `prev` (the current task) into s->key and gives them their id. */
static __always_inline void ep_walk_stacks(void *ctx, struct task_struct *prev,
					   struct ep_offcpu_start *s, __u32 tgid, __u64 *comm,
					   __u32 exec_id, __u32 flags)
{
	/*
	 * Every byte of the key is rewritten: the ids and lengths here, both stack buffers,
	 * which bpf_get_stack zero-fills past the frames it writes (all of it on error) and
	 * the walker's are zeroed first. Equal stacks must give equal keys.
	 */
	s->key.tgid = tgid;
	s->key.tid = prev->pid;
	__u64 *name = (__u64 *)s->key.comm;
	name[0] = comm[0];
	name[1] = comm[1];
	s->key.exec_id = exec_id;
	s->key.flags = flags;
	s->nslots = 0;
	long user = 0;
	if (bpf_map_lookup_elem(&ep_unwind_procs, &tgid)) {
		__builtin_memset(s->key.user, 0, sizeof(s->key.user));
		__u32 end = 0;
		long n = ep_unwind_user((struct ep_stack *)s->key.user, tgid, &end, s);
		if (end)
			ep_off_count(EP_OFF_UNWIND_NO_RULE + end - EP_WALK_NO_RULE);
		user = n > 0 ? n * (long)sizeof(__u64) : n;
	}
	/* By frame pointers when the process has no tables (zero-fills past its frames);
	 * such stacks are not reused: nslots stays 0, there are no slots to check. */
	if (!user)
		user = bpf_get_stack(ctx, s->key.user, sizeof(s->key.user), BPF_F_USER_STACK);
	s->key.user_len = ep_frames(user);
	s->key.kernel_len =
		ep_frames(bpf_get_stack(ctx, s->key.kernel, sizeof(s->key.kernel), 0));
	ep_walk_python(prev, s, tgid);
	s->reuses = 0;
	__u64 id = ep_offcpu_id(&s->key);
	/* Stored in this generation already if the walk found what it had. */
	if (id != s->id)
		s->stored_gen = 0;
	s->id = id;
	ep_note_python(s);
}

static __always_inline void ep_switch_out(void *ctx, struct task_struct *prev, __u64 now)
{
	/* The caller checked the PID filter. */
	__u32 tgid = prev->tgid;
	struct ep_offcpu_start *s =
		bpf_task_storage_get(&ep_off_start, prev, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!s) {
		ep_off_count(EP_OFF_START_FULL);
		return;
	}
	s->ts = 0;
	/* Straight from the task (a BTF pointer): no helper calls or probe reads. */
	__u64 comm[2];
	__builtin_memcpy(comm, prev->comm, sizeof(comm));
	__u32 exec_id = (__u32)prev->self_exec_id;
	__u32 flags = (prev->flags & EP_PF_KTHREAD) ? EP_KEY_KTHREAD : 0;
	struct ep_offcpu_site site = {};
	bool has_site = ep_site_of(prev, &site);

	/*
	 * A thread that blocks again where it blocked last time (the same registers at the
	 * same syscall, the same callers) has the same stacks: reuse them instead of walking
	 * both (most of this program's cost). Every EP_OFF_VERIFY_EVERY-th reuse walks anyway
	 * and counts a difference as stale.
	 */
	if (has_site && ep_reusable(s, &site, comm, exec_id)) {
		if (++s->reuses < EP_OFF_VERIFY_EVERY) {
			ep_off_count(EP_OFF_REUSED);
			/*
			 * The native stack of a Python thread says little of its Python one (every
			 * time.sleep blocks by the same C path): that one is walked again, and a
			 * different one is a different id.
			 */
			__u32 zero = 0;
			__u32 *py_gen = bpf_map_lookup_elem(&ep_py_gen, &zero);
			/* Most threads run no Python: known so until the list changes (an array
			 * read instead of a hash lookup per switch). */
			if (!py_gen || s->py_absent != *py_gen + 1) {
				if (bpf_map_lookup_elem(&ep_py_procs, &tgid)) {
					__u64 had = s->id;
					ep_walk_python(prev, s, tgid);
					s->id = ep_offcpu_id(&s->key);
					if (s->id != had) {
						s->stored_gen = 0;
						ep_note_python(s);
					}
				} else if (py_gen) {
					s->py_absent = *py_gen + 1;
				}
			}
			s->ts = now;
			return;
		}
		__u64 had = s->id;
		ep_walk_stacks(ctx, prev, s, tgid, comm, exec_id, flags);
		if (s->id != had)
			ep_off_count(EP_OFF_STALE);
	} else {
		ep_walk_stacks(ctx, prev, s, tgid, comm, exec_id, flags);
	}
	if (has_site)
		s->site = site;
	else
		s->nslots = 0;
	/* Last, so that a half-filled record is never credited. */
	s->ts = now;
}

/* Adds a block to `id` in `counts`; false when there was no room for a new id. */
static __always_inline bool ep_add_block(void *counts, void *key, __u64 delta)
{
	struct ep_offcpu_value *v = bpf_map_lookup_elem(counts, key);
	if (!v) {
		struct ep_offcpu_value init = {};
		long err = bpf_map_update_elem(counts, key, &init, BPF_NOEXIST);
		if (err && err != -EP_EEXIST)
			return false;
		v = bpf_map_lookup_elem(counts, key);
		if (!v)
			return false;
	}
	__sync_fetch_and_add(&v->total_ns, delta);
	__sync_fetch_and_add(&v->blocks, 1);
	return true;
}

static __always_inline void ep_credit(struct ep_offcpu_start *s, __u64 delta, __u32 gen,
				      void *counts, void *stacks)
{
	/* The buffer must hold the stacks of every id it counts: store them the first time
	 * this thread is credited in this generation. */
	if (s->stored_gen != gen + 1) {
		long err = bpf_map_update_elem(stacks, &s->id, &s->key, BPF_NOEXIST);
		if (err && err != -EP_EEXIST) {
			ep_off_count(EP_OFF_STACKS_FULL);
			return;
		}
		s->stored_gen = gen + 1;
	}
	if (!ep_add_block(counts, &s->id, delta)) {
		ep_off_count(EP_OFF_COUNT_FULL);
		return;
	}
	ep_off_count(EP_OFF_BLOCKS);
}

static __always_inline void ep_switch_in(struct task_struct *next, __u64 now)
{
	struct ep_offcpu_start *s = bpf_task_storage_get(&ep_off_start, next, 0, 0);
	if (!s)
		return;
	__u64 ts = s->ts;
	if (ts == 0)
		return;
	s->ts = 0;
	if (now < ts)
		return;
	__u64 delta = now - ts;
	__u32 zero = 0;
	__u32 *control = bpf_map_lookup_elem(&ep_off_control, &zero);
	if (!control)
		return;
	__u32 gen = *control;
	if (delta < ep_min_block_ns) {
		/* Not attributed to stacks, but counted per process: never silently gone. */
		ep_off_count(EP_OFF_SHORT);
		__u64 image = ((__u64)s->key.tgid << 32) | s->key.exec_id;
		void *shorts = (gen & 1) ? (void *)&ep_off_short_1 : (void *)&ep_off_short_0;
		if (!ep_add_block(shorts, &image, delta))
			ep_off_count(EP_OFF_SHORT_FULL);
		return;
	}
	if (s->announced != s->key.exec_id + 1) {
		if (ep_announce(next, s->key.tgid, &ep_off_counters, EP_OFF_ANNOUNCE_LOST))
			s->announced = s->key.exec_id + 1;
	}
	if (gen & 1)
		ep_credit(s, delta, gen, &ep_off_counts_1, &ep_off_stacks_1);
	else
		ep_credit(s, delta, gen, &ep_off_counts_0, &ep_off_stacks_0);
}

#endif
