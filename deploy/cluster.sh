#!/usr/bin/env bash
# `make cluster`: a whole market data system on loopback, from release builds and Debian's
# packages: nats-server with JetStream (stored in a temporary folder), feed-sim publishing the
# simulated market, two gateways (deploy/gateway-1.toml, deploy/gateway-2.toml) and HAProxy in
# front of them (deploy/haproxy.cfg). Prints where to point a browser, a client and the load
# tester. Ctrl-C stops everything it started, by PID, and removes the temporary folder.
#
# Environment: FEED_SIM_ARGS (extra feed-sim flags, e.g. "--rate 5000"), CARGO_TARGET_DIR.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
NATS_PORT=4222
NATS_MONITOR_PORT=8222
GW_PORTS=(8081 8082)
LB_PORT=8080

log() { printf '[cluster %s] %s\n' "$(date +%T)" "$*" >&2; }

if ! command -v nats-server >/dev/null || ! command -v haproxy >/dev/null; then
    scripts/setup.sh
fi
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$NATS_PORT" "$NATS_MONITOR_PORT" "${GW_PORTS[@]}" "$LB_PORT"; do
    if port_busy "$port"; then
        log "port $port on 127.0.0.1 is in use (another make cluster, make run or nats-server?): stop that first"
        exit 1
    fi
done

log "building release binaries (gateway, feed-sim, load-tests)"
cargo build --release -p gateway -p feed-sim -p load-tests
BIN=$TARGET_DIR/release

WORK=$(mktemp -d /tmp/cluster.XXXXXX)
PIDS=()
NAMES=()
stop_all() {
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill "${PIDS[$i]}" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
    log "stopped everything it started"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# start NAME ARGV...: runs in the background, logs to $WORK/NAME.log, remembers the PID
start() {
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    NAMES+=("$name")
}

# wait_for WHAT SECONDS COMMAND...: until COMMAND succeeds
wait_for() {
    local what=$1 secs=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "$what did not come up within ${secs}s; its log:"
            tail -n 20 "$WORK"/*.log >&2
            exit 1
        fi
        sleep 0.1
    done
}
ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/readyz") == 200 ]]; }

log "nats-server with JetStream in $WORK/jetstream"
start nats-server nats-server -js -sd "$WORK/jetstream" -a 127.0.0.1 \
    -p "$NATS_PORT" -m "$NATS_MONITOR_PORT"
wait_for nats-server 10 port_busy "$NATS_PORT"

log "feed-sim ${FEED_SIM_ARGS:-}"
# shellcheck disable=SC2086
start feed-sim "$BIN/feed-sim" --nats "nats://127.0.0.1:$NATS_PORT" ${FEED_SIM_ARGS:-}
wait_for feed-sim 20 grep -q "publishing the simulated market" "$WORK/feed-sim.log"

for i in 1 2; do
    log "gateway $i: gateway --config deploy/gateway-$i.toml"
    start "gateway-$i" "$BIN/gateway" --config "deploy/gateway-$i.toml"
done
for port in "${GW_PORTS[@]}"; do
    wait_for "the gateway on $port" 20 ready "$port"
done

log "haproxy -f deploy/haproxy.cfg on 127.0.0.1:$LB_PORT"
HAPROXY_BIND=127.0.0.1:$LB_PORT GATEWAY_1=127.0.0.1:${GW_PORTS[0]} GATEWAY_2=127.0.0.1:${GW_PORTS[1]} \
    start haproxy haproxy -db -f deploy/haproxy.cfg
wait_for haproxy 10 ready "$LB_PORT"

cat <<EOF

  make cluster is up (logs in $WORK):

    nats-server   nats://127.0.0.1:$NATS_PORT   (monitoring: http://127.0.0.1:$NATS_MONITOR_PORT/jsz?streams=1)
    feed-sim      publishing on md.quote.<SYMBOL>, stream MD_QUOTES
    gateway gw-1  http://127.0.0.1:${GW_PORTS[0]}/   (deploy/gateway-1.toml)
    gateway gw-2  http://127.0.0.1:${GW_PORTS[1]}/   (deploy/gateway-2.toml)
    haproxy       http://127.0.0.1:$LB_PORT/   (deploy/haproxy.cfg)

  Browser:      http://127.0.0.1:$LB_PORT/
  Client:       python3 examples/quotes.py ws://127.0.0.1:$LB_PORT/ws AAPL MSFT
                (run it twice: "server" in the welcome shows which gateway each landed on)
  Load tester:  $BIN/load-tests --url ws://127.0.0.1:${GW_PORTS[0]}/ws,ws://127.0.0.1:${GW_PORTS[1]}/ws -c 1000 -k 10 --duration 20
                (or --url ws://127.0.0.1:$LB_PORT/ws through HAProxy; the report is per gateway)

  Ctrl-C stops everything.
EOF

# Until Ctrl-C, or until one of them dies (then say which, and stop the rest).
set +e
wait -n "${PIDS[@]}"
for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
        log "${NAMES[$i]} exited; its log ($WORK):"
        tail -n 20 "$WORK/${NAMES[$i]}.log" >&2 || true
    fi
done
exit 1
