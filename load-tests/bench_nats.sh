#!/usr/bin/env bash
# What the NATS hop adds to the quote age, at the standard load (C=1,000, R=2,000, K=10, S=500):
#   A  one gateway, embedded simulator
#   B  two gateways, each with its own embedded simulator (the same seed), clients over both
#   C  two gateways on NATS (nats-server with JetStream, feed-sim), clients over both
# B and C share the machine the same way (two gateways, one tester), so C − B is the hop:
# feed-sim → nats-server → gateway. Prints a Markdown table for docs/benchmarks.md.
# Release builds; every process started here is stopped by its PID; loopback only.
#
# Environment: DUR (seconds measured, default 20), WARM (default 3), CARGO_TARGET_DIR.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
DUR=${DUR:-20}
WARM=${WARM:-3}
S=500 R=2000 C=1000 K=10

log() { printf '[bench-nats %s] %s\n' "$(date +%T)" "$*" >&2; }
cargo build --release -p gateway -p feed-sim -p load-tests >&2

WORK=$(mktemp -d /tmp/bench-nats.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
COMMANDS=$WORK/commands.txt
: >"$COMMANDS"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/readyz") == 200 ]]; }
wait_ready() {
    for _ in $(seq 200); do ready "$1" && return 0; sleep 0.1; done
    log "the gateway on $1 did not become ready"; tail -n 20 "$WORK"/*.log >&2; exit 2
}
# gateway NAME PORT FLAGS...
gateway() {
    local name=$1 port=$2
    shift 2
    echo "gateway --listen 127.0.0.1:$port --server-id $name --shards 1 $*" >>"$COMMANDS"
    "$BIN/gateway" --listen "127.0.0.1:$port" --server-id "$name" --shards 1 "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
}
stop_all() {
    cleanup
    PIDS=()
    sleep 1
}
# run_lt NAME URLS
run_lt() {
    local name=$1 urls=$2
    local args=(--url "$urls" -c "$C" -k "$K" --ramp-rate 2000 --warmup "$WARM" --duration "$DUR" -q)
    echo "load-tests ${args[*]} --json $name.json" >>"$COMMANDS"
    "$BIN/load-tests" "${args[@]}" --json "$WORK/$name.json" >"$WORK/$name.summary" 2>&1 || {
        log "load-tests failed for $name"; cat "$WORK/$name.summary" >&2; exit 2; }
    log "$name: $(grep -E 'fast ' "$WORK/$name.summary" | head -1)"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

log "A: one gateway, embedded simulator"
P1=$(free_port)
gateway gw-a "$P1" --sim-symbols "$S" --sim-rate "$R"
wait_ready "$P1"
run_lt A "ws://127.0.0.1:$P1/ws"
stop_all

log "B: two gateways, each with its own simulator"
P1=$(free_port) P2=$(free_port)
gateway gw-1 "$P1" --sim-symbols "$S" --sim-rate "$R"
gateway gw-2 "$P2" --sim-symbols "$S" --sim-rate "$R"
wait_ready "$P1"
wait_ready "$P2"
run_lt B "ws://127.0.0.1:$P1/ws,ws://127.0.0.1:$P2/ws"
stop_all

log "C: two gateways on NATS"
NP=$(free_port) P1=$(free_port) P2=$(free_port)
echo "nats-server -js -sd TMP -a 127.0.0.1 -p $NP" >>"$COMMANDS"
nats-server -js -sd "$WORK/jetstream" -a 127.0.0.1 -p "$NP" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)
sleep 0.5
echo "feed-sim --nats nats://127.0.0.1:$NP --symbols $S --rate $R" >>"$COMMANDS"
"$BIN/feed-sim" --nats "nats://127.0.0.1:$NP" --symbols "$S" --rate "$R" >"$WORK/feed-sim.log" 2>&1 &
PIDS+=($!)
gateway gw-1 "$P1" --feed "nats://127.0.0.1:$NP"
gateway gw-2 "$P2" --feed "nats://127.0.0.1:$NP"
wait_ready "$P1"
wait_ready "$P2"
run_lt C "ws://127.0.0.1:$P1/ws,ws://127.0.0.1:$P2/ws"
stop_all
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$WORK" "$LOAD_BEFORE" "$LOAD_AFTER" <<'EOF'
import json, sys
work, before, after = sys.argv[1:]
names = {"A": "one gateway, embedded simulator", "B": "two gateways, embedded simulators",
         "C": "two gateways on NATS (feed-sim → nats-server → gateways)"}
rows = {}
print("| run | deliveries/s | fast p50 ms | fast p99 ms | fast p99.9 ms | seq jumps | per gateway (sessions, p50 / p99 ms) | cores busy % |")
print("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
for run in "ABC":
    r = json.load(open(f"{work}/{run}.json"))
    f = r["fast"]["age_ms"]
    rows[run] = f
    gws = "; ".join(f"{g['server']}: {g['sessions']}, {g['fast_age_ms']['p50']:.2f} / {g['fast_age_ms']['p99']:.2f}"
                    for g in r.get("per_gateway", []))
    cores = " / ".join(f"{c['busy_percent']:.0f}" for c in r.get("cores", []))
    print(f"| {run}: {names[run]} | {r['total']['deliveries_per_sec']:,.0f} | {f['p50']:.2f} | {f['p99']:.2f} | "
          f"{f['p999']:.2f} | {r['total']['seq_jumps']} | {gws} | {cores} |")
print()
print(f"NATS hop (C − B): p50 {rows['C']['p50'] - rows['B']['p50']:+.2f} ms, p99 {rows['C']['p99'] - rows['B']['p99']:+.2f} ms; "
      f"C − A: p50 {rows['C']['p50'] - rows['A']['p50']:+.2f} ms, p99 {rows['C']['p99'] - rows['A']['p99']:+.2f} ms.")
print(f"Load average before: {before}; after: {after}.")
EOF
echo
echo "Commands:"
cat "$COMMANDS"
