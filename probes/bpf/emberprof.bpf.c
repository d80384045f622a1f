// SPDX-License-Identifier: GPL-2.0-only
/*
 * Every emberprof program, in one object: the CPU sampler and the off-CPU profiler share
 * one unwinder and its tables (unwind.bpf.h), and the off-CPU profiler and the scheduler
 * histograms share one sched_switch program (switch.bpf.h). The loader loads only the
 * programs it is asked for; the maps of the others are shrunk to one entry.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "emberprof.h"
#include "common.bpf.h"
#include "unwind.bpf.h"
#include "python.bpf.h"
#include "announce.bpf.h"
#include "cpu_sampler.bpf.h"
#include "off_cpu.bpf.h"
#include "latency.bpf.h"
#include "probe_points.bpf.h"
#include "switch.bpf.h"

char LICENSE[] SEC("license") = "GPL";
