#!/usr/bin/env bash
# make observe: a release gateway and a real Prometheus scraping it, both on loopback.
#
#   grafana/observe.sh [gateway flags...]      e.g. grafana/observe.sh --sim-symbols 2000 --sim-rate 20000
#
# Environment:
#   GATEWAY_LISTEN     gateway address (default 127.0.0.1:8080; 127.0.0.1:0 picks a free port)
#   PROMETHEUS_LISTEN  Prometheus address (default 127.0.0.1:9090)
#   CARGO_TARGET_DIR   honoured like cargo does (default target/)
#   OBSERVE_GATEWAY_BIN  run this gateway binary instead of building the release one
#   OBSERVE_TRAFFIC=1  also run demo clients (the live test's mix: readers, slow and stuck
#                      clients, bad requests), so every panel of the dashboard has data
#
# Prometheus gets its own temporary data directory and a config generated from
# grafana/prometheus.yml (scrape every 5 s, the alert rules of grafana/rules/) with the gateway's
# actual address. Ctrl-C stops both processes (by PID) and removes the temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

GATEWAY_LISTEN=${GATEWAY_LISTEN:-127.0.0.1:8080}
PROMETHEUS_LISTEN=${PROMETHEUS_LISTEN:-127.0.0.1:9090}

if ! command -v prometheus >/dev/null 2>&1; then
  echo "observe: prometheus is not installed; running scripts/setup.sh"
  scripts/setup.sh
elif [ "${OBSERVE_TRAFFIC:-0}" = 1 ] && ! python3 -c 'import websockets' >/dev/null 2>&1; then
  echo "observe: the demo clients need python websockets; running scripts/setup.sh"
  scripts/setup.sh
fi

if [ -n "${OBSERVE_GATEWAY_BIN:-}" ]; then
  gateway_bin=$OBSERVE_GATEWAY_BIN
else
  echo "observe: building the release gateway (cargo build --release -p gateway)"
  ${CARGO:-cargo} build --release -p gateway
  target_dir=${CARGO_TARGET_DIR:-target}
  case "$target_dir" in /*) ;; *) target_dir="$ROOT/$target_dir" ;; esac
  gateway_bin="$target_dir/release/gateway"
fi
[ -x "$gateway_bin" ] || { echo "observe: $gateway_bin is not an executable" >&2; exit 1; }

http_ok() {  # http_ok URL: true when URL answers 2xx
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null
  else
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null
  fi
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/gateway-observe.XXXXXX")
gw_pid=""
prom_pid=""
traffic_pid=""
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "observe: stopping"
  for pid in $traffic_pid $prom_pid $gw_pid; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in $traffic_pid $prom_pid $gw_pid; do
    # give each a few seconds for a graceful stop (the gateway closes its sessions with 1001)
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- the gateway
# setsid: a session of its own, so Ctrl-C reaches only this script, which then stops both
# children itself (by PID, gracefully) instead of racing them.
setsid "$gateway_bin" --listen "$GATEWAY_LISTEN" "$@" >"$TMP/gateway.out" 2>"$TMP/gateway.log" &
gw_pid=$!
gw_addr=""
for _ in $(seq 300); do
  if line=$(grep -m1 -oE 'http://[0-9.]+:[0-9]+/' "$TMP/gateway.out" 2>/dev/null); then
    gw_addr=${line#http://}
    gw_addr=${gw_addr%/}
    break
  fi
  kill -0 "$gw_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$gw_addr" ]; then
  echo "observe: the gateway did not start; its log:" >&2
  cat "$TMP/gateway.log" >&2
  exit 1
fi

# ---------------------------------------------------------------- Prometheus
mkdir -p "$TMP/data"
sed -e "s#\"127.0.0.1:8080\"#\"$gw_addr\"#" \
    -e "s#- rules/gateway.rules.yml#- $ROOT/grafana/rules/gateway.rules.yml#" \
    grafana/prometheus.yml >"$TMP/prometheus.yml"
grep -q "\"$gw_addr\"" "$TMP/prometheus.yml" || { echo "observe: could not set the scrape target" >&2; exit 1; }
setsid prometheus --config.file="$TMP/prometheus.yml" \
  --storage.tsdb.path="$TMP/data" \
  --storage.tsdb.retention.time=1d \
  --web.listen-address="$PROMETHEUS_LISTEN" \
  >"$TMP/prometheus.log" 2>&1 &
prom_pid=$!
ready=""
for _ in $(seq 150); do
  if http_ok "http://$PROMETHEUS_LISTEN/-/ready"; then ready=1; break; fi
  kill -0 "$prom_pid" 2>/dev/null || break
  sleep 0.2
done
if [ -z "$ready" ]; then
  echo "observe: Prometheus did not start; its log:" >&2
  tail -n 30 "$TMP/prometheus.log" >&2
  exit 1
fi

traffic_note="Demo clients: OBSERVE_TRAFFIC=1 make observe (or point the load tester at the gateway)."
if [ "${OBSERVE_TRAFFIC:-0}" = 1 ]; then
  setsid python3 grafana/tests/live_prometheus.py --traffic "$gw_addr" >"$TMP/traffic.log" 2>&1 &
  traffic_pid=$!
  traffic_note="Demo clients are running (log: $TMP/traffic.log)."
fi

cat <<EOF

  Gateway      http://$gw_addr/            (WebSocket: ws://$gw_addr/ws, metrics: http://$gw_addr/metrics)
  Prometheus   http://$PROMETHEUS_LISTEN/  (targets: http://$PROMETHEUS_LISTEN/targets, alerts: http://$PROMETHEUS_LISTEN/alerts)

  Prometheus scrapes the gateway every 5 s and evaluates grafana/rules/gateway.rules.yml.

  Grafana: add a Prometheus datasource with URL http://$PROMETHEUS_LISTEN (Connections > Data
  sources > Add > Prometheus; "Scrape interval" 5s), then Dashboards > New > Import, upload
  $ROOT/grafana/dashboards/gateway.json and pick that datasource. Or provision both with the files
  in $ROOT/grafana/provisioning/ (see docs/operations.md).

  $traffic_note
  Logs: $TMP/gateway.log  $TMP/prometheus.log
  Ctrl-C stops both.

EOF

# Wait until Ctrl-C, or until one of the two exits by itself.
while kill -0 "$gw_pid" 2>/dev/null && kill -0 "$prom_pid" 2>/dev/null; do
  sleep 1
done
kill -0 "$gw_pid" 2>/dev/null || { echo "observe: the gateway exited; its log:" >&2; tail -n 20 "$TMP/gateway.log" >&2; }
kill -0 "$prom_pid" 2>/dev/null || { echo "observe: Prometheus exited; its log:" >&2; tail -n 20 "$TMP/prometheus.log" >&2; }
exit 1
