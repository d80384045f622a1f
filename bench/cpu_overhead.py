#!/usr/bin/env python3
"""CPU-profiling overhead: wall time of a fixed CPU-bound workload alone and while
`emberprof record` samples the whole machine, alternating runs in one invocation, plus
emberprof's own CPU seconds and peak RSS. Reports; never asserts.

Usage: bench/cpu_overhead.py [--reps N] [--rounds N] [--frequency HZ]
(`make bench` builds everything first.)"""

import argparse
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBERPROF = os.path.join(ROOT, "target", "release", "emberprof")
WORKLOAD_SRC = os.path.join(ROOT, "tests", "workloads", "workload.c")


def build_workload(out_dir):
    exe = os.path.join(out_dir, "epworkload")
    subprocess.run(
        ["cc", "-O2", "-g", "-fno-omit-frame-pointer", "-mno-omit-leaf-frame-pointer",
         "-fno-optimize-sibling-calls", "-pthread", "-o", exe, WORKLOAD_SRC],
        check=True,
    )
    return exe


def timed(cmd):
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def children_usage():
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime, u.ru_stime


def run_profiled(workload_cmd, frequency, out_path):
    """Runs the workload while emberprof samples every process; returns
    (workload wall seconds, emberprof user s, emberprof sys s, emberprof peak RSS KiB, samples)."""
    prof = subprocess.Popen(
        [EMBERPROF, "record", "--duration", "600", "--frequency", str(frequency),
         "--format", "pprof", "--output", out_path],
        stderr=subprocess.PIPE, text=True,
    )
    # Past the first drain, whose one-time loading of kallsyms and ELF symbol tables is
    # start-up cost, not the steady-state overhead this measures.
    time.sleep(2.5)
    wall = timed(workload_cmd)
    prof.send_signal(signal.SIGINT)
    # wait4 gives the profiler's own rusage, independent of the workload's.
    _, status, usage = os.wait4(prof.pid, 0)
    prof.returncode = os.waitstatus_to_exitcode(status)
    err = prof.stderr.read()
    if prof.returncode != 0:
        sys.exit(f"emberprof failed: {err}")
    summary = next((l for l in err.splitlines() if l.startswith("emberprof: ")), "")
    samples = int(summary.split()[1]) if summary else 0
    return wall, usage.ru_utime, usage.ru_stime, usage.ru_maxrss, samples


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=8, help="alternating pairs of runs")
    ap.add_argument("--rounds", type=int, default=600, help="work per thread (about 10 ms a round)")
    ap.add_argument("--frequency", type=int, default=99)
    args = ap.parse_args()
    if not os.access(EMBERPROF, os.X_OK):
        sys.exit(f"{EMBERPROF} not built: run `make bench`")
    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        exe = build_workload(tmp)
        workload = [exe, "fixed", str(args.rounds), str(threads)]
        timed(workload)  # warm caches and CPU frequency
        base, prof, cpu, rss, samples = [], [], [], [], []
        for i in range(args.reps):
            base.append(timed(workload))
            wall, user, sys_s, maxrss, n = run_profiled(workload, args.frequency, os.path.join(tmp, f"p{i}.pb.gz"))
            prof.append(wall)
            cpu.append(user + sys_s)
            rss.append(maxrss)
            samples.append(n)
            print(f"  rep {i + 1}/{args.reps}: alone {base[-1]:.3f} s, profiled {wall:.3f} s", file=sys.stderr)

    ratios = [p / b for p, b in zip(prof, base)]
    mean_base, mean_prof = statistics.mean(base), statistics.mean(prof)
    print(f"machine: {threads} CPUs, kernel {os.uname().release}; workload: {threads} threads x {args.rounds} rounds")
    med = statistics.median
    print(f"{'':28}{'median':>10}{'mean':>10}{'min':>10}{'max':>10}")
    print(f"{'workload alone (s)':28}{med(base):>10.3f}{mean_base:>10.3f}{min(base):>10.3f}{max(base):>10.3f}")
    print(f"{'with emberprof (s)':28}{med(prof):>10.3f}{mean_prof:>10.3f}{min(prof):>10.3f}{max(prof):>10.3f}")
    print(f"{'ratio (pairwise)':28}{med(ratios):>10.4f}{statistics.mean(ratios):>10.4f}{min(ratios):>10.4f}{max(ratios):>10.4f}")
    print(f"{'ratio of medians':28}{med(prof) / med(base):>10.4f}")
    print(f"emberprof at {args.frequency} Hz on every CPU, whole machine: "
          f"{statistics.mean(cpu):.3f} CPU s per run (user+sys, whole process life: start-up, drains, "
          f"final symbolize + write), peak RSS {max(rss) / 1024:.1f} MiB, {statistics.mean(samples):.0f} samples per run")


if __name__ == "__main__":
    main()
