#!/usr/bin/env bash
# `make soak` (and the last scenario of `make bench`): issue 14's soak. A release gateway at the
# standard load (R=2,000 updates/s over S=500 symbols, C=1,000 clients × K=10 symbols) for
# SOAK_MINUTES, with churning `["*"]` sessions beside it (`load-tests --churn`), and nothing
# scraping /metrics. Its RSS and open files are sampled every 30 s; the report is the RSS slope
# after warm-up (MB per hour) and the RSS after every client has left next to the RSS after
# warm-up, written into docs/benchmarks.md between its soak:begin/end markers.
#
# Pinned like bench.sh: the gateway on core 0 with one shard, the tester on core 1, where the
# machine has two cores and taskset. The gateway is stopped by its PID.
#
# Environment:
#   SOAK_MINUTES=N     minutes of load (default 30; warm-up is a sixth of it, at least 1)
#   SOAK_OUT=FILE      write the report there instead of docs/benchmarks.md
#   SOAK_GATEWAY_BIN   the gateway binary to soak (default: the release build; to compare builds)
#   CARGO_TARGET_DIR   where the release binaries are built (default: ./target)
# Exit code: 0 both targets met, 1 a target missed, 2 the run could not be made.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
export SOAK_OUT=${SOAK_OUT:-$ROOT/docs/benchmarks.md}
export SOAK_MINUTES=${SOAK_MINUTES:-30}
export SOAK_RATE=2000 SOAK_SYMBOLS=500 SOAK_CLIENTS=1000 SOAK_SUBS=10
export SOAK_CHURN=10 SOAK_CHURN_HOLD_MS=2000

log() { printf '[soak %s] %s\n' "$(date +%T)" "$*" >&2; }

log "building release binaries"
cargo build --release -p gateway -p load-tests
export SOAK_GATEWAY_BIN=${SOAK_GATEWAY_BIN:-$TARGET_DIR/release/gateway}
export SOAK_LOADTEST_BIN=$TARGET_DIR/release/load-tests

GW_PIN=()
export SOAK_LT_PIN=""
if command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]]; then
    GW_PIN=(taskset -c 0)
    SOAK_LT_PIN="taskset -c 1"
fi

export SOAK_WORK
SOAK_WORK=$(mktemp -d /tmp/soak.XXXXXX)
GW_PID=""
cleanup() {
    if [[ -n $GW_PID ]]; then
        kill "$GW_PID" 2>/dev/null || true
        wait "$GW_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

GW_ARGS=(--listen 127.0.0.1:0 --shards 1 --sim-symbols "$SOAK_SYMBOLS" --sim-rate "$SOAK_RATE")
export SOAK_GATEWAY_COMMAND="${GW_PIN[*]} gateway ${GW_ARGS[*]}"
"${GW_PIN[@]}" "$SOAK_GATEWAY_BIN" "${GW_ARGS[@]}" >"$SOAK_WORK/gw.out" 2>"$SOAK_WORK/gw.err" &
GW_PID=$!
PORT=""
for _ in $(seq 100); do
    PORT=$(sed -nE 's#.*http://[0-9.]+:([0-9]+)/.*#\1#p' "$SOAK_WORK/gw.out" | head -n1)
    [[ -n $PORT ]] && break
    sleep 0.1
done
if [[ -z $PORT ]]; then
    log "the gateway did not start:"
    cat "$SOAK_WORK/gw.err" >&2
    exit 2
fi
export SOAK_GATEWAY_PID=$GW_PID SOAK_PORT=$PORT
log "gateway pid $GW_PID on port $PORT; $SOAK_MINUTES minutes of load; work files in $SOAK_WORK"
rc=0
python3 "$ROOT/load-tests/soak.py" || rc=$?
exit $rc
