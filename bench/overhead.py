"""Overhead: wall time of fixed-work workloads alone and under each profiler, in alternating
rounds, and what each profiler itself spent (CPU, memory, eBPF program time)."""

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import measure
from common import log
from measure import BpfStats, Window
from profilers import Finished, Session
from workloads import run_timed

# Round 0 runs a third of the work: enough for per-program eBPF averages.
STATS_FRACTION = 1 / 3
# A profiler that names stacks as it goes (emberprof) reads a program's symbols the first
# time it samples it: a cost paid once per program in continuous profiling, not the steady
# state measured here. So every profiler first sees each workload briefly while it settles;
# its CPU per session still includes that first encounter.
WARM_UP_FRACTION = 0.05
# The CPU sampler with unwind tables and with frame pointers only: after round 0, these two
# run this many more times each, alternating, with the full work and the eBPF statistics
# on, so that their per-sample times rest on some hundred samples per workload.
UNWIND_PAIR = ("ember-99-cpu", "ember-99-cpu-fp")
UNWIND_ROUNDS = 2
# After the last workload of a CPU-only emberprof session: one drain interval (1 s) and a
# margin, so that the samples taken during the workloads are drained and symbolized inside
# the span charged to them (CPU per 1000 samples).
DRAIN_TAIL_S = 1.2


@dataclass
class SessionResult:
    config: object
    round: int
    walls: Dict[str, float]
    # Per workload: what the profiler spent while it ran.
    windows: Dict[str, Window]
    finished: Finished
    # emberprof, CPU only: on-CPU seconds from the first workload until its samples were
    # drained, and the samples of the workloads' processes.
    drained_cpu_s: Optional[float] = None
    workload_samples: Optional[int] = None
    # Mean of the alone runs just before and just after, per workload.
    baseline: Dict[str, float] = field(default_factory=dict)


@dataclass
class Overhead:
    workloads: list
    configs: list
    rounds: int
    alone: List[Dict[str, float]] = field(default_factory=list)
    sessions: List[SessionResult] = field(default_factory=list)
    stats_sessions: List[SessionResult] = field(default_factory=list)
    # The unwinding comparison's sessions (UNWIND_PAIR), eBPF statistics on.
    unwind_sessions: List[SessionResult] = field(default_factory=list)

    def ratios(self, config):
        """Workload key -> ratios of wall time under `config` to the adjacent alone runs."""
        out = {w.key: [] for w in self.workloads}
        for s in self.sessions:
            if s.config == config:
                for k in out:
                    out[k].append(s.walls[k] / s.baseline[k])
        return out

    def noise(self):
        """Workload key -> each alone run over the median alone run: the floor under every
        ratio."""
        out = {}
        for w in self.workloads:
            runs = [a[w.key] for a in self.alone]
            mid = measure.spread(runs)[0]
            out[w.key] = [r / mid for r in runs]
        return out

    def alone_seconds(self, key):
        return [a[key] for a in self.alone]

    def cost(self, config):
        return Cost.of([s for s in self.sessions if s.config == config],
                       [s for s in self.stats_sessions if s.config == config])


@dataclass
class Cost:
    session_cpu_s: float          # median over rounds, start to exit, user + system
    symbolize_s: float            # perf only: median CPU of perf script afterwards
    oncpu_pct: Dict[str, float]   # per workload, process on-CPU time, % of one CPU
    total_pct: float              # over all workloads, on-CPU time, % of one CPU
    # Over all workloads, the user part, % of one CPU. Split from the total by the kernel in
    # proportion to 10 ms ticks, so it is coarse at a few ms per workload: the total is
    # the precise upper bound.
    user_pct: float
    bpf_pct: Dict[str, float]     # per workload, eBPF program time (round 0), % of one CPU
    programs: Dict[str, measure.Program]
    peak_rss_mib: float
    cpu_ms_per_1000: Optional[float]

    @staticmethod
    def of(timed, stats):
        per_workload, stats_per_workload = by_workload(timed), by_workload(stats)
        total, programs = Window(), Window()
        for w in per_workload.values():
            total += w
        for w in stats_per_workload.values():
            programs += w
        drained = [s for s in timed if s.drained_cpu_s is not None]
        samples = sum(s.workload_samples or 0 for s in drained)
        per_sample = (1e6 * sum(s.drained_cpu_s for s in drained) / samples) if samples else None
        finished = [s.finished for s in timed]
        return Cost(
            session_cpu_s=measure.spread([f.user_s + f.sys_s for f in finished])[0],
            symbolize_s=measure.spread([f.symbolize_s for f in finished])[0],
            oncpu_pct={k: 100 * w.oncpu_s / w.wall for k, w in per_workload.items()},
            total_pct=100 * total.oncpu_s / total.wall,
            user_pct=100 * total.user_s / total.wall,
            bpf_pct={k: 100 * w.bpf_ns() / 1e9 / w.wall for k, w in stats_per_workload.items()},
            programs=programs.programs,
            peak_rss_mib=max(f.peak_rss_kib for f in finished) / 1024,
            cpu_ms_per_1000=per_sample,
        )


