/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The Python stack walker (part of emberprof.bpf.c): for a thread of a process running
 * CPython (listed in ep_py_procs by user space), finds the thread's PyThreadState in the
 * interpreters' thread lists by its pthread_self(), which on glibc x86-64 is the task's fs
 * base, and follows its frame chain, recording each frame's code object and position
 * (see EP_PY_* in emberprof.h). The thread lists are used, not the thread-local current
 * state: that one is NULL while the thread has released the GIL (FACTS-python.md, section 2).
 * Include after common.bpf.h.
 */
#ifndef EP_PYTHON_BPF_H
#define EP_PYTHON_BPF_H

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct ep_py_proc);
	__uint(max_entries, EP_PY_PROCS);
} ep_py_procs SEC(".maps");

/* [0]: advanced by user space each time it lists or unlists a process. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} ep_py_gen SEC(".maps");

/* A thread's state as last found, checked again at every sample before it is used. */
struct ep_py_thread {
	__u64 tstate;
	__u64 fsbase;
	/* Samples left before a thread that had no state is looked for again. */
	__u32 retry;
	__u32 reserved;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ep_py_thread);
} ep_py_threads SEC(".maps");

/* A thread just started has no state bound yet: looked for again after this many samples. */
#define EP_PY_RETRY 4

/*
 * The walk's state. In a per-CPU map rather than on the BPF stack: what the callbacks read
 * back from map memory is an unknown scalar to the verifier, which would otherwise follow
 * every value of the frame count as a state of its own; and the frame is read into it,
 * then its fields at the version's offsets.
 */
struct ep_py_walk {
	__u64 fsbase;
	__u64 interp;
	__u64 tstate;
	__u64 found;
	__u64 frame;
	__u32 n;
	__u32 end;
	/* A frame as read; room for an 8-byte field at any offset below 128. */
	__u8 fb[128 + 8];
	/* A stack being noted, with its fingerprints. */
	struct ep_py_note note;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct ep_py_walk);
	__uint(max_entries, 1);
} ep_py_scratch SEC(".maps");

struct ep_py_ctx {
	struct ep_py_walk *w;
	struct ep_py_proc *p;
	struct ep_stack *buf;
};

/* Outcome of a walk, for the counters. */
#define EP_PY_OK 0
#define EP_PY_NOT_PYTHON 1  /* the process is not listed: no Python stack */
#define EP_PY_NO_THREAD 2
#define EP_PY_BAD_READ 3
#define EP_PY_DEPTH 4

/* One thread (or one move to the next interpreter) of the search for the sampled one. */
static long ep_py_find_step(__u32 i, void *arg)
{
	struct ep_py_ctx *c = arg;
	struct ep_py_walk *w = c->w;
	struct ep_py_proc *p = c->p;
	__u64 id;

	if (!w->tstate) {
		__u64 interp = w->interp;
		if (!interp)
			return 1;
		if (bpf_probe_read_user(&w->tstate, sizeof(w->tstate),
					(void *)(interp + p->interp_threads)) ||
		    bpf_probe_read_user(&w->interp, sizeof(w->interp),
					(void *)(interp + p->interp_next)))
			return 1;
		return 0;
	}
	if (bpf_probe_read_user(&id, sizeof(id), (void *)(w->tstate + p->tstate_thread_id)))
		return 1;
	if (id == w->fsbase) {
		w->found = w->tstate;
		return 1;
	}
	if (bpf_probe_read_user(&w->tstate, sizeof(w->tstate), (void *)(w->tstate + p->tstate_next)))
		return 1;
	return 0;
}

static __always_inline __u64 ep_py_field(struct ep_py_walk *w, __u16 off)
{
	return *(__u64 *)(w->fb + (off & 127));
}

