"""The workload program (tests/workloads/workload.c) and the fixed-work runs that the
overhead benchmark times."""

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, List

from common import BUILD_DIR, CPUS, ROOT, BenchError, log, reaped, spawn

SOURCE = os.path.join(ROOT, "tests", "workloads", "workload.c")
RUST_SOURCE = os.path.join(ROOT, "tests", "workloads", "workload.rs")
# The e2e tests' flags (tests/support/build.rs): frame pointers everywhere and no sibling
# calls, so that every profiler can walk every stack of the workload.
CFLAGS = ["-O2", "-g", "-fno-omit-frame-pointer", "-mno-omit-leaf-frame-pointer",
          "-fno-optimize-sibling-calls", "-pthread", "-Wall"]
# The same program as most software is built (build.rs's no-frame-pointer variant).
NOFP_CFLAGS = ["-O2", "-g", "-fomit-frame-pointer", "-fno-optimize-sibling-calls", "-pthread",
               "-Wall"]
# A release build as build.rs makes it: optimised, no frame pointers (said explicitly).
RUSTFLAGS = ["--edition", "2021", "--crate-name", "workload", "--crate-type", "bin",
             "-C", "opt-level=3", "-C", "debuginfo=2", "-C", "force-frame-pointers=no"]


def fresh(exe, source):
    return os.path.exists(exe) and os.path.getmtime(exe) >= os.path.getmtime(source)


def compile_with(argv, exe, source):
    """Runs a compiler that writes `exe` from `source` (again only when the source changed)."""
    if fresh(exe, source):
        return exe
    os.makedirs(BUILD_DIR, exist_ok=True)
    try:
        subprocess.run([*argv, "-o", exe, source], check=True)
    except FileNotFoundError as e:
        raise BenchError(f"{argv[0]} not found: run scripts/deps.sh") from e
    except subprocess.CalledProcessError as e:
        raise BenchError(f"building {source} failed ({e})") from e
    return exe


def build():
    """Compiles the frame-pointer workload into target/bench."""
    return compile_with(["cc", *CFLAGS], os.path.join(BUILD_DIR, "epworkload"), SOURCE)


def build_all():
    """The accuracy phase's builds by key: `fp` (the one above), `nofp`, and `rust` when a
    Rust compiler is there (`make bench` runs cargo, so it is)."""
    exes = {"fp": build(),
            "nofp": compile_with(["cc", *NOFP_CFLAGS], os.path.join(BUILD_DIR, "epworkload-nofp"),
                                 SOURCE)}
    rustc = os.environ.get("RUSTC") or shutil.which("rustc")
    if rustc:
        exes["rust"] = compile_with([rustc, *RUSTFLAGS], os.path.join(BUILD_DIR, "epworkload-rust"),
                                    RUST_SOURCE)
    else:
        log("accuracy: no rustc: the Rust workload is left out")
    return exes


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
