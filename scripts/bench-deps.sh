#!/usr/bin/env bash
# Installs, through apt, what `make bench` needs beyond scripts/deps.sh when any is missing:
# the peers it compares emberprof with (perf from linux-perf, bpftrace), python3 for the
# harness and taskset (util-linux) for pinning workloads.
set -euo pipefail

# Debian's /usr/bin/perf may be a wrapper that looks for perf_<kernel version> and refuses
# on a kernel newer than the package; the harness finds the real binary itself, so any
# perf binary on disk counts as installed.
have_perf() {
  command -v perf >/dev/null 2>&1 && return 0
  compgen -G '/usr/bin/perf_*' >/dev/null && return 0
  compgen -G '/usr/lib/linux-tools*/perf' >/dev/null && return 0
  return 1
}

missing=()
have_perf || missing+=(linux-perf)
command -v bpftrace >/dev/null 2>&1 || missing+=(bpftrace)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing ${missing[*]} (apt)" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
