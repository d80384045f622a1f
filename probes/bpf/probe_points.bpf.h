/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Probe points (part of emberprof.bpf.c): user-chosen functions (uprobe + uretprobe: a
 * duration histogram and a call count), USDT probes and tracepoints (a hit count), all per
 * cgroup; and TCP from its tracepoints (connection establishment latency, retransmits,
 * resets, per cgroup and remote port). Durations go into the latency histograms
 * (latency.bpf.h); counts into the event count maps, double-buffered with them.
 */
#ifndef EP_PROBE_POINTS_BPF_H
#define EP_PROBE_POINTS_BPF_H

#define EP_TCP_PROTO 6
#define EP_TCP_ESTABLISHED 1
#define EP_TCP_SYN_SENT 2

/*
 * The host's ephemeral port range (net.ipv4.ip_local_port_range), set by the loader: a
 * port in it is a client's, one per connection, and is counted as 0 so that retransmits
 * and resets stay a series per service port, not one per connection.
 */
const volatile __u16 ep_ephemeral_lo = 32768;
const volatile __u16 ep_ephemeral_hi = 60999;

static __always_inline __u32 ep_service_port(__u16 port)
{
	return port >= ep_ephemeral_lo && port <= ep_ephemeral_hi ? 0 : port;
}

/* Event counts, by key (kind: enum ep_event_kind); the loader sizes them as the histograms. */
#define EP_EVENT_MAP(name)                               \
	struct {                                         \
		__uint(type, BPF_MAP_TYPE_HASH);         \
		__type(key, struct ep_hist_key);         \
		__type(value, __u64);                    \
		__uint(max_entries, EP_HIST_KEYS);       \
	} name SEC(".maps")

EP_EVENT_MAP(ep_events_0);
EP_EVENT_MAP(ep_events_1);

/* Hits per probe slot since load, for the rate guard in user space. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, EP_PROBE_SLOTS);
} ep_probe_hits SEC(".maps");

/*
 * Calls in progress: entry time by (thread, slot). LRU: a thread that leaves a function
 * without returning (longjmp, exit) leaves an entry that ages out. A recursive function
 * overwrites its outer call's time: the innermost call is timed, the outer ones are not.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, __u64);
	__uint(max_entries, 16384);
} ep_probe_calls SEC(".maps");

/* Connections in SYN_SENT: when, by socket address. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, __u64);
	__uint(max_entries, 16384);
} ep_tcp_syn SEC(".maps");

/* What the probe profile lost, by enum ep_counter (the CPU sampler's indexes). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, EP_CNT_MAX);
} ep_probe_counters SEC(".maps");

/* Which slots record the stacks of their hits (EP_PROBE_STACKS_ON), set by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, EP_PROBE_SLOTS);
} ep_probe_slot_flags SEC(".maps");

/* The stack buffers' switch (double_buffer.rs), apart from the histograms': the probe
 * profile is drained with the other profiles. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} ep_probe_control SEC(".maps");

#define EP_PROBE_STACK_MAP(name)                         \
	struct {                                         \
		__uint(type, BPF_MAP_TYPE_HASH);         \
		__type(key, __u64);                      \
		__type(value, struct ep_stack);          \
		__uint(max_entries, EP_PROBE_STACKS);    \
	} name SEC(".maps")

EP_PROBE_STACK_MAP(ep_probe_stacks_0);
EP_PROBE_STACK_MAP(ep_probe_stacks_1);

/* Hits by thread, stacks and probe. */
#define EP_PROBE_SAMPLE_MAP(name)                        \
	struct {                                         \
		__uint(type, BPF_MAP_TYPE_HASH);         \
		__type(key, struct ep_probe_sample_key); \
		__type(value, struct ep_probe_sample_value); \
		__uint(max_entries, EP_PROBE_STACKS);    \
	} name SEC(".maps")

EP_PROBE_SAMPLE_MAP(ep_probe_samples_0);
EP_PROBE_SAMPLE_MAP(ep_probe_samples_1);

/* Adds one to the count under `key` in the buffer being filled. */
static __always_inline void ep_event_count(struct ep_hist_key *key)
{
	__u32 zero = 0;
	__u32 *active = bpf_map_lookup_elem(&ep_hist_control, &zero);
	if (!active)
		return;
	void *events = (*active & 1) ? (void *)&ep_events_1 : (void *)&ep_events_0;
	if (ep_map_add(events, key, 1))
		ep_hist_count(EP_HIST_EVENTS_FULL);
}

/*
 * Records the current thread's stacks under probe `slot` with `ns` of time (a function's
 * call), if the slot takes stacks.
 */
