"""Unwind tables: how long compiling a file's `.eh_frame` into emberprof's table takes, and
how large the table is in the kernel, for libc, ld.so and large binaries
(symbolizer/examples/unwind_build.rs, the same compile_file the agent runs)."""

import glob
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import List, Optional

from common import EMBERPROF, ROOT, BenchError, log

BUILDER = os.path.join(ROOT, "target", "release", "examples", "unwind_build")
# libc and ld.so are in every process; python3.11 and node are large C/C++ programs when the
# machine has them; emberprof is a large Rust binary (and rustc's own library, added below,
# a very large one).
FILES = [
    ("libc", "/lib/x86_64-linux-gnu/libc.so.6"),
    ("ld.so", "/lib64/ld-linux-x86-64.so.2"),
    ("python3.11", "/usr/bin/python3.11"),
    ("node", "/usr/bin/node"),
    ("emberprof", EMBERPROF),
]


@dataclass
class TableBuild:
    name: str
    path: str
    runs: int
    text_bytes: int
    eh_frame_bytes: int
    fdes: int
    rows: int
    entries: int
    kernel_bytes: int
    ms: float
    ms_per_eh_frame_mib: Optional[float]
    kernel_bytes_per_text_mib: Optional[float]


def rustc_driver():
    """The compiler's own library (the largest `.eh_frame` on a machine that builds Rust), or
    None without rustc."""
    rustc = os.environ.get("RUSTC") or shutil.which("rustc")
    if not rustc:
        return None
    out = subprocess.run([rustc, "--print", "sysroot"], capture_output=True, text=True)
    found = glob.glob(os.path.join(out.stdout.strip(), "lib", "librustc_driver-*.so"))
    return found[0] if out.returncode == 0 and found else None


def run(quick) -> List[TableBuild]:
    if not os.path.exists(BUILDER):
        raise BenchError(f"{BUILDER} is missing: `make bench` builds it")
    files = FILES + [("librustc_driver", rustc_driver())]
    present = [(n, os.path.realpath(p)) for n, p in files if p and os.path.exists(p)]
    runs = 3 if quick else 10
    out = subprocess.run([BUILDER, "--runs", str(runs), *(p for _, p in present)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise BenchError(f"unwind_build failed: {out.stderr.strip()}")
    results = []
    for (name, _), line in zip(present, out.stdout.splitlines()):
        d = json.loads(line)
        if "error" in d:
            log(f"tables: {name}: {d['error']}")
            continue
        results.append(TableBuild(name, d["file"], d["runs"], d["text_bytes"],
                                  d["eh_frame_bytes"], d["fdes"], d["rows"], d["entries"],
                                  d["kernel_bytes"], d["ms"], d["ms_per_eh_frame_mib"],
                                  d["kernel_bytes_per_text_mib"]))
        log(f"tables: {name}: {d['eh_frame_bytes'] / 2**20:.2f} MiB .eh_frame in "
            f"{d['ms']:.1f} ms ({d['ms_per_eh_frame_mib']} ms/MiB), "
            f"{d['kernel_bytes'] / 2**20:.2f} MiB in the kernel")
    return results
