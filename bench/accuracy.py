"""Accuracy: the workload's `busy` mode splits each thread's measured CPU time 60/30/10
between burn_heavy, burn_medium and burn_light; each profiler's attribution error is the
sum of the absolute differences between the shares it reports and those."""

import math
import time
from dataclasses import dataclass
from typing import Dict, List

from common import CPUS, log, spawn, stop_all
from profilers import Session

TRUE_SHARES = {"burn_heavy": 0.6, "burn_medium": 0.3, "burn_light": 0.1, "other": 0.0}


@dataclass
class Attribution:
    config: object
    samples: int
    shares: Dict[str, float]

    @property
    def error(self):
        """Sum over the functions (and "other", whose true share is 0) of |share - true|."""
        return sum(abs(self.shares[k] - TRUE_SHARES[k]) for k in TRUE_SHARES)

    @property
    def expected_noise(self):
        """Mean error that sampling alone gives with this many samples: sum of the mean
        absolute deviations of binomial shares, sqrt(2/pi) * sqrt(p(1-p)/n)."""
        if not self.samples:
            return float("nan")
        return sum(math.sqrt(2 / math.pi) * math.sqrt(p * (1 - p) / self.samples)
                   for p in TRUE_SHARES.values())


def bucket(frames):
    for name in TRUE_SHARES:
        if name in frames:
            return name
    return "other"


def attribution(config, stacks, pid):
    counts = dict.fromkeys(TRUE_SHARES, 0)
    unattributed = []
    for p, frames, n in stacks:
        if p == pid:
            counts[bucket(frames)] += n
            if bucket(frames) == "other":
                unattributed.append((n, frames))
    # Samples of the workload in none of its functions are errors: show where they went.
    for n, frames in sorted(unattributed, key=lambda u: -u[0])[:5]:
        log(f"accuracy: {config.label}: {n} samples outside the burn functions: "
            + ";".join(frames)[:400])
    total = sum(counts.values())
    shares = {k: (v / total if total else 0.0) for k, v in counts.items()}
    return Attribution(config, total, shares)


def run(configs, tools, exe, seconds, workdir) -> List[Attribution]:
    """Profiles one `busy` workload (a thread per CPU) with every profiler at once: all of
    them see the same run, and the sampling interrupts of one land in each function in
    proportion to its share, so they do not bias the others."""
    workload = spawn([exe, "busy", str(CPUS)])
    sessions = []
    try:
        sessions = [Session(c, tools, workdir, f"accuracy-{c.key}") for c in configs]
        for s in sessions:
            s.wait_ready()
        sessions[-1].settle()  # the others have been ready at least as long
        log(f"accuracy: {len(sessions)} profilers sampling for {seconds:g} s")
        time.sleep(seconds)
        # Stopped while the workload still runs: bpftrace names user frames at exit, from
        # the live process.
        for s in sessions:
            s.interrupt()
        for s in sessions:
            s.finish()
    finally:
        stop_all([workload])
    return [attribution(s.config, s.stacks(tools, {workload.pid}), workload.pid) for s in sessions]
