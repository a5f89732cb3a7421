# The two commands: `make run` and `make test`. Everything else is a building block of those,
# or an operator's tool (observe, bench).
CARGO      ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
export GATEWAY_BIN ?= $(TARGET_DIR)/debug/gateway

.PHONY: run test setup lint test-rust build-debug test-examples test-browser test-prometheus observe bench bench-peers

## run: build a release gateway and serve the simulated feed on 127.0.0.1:8080
run:
	$(CARGO) build --release -p gateway
	$(TARGET_DIR)/release/gateway

## test: install what the tests need, lint, then every test suite
test: setup lint test-rust test-examples test-browser test-prometheus
	@echo "make test: all suites passed"

setup:
	@scripts/setup.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test-rust:
	$(CARGO) test --workspace

build-debug:
	$(CARGO) build -p gateway

## example clients (Python, Node) against a real gateway
test-examples: build-debug
	python3 examples/tests/run_examples.py

## the dashboard page in a real headless Chromium
test-browser: build-debug
	cd gateway/tests/browser && node browser.test.mjs

## every dashboard panel and alert rule against a real Prometheus
test-prometheus: build-debug
	grafana/tests/run.sh

## observe: the gateway and a real Prometheus scraping it, on loopback
observe:
	grafana/observe.sh

## bench: release builds, the benchmark scenarios, docs/benchmarks.md
bench:
	load-tests/bench.sh

## bench-peers: the gateway beside a Bun pub/sub server and a bare tokio fan-out, one sitting
bench-peers:
	load-tests/bench_peers.sh
