"""The profilers compared, each run as a user would run it: started in the background over
the whole machine, stopped with SIGINT, its output read afterwards."""

import glob
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Tuple

import measure
from common import EMBERPROF, BenchError, reaped, spawn

# Stack aggregation in the kernel, like emberprof's; the PID is part of the key so that
# samples can be told apart by process (bpftrace keeps it for symbolizing anyway).
BPFTRACE_PROGRAM = "profile:hz:{hz} {{ @[pid, ustack, kstack] = count(); }}"
# After a profiler is ready: emberprof's first drain (at 1 s) reads kallsyms and symbol
# tables, start-up work that is not the steady-state cost being measured. Every profiler
# gets the same settling time.
SETTLE_S = 1.5
# How long a profiler may take to start, and to write its output after SIGINT.
READY_TIMEOUT_S = 60
EXIT_TIMEOUT_S = 180


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    tool: str
    frequency: int
    flags: Tuple[str, ...] = ()

    @property
    def cpu_only(self):
        """emberprof sampling CPU stacks and nothing else."""
        return self.tool == "emberprof" and "--off-cpu" not in self.flags \
            and "--histograms" not in self.flags


def standard_configs():
    """The configurations of the issue: emberprof at 19 and 99 Hz with growing feature sets,
    at 99 Hz also walking user stacks by frame pointers only (the others use the unwind
    tables where a file has them), perf and bpftrace at 99 Hz."""
    configs = []
    for hz in (19, 99):
        configs += [
            Config(f"ember-{hz}-cpu", f"emberprof {hz} Hz: CPU", "emberprof", hz, ("--cpu",)),
        ]
        if hz == 99:
            configs.append(Config("ember-99-cpu-fp", "emberprof 99 Hz: CPU, `--unwind fp`",
                                  "emberprof", hz, ("--cpu", "--unwind", "fp")))
        configs += [
            Config(f"ember-{hz}-off", f"emberprof {hz} Hz: CPU + off-CPU", "emberprof", hz,
                   ("--cpu", "--off-cpu")),
            Config(f"ember-{hz}-hist", f"emberprof {hz} Hz: CPU + off-CPU + histograms",
                   "emberprof", hz, ("--cpu", "--off-cpu", "--histograms")),
        ]
    configs += [
        Config("perf-99", "perf record -F 99 -a -g", "perf", 99),
        Config("bpftrace-99", "bpftrace profile:hz:99, stacks", "bpftrace", 99),
    ]
    return configs


EXTRA_CONFIGS = [
    Config("ember-99-sys", "emberprof 99 Hz: CPU + off-CPU + histograms + syscall latency",
           "emberprof", 99, ("--cpu", "--off-cpu", "--histograms", "--syscall-latency")),
]

# Only in the accuracy phase: perf unwinding copies of the user stacks (8 KiB per sample)
# after the recording, as it must for programs without frame pointers.
ACCURACY_CONFIGS = [
    Config("perf-99-dwarf", "perf record -F 99 -a --call-graph dwarf", "perf", 99,
           ("--call-graph", "dwarf")),
]


@dataclass
class Tools:
    perf: str
    bpftrace: str

    def versions(self):
        return {
            "emberprof": first_line([EMBERPROF, "--version"]),
            "perf": first_line([self.perf, "--version"]),
            "bpftrace": first_line([self.bpftrace, "--version"]),
        }


def first_line(argv):
    out = subprocess.run(argv, capture_output=True, text=True)
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def find_tools():
    if not os.access(EMBERPROF, os.X_OK):
        raise BenchError(f"{EMBERPROF} not built: run `make bench` (or cargo build --release)")
    bpftrace = shutil.which("bpftrace")
    if not bpftrace:
        raise BenchError("bpftrace not found: run scripts/bench-deps.sh")
    return Tools(perf=find_perf(), bpftrace=bpftrace)


