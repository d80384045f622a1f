"""Accuracy: workloads that split each thread's measured CPU time 60/30/10 between a heavy,
a medium and a light function; each profiler's attribution error is the sum of the absolute
differences between the shares it reports and those.

Three builds of the split: the C workload with frame pointers (every profiler can walk it),
the same C program built as most software is (`-O2 -fomit-frame-pointer`, only `.eh_frame`
to unwind by), and the Rust workload as a release build (no frame pointers, one leaf shared
by the three functions, so that only the callers tell them apart). Without frame pointers a
frame-pointer walk still gets the leaf right and loses the callers: there a sample counts
for a function only when its whole caller chain is there (see `chained`)."""

import math
import re
import time
from dataclasses import dataclass
from typing import Callable, List, Tuple

from common import CPUS, log, spawn, stop_all
from profilers import Session

SHARES = (0.6, 0.3, 0.1)
OTHER = "other"
# The outermost frame of a thread whose stack was walked to its end: the main thread's
# `_start`, or the `clone3` (`clone` before glibc 2.34) every other thread starts in.
ENTRIES = {"_start", "clone3", "__clone3", "clone", "__clone"}


@dataclass(frozen=True)
class Split:
    """One workload of the accuracy phase."""
    key: str
    title: str
    description: str
    # (program, arguments) of each process to start; the samples of all of them count.
    processes: Callable[[dict], List[List[str]]]
    functions: Tuple[str, str, str]
    # The loop that calls the three functions.
    caller: str
    # Whether a sample counts for a function anywhere on its stack (frame-pointer build), or
    # only through the whole chain: called by `caller`, on a stack whose outermost frame is
    # the thread's entry.
    anywhere: bool
    configs: Tuple[str, ...]

    @property
    def true_shares(self):
        return {**dict(zip(self.functions, SHARES)), OTHER: 0.0}


SPLITS = [
    Split("fp", "Frame-pointer build",
          f"The C workload (`busy {CPUS}`, built with frame pointers): {CPUS} threads, each "
          "splitting its measured thread CPU time 60/30/10 between burn_heavy, burn_medium "
          "and burn_light. A sample belongs to a function when the function is anywhere on "
          "its stack",
          lambda exes: [[exes["fp"], "busy", str(CPUS)]],
          ("burn_heavy", "burn_medium", "burn_light"), "cpu_split", True,
          ("ember-99-cpu", "perf-99", "bpftrace-99")),
    Split("nofp", "C without frame pointers",
          f"The same C program built `-O2 -fomit-frame-pointer` (`busy {CPUS}`). A sample "
          "belongs to a function only when the function is called by `cpu_split` and the "
          "stack ends in the thread's entry (`_start` for the main thread, `clone3` for the "
          "others): a frame-pointer walk names the leaf right but not its callers",
          lambda exes: [[exes["nofp"], "busy", str(CPUS)]],
          ("burn_heavy", "burn_medium", "burn_light"), "cpu_split", False,
          ("ember-99-cpu", "ember-99-cpu-fp", "perf-99-dwarf")),
    Split("rust", "Rust release build",
          f"`tests/workloads/workload.rs` built as a release build (`-C opt-level=3`, no frame "
          f"pointers), {CPUS} processes of `cpu-split`, each a thread burning in "
          "rust_spin, called by rust_burn_heavy, rust_burn_medium and rust_burn_light "
          "(60/30/10). A sample belongs to a function only when the function is called by "
          "`rust_cpu_split` and the stack ends in `clone3`: the leaf is the same for all three",
          lambda exes: [[exes["rust"], "cpu-split"] for _ in range(CPUS)],
          ("rust_burn_heavy", "rust_burn_medium", "rust_burn_light"), "rust_cpu_split", False,
          ("ember-99-cpu", "ember-99-cpu-fp", "perf-99-dwarf")),
]

_HASH = re.compile(r"::h[0-9a-f]{16}$")


