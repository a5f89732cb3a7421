#!/usr/bin/env bash
# `make bench-peers`: the gateway side by side with two peer servers a user could pick instead,
# in one sitting, and the ratios table in docs/benchmarks.md (between its bench-peers:begin/end
# markers; the rest of the file is kept). Issue 10's targets are judged from this table.
#
# The servers: the gateway (`--shards 1 --sim-activity uniform`), the Bun pub/sub server in
# load-tests/peers/bun (Bun from the npm registry, installed here if missing) and the bare tokio
# fan-out load-tests/examples/tokio_fanout.rs. Each has an in-process feed of the same model
# (S symbols, R updates/s in all, uniform activity, batches every 1 ms) and is pinned to core 0;
# the same load tester, pinned to core 1, measures each the same way: the server's CPU and RSS
# from /proc (`--gateway-pid`), quote age from `ts`, `seq` jumps. The runs of one row follow
# each other, so a change in the machine's load touches all three alike.
#
# Rows (all servers unless marked): std (C=1,000, R=2,000), c1k_r20k, c1k_r40k, c5k_r4k,
# c5k_r8k, idle (10,000 sessions at R=1); the gateway alone: gw_sessions (19,500 sessions at
# R=200), gw_overload (C=1,000, R=80,000: twice the c1k_r40k rate), gw_slow (C=1,000, R=2,000,
# 10% of the clients reading at a quarter of their symbols' pace, with small client buffers).
#
# Environment:
#   BENCH_QUICK=1          short runs and fewer sessions: a smoke test, not figures to publish
#   BENCH_ONLY="std ..."   only these rows (names above, space- or comma-separated)
#   BENCH_SERVERS="..."    only these servers of the side-by-side rows (gateway bun tokio)
#   BENCH_OUT=FILE         write the report there instead of docs/benchmarks.md
#   CARGO_TARGET_DIR       where the release binaries are built (default: ./target)
set -euo pipefail

BENCH_TAG=bench-peers
# shellcheck source=load-tests/bench_runs.sh
source "$(dirname "$0")/bench_runs.sh"
OUT=${BENCH_OUT:-$ROOT/docs/benchmarks.md}
ONLY=" $(echo "${BENCH_ONLY:-}" | tr ',' ' ') "
SERVERS=$(echo "${BENCH_SERVERS:-gateway bun tokio}" | tr ',' ' ')

# Run lengths (seconds) and session counts.
if [[ $QUICK == 1 ]]; then
    DUR=4; WARM=1; IDLE_C=2000; SESSIONS_C=4000
else
    DUR=20; WARM=3; IDLE_C=10000; SESSIONS_C=19500
fi
SLOW_RATE=$((K * 2000 / S / 4)) # a quarter of a client's quotes/s at R=2,000

want() { [[ $ONLY == "  " || $ONLY == *" $1 "* ]]; }

# ---- builds and Bun ------------------------------------------------------------------------------
log "building release binaries"
cargo build --release -p gateway -p load-tests
cargo build --release -p load-tests --example tokio_fanout
GW_BIN=$TARGET_DIR/release/gateway
TOKIO_BIN=$TARGET_DIR/release/examples/tokio_fanout
BUN_DIR=load-tests/peers/bun
BUN_BIN=$BUN_DIR/node_modules/.bin/bun
if [[ " $SERVERS " == *" bun "* ]]; then
    BUN_WANT=$(python3 -c "import json; print(json.load(open('$BUN_DIR/package.json'))['devDependencies']['bun'])")
    if [[ $("$BUN_BIN" --version 2>/dev/null || true) != "$BUN_WANT" ]]; then
        command -v npm >/dev/null || { log "npm is needed to install Bun: run scripts/setup.sh"; exit 2; }
        log "installing Bun $BUN_WANT from the npm registry (npm ci in $BUN_DIR)"
        (cd "$BUN_DIR" && npm ci --no-audit --no-fund --loglevel=error) >&2
    fi
    if [[ $("$BUN_BIN" --version 2>/dev/null || true) != "$BUN_WANT" ]]; then
        log "Bun $BUN_WANT did not install: see the npm output above"
        exit 2
    fi
fi

# ---- runs ------------------------------------------------------------------------------------------
RUNS=$WORK/runs.tsv # name, row, server, C, R: what the report writer reads
: >"$RUNS"

