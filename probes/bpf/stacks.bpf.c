// SPDX-License-Identifier: GPL-2.0-only
/*
 * The programs that take user stacks, in one object so that they share one unwinder and
 * its tables (unwind.bpf.h): the CPU sampler (perf_event) and the off-CPU switch
 * (sched_switch). The loader loads only the programs it is asked for; the maps of the
 * other are shrunk to one entry.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "emberprof.h"
#include "common.bpf.h"
#include "unwind.bpf.h"
#include "announce.bpf.h"
#include "cpu_sampler.bpf.h"
#include "off_cpu.bpf.h"

char LICENSE[] SEC("license") = "GPL";