static __always_inline void ep_probe_stack(void *ctx, __u32 slot, __u32 tgid, __u32 tid,
					   __u64 ns)
{
	__u32 zero = 0;
	__u32 *flags = bpf_map_lookup_elem(&ep_probe_slot_flags, &slot);
	if (!flags || !(*flags & EP_PROBE_STACKS_ON))
		return;
	__u32 *active = bpf_map_lookup_elem(&ep_probe_control, &zero);
	if (!active)
		return;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	ep_announce(task, tgid, &ep_probe_counters, EP_CNT_ANNOUNCE_LOST);
	ep_percpu_inc(&ep_probe_counters, EP_CNT_SAMPLES);
	struct ep_probe_sample_key key = {};
	key.sample.tgid = tgid;
	key.sample.tid = tid;
	key.slot = slot;
	bpf_get_current_comm(key.sample.comm, sizeof(key.sample.comm));
	ep_task_image(task, &key.sample.exec_id, &key.sample.flags);
	void *stacks = (*active & 1) ? (void *)&ep_probe_stacks_1 : (void *)&ep_probe_stacks_0;
	void *samples = (*active & 1) ? (void *)&ep_probe_samples_1 : (void *)&ep_probe_samples_0;
	ep_stack_counted(ctx, tgid, stacks, BPF_F_USER_STACK, &ep_probe_counters,
			 EP_CNT_USER_STACK_MAP_FULL, &key.sample.user_stack, &key.sample.user_err);
	ep_stack_counted(ctx, tgid, stacks, 0, &ep_probe_counters, EP_CNT_KERNEL_STACK_MAP_FULL,
			 &key.sample.kernel_stack, &key.sample.kernel_err);
	struct ep_probe_sample_value *v = bpf_map_lookup_elem(samples, &key);
	if (v) {
		__sync_fetch_and_add(&v->hits, 1);
		__sync_fetch_and_add(&v->ns, ns);
		return;
	}
	struct ep_probe_sample_value first = { .hits = 1, .ns = ns };
	long err = bpf_map_update_elem(samples, &key, &first, BPF_NOEXIST);
	if (err == -EP_EEXIST) {
		v = bpf_map_lookup_elem(samples, &key);
		if (v) {
			__sync_fetch_and_add(&v->hits, 1);
			__sync_fetch_and_add(&v->ns, ns);
			return;
		}
	}
	if (err)
		ep_percpu_inc(&ep_probe_counters, EP_CNT_COUNT_MAP_FULL);
}

/* A hit of probe `slot`: counted; a function's entry (`timed`) also starts its clock. */
static __always_inline int ep_probe_hit(void *ctx, __u32 slot, bool timed)
{
	__u64 id = bpf_get_current_pid_tgid();
	/* Every hit costs a trap, filtered out or not: the rate guard counts them all. */
	ep_percpu_inc(&ep_probe_hits, slot);
	if (!ep_pid_tracked(id >> 32))
		return 0;
	struct ep_hist_key key = {
		.cgroup = bpf_get_current_cgroup_id(),
		.kind = EP_EVENT_PROBE_HIT,
		.detail = slot,
	};
	ep_event_count(&key);
	if (!timed)
		ep_probe_stack(ctx, slot, id >> 32, (__u32)id, 0);
	if (timed) {
		__u64 call = (id << 32) | slot;
		__u64 now = bpf_ktime_get_ns();
		bpf_map_update_elem(&ep_probe_calls, &call, &now, BPF_ANY);
	}
	return 0;
}

/*
 * A probed function's return: its duration into the slot's histogram and, with +stacks,
 * to the stacks of its caller (the return address is the caller's by now).
 */
static __always_inline int ep_probe_return(void *ctx, __u32 slot)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 call = (id << 32) | slot;
	__u64 *ts = bpf_map_lookup_elem(&ep_probe_calls, &call);
	if (!ts)
		return 0;
	__u64 then = *ts;
	__u64 now = bpf_ktime_get_ns();
	bpf_map_delete_elem(&ep_probe_calls, &call);
	if (now < then)
		return 0;
	struct ep_hist_key key = {
		.cgroup = bpf_get_current_cgroup_id(),
		.kind = EP_HIST_PROBE,
		.detail = slot,
	};
	ep_hist_record(&key, now - then);
	ep_probe_stack(ctx, slot, id >> 32, (__u32)id, now - then);
	return 0;
}

/* One slot's programs: function entry and return, USDT hit, tracepoint hit. */
#define EP_PROBE_SLOT(n)                                                  \
	SEC("uprobe")                                                     \
	int ep_probe_entry_##n(struct pt_regs *ctx)                       \
	{                                                                 \
		return ep_probe_hit(ctx, n, true);                             \
	}                                                                 \
	SEC("uretprobe")                                                  \
	int ep_probe_return_##n(struct pt_regs *ctx)                      \
	{                                                                 \
		return ep_probe_return(ctx, n);                                \
	}                                                                 \
	SEC("uprobe")                                                     \
	int ep_probe_usdt_##n(struct pt_regs *ctx)                        \
	{                                                                 \
		return ep_probe_hit(ctx, n, false);                            \
	}                                                                 \
	SEC("tracepoint")                                                 \
	int ep_probe_tp_##n(void *ctx)                                    \
	{                                                                 \
		return ep_probe_hit(ctx, n, false);                            \
	}

