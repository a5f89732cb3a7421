#!/usr/bin/env bash
# make test-prometheus: promtool checks of the config and alert rules (and their unit tests),
# then every dashboard panel and alert rule against a real gateway scraped by a real Prometheus.
# GATEWAY_BIN: the gateway binary (the Makefile exports the debug build's absolute path).
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1 \
   || ! python3 -c 'import websockets' >/dev/null 2>&1; then
  scripts/setup.sh
fi
: "${GATEWAY_BIN:=$PWD/target/debug/gateway}"
export GATEWAY_BIN
exec python3 grafana/tests/live_prometheus.py
