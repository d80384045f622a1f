"""The benchmark's results as Markdown: the machine, then one table per measurement and the
targets of the issue, met or missed, with the measured figures."""

import math
import os
import re
import subprocess
from dataclasses import dataclass
from typing import Optional

import measure
import memory
import scale
from accuracy import SPLITS
from profilers import SETTLE_S
from common import CPUS, ROOT

DASH = "—"


@dataclass
class Run:
    """Everything the report shows, gathered by run.py."""
    started: object          # datetime, UTC
    seconds: float           # the whole invocation
    command: str
    quick: bool
    machine: dict
    versions: dict
    overhead: Optional[object] = None
    accuracy: Optional[list] = None
    accuracy_seconds: float = 0.0
    scale: Optional[list] = None
    memory: Optional[list] = None
    tables: Optional[list] = None
    python: Optional[object] = None
    probes: Optional[object] = None


def machine():
    info = {"CPU": f"{CPUS} x {cpu_model()}", "memory": f"{mem_total_gib():.1f} GiB",
            "kernel": f"Linux {os.uname().release}", "OS": os_name()}
    if "hypervisor" in cpu_flags():
        info["CPU"] += " (virtual machine)"
    # No hardware PMU in most VMs: every profiler here samples the cpu-clock software event.
    pmu = any(os.path.exists(f"/sys/bus/event_source/devices/{d}") for d in ("cpu", "cpu_core"))
    info["hardware PMU"] = "present" if pmu else "absent (all profilers sample the cpu-clock software event)"
    return info


def cpu_model():
    with open("/proc/cpuinfo") as f:
        m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
    return m.group(1).strip() if m else "unknown CPU"


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        m = re.search(r"^flags\s*:\s*(.+)$", f.read(), re.M)
    return m.group(1).split() if m else []


def mem_total_gib():
    with open("/proc/meminfo") as f:
        m = re.search(r"^MemTotal:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) / 2**20 if m else 0.0


def os_name():
    try:
        with open("/etc/os-release") as f:
            m = re.search(r'^PRETTY_NAME="?([^"\n]+)', f.read(), re.M)
        return m.group(1) if m else "unknown"
    except FileNotFoundError:
        return "unknown"


def load_average():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def other_cpu(start, end, seconds):
    """What the rest of the machine used while the benchmark ran, as a share of all CPUs:
    near 0 on a quiet machine; above a few percent, the timings are noisy."""
    others = (end[0] - start[0]) - (end[1] - start[1])
    share = max(0.0, others) / (seconds * CPUS)
    note = "" if share < 0.02 else " (not quiet: expect noisy timings)"
    return f"{100 * share:.1f}% of the machine{note}"


def git_commit():
    """HEAD, and whether the sources the binary is built from differ from it."""
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "agent", "probes",
                            "symbolizer", "exporters", "Cargo.toml", "Cargo.lock"],
                           capture_output=True, text=True).stdout.strip()
    return (head or "unknown") + (" with uncommitted changes" if dirty else "")


def table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ratio_cell(values):
    mid, lo, hi = measure.spread(values)
    return f"{mid:.3f} ({lo:.3f}–{hi:.3f})"


def pct(x, digits=2):
    return DASH if x is None or math.isnan(x) else f"{x:.{digits}f}"


def header(run):
    when = run.started.strftime("%Y-%m-%d %H:%M UTC")
    minutes, seconds = divmod(round(run.seconds), 60)
    mode = " (`--quick`: development run, not for quoting)" if run.quick else ""
    rows = [(k, v) for k, v in run.machine.items()]
    rows += [(k, v) for k, v in run.versions.items()]
    return "\n\n".join([
        "# Benchmarks",
        f"Written by `{run.command}`{mode} on {when}; the run took {minutes} min {seconds} s. "
        "`make bench` runs it again and rewrites this page. The harness reports and never "
        "asserts on timings; the machine should be otherwise idle (see the last rows of the "
        "machine table).",
        table(["machine", ""], rows),
    ])


