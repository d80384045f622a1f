#!/usr/bin/env bash
# Installs, through apt, what `make bench` needs when any is missing: scripts/deps.sh plus
# the peers emberprof is compared with (perf from linux-perf, bpftrace).
set -euo pipefail
exec "$(dirname "$0")/deps.sh" bench
