/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The one sched_switch program: off-CPU stacks (off_cpu.bpf.h) and the scheduler
 * histograms (latency.bpf.h) share its tracepoint call, clock read and PID filter lookup,
 * which cost as much as either's own work on a switch-heavy host. The loader says which
 * parts run; the verifier drops the others.
 */
#ifndef EP_SWITCH_BPF_H
#define EP_SWITCH_BPF_H

/* Set by the loader before verification. */
const volatile __u8 ep_switch_off_cpu = 0;
const volatile __u8 ep_switch_hists = 0;

SEC("tp_btf/sched_switch")
int BPF_PROG(ep_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	/* One clock read for everything: the same instant ends one wait and starts the other. */
	__u64 now = bpf_ktime_get_ns();

	/* pid 0 is the idle task: its "off-CPU" time is the CPU being busy. */
	if (prev->pid != 0 && ep_pid_tracked(prev->tgid)) {
		/* An exiting task never comes back (and its storage goes with it). */
		bool dead = prev_state & TASK_DEAD;
		bool voluntary = !preempt && prev_state != TASK_RUNNING;
		if (ep_switch_off_cpu && !dead && (ep_include_preempted || voluntary))
			ep_switch_out(ctx, prev, now);
		if (ep_switch_hists)
			ep_hist_switch_out(prev, now, voluntary, dead);
	}
	if (next->pid != 0) {
		if (ep_switch_off_cpu)
			ep_switch_in(next, now);
		if (ep_switch_hists)
			ep_hist_switch_in(next, now);
	}
	return 0;
}

#endif
