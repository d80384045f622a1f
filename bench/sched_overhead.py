#!/usr/bin/env python3
"""Scheduler-heavy overhead: wall time of threads ping-ponging a byte over pipes (every pass
a wakeup and a context switch) alone and while `emberprof record --off-cpu --histograms`
watches the whole machine, alternating runs in one invocation. Prints the ratio and the
events per second the probes handled. Reports; never asserts.

The workload is pinned to CPU 0 by default: unpinned, whether a pair shares a CPU changes
its speed by 2x from run to run, which drowns the effect being measured.

Usage: bench/sched_overhead.py [--reps N] [--rounds N] [--pairs N]
                               [--what both|off-cpu|histograms] [--syscalls] [--no-pin]
(`make bench` builds everything first.)"""

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_overhead import EMBERPROF, build_workload, timed  # noqa: E402


def run_watched(workload_cmd, flags, out_path):
    """Runs the workload under emberprof; returns (wall s, probe events)."""
    prof = subprocess.Popen(
        [EMBERPROF, "record", *flags, "--duration", "600",
         "--format", "folded", "--output", out_path],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(2.5)  # past start-up (kallsyms, first drain)
    wall = timed(workload_cmd)
    prof.send_signal(signal.SIGINT)
    out, err = prof.communicate()
    if prof.returncode != 0:
        sys.exit(f"emberprof failed: {err}")
    blocks = re.search(r"\((\d+) blocks,", err)
    if "--off-cpu" not in flags and os.path.exists(out_path):
        with open(out_path) as f:  # with no profile, the histograms went to --output
            out = f.read()
    durations = re.search(r"^histograms: (\d+) durations recorded", out, re.M)
    events = int(blocks.group(1) if blocks else 0) + int(durations.group(1) if durations else 0)
    return wall, events


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=6, help="alternating pairs of runs")
    ap.add_argument("--rounds", type=int, default=300000, help="passes per pair of threads")
    ap.add_argument("--pairs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--what", choices=["both", "off-cpu", "histograms"], default="both")
    ap.add_argument("--syscalls", action="store_true", help="also --syscall-latency")
    ap.add_argument("--no-pin", action="store_true", help="let the scheduler place the threads")
    args = ap.parse_args()
    if not os.access(EMBERPROF, os.X_OK):
        sys.exit(f"{EMBERPROF} not built: run `make bench`")
    flags = {"both": ["--off-cpu", "--histograms"], "off-cpu": ["--off-cpu"],
             "histograms": ["--histograms"]}[args.what]
    if args.syscalls:
        flags.append("--syscall-latency")
    with tempfile.TemporaryDirectory() as tmp:
        exe = build_workload(tmp)
        pin = [] if args.no_pin else ["taskset", "-c", "0"]
        workload = [*pin, exe, "pingpong", str(args.pairs), str(args.rounds)]
        timed(workload)  # warm up
        base, watched, events = [], [], []
        for i in range(args.reps):
            base.append(timed(workload))
            wall, n = run_watched(workload, flags, os.path.join(tmp, f"w{i}.folded"))
            watched.append(wall)
            events.append(n / wall)
            print(f"  rep {i + 1}/{args.reps}: alone {base[-1]:.3f} s, watched {wall:.3f} s, "
                  f"{n} events", file=sys.stderr)

    med = statistics.median
    ratios = [w / b for w, b in zip(watched, base)]
    what = " ".join(flags)
    print(f"machine: {os.cpu_count()} CPUs, kernel {os.uname().release}; workload: "
          f"{args.pairs} thread pairs x {args.rounds} pipe passes"
          f"{'' if args.no_pin else ', pinned to CPU 0'}")
    print(f"{'':28}{'median':>10}{'mean':>10}{'min':>10}{'max':>10}")
    print(f"{'workload alone (s)':28}{med(base):>10.3f}{statistics.mean(base):>10.3f}{min(base):>10.3f}{max(base):>10.3f}")
    print(f"{'with emberprof (s)':28}{med(watched):>10.3f}{statistics.mean(watched):>10.3f}{min(watched):>10.3f}{max(watched):>10.3f}")
    print(f"{'ratio (pairwise)':28}{med(ratios):>10.4f}{statistics.mean(ratios):>10.4f}{min(ratios):>10.4f}{max(ratios):>10.4f}")
    print(f"{'ratio of medians':28}{med(watched) / med(base):>10.4f}")
    print(f"emberprof {what}: {med(events):,.0f} probe events per second of workload "
          f"(off-CPU blocks credited + histogram durations recorded)")


if __name__ == "__main__":
    main()
