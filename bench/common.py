"""What every part of the benchmark shares: paths, the error type, and the child processes
it must not leave behind."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBERPROF = os.path.join(ROOT, "target", "release", "emberprof")
BUILD_DIR = os.path.join(ROOT, "target", "bench")
CPUS = os.cpu_count() or 1


class BenchError(Exception):
    """A failure the user can act on; the message says how."""


def log(message):
    """Progress, on standard error: standard output carries the report."""
    print(message, file=sys.stderr, flush=True)


# Every child still running when the harness stops (an error, Ctrl-C) is killed: a profiler
# left attached or a workload left burning would skew whatever runs next on the machine.
_children = {}


def spawn(argv, **kwargs):
    """Starts a child process that `kill_children` ends if it is still running."""
    try:
        proc = subprocess.Popen(argv, **kwargs)
    except FileNotFoundError as e:
        raise BenchError(f"{argv[0]} not found: run scripts/bench-deps.sh") from e
    _children[proc.pid] = proc
    return proc


def reaped(proc, returncode):
    """Records that `proc` was reaped by os.wait4 (which Popen does not know about)."""
    proc.returncode = returncode
    _children.pop(proc.pid, None)


def kill_children():
    for proc in list(_children.values()):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _children.clear()


def stop_all(procs):
    """Kills many children at once (signals first, then reaps, so 1000 take no longer than one)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        proc.wait()
        _children.pop(proc.pid, None)