/* One frame: its entry (and the eval-loop entry marker after it), then its caller. */
static long ep_py_frame_step(__u32 i, void *arg)
{
	struct ep_py_ctx *c = arg;
	struct ep_py_walk *w = c->w;
	struct ep_py_proc *p = c->p;
	__u32 n = w->n;
	__u32 size = p->frame_size & 127;

	if (!w->frame)
		return 1;
	/* Room for a frame and its marker, and one slot for the cut marker. */
	if (n >= EP_MAX_STACK_DEPTH - 3) {
		w->end = EP_PY_CUT_DEPTH;
		return 1;
	}
	if (!size || bpf_probe_read_user(w->fb, size, (void *)w->frame)) {
		w->end = EP_PY_CUT_READ;
		return 1;
	}
	__u64 code = ep_py_field(w, p->frame_code);
	__u8 mark = p->entry_kind == EP_PY_ENTRY_EVERY ? 0 : w->fb[p->entry_offset & 127];

	if (p->entry_kind == EP_PY_ENTRY_SHIM && mark == 3) {
		/* Not a function: where C called into the eval loop. */
		c->buf->ips[n] = EP_PY_ENTRY;
		n++;
	} else {
		__s64 index;
		if (p->instr_kind == EP_PY_INSTR_LASTI)
			index = *(__s32 *)(w->fb + (p->frame_instr & 127));
		else
			index = (__s64)(ep_py_field(w, p->frame_instr) - code - p->code_adaptive) >> 1;
		__u64 stored = index < 0 ? 0 : index >= 0xfffe ? 0xffff : (__u64)index + 1;
		c->buf->ips[n] = (code & EP_PY_ADDR_MASK) | (stored << EP_PY_INDEX_SHIFT);
		n++;
		if (p->entry_kind == EP_PY_ENTRY_EVERY || (p->entry_kind == EP_PY_ENTRY_FLAG && mark)) {
			c->buf->ips[n] = EP_PY_ENTRY;
			n++;
		}
	}
	w->n = n;
	w->frame = ep_py_field(w, p->frame_previous);
	return 0;
}

/* struct ep_py_note of Python stacks new to the buffer, for user space to name at once. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 128 * 1024);
} ep_py_notes SEC(".maps");

/*
 * Stacks noted already (by their hash, mixed with the process): a stack is noted the first
 * time it is seen, not again in every buffer. Least recently used go first; one evicted is
 * noted again when next new to a buffer.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, __u8);
	__uint(max_entries, 16384);
} ep_py_noted SEC(".maps");

struct ep_py_fp_ctx {
	const __u64 *entries;
	struct ep_py_proc *p;
	struct ep_py_walk *w;
	__u32 len;
};

/* The fingerprint of entry i's code object (0 for a marker or an unreadable object). */
static long ep_py_fp_step(__u32 i, void *arg)
{
	struct ep_py_fp_ctx *c = arg;

	if (i >= c->len || i >= EP_MAX_STACK_DEPTH)
		return 1;
	__u64 e = c->entries[i];
	__u64 fp = 0;
	if (e > EP_PY_CUT_DEPTH) {
		__u64 code = e & EP_PY_ADDR_MASK;
		__u32 argcount, flags, first;
		if (!bpf_probe_read_user(&argcount, sizeof(argcount),
					 (void *)(code + c->p->code_argcount)) &&
		    !bpf_probe_read_user(&flags, sizeof(flags), (void *)(code + c->p->code_flags)) &&
		    !bpf_probe_read_user(&first, sizeof(first),
					 (void *)(code + c->p->code_firstlineno)))
			fp = EP_PY_FINGERPRINT(argcount, flags, first);
	}
	c->w->note.frames[i].entry = e;
	c->w->note.frames[i].fingerprint = fp;
	return 0;
}

/*
 * Notes a Python stack new to the buffer (`hash` tells it from others) unless it was
 * already, with its code objects' fingerprints read now; false when the ring is full (or
 * the process is no longer listed).
 */
static __always_inline bool ep_py_note(__u32 tgid, __u64 hash, const __u64 *entries, __u32 len)
{
	__u32 zero = 0;
	__u64 noted = hash ^ ((__u64)tgid * 0x9e3779b97f4a7c15ULL);
	__u8 one = 1;

	if (bpf_map_lookup_elem(&ep_py_noted, &noted))
		return true;
	struct ep_py_proc *p = bpf_map_lookup_elem(&ep_py_procs, &tgid);
	struct ep_py_walk *w = bpf_map_lookup_elem(&ep_py_scratch, &zero);

	if (!p || !w)
		return false;
	struct ep_py_fp_ctx c = { .entries = entries, .p = p, .w = w, .len = len };
	bpf_loop(EP_MAX_STACK_DEPTH, ep_py_fp_step, &c, 0);
	if (len > EP_MAX_STACK_DEPTH)
		return false;
	w->note.tgid = tgid;
	w->note.len = len;
	/* Only the frames written: a note is 8 + 16 bytes per entry. */
	__u64 size = 8 + (__u64)len * sizeof(struct ep_py_note_frame);
	if (size > sizeof(w->note) ||
	    bpf_ringbuf_output(&ep_py_notes, &w->note, size, 0))
		return false;
	bpf_map_update_elem(&ep_py_noted, &noted, &one, BPF_ANY);
	return true;
}