def overhead_section(o):
    names = [w.label for w in o.workloads]
    noise = o.noise()
    alone = ["alone: median seconds (each alone run / median, min–max)"]
    for w in o.workloads:
        mid = measure.spread(o.alone_seconds(w.key))[0]
        _, lo, hi = measure.spread(noise[w.key])
        alone.append(f"{mid:.3f} s ({lo:.3f}–{hi:.3f})")
    rows = [alone]
    for c in o.configs:
        r = o.ratios(c)
        rows.append([c.label] + [ratio_cell(r[w.key]) for w in o.workloads])
    workloads = "\n".join(f"- **{w.label}**: {w.describe(w.units)}." for w in o.workloads)
    return "\n\n".join([
        "## Overhead",
        "Wall time of fixed work (counted in work units, timed to completion), alone and "
        "under each profiler sampling the whole machine. Each round runs the three workloads "
        "alone, then under one profiler, then alone again, and so on through every profiler "
        f"(the order rotates from round to round); {o.rounds} timed rounds after a warm-up "
        "round. Each profiler starts, sees each workload briefly and settles for "
        f"{SETTLE_S:g} s before the timed runs. Each profiled run is divided by the mean of "
        "the alone runs just before and just after it. Cells: median ratio (min–max over "
        "rounds); 1.000 is no slowdown. The first row is the noise floor: how much the alone "
        "runs themselves vary.",
        workloads,
        table(["configuration"] + names, rows),
    ])


def cost_section(o):
    keys = "/".join(w.key for w in o.workloads)
    rows = []

    def per(d):
        return " / ".join(pct(d.get(w.key)) for w in o.workloads)

    for c in o.configs:
        k = o.cost(c)
        bpf = per(k.bpf_pct) if c.tool != "perf" else "none (samples in the kernel's perf code)"
        session = f"{k.session_cpu_s:.2f}"
        if c.tool == "perf":
            session += f" + {k.symbolize_s:.2f} (perf script)"
        rows.append([
            c.label, session, per(k.oncpu_pct), pct(k.user_pct), bpf,
            f"{k.peak_rss_mib:.1f}", pct(k.cpu_ms_per_1000),
        ])
    return "\n\n".join([
        "## Profiler cost",
        "The profilers' own cost in the same sessions. Each profiler saw every workload "
        "program once, briefly, while it settled (emberprof reads a program's symbols the "
        "first time it samples it, once per program in continuous use); the figures during "
        "the workloads are the steady state, the CPU per session includes the first encounter. "
        "*CPU s per session*: user + system "
        "seconds of the profiler's process from start to exit (start-up, the workloads, "
        "writing its output; wait4 rusage), median over rounds; emberprof and bpftrace name "
        "the stacks before they exit, perf needs `perf script` afterwards, whose CPU is added. "
        "*Process CPU during the "
        f"workloads* ({keys}): the scheduler's on-CPU time of the profiler's threads while "
        "each workload ran (nanosecond precision), as % of one CPU; *user*: the user-space "
        "part over all three, which the kernel splits off in proportion to 10 ms ticks: coarse "
        "when a profiler runs a few ms per workload. "
        "*eBPF programs*: run time of the profiler's programs (`kernel.bpf_stats_enabled`, "
        "`run_time_ns` in /proc/PID/fdinfo), measured in the warm-up round because the "
        "accounting itself slows every program run; that time is spent in the kernel in the "
        "context of the sampled threads, not in the profiler's process, and is part of the "
        "slowdown above. perf's sampling work is in the kernel too and has no such counter. "
        "*Peak RSS*: ru_maxrss, max over rounds. *CPU ms per 1000 samples* (emberprof, CPU "
        "only): on-CPU time, user + system, from the first workload until one drain after "
        "the last, over the samples of the workload processes; the user-space part is at most "
        "this.",
        table(["configuration", "CPU s per session",
               f"process CPU during workloads, % of a CPU ({keys})", "of which user (ticks), %",
               f"eBPF programs, % of a CPU ({keys})", "peak RSS MiB",
               "CPU ms per 1000 samples"], rows),
    ])