def by_workload(sessions):
    """Workload key -> the sum of the sessions' windows of that workload."""
    out = {}
    for s in sessions:
        for k, w in s.windows.items():
            out.setdefault(k, Window())
            out[k] += w
    return out


def alone_block(workloads, fraction=1.0):
    return {w.key: run_timed(w.argv(fraction))[0] for w in workloads}


def profiled_block(config, tools, workloads, workdir, tag, fraction=1.0):
    session = Session(config, tools, workdir, tag)
    session.wait_ready()
    for w in workloads:
        run_timed(w.argv(WARM_UP_FRACTION))
    session.settle()
    marks = [session.usage()]
    walls, pids, windows = {}, {}, {}
    for w in workloads:
        walls[w.key], pids[w.key] = run_timed(w.argv(fraction))
        marks.append(session.usage())
        windows[w.key] = measure.window(marks[-2], marks[-1])
    drained_cpu = None
    if config.cpu_only:
        time.sleep(DRAIN_TAIL_S)
        drained_cpu = session.usage().oncpu_s - marks[0].oncpu_s
    finished = session.stop()
    finished.symbolize_s = session.symbolize_cost(tools)
    result = SessionResult(config, 0, walls, windows, finished, drained_cpu_s=drained_cpu)
    if config.cpu_only:
        result.workload_samples = sum(n for _, _, n in session.stacks(tools, set(pids.values())))
    return result


def run(configs, tools, workloads, rounds, workdir):
    results = Overhead(workloads, configs, rounds)
    # Round 0 warms up every program and file the timed rounds use, and, with the kernel's
    # eBPF statistics on, gives per-program costs without slowing the timed rounds.
    log(f"overhead: round 0 (warm-up, eBPF statistics on, {STATS_FRACTION:.2f} of the work)")
    with BpfStats():
        alone_block(workloads, STATS_FRACTION)
        for c in configs:
            s = profiled_block(c, tools, workloads, workdir, f"r0-{c.key}", STATS_FRACTION)
            results.stats_sessions.append(s)
        pair = [c for key in UNWIND_PAIR for c in configs if c.key == key]
        if len(pair) == 2:
            for r in range(min(rounds, UNWIND_ROUNDS)):
                for c in pair:
                    log(f"overhead: {c.label}, eBPF statistics on, full work ({r + 1}/"
                        f"{min(rounds, UNWIND_ROUNDS)})")
                    results.unwind_sessions.append(
                        profiled_block(c, tools, workloads, workdir, f"u{r}-{c.key}"))
    for r in range(1, rounds + 1):
        # A different order each round, so that no profiler always follows the same one.
        order = configs[(r - 1) % len(configs):] + configs[:(r - 1) % len(configs)]
        before = alone_block(workloads)
        results.alone.append(before)
        for c in order:
            s = profiled_block(c, tools, workloads, workdir, f"r{r}-{c.key}")
            after = alone_block(workloads)
            results.alone.append(after)
            s.round = r
            s.baseline = {k: (before[k] + after[k]) / 2 for k in before}
            results.sessions.append(s)
            log(f"overhead: round {r}/{rounds}, {c.label}: " + ", ".join(
                f"{w.key} {s.walls[w.key]:.3f} s (x{s.walls[w.key] / s.baseline[w.key]:.3f})"
                for w in workloads))
            before = after
    return results
