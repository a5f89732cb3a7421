# The two commands: `make run` and `make test`. Everything else is a building block of those,
# or an operator's tool (observe, bench).
CARGO      ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
export GATEWAY_BIN ?= $(TARGET_DIR)/debug/gateway
export FEED_SIM_BIN ?= $(TARGET_DIR)/debug/feed-sim

TLS_DIR    := .run/tls

.PHONY: run run-tls cluster test setup lint test-rust test-asyncapi build-debug test-examples test-browser test-prometheus test-cluster observe bench bench-storm bench-peers soak session-cost

## run: build a release gateway and serve the simulated feed on 127.0.0.1:8080
run:
	$(CARGO) build --release -p gateway
	$(TARGET_DIR)/release/gateway

## run-tls: the same over TLS (https://, wss://) with a self-signed certificate in .run/tls/
run-tls:
	$(CARGO) build --release -p gateway
	scripts/dev-cert.sh $(TLS_DIR)
	@echo "run-tls: trust it with: curl --cacert $(TLS_DIR)/cert.pem https://127.0.0.1:8080/healthz"
	$(TARGET_DIR)/release/gateway --tls-cert $(TLS_DIR)/cert.pem --tls-key $(TLS_DIR)/key.pem

## cluster: nats-server (JetStream), feed-sim, two gateways and HAProxy on loopback; Ctrl-C stops all
cluster:
	deploy/cluster.sh

## test: install what the tests need, lint, then every test suite
test: setup lint test-rust test-asyncapi test-examples test-browser test-prometheus test-cluster
	@echo "make test: all suites passed"

setup:
	@scripts/setup.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test-rust:
	$(CARGO) test --workspace

ASYNCAPI_OBSERVED := $(TARGET_DIR)/test-artifacts/asyncapi-observed.json

## docs/asyncapi.yaml: parsed by the AsyncAPI parser (npm), and checked against every message,
## field and close code a real gateway sends in a scripted session (gateway/tests/asyncapi.rs)
test-asyncapi:
	ASYNCAPI_OBSERVED=$(ASYNCAPI_OBSERVED) $(CARGO) test -p gateway --test asyncapi
	node docs/asyncapi-check/check.mjs docs/asyncapi.yaml $(ASYNCAPI_OBSERVED)

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

## bench: release builds, the benchmark scenarios, bench-storm and the soak, docs/benchmarks.md
bench:
	load-tests/bench.sh

## bench-storm: SSE beside WebSocket and the reconnect storms (also part of bench);
## "Latest `make bench-storm`" in docs/benchmarks.md
bench-storm:
	load-tests/bench_storm.sh

## soak: 30 minutes at the standard load with churning sessions, unscraped; RSS slope and
## RSS after the clients leave, into docs/benchmarks.md (SOAK_MINUTES=N for a shorter run)
soak:
	load-tests/soak.sh

## bench-peers: the gateway beside a Bun pub/sub server and a bare tokio fan-out, one sitting
bench-peers:
	load-tests/bench_peers.sh

## session-cost: memory per idle and per hostile session, CPU of ["*"] subscription storms
## (issue 9; docs/backpressure.md, docs/benchmarks.md). SESSIONS=2500,5000,10000 to choose
## the sizes of the storm
SESSIONS ?= 2500,5000,10000
session-cost:
	$(CARGO) build --release -p gateway -p load-tests --bin gateway --bin session_cost
	$(TARGET_DIR)/release/session_cost --gateway $(TARGET_DIR)/release/gateway --sessions 2000 idle
	$(TARGET_DIR)/release/session_cost --gateway $(TARGET_DIR)/release/gateway --sessions 200 hostile
	$(TARGET_DIR)/release/session_cost --gateway $(TARGET_DIR)/release/gateway --sessions $(SESSIONS) storm
