#!/usr/bin/env bash
# `make bench-storm` (and part of `make bench`): issue 12's figures. Release builds, then a
# fresh release gateway per run on loopback:
#   ws_standard / sse_standard  the standard load (C=1,000, R=2,000) over WebSocket and over
#                               SSE, side by side (SSE's cost per delivery as a ratio)
#   storm_ws_c1000              reconnect storm: 1,000 WebSocket clients drop at once, stay away
#                               1 s (well inside the default 5 s history), reconnect resuming
#   storm_ws_c5000              the same with 5,000 clients (2 tester processes)
#   storm_sse_c1000             the 1,000-client storm over SSE (`resume_epoch` + `since`)
#   storm_ws_c1000_p8000        an 8 s pause, longer than the history: every symbol snapshotted
# and the "Latest `make bench-storm`" section of docs/benchmarks.md, between its
# bench-storm:begin/end markers (the rest of the file is kept).
#
# Pinning and helpers as `make bench` (bench_runs.sh): the gateway on core 0 with one shard,
# the tester on core 1. Every gateway started here is stopped by its PID.
#
# Environment:
#   BENCH_QUICK=1      shorter runs (a smoke test of this script, not figures to publish)
#   BENCH_OUT=FILE     write the section there instead of docs/benchmarks.md
#   CARGO_TARGET_DIR   where the release binaries are built (default: ./target)
set -euo pipefail

BENCH_TAG=bench-storm
# shellcheck source=load-tests/bench_runs.sh
source "$(dirname "$0")/bench_runs.sh"
OUT=${BENCH_OUT:-$ROOT/docs/benchmarks.md}

R=2000
PAUSE=1000      # ms: a typical reconnect, inside the default --history-ms (5,000)
PAUSE_LONG=8000 # ms: longer than the history, so resume falls back to snapshots
if [[ $QUICK == 1 ]]; then
    DUR=4; WARM=1; DUR_LONG=10
else
    DUR=20; WARM=3; DUR_LONG=15
fi

log "building release binaries"
cargo build --release -p gateway -p load-tests
GW_BIN=$TARGET_DIR/release/gateway

start_gateway() {
    start_server gateway "$GW_BIN" --listen 127.0.0.1:0 --shards 1 --sim-symbols "$S" \
        --sim-rate "$R" "$@"
}

# run NAME [flags…]: a fresh gateway, one load-tests run, the gateway stopped. A run whose SLO
# is missed (exit 1) is kept: the report says which check missed.
run() {
    local name=$1
    shift
    start_gateway
    run_lt "$name" --ramp-rate 2000 "$@"
    stop_server
}

log "standard load over WebSocket and over SSE"
run ws_standard -c 1000 --warmup "$WARM" --duration "$DUR"
run sse_standard -c 1000 --transport sse --warmup "$WARM" --duration "$DUR"

log "reconnect storms (pause $PAUSE ms)"
run storm_ws_c1000 -c 1000 --storm --storm-pause-ms "$PAUSE" --warmup "$WARM" --duration "$DUR"
run storm_ws_c5000 -c 5000 --clients-per-process 2500 --storm --storm-pause-ms "$PAUSE" \
    --warmup "$WARM" --duration "$DUR" --connect-timeout-ms 20000
run storm_sse_c1000 -c 1000 --transport sse --storm --storm-pause-ms "$PAUSE" \
    --warmup "$WARM" --duration "$DUR"

log "reconnect storm longer than the history (pause $PAUSE_LONG ms)"
run storm_ws_c1000_p8000 -c 1000 --storm --storm-pause-ms "$PAUSE_LONG" --warmup "$WARM" \
    --duration "$DUR_LONG"

log "writing $OUT"
export_machine
export OUT R PAUSE PAUSE_LONG
python3 "$ROOT/load-tests/bench_storm_report.py"
log "done: $OUT (raw JSON reports and logs of every run: $WORK)"