def programs_section(o):
    rows = []
    for c in o.configs:
        if c.tool == "perf" or (c.tool == "emberprof" and c.frequency != 99):
            continue
        k = o.cost(c)
        wall = sum(s.windows[w.key].wall for s in o.stats_sessions if s.config == c
                   for w in o.workloads)
        for name, p in sorted(k.programs.items()):
            per_run = p.run_ns / p.runs if p.runs else float("nan")
            rows.append([c.label, f"`{name}`", f"{p.runs / wall:,.0f}" if wall else DASH,
                         pct(per_run, 0)])
    return "\n\n".join([
        "### eBPF programs, one by one",
        "Warm-up round, all three workloads together (99 Hz configurations; the 19 Hz ones "
        "load the same programs).",
        table(["configuration", "program", "runs per second", "ns per run"], rows),
    ])


SAMPLER = "ep_cpu_sample"


def unwinding_section(o):
    """The CPU sampler's program with unwind tables (the default) and with frame pointers
    only, per workload, and the CPU-bound slowdown of each."""
    configs = [c for c in o.configs if c.key in ("ember-99-cpu", "ember-99-cpu-fp")]
    if len(configs) < 2:
        return None
    sessions = o.unwind_sessions or o.stats_sessions
    rows = []
    for c in configs:
        cells, total = [], measure.Program(SAMPLER, 0, 0)
        for w in o.workloads:
            p = measure.Program(SAMPLER, 0, 0)
            for s in sessions:
                q = s.windows[w.key].programs.get(SAMPLER) if s.config == c else None
                if q:
                    p.run_ns += q.run_ns
                    p.runs += q.runs
            total.run_ns += p.run_ns
            total.runs += p.runs
            cells.append(f"{p.run_ns / p.runs:,.0f} ({p.runs:,})" if p.runs else DASH)
        cells.append(f"{total.run_ns / total.runs:,.0f} ({total.runs:,})" if total.runs else DASH)
        rows.append([c.label, ratio_cell(o.ratios(c)["cpu"])] + cells)
    runs = len([s for s in sessions if s.config == configs[0]])
    where = (f"{runs} session{'s' if runs > 1 else ''} of each, alternating, after the "
             "warm-up round, with the full work" if o.unwind_sessions else "the warm-up round")
    return "\n\n".join([
        "### Unwinding by tables or by frame pointers",
        "emberprof's default walks user stacks by the unwind tables compiled from each file's "
        "`.eh_frame` (frame pointers where a file has none); `--unwind fp` walks frame "
        "pointers only. The workloads are built with frame pointers, so both walks give the "
        "same frames up to libc, and the difference is the cost of the table walk (libc has "
        "no frame pointers: there only the table walk goes on to `_start` or `clone3`). "
        f"`{SAMPLER}`: its ns per run (and runs) from the kernel's eBPF statistics in {where}, "
        "per workload and over all three; the CPU-bound slowdown is from the timed rounds above.",
        table(["configuration", "CPU-bound slowdown"]
              + [f"`{SAMPLER}` ns per run ({w.key})" for w in o.workloads]
              + [f"`{SAMPLER}` ns per run, all"], rows),
    ])