/* The sampled thread's state: as cached if it still names this thread, else searched. */
static __always_inline __u64 ep_py_tstate(struct task_struct *task, struct ep_py_ctx *c)
{
	struct ep_py_walk *w = c->w;
	struct ep_py_proc *p = c->p;
	struct ep_py_thread *t = bpf_task_storage_get(&ep_py_threads, task, 0,
						      BPF_LOCAL_STORAGE_GET_F_CREATE);
	__u64 id;

	if (t && t->tstate && t->fsbase == w->fsbase &&
	    !bpf_probe_read_user(&id, sizeof(id), (void *)(t->tstate + p->tstate_thread_id)) &&
	    id == w->fsbase)
		return t->tstate;
	if (t && t->fsbase == w->fsbase && !t->tstate && t->retry) {
		t->retry--;
		return 0;
	}
	w->tstate = 0;
	w->found = 0;
	if (bpf_probe_read_user(&w->interp, sizeof(w->interp),
				(void *)(p->runtime + p->interp_head)))
		return 0;
	/* One step per thread, plus one per interpreter. */
	bpf_loop(EP_PY_MAX_THREADS, ep_py_find_step, c, 0);
	if (t) {
		t->tstate = w->found;
		t->fsbase = w->fsbase;
		t->retry = EP_PY_RETRY;
	}
	return w->found;
}

/*
 * Walks the current thread's Python stack into buf. Returns the number of entries (0: no
 * Python code running, or not a Python thread) and sets *status (EP_PY_*).
 */
static __always_inline long ep_py_walk(struct task_struct *task, __u32 tgid,
				       struct ep_stack *buf, __u32 *status)
{
	struct ep_py_proc *p = bpf_map_lookup_elem(&ep_py_procs, &tgid);
	__u32 zero = 0;

	*status = EP_PY_NOT_PYTHON;
	if (!p)
		return 0;
	struct ep_py_walk *w = bpf_map_lookup_elem(&ep_py_scratch, &zero);
	if (!w)
		return 0;
	struct ep_py_ctx c = { .w = w, .p = p, .buf = buf };

	w->fsbase = BPF_CORE_READ(task, thread.fsbase);
	__u64 tstate = ep_py_tstate(task, &c);
	if (!tstate) {
		*status = EP_PY_NO_THREAD;
		return 0;
	}
	*status = EP_PY_OK;
	__u64 top;
	if (bpf_probe_read_user(&top, sizeof(top), (void *)(tstate + p->tstate_frame)))
		top = 0;
	if (top && p->cframe_current != EP_PY_NO_FIELD &&
	    bpf_probe_read_user(&top, sizeof(top), (void *)(top + p->cframe_current)))
		top = 0;
	if (!top) {
		/*
		 * A thread state freed with its thread's last PyGILState_Release (a C thread
		 * calling into Python now and then) may still read as this thread's: look again,
		 * after the usual wait, rather than trust it.
		 */
		struct ep_py_thread *t = bpf_task_storage_get(&ep_py_threads, task, 0, 0);
		if (t && t->tstate == tstate) {
			t->tstate = 0;
			t->retry = EP_PY_RETRY;
		}
		return 0;
	}
	w->frame = top;
	w->n = 0;
	w->end = 0;
	bpf_loop(EP_MAX_STACK_DEPTH, ep_py_frame_step, &c, 0);
	__u32 n = w->n;
	if (w->end) {
		*status = w->end == EP_PY_CUT_READ ? EP_PY_BAD_READ : EP_PY_DEPTH;
		if (n < EP_MAX_STACK_DEPTH) {
			buf->ips[n] = w->end;
			n++;
		}
	}
	if (n < EP_MAX_STACK_DEPTH)
		buf->ips[n] = 0;
	return n;
}

#endif
