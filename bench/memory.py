"""Memory: emberprof's RSS on the whole machine while a large Rust binary with DWARF is busy,
and what keeping the symbolizer's caches within their bound costs in CPU.

The large binary is emberprof's own release build (about 140 MB, `debug = 1`): one copy
records the machine at 999 Hz profiling itself, and a loop runs `emberprof config default`
over and over, so that samples land all over its code. The measured emberprof exports to a
local OTLP collector (`tests/support/examples/collector.rs`, answering OK and keeping
nothing), once with the default symbol cache bound and once with a larger one."""

import json
import os
import re
import socket
import statistics
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import List

from common import EMBERPROF, ROOT, BenchError, log, spawn, stop_all
from profilers import tail

COLLECTOR = os.path.join(ROOT, "target", "release", "examples", "collector")
DEFAULT_BOUND_MIB = 48
LARGER_BOUND_MIB = 128
SAMPLE_S = 0.5


@dataclass
class MemoryResult:
    mode: str                 # "record" or "agent"
    bound_mib: int
    seconds: float
    interval_s: float         # the agent's export interval; record's is its 1 s drain
    steady_mib: float         # median RSS after the warm-up
    high_mib: float           # highest RSS sampled after the warm-up
    peak_mib: float           # VmHWM: the highest at any moment, parses included
    parts_mib: dict = field(default_factory=dict)   # the symbolizer's cache by part
    files_parsed: int = 0
    reparses: int = 0
    parse_s: float = 0.0

    @property
    def parse_pct(self):
        """CPU spent parsing (first parses and re-parses), % of one CPU over the run."""
        return 100 * self.parse_s / self.seconds if self.seconds else 0.0

    @property
    def reparses_per_interval(self):
        """Files parsed again per interval (the symbolizer runs at every 1 s drain)."""
        return self.reparses * self.interval_s / self.seconds if self.seconds else 0.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            m = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(m.group(1)) if m else None


class BusyLargeBinary:
    """emberprof's release build kept busy: recording itself, and run again and again."""

    def __init__(self, workdir, seconds):
        self.stop = threading.Event()
        self.recorder = spawn([EMBERPROF, "record", "--duration", f"{seconds:.0f}s",
                               "--frequency", "999", "--profile-self", "--off-cpu",
                               "-o", os.path.join(workdir, "busy.folded")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.loop = threading.Thread(target=self._runs, daemon=True)
        self.loop.start()

    def _runs(self):
        while not self.stop.is_set():
            subprocess.run([EMBERPROF, "config", "default"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)

    def end(self):
        self.stop.set()
        self.loop.join()
        stop_all([self.recorder])


def sample_rss(proc, seconds, warmup):
    """VmRSS every SAMPLE_S seconds after the warm-up, until `seconds` or the exit."""
    start, samples = time.monotonic(), []
    while time.monotonic() - start < seconds and proc.poll() is None:
        time.sleep(SAMPLE_S)
        kib = status_kib(proc.pid, "VmRSS")
        if kib and time.monotonic() - start >= warmup:
            samples.append(kib / 1024)
    return samples


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()

    def value(pattern):
        m = re.search(rf"^{pattern} ([\d.e+]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0
    parts = {p: value(f'emberprof_symbolizer_cache_bytes{{part="{p}"}}') / 2**20
             for p in ("parsed", "mapped", "locations", "kernel")}
    return (parts, int(value('emberprof_symbolizer_files_parsed_total{when="first"}')
                       + value('emberprof_symbolizer_files_parsed_total{when="again"}')),
            int(value('emberprof_symbolizer_files_parsed_total{when="again"}')),
            value("emberprof_symbolizer_parse_nanoseconds_total") / 1e9)


def run_agent(bound, endpoint, workdir, seconds, warmup, interval_s):
    port = free_port()
    err_path = os.path.join(workdir, f"agent-{bound}.err")
    argv = [EMBERPROF, "agent", "--interval", f"{interval_s}s", "--otlp-endpoint", endpoint,
            "--http-listen", f"127.0.0.1:{port}", "--symbol-cache-mib", str(bound)]
    with open(err_path, "w") as err:
        agent = spawn(argv, stdout=err, stderr=err, env=dict(os.environ, NO_COLOR="1"))
    try:
        rss = sample_rss(agent, seconds, warmup)
        if agent.poll() is not None:
            raise BenchError(f"emberprof agent exited early:\n{tail(err_path)}")
        parts, parsed, reparses, parse_s = metrics(port)
        peak = (status_kib(agent.pid, "VmHWM") or 0) / 1024
    finally:
        agent.terminate()
        agent.wait()
    return MemoryResult("agent", bound, seconds, interval_s, statistics.median(rss), max(rss), peak, parts, parsed, reparses,
                        parse_s)


def run_record(bound, endpoint, workdir, seconds, warmup):
    summary = os.path.join(workdir, f"record-{bound}.json")
    err_path = os.path.join(workdir, f"record-{bound}.err")
    argv = [EMBERPROF, "record", "--duration", f"{seconds:.0f}s", "--otlp-endpoint", endpoint,
            "--symbol-cache-mib", str(bound), "--summary-json", summary,
            "-o", os.path.join(workdir, f"record-{bound}.pb.gz")]
    with open(err_path, "w") as err:
        rec = spawn(argv, stdout=err, stderr=err, env=dict(os.environ, NO_COLOR="1"))
    rss = sample_rss(rec, seconds + 30, warmup)
    if rec.wait() != 0:
        raise BenchError(f"emberprof record failed:\n{tail(err_path)}")
    with open(summary) as f:
        mem = json.load(f)["memory"]
    s = mem["symbolizer"]
    parts = {"parsed": s["parsed_heap_bytes"], "mapped": s["mapped_resident_bytes"],
             "locations": s["location_bytes"], "kernel": s["kernel_bytes"]}
    return MemoryResult("record", bound, seconds, 1.0, statistics.median(rss), max(rss), mem["peak_rss_bytes"] / 2**20,
                        {k: v / 2**20 for k, v in parts.items()}, s["files_parsed"],
                        s["reparses"], s["parse_seconds"])


def run(workdir, quick):
    """[MemoryResult] for record and agent, each with the default and a larger bound."""
    if not os.path.exists(COLLECTOR):
        raise BenchError(f"{COLLECTOR} is missing: `make bench` builds it")
    record_s, agent_s, warmup, interval_s = (8, 20, 5, 5) if quick else (20, 45, 10, 5)
    port = free_port()
    collector = spawn([COLLECTOR, str(port)], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    busy = BusyLargeBinary(workdir, 2 * (record_s + agent_s) + 60)
    out = []
    try:
        time.sleep(2)
        for bound in (DEFAULT_BOUND_MIB, LARGER_BOUND_MIB):
            r = run_record(bound, endpoint, workdir, record_s, warmup)
            log(f"memory: record, {bound} MiB bound: steady {r.steady_mib:.0f} MiB, "
                f"peak {r.peak_mib:.0f} MiB, {r.reparses} re-parses")
            out.append(r)
            a = run_agent(bound, endpoint, workdir, agent_s, warmup, interval_s)
            log(f"memory: agent, {bound} MiB bound: steady {a.steady_mib:.0f} MiB, "
                f"peak {a.peak_mib:.0f} MiB, {a.reparses} re-parses")
            out.append(a)
    finally:
        busy.end()
        stop_all([collector])
    return out