def accuracy_section(results, seconds):
    parts = [
        "## Accuracy",
        "Workloads that split each thread's measured thread CPU time 60/30/10 between three "
        "functions. The profilers of each workload sample the whole machine at 99 Hz at the "
        f"same time for {seconds:g} s and are stopped while it runs; only the workload's "
        "samples count. *Other* is every sample not counted for one of the three (true "
        "share 0). *Complete chains*: samples whose stack has the function under the loop "
        "that calls it and ends in the thread's entry (`_start` or `clone3`). *Error*: sum of "
        "|reported share − true share| over the four, in percentage points. *Sampling "
        "noise*: the error that sampling alone gives on average with that many samples (a "
        "profiler cannot be expected to do better). perf's `--call-graph dwarf` copies 8 KiB "
        "of each sample's user stack and unwinds it in `perf script`. emberprof loads the "
        "unwind tables of a process once it has met it: the samples it takes before that are "
        "walked by frame pointers (the leaf alone, or under the thread's entry) and count as "
        "*other*; they are part of what a recording of that length gives.",
    ]
    for split in SPLITS:
        mine = [a for a in results if a.split.key == split.key]
        if not mine:
            continue
        true = split.true_shares
        rows = [[a.config.label, f"{a.samples:,}"]
                + [f"{100 * a.shares[k]:.1f}" for k in true]
                + [pct(a.complete_pct, 1), f"{100 * a.error:.1f}", f"{100 * a.expected_noise:.1f}"]
                for a in mine]
        heads = [f"{k} ({100 * v:.0f}%)" for k, v in true.items()]
        parts += [f"### {split.title}", split.description + ".",
                  table(["profiler", "samples"] + heads
                        + ["complete chains, %", "error, points", "sampling noise, points"],
                        rows)]
    return "\n\n".join(parts)


def tables_section(results):
    mib = 2**20
    rows = [[r.name, f"`{r.path}`", f"{r.text_bytes / mib:.2f}", f"{r.eh_frame_bytes / mib:.2f}",
             f"{r.fdes:,}", f"{r.rows:,}", f"{r.entries:,}", f"{r.kernel_bytes / mib:.2f}",
             f"{r.ms:.1f}", pct(r.ms_per_eh_frame_mib, 1),
             pct(None if r.kernel_bytes_per_text_mib is None
                 else r.kernel_bytes_per_text_mib / 1024, 0)]
            for r in results]
    runs = results[0].runs if results else 0
    return "\n\n".join([
        "## Unwind tables",
        "Compiling a file's `.eh_frame` into the table emberprof loads into the kernel "
        "(`emberprof_symbolizer::unwind::compile_file`, the agent's own code, run by "
        "`symbolizer/examples/unwind_build.rs`): the best of "
        f"{runs} compilations of each file, on one thread. *Rows*: CFI rows before merging; "
        "*entries*: address ranges with one rule after merging, 8 bytes each in the kernel. "
        "A file's table is built once, off the sampling path, and shared by every process "
        "mapping it.",
        table(["file", "path", ".text MiB", ".eh_frame MiB", "FDEs", "rows", "entries",
               "kernel MiB", "build ms", "ms per MiB of .eh_frame",
               "kernel KiB per MiB of .text"], rows),
    ])


def scale_section(results):
    parts = [
        "## Scale",
        "`emberprof agent --off-cpu --interval 2s --pprof-dir DIR --pid ...` over processes "
        "running the workload's `tree-sleep` mode, each blocking in turn in stacks of its own. "
        "Per interval the agent logs (debug event `emberprof::timings`) the wall time of its "
        "sampling thread in three phases: *drain* (reading and clearing the kernel maps, two "
        "drains per interval), *symbolize* (naming the drained stacks and adding them to the "
        "profiles), *encode* (closing the interval's profiles and writing them as pprof). "
        "*First*: the interval in which the agent started and met every process; *steady*: "
        "median of the later ones. *Repeats*: off-CPU blocks per unique stack per interval, "
        "measured (the agent's /metrics). *Added µs*: steady cost added per stack (or block) "
        "added since the row above: constant down a table when cost grows linearly, about 0 "
        "when it is flat.",
    ]
    for axis, rows in results:
        _, unit = scale.growth(axis)
        heads = ["processes", "unique stacks", "repeats", "entries drained",
                 "first: drain / symbolize / encode ms", "steady: drain / symbolize / encode ms",
                 "steady total ms", f"added µs per added {unit}", "agent peak RSS MiB"]
        body = []
        for i, r in enumerate(rows):
            f, s = r.first, r.steady
            added = DASH if i == 0 else pct(scale.added_cost_us(rows[i - 1], r, axis), 1)
            body.append([
                f"{r.case.processes:,}", f"{s.stacks:,}", f"{r.repeats:.1f}", f"{s.entries:,}",
                f"{f.drain_ms:.1f} / {f.symbolize_ms:.1f} / {f.encode_ms:.1f}",
                f"{s.drain_ms:.1f} / {s.symbolize_ms:.1f} / {s.encode_ms:.1f}",
                f"{s.total_ms:.1f}", added, f"{r.peak_rss_mib:.0f}",
            ])
        parts.append(f"### Growing {axis}")
        parts.append(table(heads, body))
    return "\n\n".join(parts)


