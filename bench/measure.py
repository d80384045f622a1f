"""What a running process costs, read from /proc: CPU time (user and system ticks, and the
scheduler's precise on-CPU nanoseconds), peak RSS, and the run time of the eBPF programs it
holds (kernel.bpf_stats_enabled). Plus the summary statistics the report uses."""

import glob
import os
import re
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Dict

from common import BenchError

CLK_TCK = os.sysconf("SC_CLK_TCK")
BPF_STATS = "/proc/sys/kernel/bpf_stats_enabled"


@dataclass
class Program:
    name: str
    run_ns: int
    runs: int


@dataclass
class Snapshot:
    at: float
    user_s: float
    sys_s: float
    oncpu_s: float
    programs: Dict[int, Program]


@dataclass
class Window:
    """What a process spent between two snapshots (or the sum of several such spans)."""
    wall: float = 0.0
    user_s: float = 0.0
    sys_s: float = 0.0
    oncpu_s: float = 0.0
    # Program name -> (run nanoseconds, runs); names, not IDs, so that sessions add up.
    programs: Dict[str, Program] = field(default_factory=dict)

    def __iadd__(self, other):
        self.wall += other.wall
        self.user_s += other.user_s
        self.sys_s += other.sys_s
        self.oncpu_s += other.oncpu_s
        for name, p in other.programs.items():
            mine = self.programs.setdefault(name, Program(name, 0, 0))
            mine.run_ns += p.run_ns
            mine.runs += p.runs
        return self

    def bpf_ns(self):
        return sum(p.run_ns for p in self.programs.values())


def snapshot(pid):
    return Snapshot(time.perf_counter(), *cpu_times(pid), oncpu_seconds(pid), bpf_programs(pid))


def window(a, b):
    programs = {}
    for prog_id, p in b.programs.items():
        before = a.programs.get(prog_id, Program(p.name, 0, 0))
        mine = programs.setdefault(p.name, Program(p.name, 0, 0))
        mine.run_ns += p.run_ns - before.run_ns
        mine.runs += p.runs - before.runs
    return Window(b.at - a.at, b.user_s - a.user_s, b.sys_s - a.sys_s,
                  b.oncpu_s - a.oncpu_s, programs)


def cpu_times(pid):
    """User and system seconds of the whole process (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of stat(5); the split starts at field 3.
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def oncpu_seconds(pid):
    """On-CPU time of the process's live threads from the scheduler (nanosecond precision,
    where stat's ticks are 10 ms)."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that just exited
    return total / 1e9


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        m = re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) if m else 0


def bpf_programs(pid):
    """The eBPF programs the process holds open: ID -> name, run time and run count."""
    programs = {}
    for path in glob.glob(f"/proc/{pid}/fdinfo/*"):
        try:
            with open(path) as f:
                text = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if "prog_type:" not in text:
            continue
        info = dict(re.findall(r"^(\w+):\s+(\S+)", text, re.M))
        prog_id = int(info["prog_id"])
        programs[prog_id] = Program(program_name(info.get("prog_tag", "")),
                                    int(info.get("run_time_ns", 0)), int(info.get("run_cnt", 0)))
    return programs


_names = {}


def program_name(tag):
    """A program's name from its kallsyms symbol `bpf_prog_<tag>_<name>` (no bpftool needed).
    The tag is a hash of the code: programs with identical code share it, and are named
    together (their runs then add up under that name)."""
    if tag not in _names:
        with open("/proc/kallsyms") as f:
            for m in re.finditer(r" bpf_prog_([0-9a-f]{16})_(\S+)", f.read()):
                _names.setdefault(m.group(1), set()).add(m.group(2))
    return " + ".join(sorted(_names.get(tag, {f"tag {tag}"})))


class BpfStats:
    """Turns on the kernel's per-program run-time accounting for a `with` block and restores
    the previous setting. It adds two clock reads to every program run, so the timed rounds
    run without it."""

    def __enter__(self):
        try:
            with open(BPF_STATS) as f:
                self.before = f.read().strip()
            self._write("1")
        except OSError as e:
            raise BenchError(f"cannot enable {BPF_STATS} ({e}): run as root") from e
        return self

    def __exit__(self, *exc):
        self._write(self.before)

    @staticmethod
    def _write(value):
        with open(BPF_STATS, "w") as f:
            f.write(value)


def machine_cpu():
    """(CPU seconds the whole machine spent busy, CPU seconds this harness and every child
    it reaped spent). Their difference over a run is what other processes used."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    # user, nice, system, irq, softirq (idle, iowait and steal are not work done here).
    busy = sum(ticks[i] for i in (0, 1, 2, 5, 6)) / CLK_TCK
    ours = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        ours += usage.ru_utime + usage.ru_stime
    return busy, ours


def spread(values):
    """(median, min, max) of a non-empty list."""
    return statistics.median(values), min(values), max(values)
