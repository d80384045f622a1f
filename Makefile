# The two set-up commands of the README: `make run` and `make test`.
CARGO ?= cargo
RUN_ARGS ?= --duration 10

.PHONY: all deps build run test lint bench clean chart-test
all: build

deps:
	@scripts/deps.sh

build: deps
	$(CARGO) build --release

# Profiles the whole machine for 10 s and writes emberprof-<time>.pb.gz (needs root).
run: build
	./target/release/emberprof record $(RUN_ARGS)

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	python3 scripts/module_cycles.py
	python3 scripts/crate_layers.py

test: lint
	$(CARGO) test --workspace
	$(MAKE) chart-test

# The Helm chart, Dockerfile capabilities and examples (helm/tests/chart_test.py); fetches
# helm and kubernetes-validate into .cache/tools/ on first use.
chart-test:
	@scripts/deps.sh chart
	python3 helm/tests/chart_test.py

# The symbolizer's throughput against blazesym, then overhead, cost, accuracy and scale
# against perf and bpftrace, unwind table build times, and memory with a large binary busy
# (root; about 13 minutes on 2 cores), written to docs/benchmarks.md. BENCH_ARGS=--quick for
# a short development run.
BENCH_ARGS ?=
bench: build
	@scripts/bench-deps.sh
	$(CARGO) bench -p emberprof-symbolizer
	$(CARGO) build --release -p emberprof-test-support --example collector
	$(CARGO) build --release -p emberprof-symbolizer --example unwind_build
	python3 bench/run.py $(BENCH_ARGS)

clean:
	$(CARGO) clean