def memory_section(results):
    rows = []
    for r in results:
        p = r.parts_mib
        rows.append([
            f"`{r.mode}`",
            f"{r.bound_mib} MiB" + (" (default)" if r.bound_mib == memory.DEFAULT_BOUND_MIB else ""),
            f"{r.steady_mib:.1f}", f"{r.high_mib:.1f}", f"{r.peak_mib:.0f}",
            f"{p['parsed']:.1f} / {p['mapped']:.1f} / {p['locations']:.1f} / {p['kernel']:.1f}",
            f"{r.files_parsed}", f"{r.reparses_per_interval:.2f} per {r.interval_s:g} s",
            f"{r.parse_s:.2f} s ({r.parse_pct:.1f}%)",
        ])
    return "\n\n".join([
        "## Memory with a large binary busy",
        "The whole machine while emberprof's own release build (about 140 MB with DWARF) is "
        "busy: one copy records the machine at 999 Hz profiling itself while `emberprof config "
        "default` runs in a loop. The measured emberprof uses its default frequency and exports "
        "to a local OTLP collector; `record` runs 20 s, `agent` 45 s with 5 s intervals. "
        "*Steady*: median RSS after a 10 s warm-up, sampled every 0.5 s; *high*: the highest "
        "of those samples; *peak*: VmHWM, the highest at any moment, which a parse of the "
        "large binary reaches for a few milliseconds (most of it pages of the file read in "
        "place, given back right after). *Cache at the end*: the symbolizer's own accounting "
        "(`emberprof_symbolizer_cache_bytes` by part): parsed files' heap / their mapped pages "
        "still resident / resolved locations / kernel symbols. *Re-parses*: files parsed "
        "again because the bound let their parsed state go, per export interval (`record`: per "
        "1 s drain); *parse CPU*: time in symbolize "
        "calls on files not held parsed, first parses included, and its share of one CPU.",
        table(["run", "cache bound", "steady RSS MiB", "high MiB", "peak MiB",
               "cache at the end, MiB (parsed / mapped / locations / kernel)",
               "files parsed", "re-parses per interval", "parse CPU"], rows),
    ])


def python_section(r):
    base = r.costs[0].ns_per_sample
    by_case = {c.case: c for c in r.costs}

    def added(c):
        off = by_case.get(c.case.split(" (")[0] + ", --no-python")
        return f"+{c.ns_per_sample - off.ns_per_sample:.0f}" if off and off is not c else DASH

    cost_rows = [[c.case, f"{c.runs}", f"{c.ns_per_sample:.0f}",
                  f"{c.ns_per_sample / base:.2f}x", added(c)] for c in r.costs]
    off = next((a for a in r.agent if a.case == "--no-python"), None)
    agent_rows = [[a.case, f"{a.cpu_pct:.2f}%",
                   f"{a.cpu_pct / off.cpu_pct:.2f}x" if off and off.cpu_pct > 0 else DASH]
                  for a in r.agent]
    return "\n\n".join([
        "## Python frames",
        f"{r.python} (pyenv). *Per sample*: the CPU sampler's eBPF run time (bpf_stats, the "
        "whole recording) over the samples the kernel counted, while `record --pid` samples "
        "one busy process at 999 Hz for 4 s; native stacks are walked by unwind tables in "
        "every case. *Python walk*: what the same process costs more than with "
        "`--no-python`: finding the thread's state (cached per thread, checked with one "
        "read), one read per Python frame, and for a stack new to the buffer its note to "
        "user space. *Agent*: emberprof's whole process (user + system CPU) over 20 s, "
        "`agent --frequency 99 --interval 5s --pprof-dir`, with 20 Python processes (split, "
        "deep, native calls, thread pools) selected by `--pid`, against the same with "
        "`--no-python`.",
        table(["process sampled", "samples", "ns per sample", "vs native",
               "Python walk, ns"], cost_rows),
        table(["agent, 20 Python processes", "CPU (% of one)", "vs --no-python"], agent_rows),
    ])


