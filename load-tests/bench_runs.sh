# Sourced by load-tests/bench.sh (`make bench`) and load-tests/bench_peers.sh (`make
# bench-peers`): the settings, pinning, run directory and helpers both use, so that every
# server is started, sampled and measured the same way. Not a script of its own.
#
# The server under test runs pinned to core 0, the tester pinned to core 1, where the machine
# has two cores and taskset. Every server started here is stopped by its PID, never by name.
#
# Environment:
#   BENCH_QUICK=1      shorter runs (a smoke test of the scripts, not figures to publish)
#   CARGO_TARGET_DIR   where the release binaries are built (default: ./target)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
QUICK=${BENCH_QUICK:-0}
S=500 # symbols
K=10  # symbols per client
LT_BIN=$TARGET_DIR/release/load-tests

log() { printf '[%s %s] %s\n' "${BENCH_TAG:-bench}" "$(date +%T)" "$*" >&2; }

SRV_PIN=()
LT_PIN=()
if command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]]; then
    SRV_PIN=(taskset -c 0)
    LT_PIN=(taskset -c 1)
fi
PINNED=$([[ ${#SRV_PIN[@]} -gt 0 ]] && echo yes || echo no)

# Every server gets the same open-file limit (the tester raises its own).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d "/tmp/${BENCH_TAG:-bench}.XXXXXX")
SRV_PID=""
SRV_PORT=""
cleanup() {
    if [[ -n $SRV_PID ]]; then
        kill "$SRV_PID" 2>/dev/null || true
        wait "$SRV_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

COMMANDS=$WORK/commands.txt
: >"$COMMANDS"

# start_server LABEL BIN [args…]: starts BIN pinned to the server core; LABEL names it in
# commands.txt. The server must print `http://HOST:PORT/` on stdout once it listens.
# Sets SRV_PID and SRV_PORT.
start_server() {
    local label=$1 bin=$2
    shift 2
    echo "${SRV_PIN[*]} $label $*" >>"$COMMANDS"
    "${SRV_PIN[@]}" "$bin" "$@" >"$WORK/server.out" 2>"$WORK/server.err" &
    SRV_PID=$!
    SRV_PORT=""
    for _ in $(seq 100); do
        SRV_PORT=$(sed -nE 's#.*http://[0-9.]+:([0-9]+)/.*#\1#p' "$WORK/server.out" | head -n1)
        [[ -n $SRV_PORT ]] && break
        sleep 0.1
    done
    if [[ -z $SRV_PORT ]]; then
        log "$label did not start:"
        cat "$WORK/server.err" >&2
        exit 2
    fi
    # Let the feed and the event loops settle before the RSS baseline and the first connection.
    sleep 1
}

stop_server() {
    kill "$SRV_PID" 2>/dev/null || true
    wait "$SRV_PID" 2>/dev/null || true
    SRV_PID=""
    # Let the sessions' sockets leave the loopback before the next server starts.
    sleep 1
}

# run_lt NAME [flags…]: one load-tests run against the current server, its report in
# $WORK/NAME.json. The server's CPU and RSS come from /proc (--gateway-pid) for every server.
run_lt() {
    local name=$1
    shift
    local args=(--url "ws://127.0.0.1:$SRV_PORT/ws" -k "$K" --gateway-pid "$SRV_PID" "$@")
    echo "${LT_PIN[*]} load-tests ${args[*]} --json $name.json" >>"$COMMANDS"
    local rc=0
    "${LT_PIN[@]}" "$LT_BIN" "${args[@]}" --json "$WORK/$name.json" \
        >"$WORK/$name.summary" 2>"$WORK/$name.progress" || rc=$?
    if [[ $rc -ge 2 || ! -s $WORK/$name.json ]]; then
        log "load-tests failed for $name (exit $rc):"
        tail -n 20 "$WORK/$name.progress" >&2
        exit 2
    fi
    log "$name: $(jget "$WORK/$name.json" total.deliveries_per_sec) deliveries/s," \
        "fast p99 $(jget "$WORK/$name.json" fast.age_ms.p99) ms," \
        "seq jumps $(jget "$WORK/$name.json" total.seq_jumps)," \
        "server cpu $(jget "$WORK/$name.json" gateway.cpu_percent_of_core)%," \
        "tester cpu $(jget "$WORK/$name.json" tester.cpu_percent_of_core)%"
}

# jget FILE a.b.c: one value of a JSON report
jget() {
    python3 - "$1" "$2" <<'EOF'
import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    v = v.get(k) if isinstance(v, dict) else None
print("null" if v is None else (f"{v:.3f}".rstrip("0").rstrip(".") if isinstance(v, float) else v))
EOF
}

# le A B: A <= B (floats)
le() { python3 -c "import sys; sys.exit(0 if float('$1') <= float('$2') else 1)"; }

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# export_machine: what the report writers read about the machine and the run.
export_machine() {
    MACHINE_CPU=$(lscpu 2>/dev/null | sed -nE 's/^Model name:[[:space:]]+//p' | head -n1)
    MACHINE_CORES=$(nproc)
    KERNEL=$(uname -r)
    LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
    export WORK S K QUICK MACHINE_CPU MACHINE_CORES KERNEL LOAD_BEFORE LOAD_AFTER PINNED
}