def find_perf():
    """The real perf binary. Debian's /usr/bin/perf can be a wrapper that runs
    perf_<kernel version> and refuses a kernel newer than the linux-perf package: then the
    versioned binary is used directly."""
    candidates = [shutil.which("perf")]
    candidates += sorted(glob.glob("/usr/bin/perf_*"), reverse=True)
    candidates += sorted(glob.glob("/usr/lib/linux-tools*/perf"), reverse=True)
    candidates += sorted(glob.glob("/usr/lib/linux-tools/*/perf"), reverse=True)
    for c in filter(None, candidates):
        out = subprocess.run([c, "--version"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.startswith("perf version"):
            return c
    raise BenchError("perf not found (or only Debian's wrapper, which refuses this kernel): "
                     "run scripts/bench-deps.sh")


@dataclass
class Finished:
    """A profiler's own account after it exited."""
    user_s: float
    sys_s: float
    peak_rss_kib: int
    # perf only: CPU seconds of `perf script` turning perf.data into named stacks, which
    # emberprof and bpftrace do before they exit.
    symbolize_s: float = 0.0


def tail(path, lines=8):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).strip()
    except FileNotFoundError:
        return ""


class Session:
    """One running profiler."""

    def __init__(self, config, tools, workdir, tag):
        self.config = config
        base = os.path.join(workdir, tag)
        self.err_path = base + ".err"
        self.output = base + {"emberprof": ".folded", "perf": ".data", "bpftrace": ".txt"}[config.tool]
        argv, env, self.ready = self._command(tools)
        with open(self.err_path, "w") as err, open(base + ".out", "w") as out:
            self.proc = spawn(argv, stdout=out, stderr=err, env=env)

    def _command(self, tools):
        """(argv, environment, (file, text) that shows it is sampling, or None)."""
        c, env = self.config, dict(os.environ, NO_COLOR="1")
        if c.tool == "emberprof":
            env["EMBERPROF_LOG"] = "emberprof=info"
            argv = [EMBERPROF, "record", *c.flags, "--frequency", str(c.frequency),
                    "--duration", "3600", "--output", self.output]
            return argv, env, (self.err_path, "recording")
        if c.tool == "perf":
            # cpu-clock: the VM has no hardware PMU (perf's default, cycles, is absent).
            argv = [tools.perf, "record", "-e", "cpu-clock", "-F", str(c.frequency), "-a",
                    *(c.flags or ("-g",)), "-o", self.output]
            return argv, env, None
        argv = [tools.bpftrace, "-o", self.output, "-e", BPFTRACE_PROGRAM.format(hz=c.frequency)]
        return argv, env, (self.output, "Attaching")

    @property
    def pid(self):
        return self.proc.pid

    def wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self.ready and not self._says(*self.ready):
            if self.proc.poll() is not None:
                raise BenchError(f"{self.config.label} exited with status {self.proc.returncode} "
                                 f"before sampling:\n{tail(self.err_path)}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.config.label} not sampling after {READY_TIMEOUT_S} s:\n"
                                 f"{tail(self.err_path)}")
            time.sleep(0.05)

    def settle(self):
        time.sleep(SETTLE_S)
        if self.proc.poll() is not None:
            raise BenchError(f"{self.config.label} exited early:\n{tail(self.err_path)}")

    @staticmethod
    def _says(path, text):
        try:
            with open(path, errors="replace") as f:
                return text in f.read()
        except FileNotFoundError:
            return False

    def usage(self):
        return measure.snapshot(self.pid)

    def interrupt(self):
        os.kill(self.pid, signal.SIGINT)

    def finish(self):
        """Waits for the profiler to write its output and exit; its rusage comes from wait4,
        so that it is the profiler's own and nobody else's."""
        deadline = time.monotonic() + EXIT_TIMEOUT_S
        while True:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{self.config.label} did not exit within {EXIT_TIMEOUT_S} s "
                                 f"of SIGINT:\n{tail(self.err_path)}")
            time.sleep(0.02)
        code = os.waitstatus_to_exitcode(status)
        reaped(self.proc, code)
        # perf re-raises SIGINT once its output is written: dying of it is its normal exit.
        if code not in (0, -signal.SIGINT):
            raise BenchError(f"{self.config.label} exited with status {code}:\n{tail(self.err_path)}")
        return Finished(usage.ru_utime, usage.ru_stime, usage.ru_maxrss)

    def stop(self):
        self.interrupt()
        return self.finish()

    def symbolize_cost(self, tools):
        """CPU seconds perf needs after recording to name the stacks it recorded."""
        if self.config.tool != "perf":
            return 0.0
        proc = spawn([tools.perf, "script", "-i", self.output], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        reaped(proc, os.waitstatus_to_exitcode(status))
        if status != 0:
            raise BenchError(f"perf script -i {self.output} failed")
        return usage.ru_utime + usage.ru_stime

    def stacks(self, tools, pids):
        """The samples of `pids` as (pid, frames, count), frames as function names, the
        outermost first (user frames, then kernel frames)."""
        if self.config.tool == "emberprof":
            found = folded_stacks(self.output)
        elif self.config.tool == "perf":
            found = perf_stacks(tools.perf, self.output, pids)
        else:
            found = bpftrace_stacks(self.output)
        return [s for s in found if s[0] in pids]


def folded_stacks(path):
    """emberprof's folded output: `process-pid;root;...;leaf COUNT`."""
    out = []
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            pid = frames[0].rpartition("-")[2]
            if pid.isdigit():
                out.append((int(pid), frames[1:], int(count)))
    return out


def perf_stacks(perf, data, pids):
    """`perf script -F pid,ip,sym`: a PID line, then one `address symbol` line per frame.
    Only `pids`: naming every process's frames can take minutes on a busy machine."""
    script = subprocess.run([perf, "script", "-i", data, "-F", "pid,ip,sym",
                             "--pid", ",".join(str(p) for p in sorted(pids))],
                            capture_output=True, text=True, errors="replace")
    if script.returncode != 0:
        raise BenchError(f"perf script failed: {script.stderr.strip()}")
    out = []
    for block in script.stdout.split("\n\n"):
        lines = block.strip("\n").splitlines()
        if not lines or not lines[0].strip().isdigit():
            continue
        frames = [(line.split(None, 1) + ["[unknown]"])[1].strip() for line in lines[1:]]
        out.append((int(lines[0]), frames[::-1], 1))
    return out


def bpftrace_stacks(path):
    """bpftrace's map: `@[PID, \\n user frames\\n, \\n kernel frames]: COUNT`, frames
    `name+off`, innermost first."""
    with open(path, errors="replace") as f:
        text = f.read()
    out = []
    for m in re.finditer(r"^@\[(\d+), (.*?)\]: (\d+)$", text, re.S | re.M):
        user, _, kernel = m.group(2).partition("\n,")
        frames = []
        for part in (user, kernel):
            names = [line.strip().rstrip(",").strip() for line in part.splitlines()]
            frames += [re.sub(r"\+\d+$", "", f) for f in names if f][::-1]
        out.append((int(m.group(1)), frames, int(m.group(3))))
    return out
