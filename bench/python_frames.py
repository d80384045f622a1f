"""Python frames: what the kernel side costs per CPU sample of a CPython process against a
native one (eBPF run time of the sampler, bpf_stats), and the agent's CPU with 20 Python
processes profiled, against the same processes with --no-python, in the same invocation."""

import glob
import json
import os
import subprocess
import time
from dataclasses import dataclass
from typing import List, Optional

import measure
from common import EMBERPROF, ROOT, BenchError, log, spawn, stop_all
from scale import free_port

SCRIPT = os.path.join(ROOT, "tests", "workloads", "python_work.py")
SAMPLER = "ep_cpu_sample"
COST_HZ = 999
COST_SECONDS = 4
AGENT_PROCESSES = 20
AGENT_SECONDS = 20
AGENT_HZ = 99
# The agent's own modes, spread over the 20 processes: distinct stacks, C calls, threads.
AGENT_MODES = ("split", "deep", "native", "pool")


@dataclass
class SampleCost:
    case: str
    runs: int
    ns_per_sample: float


@dataclass
class AgentCpu:
    case: str
    cpu_pct: float
    seconds: float


@dataclass
class PythonResult:
    python: str
    costs: List[SampleCost]
    agent: List[AgentCpu]


def pyenv_python(minor=12) -> Optional[str]:
    root = os.environ.get("PYENV_ROOT") or os.path.join(os.path.expanduser("~"), ".pyenv")
    found = sorted(glob.glob(os.path.join(root, "versions", f"3.{minor}.*", "bin",
                                          f"python3.{minor}")))
    return found[-1] if found else None


def started(argv):
    """A workload running past its start (the Python ones print "ready")."""
    if not argv[0].startswith(os.path.dirname(SCRIPT)) and SCRIPT not in argv:
        return spawn(argv, stdin=subprocess.DEVNULL)
    proc = spawn(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    line = proc.stdout.readline().decode().strip() if proc.stdout else ""
    if line and line != "ready":
        raise BenchError(f"{argv}: printed {line!r} instead of ready")
    return proc


def sample_cost(case, argv, extra, workdir):
    """eBPF run time of the CPU sampler per sample of the workload while `emberprof record`
    samples only it: the sampler's whole run time (read until the recording ends) over the
    samples the kernel counted for the workload. Runs for other tasks (another CPU's idle
    ticks, cut short by the PID filter) add a few tens of ns to every case alike."""
    work = started(argv)
    try:
        n = len(os.listdir(workdir))
        out = os.path.join(workdir, f"python-cost-{n}.folded")
        summary = out + ".json"
        rec = spawn([EMBERPROF, "record", "--pid", str(work.pid), "--frequency", str(COST_HZ),
                     "--duration", str(COST_SECONDS), "--format", "folded", "--output", out,
                     "--summary-json", summary, *extra])
        last = {}
        while rec.poll() is None:
            now = measure.bpf_programs(rec.pid)
            if now:
                last = now
            time.sleep(0.02)
        if rec.returncode != 0:
            raise BenchError(f"emberprof record failed on {case}")
        with open(summary) as f:
            profiles = json.load(f)["profiles"]
        samples = next(p["kernel_counted"] for p in profiles if p["kind"] == "cpu")
    finally:
        stop_all([work])
    ns = sum(p.run_ns for p in last.values() if p.name == SAMPLER)
    if samples == 0 or ns == 0:
        raise BenchError(f"{SAMPLER} never ran on {case} (bpf_stats off?)")
    log(f"python: {case}: {ns / samples:.0f} ns per sample ({samples} samples)")
    return SampleCost(case, samples, ns / samples)


def agent_cpu(case, python, extra, workdir):
    """CPU share of one CPU the agent used over AGENT_SECONDS with 20 Python processes."""
    procs = [started([python, SCRIPT, AGENT_MODES[i % len(AGENT_MODES)]])
             for i in range(AGENT_PROCESSES)]
    try:
        pprof_dir = os.path.join(workdir, f"python-agent-{len(os.listdir(workdir))}")
        os.makedirs(pprof_dir)
        err_path = pprof_dir + ".err"
        with open(err_path, "w") as err:
            agent = spawn([EMBERPROF, "agent", "--frequency", str(AGENT_HZ), "--interval", "5s",
                           "--pprof-dir", pprof_dir, "--http-listen",
                           f"127.0.0.1:{free_port()}",
                           "--pid", ",".join(str(p.pid) for p in procs), *extra],
                          stdout=err, stderr=err)
        try:
            time.sleep(5)  # first captures, tables and names
            if agent.poll() is not None:
                raise BenchError(f"emberprof agent exited: see {err_path}")
            a = measure.cpu_times(agent.pid)
            t0 = time.monotonic()
            time.sleep(AGENT_SECONDS)
            b = measure.cpu_times(agent.pid)
            seconds = time.monotonic() - t0
        finally:
            agent.terminate()
            agent.wait()
    finally:
        stop_all(procs)
    pct = 100.0 * (b[0] + b[1] - a[0] - a[1]) / seconds
    log(f"python: agent, {case}: {pct:.2f}% of a CPU")
    return AgentCpu(case, pct, seconds)


def run(native_exe, workdir) -> PythonResult:
    python = pyenv_python()
    if not python:
        raise BenchError("pyenv's CPython 3.12 is missing (the machine's contract)")
    name = "CPython " + os.path.basename(os.path.dirname(os.path.dirname(python)))
    with measure.BpfStats():
        costs = [
            sample_cost("native C (-O2, no frame pointers), cpu-split", [native_exe, "cpu-split"],
                        [], workdir),
            sample_cost(f"{name}, split (6 Python frames)", [python, SCRIPT, "split"], [],
                        workdir),
            sample_cost(f"{name}, split, --no-python", [python, SCRIPT, "split"],
                        ["--no-python"], workdir),
            sample_cost(f"{name}, deep (33 Python frames)", [python, SCRIPT, "deep"], [],
                        workdir),
            sample_cost(f"{name}, deep, --no-python", [python, SCRIPT, "deep"],
                        ["--no-python"], workdir),
        ]
    agent = [agent_cpu("Python frames", python, [], workdir),
             agent_cpu("--no-python", python, ["--no-python"], workdir)]
    return PythonResult(name, costs, agent)
