#!/usr/bin/env python3
"""Overhead, profiler cost, accuracy and scale of emberprof, side by side with perf and
bpftrace, the cost of building unwind tables, and memory. Prints the tables as Markdown and
writes them to docs/benchmarks.md with the machine and the date. Reports; never asserts on
timings.

Needs root, target/release/emberprof (and its examples collector and unwind_build), perf and
bpftrace: `make bench` installs and builds everything, then runs this. Takes about 11
minutes on 2 cores; --quick about 4.

Usage: bench/run.py [--quick] [--rounds N] [--phases overhead,accuracy,tables,scale,memory,python,probes]
                    [--configs KEY,...] [--workloads cpu,sched,syscalls] [--output FILE]"""

import argparse
import datetime
import os
import sys
import tempfile
import time

# No __pycache__ in the source tree.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import accuracy  # noqa: E402
import measure  # noqa: E402
import memory  # noqa: E402
import overhead  # noqa: E402
import probe_points  # noqa: E402
import python_frames  # noqa: E402
import report  # noqa: E402
import scale  # noqa: E402
import tables  # noqa: E402
import workloads  # noqa: E402
from common import BUILD_DIR, ROOT, BenchError, kill_children, log  # noqa: E402
from profilers import (ACCURACY_CONFIGS, EXTRA_CONFIGS, find_tools,  # noqa: E402
                       standard_configs)

PHASES = ("overhead", "accuracy", "tables", "scale", "memory", "python", "probes")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="development run: one short round, small scale cases; writes "
                         "target/bench/benchmarks-quick.md unless --output is given")
    ap.add_argument("--rounds", type=int, help="timed overhead rounds (default 3, quick 1)")
    ap.add_argument("--workload-seconds", type=float,
                    help="how long each workload runs alone; sets its fixed work (default 1.2, quick 0.3)")
    ap.add_argument("--accuracy-seconds", type=float,
                    help="per accuracy workload; default 10, quick 3")
    ap.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset of "
                    + ", ".join(PHASES))
    all_configs = standard_configs() + EXTRA_CONFIGS
    ap.add_argument("--configs", help="overhead configurations, comma-separated (default: all "
                    "but the extra ones); known: " + ", ".join(c.key for c in all_configs))
    ap.add_argument("--workloads", help="overhead workloads, comma-separated (default: all); "
                    "known: cpu, sched, syscalls")
    ap.add_argument("--output", help="Markdown file to write (default docs/benchmarks.md)")
    args = ap.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.workload_seconds = args.workload_seconds or (0.3 if args.quick else 1.2)
    args.accuracy_seconds = args.accuracy_seconds or (3 if args.quick else 10)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    for p in args.phases:
        if p not in PHASES:
            ap.error(f"unknown phase {p!r} (known: {', '.join(PHASES)})")
    known = {c.key: c for c in all_configs}
    if args.configs:
        keys = [k.strip() for k in args.configs.split(",") if k.strip()]
        for k in keys:
            if k not in known:
                ap.error(f"unknown configuration {k!r} (known: {', '.join(known)})")
        args.configs = [known[k] for k in keys]
    else:
        args.configs = standard_configs()
    if not args.output:
        args.output = os.path.join(BUILD_DIR, "benchmarks-quick.md") if args.quick \
            else os.path.join(ROOT, "docs", "benchmarks.md")
    return args


def command_line():
    shown = " ".join(sys.argv[1:])
    if os.environ.get("MAKELEVEL"):
        return f"make bench BENCH_ARGS='{shown}'" if shown else "make bench"
    return f"bench/run.py {shown}".strip()


def run_phases(args, run, tools, exe, workdir):
    if "overhead" in args.phases:
        work = workloads.overhead_workloads(exe)
        if args.workloads:
            keep = {k.strip() for k in args.workloads.split(",") if k.strip()}
            unknown = keep - {w.key for w in work}
            if unknown:
                raise SystemExit(f"unknown workloads: {', '.join(sorted(unknown))}")
            work = [w for w in work if w.key in keep]
        workloads.calibrate(work, args.workload_seconds)
        log("overhead: fixed work: " + "; ".join(w.describe(w.units) for w in work))
        run.overhead = overhead.run(args.configs, tools, work, args.rounds, workdir)
    if "accuracy" in args.phases:
        by_key = {c.key: c for c in standard_configs() + ACCURACY_CONFIGS}
        run.accuracy = accuracy.run(by_key, tools, workloads.build_all(),
                                    args.accuracy_seconds, workdir)
        run.accuracy_seconds = args.accuracy_seconds
    if "tables" in args.phases:
        run.tables = tables.run(args.quick)
    if "scale" in args.phases:
        run.scale = scale.run(exe, workdir, args.quick)
    if "memory" in args.phases:
        run.memory = memory.run(workdir, args.quick)
    if "python" in args.phases:
        run.python = python_frames.run(workloads.build_all()["nofp"], workdir)
    if "probes" in args.phases:
        run.probes = probe_points.run(workdir, args.quick)


def main():
    args = parse_args()
    if os.geteuid() != 0:
        raise BenchError("run as root: every profiler here loads eBPF programs or system-wide perf events")
    tools = find_tools()
    exe = workloads.build()
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    load_start = report.load_average()
    machine_start = measure.machine_cpu()
    run = report.Run(started, 0.0, command_line(), args.quick, report.machine(),
                     {**tools.versions(), "emberprof commit": report.git_commit()})
    with tempfile.TemporaryDirectory(prefix="emberprof-bench-") as workdir:
        try:
            run_phases(args, run, tools, exe, workdir)
        finally:
            kill_children()  # before their files go
    run.seconds = time.monotonic() - t0
    run.machine["load average (1 min) at start / end"] = \
        f"{load_start:.2f} / {report.load_average():.2f}"
    run.machine["CPU used by other processes during the run"] = report.other_cpu(
        machine_start, measure.machine_cpu(), run.seconds)
    text = report.markdown(run)
    print(text)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        f.write(text)
    log(f"bench: wrote {os.path.relpath(args.output, ROOT)} in {run.seconds:.0f} s")


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        sys.exit(f"bench: error: {e}")
    except KeyboardInterrupt:
        sys.exit("bench: interrupted")
    finally:
        kill_children()
