"""The workload program (tests/workloads/workload.c) and the fixed-work runs that the
overhead benchmark times."""

import os
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, List

from common import BUILD_DIR, CPUS, ROOT, BenchError, reaped, spawn

SOURCE = os.path.join(ROOT, "tests", "workloads", "workload.c")
# The e2e tests' flags (tests/support/build.rs): frame pointers everywhere and no sibling
# calls, so that every profiler can walk every stack of the workload.
CFLAGS = ["-O2", "-g", "-fno-omit-frame-pointer", "-mno-omit-leaf-frame-pointer",
          "-fno-optimize-sibling-calls", "-pthread", "-Wall"]


def build():
    """Compiles the workload into target/bench (again only when the source changed)."""
    exe = os.path.join(BUILD_DIR, "epworkload")
    if os.path.exists(exe) and os.path.getmtime(exe) >= os.path.getmtime(SOURCE):
        return exe
    os.makedirs(BUILD_DIR, exist_ok=True)
    try:
        subprocess.run(["cc", *CFLAGS, "-o", exe, SOURCE], check=True)
    except FileNotFoundError as e:
        raise BenchError("cc not found: run scripts/deps.sh") from e
    except subprocess.CalledProcessError as e:
        raise BenchError(f"building {SOURCE} failed ({e})") from e
    return exe


@dataclass
class Workload:
    """A fixed amount of work: `units` of it, the same in every run of one invocation."""
    key: str
    label: str
    describe: Callable[[int], str]
    argv_for: Callable[[int], List[str]]
    # Small enough to run well under a second on any machine; calibration scales it up.
    base_units: int
    units: int = 0

    def argv(self, fraction=1.0):
        return self.argv_for(max(1, int(self.units * fraction)))


def overhead_workloads(exe):
    pairs = CPUS
    return [
        Workload(
            "cpu", "CPU-bound",
            lambda n: f"{CPUS} threads x {n:,} rounds of burn_heavy/medium/light (fixed iteration counts)",
            lambda n: [exe, "fixed", str(n), str(CPUS)],
            base_units=50,
        ),
        # Pinned: unpinned, whether the two ends of a pair share a CPU changes its speed 2x
        # from run to run, which drowns the effect being measured.
        Workload(
            "sched", "scheduler-heavy",
            lambda n: f"{pairs} thread pairs x {n:,} pipe round trips, pinned to CPU 0 "
                      "(every pass a wakeup and a context switch)",
            lambda n: ["taskset", "-c", "0", exe, "pingpong", str(pairs), str(n)],
            base_units=20000,
        ),
        Workload(
            "syscalls", "syscall-heavy",
            lambda n: f"{CPUS} threads x {n:,} write(2) calls of one byte to /dev/null",
            lambda n: [exe, "writes", str(n), str(CPUS)],
            base_units=200000,
        ),
    ]


def run_timed(argv):
    """Runs one workload to completion; returns (wall seconds, its PID)."""
    start = time.perf_counter()
    proc = spawn(argv)
    _, status, _ = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    reaped(proc, code)
    if code != 0:
        raise BenchError(f"workload `{' '.join(argv)}` exited with status {code}")
    return elapsed, proc.pid


def two_digits(x):
    """Rounds to two significant digits, so that the chosen work reads as a round number."""
    magnitude = 10 ** max(0, len(str(int(x))) - 2)
    return max(1, round(x / magnitude) * magnitude)


def calibrate(workloads, seconds):
    """Fixes each workload's units so that it runs about `seconds` alone on this machine:
    a first guess from the small base size, then a run at a quarter of the target, because
    start-up and short-run effects make the small size a poor predictor."""
    for w in workloads:
        run_timed(w.argv_for(w.base_units))  # page cache, CPU caches
        units = w.base_units
        for share in (0.25, 1.0):
            elapsed, _ = run_timed(w.argv_for(units))
            units = max(w.base_units, units * seconds * share / elapsed)
        w.units = two_digits(units)
