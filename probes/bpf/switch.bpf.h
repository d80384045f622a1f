/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The one sched_switch program: off-CPU stacks (off_cpu.bpf.h) and the scheduler
 * histograms (latency.bpf.h) share its tracepoint call, clock read and PID filter lookup,
 * which cost as much as either's own work on a switch-heavy host. The loader says which
 * parts run; the verifier drops the others.
 */
#ifndef EP_SWITCH_BPF_H
#define EP_SWITCH_BPF_H

/* Set by the loader before verification: the parts loaded. */
const volatile __u8 ep_switch_off_cpu = 0;
const volatile __u8 ep_switch_hists = 0;

/*
 * [0]: the parts running now (EP_SWITCH_*). One user stops its part here before its last
 * drain while the program stays attached for the other.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} ep_switch_on SEC(".maps");

SEC("tp_btf/sched_switch")
int BPF_PROG(ep_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	__u32 zero = 0;
	__u32 *on = bpf_map_lookup_elem(&ep_switch_on, &zero);
	if (!on)
		return 0;
	bool off_cpu = ep_switch_off_cpu && (*on & EP_SWITCH_OFF_CPU);
	bool hists = ep_switch_hists && (*on & EP_SWITCH_HISTS);
	/* One clock read for everything: the same instant ends one wait and starts the other. */
	__u64 now = bpf_ktime_get_ns();

	/* pid 0 is the idle task: its "off-CPU" time is the CPU being busy. */
	if (prev->pid != 0 && ep_pid_tracked(prev->tgid)) {
		/* An exiting task never comes back (and its storage goes with it). */
		bool dead = prev_state & TASK_DEAD;
		bool voluntary = !preempt && prev_state != TASK_RUNNING;
		if (off_cpu && !dead && (ep_include_preempted || voluntary))
			ep_switch_out(ctx, prev, now);
		if (hists)
			ep_hist_switch_out(prev, now, voluntary, dead);
	}
	if (next->pid != 0) {
		if (off_cpu)
			ep_switch_in(next, now);
		if (hists)
			ep_hist_switch_in(next, now);
	}
	return 0;
}

#endif
