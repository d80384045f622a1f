"""Scale: the time `emberprof agent` spends per interval to drain the kernel maps, symbolize
what it drained and encode the interval, as the processes, the unique stacks and the repeats
of each stack grow. It reads the agent's debug event `emberprof::timings` (one per interval).

The processes run the workload's `tree-sleep` mode: each blocks in turn in stacks that no
other stack shares, at a chosen rate, and the agent records them with --off-cpu. Sleeping
processes cost almost no CPU, so a thousand of them fit on two cores, and the number of
unique stacks and how often each repeats can be set independently."""

import math
import os
import re
import socket
import statistics
import time
import urllib.request
from dataclasses import dataclass
from typing import List

import measure
from common import EMBERPROF, BenchError, log, spawn, stop_all
from profilers import tail

INTERVAL_S = 2
BLOCKS_METRIC = "emberprof_offcpu_blocks_total"
TIMING = re.compile(r"emberprof::timings: interval (.*)$", re.M)


@dataclass(frozen=True)
class Case:
    processes: int
    stacks_each: int
    # Times per second each stack is blocked in.
    visits: float

    @property
    def sleep_us(self):
        return max(1, round(1e6 / (self.stacks_each * self.visits)))


def axes(quick):
    """(axis, cases); cases shared between axes run once."""
    base = Case(10, 10, 1)
    if quick:
        return [("processes", [base, Case(100, 10, 1)]),
                ("unique stacks", [base, Case(10, 100, 1)]),
                ("repeats", [Case(10, 100, 1), Case(10, 100, 5)])]
    return [("processes", [base, Case(100, 10, 1), Case(1000, 10, 1)]),
            ("unique stacks", [base, Case(10, 100, 1), Case(10, 1000, 1)]),
            ("repeats", [Case(10, 100, 1), Case(10, 100, 5), Case(10, 100, 25)])]


@dataclass
class Interval:
    drain_ms: float
    symbolize_ms: float
    encode_ms: float
    entries: int
    stacks: int
    processes: int

    @property
    def total_ms(self):
        return self.drain_ms + self.symbolize_ms + self.encode_ms


@dataclass
class CaseResult:
    case: Case
    intervals: List[Interval]
    blocks_per_s: float
    peak_rss_mib: float

    @property
    def first(self):
        """The interval in which the agent started and met every process."""
        return self.intervals[0]

    @property
    def steady(self):
        """Field by field median of the later intervals."""
        later = self.intervals[1:]

        def med(name):
            return statistics.median(getattr(i, name) for i in later)
        return Interval(med("drain_ms"), med("symbolize_ms"), med("encode_ms"),
                        round(med("entries")), round(med("stacks")), round(med("processes")))

    @property
    def repeats(self):
        """Blocks per unique stack per interval, measured."""
        return self.blocks_per_s * INTERVAL_S / max(1, self.steady.stacks)


def parse_interval(fields):
    kv = dict(re.findall(r"(\w+)=([\d.]+)", fields))
    return Interval(float(kv["drain_ms"]), float(kv["symbolize_ms"]), float(kv["encode_ms"]),
                    int(kv["entries"]), int(kv["stacks"]), int(kv["processes"]))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def blocks_counted(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        m = re.search(rf"^{BLOCKS_METRIC} (\d+)", r.read().decode(), re.M)
    if not m:
        raise BenchError(f"emberprof agent's /metrics has no {BLOCKS_METRIC}")
    return int(m.group(1))


def wait_intervals(agent, port, err_path, n):
    """The first `n` interval events, and blocks per second between the first and the last."""
    deadline = time.monotonic() + (n + 2) * INTERVAL_S + 60
    seen, first = [], None
    while len(seen) < n:
        if agent.poll() is not None:
            raise BenchError(f"emberprof agent exited with status {agent.returncode}:\n"
                             f"{tail(err_path)}")
        if time.monotonic() > deadline:
            raise BenchError(f"emberprof agent logged {len(seen)} of {n} intervals in time:\n"
                             f"{tail(err_path)}")
        with open(err_path, errors="replace") as f:
            seen = TIMING.findall(f.read())
        if seen and first is None:
            first = (time.monotonic(), blocks_counted(port))
        time.sleep(0.05)
    elapsed = time.monotonic() - first[0]
    rate = (blocks_counted(port) - first[1]) / elapsed if elapsed > 0 else 0.0
    return [parse_interval(s) for s in seen[:n]], rate


def run_case(case, exe, workdir, steady_intervals):
    tag = f"scale-{case.processes}x{case.stacks_each}@{case.visits:g}"
    procs = [spawn([exe, "tree-sleep", str(i * case.stacks_each), str(case.stacks_each),
                    str(case.sleep_us)]) for i in range(case.processes)]
    try:
        pprof_dir = os.path.join(workdir, tag)
        os.makedirs(pprof_dir)
        err_path = os.path.join(workdir, tag + ".err")
        port = free_port()
        env = dict(os.environ, NO_COLOR="1", EMBERPROF_LOG="warn,emberprof::timings=debug")
        # Only these processes (the kernel's PID filter), so that the rest of the machine
        # does not blur the counts; the pprof files are the interval's encoding work.
        argv = [EMBERPROF, "agent", "--off-cpu", "--interval", f"{INTERVAL_S}s",
                "--pprof-dir", pprof_dir, "--http-listen", f"127.0.0.1:{port}",
                "--pid", ",".join(str(p.pid) for p in procs)]
        with open(err_path, "w") as err:
            agent = spawn(argv, stdout=err, stderr=err, env=env)
        try:
            intervals, rate = wait_intervals(agent, port, err_path, 1 + steady_intervals)
            rss = measure.peak_rss_kib(agent.pid) / 1024
        finally:
            agent.terminate()
            agent.wait()
    finally:
        stop_all(procs)
    return CaseResult(case, intervals, rate, rss)


def run(exe, workdir, quick):
    """[(axis, [CaseResult])]."""
    done = {}
    out = []
    for axis, cases in axes(quick):
        for case in cases:
            if case not in done:
                done[case] = run_case(case, exe, workdir, 1 if quick else 2)
                r = done[case]
                log(f"scale: {case.processes} processes x {case.stacks_each} stacks, "
                    f"{case.visits:g}/s each: steady {r.steady.total_ms:.1f} ms per interval "
                    f"({r.steady.stacks} unique stacks)")
        out.append((axis, [done[c] for c in cases]))
    return out


def growth(axis):
    """(what grows along the axis, its unit): unique stacks grow with the processes too
    (each has its own), so both axes are measured in stacks; repeats add blocks."""
    if axis == "repeats":
        return (lambda r: r.blocks_per_s * INTERVAL_S), "block"
    return (lambda r: r.steady.stacks), "unique stack"


def added_cost_us(prev, cur, axis):
    """Steady cost added per unit added since the previous case, in microseconds: constant
    along an axis when cost is linear in it, about 0 when flat. (Differences, so the fixed
    part, such as the 2 ms each drain waits for programs still on the old buffer, drops out.)"""
    x, _ = growth(axis)
    dx = x(cur) - x(prev)
    return 1000 * (cur.steady.total_ms - prev.steady.total_ms) / dx if dx > 0 else math.nan