def probes_section(r):
    def us(values):
        mid, lo, hi = measure.spread(values)
        return f"{mid:.2f} ({lo:.2f}–{hi:.2f})"

    rows = [[c.case, f"{c.hits:,}", us(c.per_hit_us),
             f"{c.ebpf_ns:.0f}" if c.ebpf_ns else DASH] for c in r.costs]
    t = r.tcp
    alone, with_tcp = measure.spread(t.alone_s)[0], measure.spread(t.tcp_s)[0]
    per_conn = (with_tcp - alone) / t.connections * 1e6
    ebpf = ", ".join(f"{name} {ns:.0f}" for name, ns in sorted(t.ebpf_ns.items())) or DASH
    return "\n\n".join([
        "## Probe points",
        "*Per hit*: what one hit adds to the probed thread: the wall time of a fixed loop "
        "(`tests/workloads/probe_work.c`, -O2, no frame pointers) under `record --probe SPEC "
        "--probe-max-rate 0 --pid`, minus the same loop alone, over the hits; median (min–max) "
        "of the rounds. *eBPF*: the probe's programs' own run time per hit (bpf_stats, a "
        "separate run): the rest is the kernel's trap and, for a function, the single-step "
        "of its first instruction and the return trampoline. `--probe-max-rate` (default "
        "500 hits/s per probe) bounds a function probe to about 500 x the per-hit cost of "
        "one CPU.",
        table(["probe", "hits", "per hit, us", "eBPF per hit, ns"], rows),
        f"*--tcp*: {t.connections:,} loopback connections (connect, accept, close; Python) "
        f"timed alone and under `record --tcp`, median of the rounds: "
        f"{alone:.3f} s alone, {with_tcp:.3f} s with --tcp ({with_tcp / alone:.3f}x, "
        f"{per_conn:+.1f} us per connection). eBPF run time per event, ns: {ebpf}.",
    ])


def targets_section(run):
    o, rows = run.overhead, []
    by_key = {c.key: c for c in o.configs} if o else {}
    ember = by_key.get("ember-99-cpu")
    if ember:
        cost = o.cost(ember)
        slow = measure.spread(o.ratios(ember)["cpu"])
        fp = by_key.get("ember-99-cpu-fp")
        than_fp = ""
        if fp:
            slow_fp = measure.spread(o.ratios(fp)["cpu"])
            than_fp = (f"; `--unwind fp` {slow_fp[0]:.3f} ({slow_fp[1]:.3f}–"
                       f"{slow_fp[2]:.3f})")
        rows.append(["emberprof at 99 Hz slows CPU-bound work by less than 1% (ratio ≤ 1.01)",
                     f"{slow[0]:.3f} median ({slow[1]:.3f}–{slow[2]:.3f}) with unwind tables"
                     + than_fp, verdict(slow[0] <= 1.01)])
        rows.append(["under 1% of one CPU in user space",
                     f"at most {cost.total_pct:.2f}% (user + system while the workloads ran; "
                     f"user alone, tick-sampled, {cost.user_pct:.2f}%)",
                     verdict(cost.total_pct < 1)])
        rows.append(["under 64 MiB RSS", f"{cost.peak_rss_mib:.1f} MiB",
                     verdict(cost.peak_rss_mib < 64)])
        for peer in ("perf-99", "bpftrace-99"):
            if peer in by_key:
                rows.append(cheaper_row(o, ember, by_key[peer]))
    if run.accuracy:
        rows += accuracy_rows(run.accuracy)
    for r in run.memory or []:
        if r.bound_mib == memory.DEFAULT_BOUND_MIB:
            rows.append([f"`{r.mode}` steady RSS at most 64 MiB with a large DWARF binary busy",
                         f"{r.steady_mib:.1f} MiB (high {r.high_mib:.1f}), parsing "
                         f"{r.parse_pct:.1f}% of a CPU", verdict(r.steady_mib <= 64)])
    return "\n\n".join(["## Targets", table(["target", "measured", "met"], rows)])


