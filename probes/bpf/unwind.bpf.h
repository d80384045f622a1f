/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The user-stack walker of the CPU sampler and the off-CPU switch: from the task's user
 * registers, each frame finds its mapping in the process's list, the rule of its pc by
 * binary search over the file's entries, computes the CFA, and reads the return address
 * and, if saved, RBP. Addresses outside every listed mapping are walked by frame pointers.
 * bpf_loop carries the frames (a plain loop of 127 is rejected by the verifier).
 * Include after common.bpf.h.
 */
#ifndef EP_UNWIND_BPF_H
#define EP_UNWIND_BPF_H

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct ep_unwind_rule);
	__uint(max_entries, EP_UNWIND_RULES);
} ep_unwind_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct ep_unwind_entry);
	__uint(max_entries, EP_UNWIND_ENTRIES);
} ep_unwind_entries SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct ep_unwind_proc);
	__uint(max_entries, EP_UNWIND_PROCS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ep_unwind_procs SEC(".maps");

/* Why a walk ended (in ep_walk.end). */
#define EP_WALK_OK 0        /* the outermost frame was reached, or frame pointers ran out */
#define EP_WALK_NO_RULE 1   /* a pc whose file has no rule there */
#define EP_WALK_BAD_READ 2  /* the return address or RBP could not be read */
#define EP_WALK_DEPTH 3     /* more frames than fit (the last slot holds the marker) */

/*
 * The signal frame (x86-64 rt_sigframe): when the handler returns into the restorer, RSP
 * points at the ucontext; its uc_mcontext starts 40 bytes in, and RBP, RSP and RIP are
 * its registers 10, 15 and 16 (struct sigcontext).
 */
#define EP_SIGFRAME_RBP (40 + 10 * 8)
#define EP_SIGFRAME_RSP (40 + 15 * 8)
#define EP_SIGFRAME_RIP (40 + 16 * 8)

struct ep_walk {
	__u64 pc;
	__u64 sp;
	__u64 bp;
	struct ep_stack *buf;
	struct ep_unwind_proc *proc;
	__u32 n;
	__u32 end;
	/* pc was not a return address (the leaf, or where a signal interrupted): look it up
	 * where it is, not one byte back. */
	__u32 exact;
	/* Where the return addresses of frames 1..nslots were read (for the off-CPU reuse
	 * check); a signal frame among them makes the walk not reusable. */
	__u32 nslots;
	__u32 signal;
	__u64 slots[EP_OFF_CHECK_SLOTS];
};

struct ep_mapping_search {
	struct ep_unwind_proc *proc;
	__u64 pc;
	__u32 lo;
	__u32 hi;
};

/* One halving over the process's sorted mappings: keeps the last starting at or below pc. */
static long ep_mapping_step(__u32 i, void *arg)
{
	struct ep_mapping_search *s = arg;

	if (s->lo + 1 >= s->hi)
		return 1;
	__u32 mid = s->lo + (s->hi - s->lo) / 2;
	if (s->proc->mappings[mid & (EP_UNWIND_MAPPINGS - 1)].start <= s->pc)
		s->lo = mid;
	else
		s->hi = mid;
	return 0;
}

/*
 * The mapping holding pc, or NULL. The halvings run in their own bpf_loop, like the rule
 * search below: unrolled in the frame callback they multiply the states the verifier
 * explores (seconds of verification at every start).
 */
static __always_inline struct ep_unwind_mapping *ep_mapping_of(struct ep_unwind_proc *p, __u64 pc)
{
	struct ep_mapping_search s = { .proc = p, .pc = pc, .lo = 0, .hi = p->count };

	if (s.hi > EP_UNWIND_MAPPINGS || s.hi == 0)
		return NULL;
	/* 64 mappings: 7 halvings always suffice. */
	bpf_loop(7, ep_mapping_step, &s, 0);
	struct ep_unwind_mapping *m = &p->mappings[s.lo & (EP_UNWIND_MAPPINGS - 1)];
	return pc >= m->start && pc < m->end ? m : NULL;
}

struct ep_bsearch {
	__u32 lo;
	__u32 hi;
	__u32 rel;
	__u32 failed;
};

/* One halving: keeps the last entry whose start is at or below rel in [lo, hi). */
static long ep_bsearch_step(__u32 i, void *arg)
{
	struct ep_bsearch *b = arg;

	if (b->lo + 1 >= b->hi)
		return 1;
	__u32 mid = b->lo + (b->hi - b->lo) / 2;
	struct ep_unwind_entry *e = bpf_map_lookup_elem(&ep_unwind_entries, &mid);
	if (!e) {
		b->failed = 1;
		return 1;
	}
	if (e->pc <= b->rel)
		b->lo = mid;
	else
		b->hi = mid;
	return 0;
}

/*
 * The rule of table-relative pc `rel` among count entries from first (the last whose start
 * is at or below rel). The halvings run in their own bpf_loop: as a plain loop inside the
 * frame callback they took the verifier past its 1M-instruction limit.
 */
static __always_inline struct ep_unwind_rule *ep_rule_of(__u32 first, __u32 count, __u32 rel)
{
	struct ep_bsearch b = { .lo = first, .hi = first + count, .rel = rel };

	/* Each halving leaves at most ceil(count / 2): EP_UNWIND_SEARCH_STEPS of them reach
	 * one entry in the largest array the loader may size (it refuses larger). */
	bpf_loop(EP_UNWIND_SEARCH_STEPS, ep_bsearch_step, &b, 0);
	if (b.failed)
		return NULL;
	__u32 lo = b.lo;
	struct ep_unwind_entry *e = bpf_map_lookup_elem(&ep_unwind_entries, &lo);
	if (!e || e->pc > rel)
		return NULL;
	__u32 rule = e->rule;
	return bpf_map_lookup_elem(&ep_unwind_rules, &rule);
}

/*
 * Keeps where frame n's return address was read, for the first EP_OFF_CHECK_SLOTS frames.
 * Constant indexes: the walk lives on the BPF stack, which takes no variable-offset writes.
 */
static __always_inline void ep_walk_slot(struct ep_walk *w, __u32 n, __u64 at)
{
	if (n == 0)
		w->slots[0] = at;
	else if (n == 1)
		w->slots[1] = at;
	else if (n == 2)
		w->slots[2] = at;
	else if (n == 3)
		w->slots[3] = at;
	else
		return;
	w->nslots = n + 1;
}

static long ep_unwind_step(__u32 i, void *arg)
{
	struct ep_walk *w = arg;
	/*
	 * The frame's index is the loop's, which the verifier knows nothing of: a count kept
	 * in `w` would be tracked exactly, every frame a new state to verify (a second of
	 * verification at every start).
	 */
	__u32 n = i;

	/* One slot stays free for the marker of a cut walk. */
	if (n >= EP_MAX_STACK_DEPTH - 1) {
		w->end = EP_WALK_DEPTH;
		return 1;
	}
	w->buf->ips[n] = w->pc;
	w->n = n + 1;
	/* A return address is looked up one byte back: the call may be a function's last
	 * instruction (and the signal trampoline's rule starts one byte early for this). */
	__u64 at = w->exact ? w->pc : w->pc - 1;
	struct ep_unwind_mapping *m = ep_mapping_of(w->proc, at);
	__u64 cfa, ra, bp = w->bp;

	w->exact = 0;
	if (!m) {
		/* No table here (JIT code, a file without CFI): frame pointers. */
		if (!w->bp || bpf_probe_read_user(&ra, sizeof(ra), (void *)(w->bp + 8)) ||
		    bpf_probe_read_user(&bp, sizeof(bp), (void *)w->bp))
			return 1;
		cfa = w->bp + 16;
		ep_walk_slot(w, n, cfa - 8);
	} else {
		struct ep_unwind_rule *r = ep_rule_of(m->first, m->count, (__u32)(at - m->bias));
		if (!r) {
			w->end = EP_WALK_NO_RULE;
			return 1;
		}
		switch (r->kind) {
		case EP_RULE_CFA_RSP:
			cfa = w->sp + (__s64)r->cfa_offset;
			break;
		case EP_RULE_CFA_RBP:
			cfa = w->bp + (__s64)r->cfa_offset;
			break;
		case EP_RULE_PLT:
			cfa = w->sp + 8 + (((w->pc & 15) >= 11) ? 8 : 0);
			break;
		case EP_RULE_SIGNAL:
			/* The interrupted code's registers, saved by the kernel. */
			if (bpf_probe_read_user(&ra, sizeof(ra), (void *)(w->sp + EP_SIGFRAME_RIP)) ||
			    bpf_probe_read_user(&cfa, sizeof(cfa), (void *)(w->sp + EP_SIGFRAME_RSP)) ||
			    bpf_probe_read_user(&bp, sizeof(bp), (void *)(w->sp + EP_SIGFRAME_RBP))) {
				w->end = EP_WALK_BAD_READ;
				return 1;
			}
			w->signal = 1;
			if (!ra)
				return 1;
			w->pc = ra;
			w->sp = cfa;
			w->bp = bp;
			w->exact = 1;
			return 0;
		case EP_RULE_STOP:
			return 1;
		default:
			w->end = EP_WALK_NO_RULE;
			return 1;
		}
		if (bpf_probe_read_user(&ra, sizeof(ra), (void *)(cfa - 8))) {
			w->end = EP_WALK_BAD_READ;
			return 1;
		}
		ep_walk_slot(w, n, cfa - 8);
		if (r->rbp_saved &&
		    bpf_probe_read_user(&bp, sizeof(bp), (void *)(cfa + (__s64)r->rbp_offset))) {
			w->end = EP_WALK_BAD_READ;
			return 1;
		}
	}
	if (!ra)
		return 1;
	w->pc = ra;
	w->sp = cfa;
	w->bp = bp;
	return 0;
}

/*
 * Walks the current task's user stack into buf by its process's tables. Returns the
 * number of frames (a cut walk's last is its EP_UNWIND_CUT marker), 0 if the process has
 * no tables (the caller falls back to bpf_get_stack), or a negative errno. buf is
 * terminated by a zero frame when there is room, not zero-filled. With `reuse`, the slots
 * its return addresses were read from go there; reuse->nslots stays 0 when the walk
 * cannot be reused (cut, or through a signal frame).
 */
static __always_inline long ep_unwind_user(struct ep_stack *buf, __u32 tgid, __u32 *end,
					   struct ep_offcpu_start *reuse)
{
	struct ep_unwind_proc *proc = bpf_map_lookup_elem(&ep_unwind_procs, &tgid);

	if (!proc)
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	if (!task->mm)
		return -EP_EFAULT;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	if (!regs)
		return -EP_EFAULT;
	struct ep_walk w = {
		.pc = regs->ip,
		.sp = regs->sp,
		.bp = regs->bp,
		.buf = buf,
		.proc = proc,
		.exact = 1,
	};
	bpf_loop(EP_MAX_STACK_DEPTH, ep_unwind_step, &w, 0);
	*end = w.end;
	__u32 n = w.n;
	if (w.end != EP_WALK_OK && n < EP_MAX_STACK_DEPTH) {
		buf->ips[n] = EP_UNWIND_CUT | w.end;
		n++;
	}
	if (n < EP_MAX_STACK_DEPTH)
		buf->ips[n] = 0;
	if (reuse) {
		reuse->nslots = 0;
		if (w.end == EP_WALK_OK && !w.signal) {
			__builtin_memcpy(reuse->slots, w.slots, sizeof(w.slots));
			reuse->nslots = w.nslots;
		}
	}
	return n;
}

#endif
