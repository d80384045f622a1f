# emberprof agent image. Needs BuildKit (the default builder since Docker 23) for RUN --mount:
#   docker build -t emberprof:0.1.0 .
# The runtime user is non-root (65532); the capabilities it needs are file capabilities on
# the binary (see the setcap step), so the container must be allowed all of them:
#   docker run --rm --pid=host --user 65532 --cap-drop=ALL \
#     --cap-add=BPF --cap-add=PERFMON --cap-add=SYS_RESOURCE --cap-add=SYS_PTRACE \
#     --cap-add=DAC_READ_SEARCH --cap-add=CHECKPOINT_RESTORE --cap-add=SYSLOG \
#     -v /sys/fs/cgroup:/sys/fs/cgroup:ro emberprof:0.1.0 agent --otlp-endpoint http://collector:4317

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
# clang compiles the eBPF programs in probes/build.rs; libbpf-dev has their headers.
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang-19 libbpf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p emberprof \
 && mkdir -p /out \
 && cp target/release/emberprof /out/emberprof \
 # Line tables are for the local profiler's own debugging; symbol names stay for
 # /debug/pprof/self. This takes the binary from ~90 MB to about a fifth of that.
 && strip --strip-debug /out/emberprof

# Same Debian release as the builder: the binary links that glibc dynamically.
FROM debian:bookworm-slim
# A non-root process keeps capabilities across exec only through ambient or file
# capabilities, and Kubernetes cannot set ambient ones, so the binary carries them (+ep:
# effective at once, since emberprof does not raise them itself). Consequences, stated in
# the chart: allowPrivilegeEscalation must be true (no_new_privs discards file
# capabilities), and the container must be allowed every capability listed here, or the
# kernel refuses the exec with EPERM. setcap runs in the same layer as the copy so that the
# binary is stored once, and libcap2-bin goes away again in it. ca-certificates: the roots
# for https:// collectors and Pyroscope servers.
RUN --mount=type=bind,from=build,source=/out/emberprof,target=/tmp/emberprof \
    apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libcap2-bin \
 && install -m 0755 /tmp/emberprof /usr/local/bin/emberprof \
 && setcap cap_bpf,cap_perfmon,cap_sys_resource,cap_sys_ptrace,cap_dac_read_search,cap_checkpoint_restore,cap_syslog+ep /usr/local/bin/emberprof \
 && apt-get purge -y --auto-remove libcap2-bin \
 && rm -rf /var/lib/apt/lists/* \
 # With privilege escalation allowed, a setuid program in the image would be a way to
 # root: there is no need for any.
 && find / -xdev -perm /6000 -type f -exec chmod a-s {} +
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/emberprof"]
CMD ["agent"]