def cheaper_row(o, ember, peer):
    """At least as cheap, two ways: CPU for one recording, until the stacks are named (perf
    names them afterwards, in perf script), and CPU while sampling: the profiler's process
    plus its eBPF programs (perf's in-kernel sampling has no counter and is left out)."""
    def sampling(c):
        k = o.cost(c)
        bpf = sum(k.bpf_pct.values()) / len(k.bpf_pct) if k.bpf_pct else 0.0
        return sum(k.oncpu_pct.values()) / len(k.oncpu_pct) + bpf

    mine, theirs = sampling(ember), sampling(peer)
    a = o.cost(ember).session_cpu_s
    b = o.cost(peer).session_cpu_s + o.cost(peer).symbolize_s
    slow_a = measure.spread(o.ratios(ember)["cpu"])[0]
    slow_b = measure.spread(o.ratios(peer)["cpu"])[0]
    return [f"at least as cheap as {peer.label} at the same frequency",
            f"CPU per recording {a:.2f} s vs {b:.2f} s; while sampling {mine:.2f}% vs "
            f"{theirs:.2f}% of a CPU; CPU-bound slowdown {slow_a:.3f} vs {slow_b:.3f}",
            f"per recording: {verdict(a <= b)}; while sampling: {verdict(mine <= theirs)}"]


# Per accuracy workload: the target's words and the peers emberprof is held against.
ACCURACY_TARGETS = {
    "fp": ("accuracy at least as good as perf and bpftrace", ("perf-99", "bpftrace-99")),
    "nofp": ("without frame pointers (C `-O2 -fomit-frame-pointer`): accuracy at least as good "
             "as perf --call-graph dwarf", ("perf-99-dwarf",)),
    "rust": ("without frame pointers (Rust release build): accuracy at least as good as perf "
             "--call-graph dwarf", ("perf-99-dwarf",)),
}


def accuracy_rows(results):
    out = []
    for split, (target, peers) in ACCURACY_TARGETS.items():
        by_key = {a.config.key: a for a in results if a.split.key == split}
        mine = by_key.get("ember-99-cpu")
        theirs = [by_key[k] for k in peers if k in by_key]
        if not mine or not theirs:
            continue
        best = min(a.error for a in theirs)
        others = ", ".join(f"{a.config.label} {100 * a.error:.1f}" for a in theirs)
        if mine.error <= best:
            met = "yes"
        elif mine.error - best <= mine.expected_noise:
            met = "within sampling noise"
        else:
            met = "**no**"
        out.append([target, f"error {100 * mine.error:.1f} points vs {others} (sampling noise "
                    f"{100 * mine.expected_noise:.1f})", met])
    return out


def verdict(ok):
    return "yes" if ok else "**no**"


def markdown(run):
    parts = [header(run)]
    if run.overhead:
        parts += [overhead_section(run.overhead), cost_section(run.overhead),
                  programs_section(run.overhead)]
        unwinding = unwinding_section(run.overhead)
        if unwinding:
            parts.append(unwinding)
    if run.accuracy:
        parts.append(accuracy_section(run.accuracy, run.accuracy_seconds))
    if run.tables:
        parts.append(tables_section(run.tables))
    if run.scale:
        parts.append(scale_section(run.scale))
    if run.memory:
        parts.append(memory_section(run.memory))
    if run.python:
        parts.append(python_section(run.python))
    if run.probes:
        parts.append(probes_section(run.probes))
    if run.overhead or run.accuracy or run.memory:
        parts.append(targets_section(run))
    return "\n\n".join(parts) + "\n"
