#!/usr/bin/env python3
"""Checks that the workspace crates depend on each other only downwards.

The layers (README, "How it works"): agent -> probes, symbolizer, exporters -> model. Only
the agent may depend on probes, whose build script needs clang: model, symbolizer and
exporters must build and test on a machine without it. test-support is dev-only: nothing
may depend on it outside [dev-dependencies].

Reads `cargo metadata` (normal, build and dev dependencies alike, since any of them would
pull probes' build script into `cargo test -p X`).
Exits 1 on a dependency outside these rules, 2 if cargo metadata cannot be read.
"""

import json
import subprocess
import sys

# Which workspace crates each crate may depend on (any kind of dependency).
ALLOWED = {
    "emberprof-model": set(),
    "emberprof-symbolizer": {"emberprof-model", "emberprof-test-support"},
    "emberprof-exporters": {"emberprof-model", "emberprof-test-support"},
    "emberprof-probes": {"emberprof-model", "emberprof-test-support"},
    # The OTLP collector stand-in checks what it receives with the exporters' Pyroscope rules.
    "emberprof-test-support": {"emberprof-model", "emberprof-exporters"},
    "emberprof": {
        "emberprof-model",
        "emberprof-probes",
        "emberprof-symbolizer",
        "emberprof-exporters",
        "emberprof-test-support",
    },
}
DEV_ONLY = {"emberprof-test-support"}


def main():
    try:
        out = subprocess.run(
            ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"crate_layers: cannot run cargo metadata: {e}", file=sys.stderr)
        return 2
    packages = json.loads(out)["packages"]
    names = {p["name"] for p in packages}
    bad = []
    for p in packages:
        name = p["name"]
        if name not in ALLOWED:
            bad.append(f"{name}: a new workspace crate; add its layer to scripts/crate_layers.py")
            continue
        for dep in p["dependencies"]:
            d = dep["name"]
            if d not in names:
                continue
            if d not in ALLOWED[name]:
                bad.append(f"{name} depends on {d} ({dep['kind'] or 'normal'})")
            elif d in DEV_ONLY and dep["kind"] != "dev":
                bad.append(f"{name} depends on {d} outside [dev-dependencies]")
    for b in bad:
        print(f"crate_layers: {b}", file=sys.stderr)
    if not bad:
        print(f"crate_layers: {len(packages)} crates, dependencies point one way")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