def plain(frame):
    """A frame's function name without what profilers add around it: perf's ` (inlined)`,
    a Rust path (`workload::`) and legacy mangling hash, a C++ class."""
    name = frame.removesuffix(" (inlined)")
    name = _HASH.sub("", name)
    # The last path component, outside any generic arguments (`<a::B>::new::thread_start`).
    depth, cut = 0, 0
    for i, c in enumerate(name):
        if c in "<(":
            depth += 1
        elif c in ">)":
            depth -= 1
        elif depth == 0 and name.startswith("::", i):
            cut = i + 2
    return name[cut:]


@dataclass
class Attribution:
    config: object
    split: Split
    samples: int
    shares: dict
    # Samples whose stack has a whole chain: the function, its caller loop, the entry.
    complete: int

    @property
    def error(self):
        """Sum over the functions (and "other", whose true share is 0) of |share - true|."""
        true = self.split.true_shares
        return sum(abs(self.shares[k] - true[k]) for k in true)

    @property
    def expected_noise(self):
        """Mean error that sampling alone gives with this many samples: sum of the mean
        absolute deviations of binomial shares, sqrt(2/pi) * sqrt(p(1-p)/n)."""
        if not self.samples:
            return float("nan")
        return sum(math.sqrt(2 / math.pi) * math.sqrt(p * (1 - p) / self.samples)
                   for p in self.split.true_shares.values())

    @property
    def complete_pct(self):
        return 100 * self.complete / self.samples if self.samples else float("nan")


def chained(names, split):
    """The function of `split` that `names` (root first) reaches through the whole chain:
    called by the split loop, on a stack whose outermost frame is the thread's entry."""
    if not names or names[0] not in ENTRIES:
        return None
    for i, name in enumerate(names[1:], 1):
        if name in split.functions and names[i - 1] == split.caller:
            return name
    return None


def bucket(names, split):
    if split.anywhere:
        return next((f for f in split.functions if f in names), OTHER)
    return chained(names, split) or OTHER


def attribution(config, split, stacks, pids):
    counts = dict.fromkeys(split.true_shares, 0)
    complete, unattributed = 0, []
    for p, frames, n in stacks:
        if p not in pids:
            continue
        names = [plain(f) for f in frames]
        where = bucket(names, split)
        counts[where] += n
        if chained(names, split):
            complete += n
        if where == OTHER:
            unattributed.append((n, frames))
    # Samples of the workload in none of its functions are errors: show where they went.
    for n, frames in sorted(unattributed, key=lambda u: -u[0])[:3]:
        log(f"accuracy: {split.key}: {config.label}: {n} samples outside the split: "
            + ";".join(frames)[:300])
    total = sum(counts.values())
    shares = {k: (v / total if total else 0.0) for k, v in counts.items()}
    return Attribution(config, split, total, shares, complete)


def run_split(split, configs, tools, exes, seconds, workdir) -> List[Attribution]:
    """Profiles one workload with its profilers at once: all of them see the same run, and
    the sampling interrupts of one land in each function in proportion to its share, so they
    do not bias the others."""
    procs = [spawn(argv) for argv in split.processes(exes)]
    pids = {p.pid for p in procs}
    sessions = []
    try:
        sessions = [Session(c, tools, workdir, f"accuracy-{split.key}-{c.key}") for c in configs]
        for s in sessions:
            s.wait_ready()
        sessions[-1].settle()  # the others have been ready at least as long
        log(f"accuracy: {split.title}: {len(sessions)} profilers sampling for {seconds:g} s")
        time.sleep(seconds)
        # Stopped while the workload still runs: bpftrace names user frames at exit, from
        # the live process.
        for s in sessions:
            s.interrupt()
        for s in sessions:
            s.finish()
    finally:
        stop_all(procs)
    out = [attribution(s.config, split, s.stacks(tools, pids), pids) for s in sessions]
    for a in out:
        log(f"accuracy: {split.key}: {a.config.label}: {a.samples} samples, error "
            f"{100 * a.error:.1f} points, complete chains {a.complete_pct:.0f}%")
    return out


def run(configs_by_key, tools, exes, seconds, workdir) -> List[Attribution]:
    out = []
    for split in SPLITS:
        if split.key in exes:
            out += run_split(split, [configs_by_key[k] for k in split.configs], tools, exes,
                             seconds, workdir)
    return out
