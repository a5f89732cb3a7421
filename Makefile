# The two commands: `make run` and `make test`. Everything else is a building block of those,
# or an operator's tool (observe, bench).
CARGO      ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
export GATEWAY_BIN ?= $(TARGET_DIR)/debug/gateway
export FEED_SIM_BIN ?= $(TARGET_DIR)/debug/feed-sim

.PHONY: run cluster test setup lint test-rust build-debug test-examples test-browser test-prometheus test-cluster observe bench

## run: build a release gateway and serve the simulated feed on 127.0.0.1:8080
run:
	$(CARGO) build --release -p gateway
	$(TARGET_DIR)/release/gateway

## cluster: nats-server (JetStream), feed-sim, two gateways and HAProxy on loopback; Ctrl-C stops all
cluster:
	deploy/cluster.sh

## test: install what the tests need, lint, then every test suite
test: setup lint test-rust test-examples test-browser test-prometheus test-cluster
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

## nats-server, feed-sim, gateways and HAProxy as processes: contract section 5
test-cluster:
	$(CARGO) build -p gateway -p feed-sim
	python3 deploy/tests/cluster_test.py

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
