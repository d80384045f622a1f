"""Probe points (`--probe`) and `--tcp`: what one hit costs the probed thread, per kind of
probe (the wall time of a fixed loop with and without the probe, in the same invocation),
of which the eBPF program's own run time (bpf_stats, a separate run); and what `--tcp`
adds to a connection-heavy loopback workload."""

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import List

import measure
from common import BUILD_DIR, EMBERPROF, ROOT, BenchError, log, spawn, stop_all
from workloads import compile_with

SOURCE = os.path.join(ROOT, "tests", "workloads", "probe_work.c")
# Built as most software is, like the e2e tests' copy (tests/support/build.rs).
CFLAGS = ["-O2", "-g", "-fomit-frame-pointer", "-fno-optimize-sibling-calls", "-pthread",
          "-Wall"]
TCP_CONNECTIONS = 3000
TCP_SCRIPT = r"""
import socket, sys, threading, time
n = int(sys.argv[1])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(1024)
port = srv.getsockname()[1]
def serve():
    while True:
        c, _ = srv.accept()
        c.close()
threading.Thread(target=serve, daemon=True).start()
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
t0 = time.monotonic()
for _ in range(n):
    c = socket.create_connection(("127.0.0.1", port))
    c.close()
print(f"{time.monotonic() - t0:.6f}", flush=True)
"""


@dataclass
class HitCost:
    case: str
    hits: int
    per_hit_us: List[float]    # one per round
    ebpf_ns: float             # the probe's programs' run time per hit (0: not measured)


@dataclass
class TcpCost:
    connections: int
    alone_s: List[float]
    tcp_s: List[float]
    ebpf_ns: dict              # program -> ns per run


@dataclass
class ProbeResult:
    costs: List[HitCost]
    tcp: TcpCost


def build():
    return compile_with(["cc", *CFLAGS], os.path.join(BUILD_DIR, "epprobework"), SOURCE)


class Paused:
    """A probe_work run waiting for "go"; `timed` lets it work and measures until "done"."""

    def __init__(self, exe, mode, n):
        self.proc = spawn([exe, mode, str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def timed(self):
        t0 = time.monotonic()
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().decode().strip()
        seconds = time.monotonic() - t0
        if line != "done":
            raise BenchError(f"probe_work printed {line!r}")
        stop_all([self.proc])
        return seconds


class Recording:
    """`emberprof record ARGS` until stopped, started once its probes are attached."""

    def __init__(self, args, workdir):
        out = os.path.join(workdir, f"probe-bench-{len(os.listdir(workdir))}.txt")
        env = dict(os.environ, EMBERPROF_LOG="info")
        self.proc = spawn([EMBERPROF, "record", *args, "--duration", "120", "--output", out],
                          stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
        log_text = ""
        while True:
            line = self.proc.stderr.readline().decode()
            log_text += line
            if not line:
                raise BenchError(f"emberprof record {args} exited:\n{log_text}")
            if "recording" in line:
                return

    def programs(self):
        # Programs load as probes attach: names are read again, not from an older cache.
        measure._names.clear()
        return measure.bpf_programs(self.proc.pid)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.communicate()
        if self.proc.returncode != 0:
            raise BenchError(f"emberprof record exited with {self.proc.returncode}")


def hit_cost(case, exe, mode, n, probe, rounds, workdir, programs):
    """Per hit: (loop with the probe - loop alone) / hits, each round alone then probed."""
    per_hit = []
    for _ in range(rounds):
        alone = Paused(exe, mode, n).timed()
        w = Paused(exe, mode, n)
        rec = Recording(["--probe", probe, "--probe-max-rate", "0", "--pid",
                         str(w.proc.pid)], workdir)
        probed = w.timed()
        rec.stop()
        per_hit.append((probed - alone) / n * 1e6)
    with measure.BpfStats():
        w = Paused(exe, mode, n)
        rec = Recording(["--probe", probe, "--probe-max-rate", "0", "--pid",
                         str(w.proc.pid)], workdir)
        w.timed()
        ran = rec.programs()
        rec.stop()
    run_ns = sum(p.run_ns for p in ran.values() if any(x in p.name for x in programs))
    cost = HitCost(case, n, per_hit, run_ns / n)
    log(f"probes: {case}: {measure.spread(per_hit)[0]:.2f} us per hit, eBPF {cost.ebpf_ns:.0f} ns")
    return cost


def tcp_run(workdir, args):
    proc = spawn(["python3", "-c", TCP_SCRIPT, str(TCP_CONNECTIONS)], stdin=subprocess.PIPE,
                 stdout=subprocess.PIPE)
    if proc.stdout.readline().decode().strip() != "ready":
        raise BenchError("the TCP workload did not start")
    rec = Recording(args, workdir) if args else None
    proc.stdin.write(b"go\n")
    proc.stdin.flush()
    seconds = float(proc.stdout.readline().decode())
    ran = rec.programs() if rec else {}
    if rec:
        rec.stop()
    stop_all([proc])
    return seconds, ran


def tcp_cost(rounds, workdir):
    alone, with_tcp = [], []
    for _ in range(rounds):
        alone.append(tcp_run(workdir, None)[0])
        with_tcp.append(tcp_run(workdir, ["--tcp"])[0])
    with measure.BpfStats():
        _, ran = tcp_run(workdir, ["--tcp"])
    ebpf = {p.name: p.run_ns / p.runs for p in ran.values()
            if p.name.startswith("ep_tcp") and p.runs}
    log(f"probes: --tcp: {measure.spread(with_tcp)[0] / measure.spread(alone)[0]:.3f}x "
        f"of {TCP_CONNECTIONS} connections alone")
    return TcpCost(TCP_CONNECTIONS, alone, with_tcp, ebpf)


def run(workdir, quick) -> ProbeResult:
    exe = build()
    rounds = 1 if quick else 3
    scale = 10 if quick else 1
    costs = [
        hit_cost("function (uprobe + uretprobe)", exe, "hot", 100_000 // scale,
                 f"uprobe:{exe}:hot_call", rounds, workdir, ["ep_probe_entry", "ep_probe_return"]),
        hit_cost("function with +stacks", exe, "hot", 100_000 // scale,
                 f"uprobe:{exe}:hot_call+stacks", rounds, workdir,
                 ["ep_probe_entry", "ep_probe_return"]),
        hit_cost("USDT probe (count and stacks)", exe, "usdt", 1_000_000 // scale,
                 f"usdt:{exe}:emberprof_test:tick", rounds, workdir, ["ep_probe_usdt"]),
        hit_cost("tracepoint syscalls:sys_enter_getppid (count and stacks)", exe, "tp",
                 1_000_000 // scale, "tracepoint:syscalls:sys_enter_getppid", rounds, workdir,
                 ["ep_probe_tp"]),
    ]
    return ProbeResult(costs, tcp_cost(rounds, workdir))
