# The two set-up commands of the README: `make run` and `make test`.
CARGO ?= cargo
RUN_ARGS ?= --duration 10

.PHONY: all deps build run test lint bench clean
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

test: lint
	$(CARGO) test --workspace

bench: build
	python3 bench/cpu_overhead.py
	python3 bench/sched_overhead.py

clean:
	$(CARGO) clean