EP_PROBE_SLOT(0)
EP_PROBE_SLOT(1)
EP_PROBE_SLOT(2)
EP_PROBE_SLOT(3)
EP_PROBE_SLOT(4)
EP_PROBE_SLOT(5)
EP_PROBE_SLOT(6)
EP_PROBE_SLOT(7)

#define EP_TCP_TIME_WAIT 6
#define EP_TCP_NEW_SYN_RECV 12

/*
 * The cgroup v2 id of the socket's owner (where it was created), 0 if it has none. Only a
 * full socket has one: a time-wait socket has none, and a request socket (a connection
 * being accepted) is the listener's.
 */
static __always_inline __u64 ep_sock_cgroup(const struct sock *sk)
{
	__u8 state = BPF_CORE_READ(sk, __sk_common.skc_state);
	if (state == EP_TCP_TIME_WAIT)
		return 0;
	if (state == EP_TCP_NEW_SYN_RECV) {
		sk = BPF_CORE_READ(sk, __sk_common.skc_listener);
		if (!sk)
			return 0;
	}
	struct cgroup *cg = BPF_CORE_READ(sk, sk_cgrp_data.cgroup);
	if (!cg)
		return 0;
	return BPF_CORE_READ(cg, kn, id);
}

static __always_inline __u32 ep_sock_dport(const struct sock *sk)
{
	return bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
}

/* Local port: host byte order already (inet's skc_num). */
static __always_inline __u32 ep_sock_sport(const struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_num);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(ep_tcp_state, const struct sock *sk, const int oldstate, const int newstate)
{
	if (BPF_CORE_READ(sk, sk_protocol) != EP_TCP_PROTO)
		return 0;
	__u64 id = (__u64)sk;
	if (newstate == EP_TCP_SYN_SENT) {
		__u64 now = bpf_ktime_get_ns();
		if (bpf_map_update_elem(&ep_tcp_syn, &id, &now, BPF_ANY))
			ep_hist_count(EP_HIST_START_FULL);
		return 0;
	}
	if (oldstate != EP_TCP_SYN_SENT)
		return 0;
	__u64 *ts = bpf_map_lookup_elem(&ep_tcp_syn, &id);
	if (!ts)
		return 0;
	__u64 then = *ts;
	__u64 now = bpf_ktime_get_ns();
	bpf_map_delete_elem(&ep_tcp_syn, &id);
	/* SYN_SENT to CLOSE: refused or timed out, not a connection. */
	if (newstate != EP_TCP_ESTABLISHED || now < then)
		return 0;
	struct ep_hist_key key = {
		.cgroup = ep_sock_cgroup(sk),
		.kind = EP_HIST_TCP_CONNECT,
		.detail = ep_sock_dport(sk),
	};
	ep_hist_record(&key, now - then);
	return 0;
}

/* A TCP event of a socket: per cgroup, remote port (detail) and local port (major). */
static __always_inline void ep_tcp_event(const struct sock *sk, __u32 kind)
{
	struct ep_hist_key key = { .kind = kind };
	if (sk) {
		key.cgroup = ep_sock_cgroup(sk);
		key.detail = ep_service_port(ep_sock_dport(sk));
		key.major = ep_service_port(ep_sock_sport(sk));
	}
	ep_event_count(&key);
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(ep_tcp_retransmit, const struct sock *sk)
{
	ep_tcp_event(sk, EP_EVENT_TCP_RETRANSMIT);
	return 0;
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(ep_tcp_reset_sent, const struct sock *sk, const struct sk_buff *skb)
{
	/* Without a segment (an active reset, e.g. an abort) the socket has the ports. */
	if (!skb) {
		ep_tcp_event(sk, EP_EVENT_TCP_RESET_SENT);
		return 0;
	}
	/* A reset answering a segment: its ports are the segment's, source the peer's. The
	 * socket, if any, may be a request or time-wait one, whose ports read as 0. */
	struct ep_hist_key key = { .kind = EP_EVENT_TCP_RESET_SENT };
	if (sk)
		key.cgroup = ep_sock_cgroup(sk);
	/* As numbers: the verifier refuses arithmetic on the BTF pointer itself. */
	__u64 head = (__u64)BPF_CORE_READ(skb, head);
	__u64 transport = BPF_CORE_READ(skb, transport_header);
	__be16 ports[2] = {};
	bpf_probe_read_kernel(ports, sizeof(ports),
			      (void *)(head + transport + offsetof(struct tcphdr, source)));
	key.detail = ep_service_port(bpf_ntohs(ports[0]));
	key.major = ep_service_port(bpf_ntohs(ports[1]));
	ep_event_count(&key);
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(ep_tcp_reset_received, struct sock *sk)
{
	ep_tcp_event(sk, EP_EVENT_TCP_RESET_RECEIVED);
	return 0;
}

#endif