# start_peer SERVER RATE [gateway flags…]: sets SRV_PID, SRV_PORT
start_peer() {
    local server=$1 rate=$2
    shift 2
    case $server in
        gateway) start_server gateway "$GW_BIN" --listen 127.0.0.1:0 --shards 1 \
            --sim-symbols "$S" --sim-rate "$rate" --sim-activity uniform "$@" ;;
        bun) start_server bun "$BUN_BIN" "$BUN_DIR/server.js" --port 0 --symbols "$S" \
            --rate "$rate" ;;
        tokio) start_server tokio_fanout "$TOKIO_BIN" --listen 127.0.0.1:0 --symbols "$S" \
            --rate "$rate" ;;
        *) log "unknown server $server (BENCH_SERVERS: gateway bun tokio)"; exit 2 ;;
    esac
}

TOTAL=0
DONE=0
count() { TOTAL=$((TOTAL + $1)); }
N_SERVERS=$(echo "$SERVERS" | wc -w)
for row in std c1k_r20k c1k_r40k c5k_r4k c5k_r8k idle; do want "$row" && count "$N_SERVERS"; done
for row in gw_sessions gw_overload gw_slow; do want "$row" && count 1; done
STARTED=$(date +%s)
LOAD_NOW=$(cut -d' ' -f1 /proc/loadavg)
if python3 -c "import sys; sys.exit(0 if $LOAD_NOW > 1.5 else 1)"; then
    log "load average $LOAD_NOW: other work is running; runs it disturbs are marked ⚠ in the report"
fi

# one ROW SERVER C R [server flags… --] load-tests flags…
one() {
    local row=$1 server=$2 c=$3 r=$4
    shift 4
    local gw_flags=()
    while [[ $# -gt 0 && $1 != -- ]]; do gw_flags+=("$1"); shift; done
    [[ ${1:-} == -- ]] && shift
    local name="${row}_${server}"
    DONE=$((DONE + 1))
    log "($DONE/$TOTAL, $(($(date +%s) - STARTED)) s in) $name: C=$c, R=$r"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$row" "$server" "$c" "$r" >>"$RUNS"
    start_peer "$server" "$r" "${gw_flags[@]}"
    local metrics=()
    [[ $server == gateway ]] || metrics=(--no-gateway-metrics)
    run_lt "$name" -c "$c" "${metrics[@]}" "$@"
    stop_server
}

# row NAME C R RAMP: the row on every server
row() {
    local name=$1 c=$2 r=$3 ramp=$4
    shift 4
    want "$name" || return 0
    local server
    for server in $SERVERS; do
        one "$name" "$server" "$c" "$r" -- --ramp-rate "$ramp" "$@"
    done
}

row std 1000 2000 2000 --warmup "$WARM" --duration "$DUR"
row c1k_r20k 1000 20000 2000 --warmup "$WARM" --duration "$DUR"
row c1k_r40k 1000 40000 2000 --warmup "$WARM" --duration "$DUR"
row c5k_r4k 5000 4000 2500 --warmup "$WARM" --duration "$DUR"
row c5k_r8k 5000 8000 2500 --warmup "$WARM" --duration "$DUR"
row idle "$IDLE_C" 1 2500 --warmup 2 --duration 3

# The gateway alone.
if want gw_sessions; then
    one gw_sessions gateway "$SESSIONS_C" 200 --max-connections 20000 -- --ramp-rate 1500 \
        --clients-per-process $((SESSIONS_C / 2)) --warmup 5 --duration 5 --connect-timeout-ms 20000
fi
if want gw_overload; then
    one gw_overload gateway 1000 80000 -- --ramp-rate 2000 --warmup "$WARM" --duration "$DUR"
fi
# Small client buffers (a 4 KiB kernel receive buffer once Linux doubles 2,048, a 512-byte read)
# hold at most ~1 s of a slow client's quotes on its own side: the rest of its quotes' age is
# what the server committed before it could conflate.
if want gw_slow; then
    one gw_slow gateway 1000 2000 -- --ramp-rate 2000 --slow-fraction 0.1 \
        --slow-rate "$SLOW_RATE" --read-buffer 512 --rcvbuf 2048 --warmup "$WARM" --duration "$DUR"
fi

# ---- the report ------------------------------------------------------------------------------------
log "writing $OUT ($(($(date +%s) - STARTED)) s of runs)"
export_machine
BUN_VERSION=$("$BUN_BIN" --version 2>/dev/null || echo "?")
export OUT SLOW_RATE BUN_VERSION
export BENCH_ONLY=${BENCH_ONLY:-} BENCH_SERVERS=$SERVERS
python3 "$ROOT/load-tests/bench_peers_report.py"
log "done: $OUT (raw JSON reports and logs of every run: $WORK)"
