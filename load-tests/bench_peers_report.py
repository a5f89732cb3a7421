#!/usr/bin/env python3
"""Writes the `make bench-peers` section of docs/benchmarks.md from the JSON reports of
load-tests/bench_peers.sh: the gateway beside the Bun and bare tokio peers, as ratios, issue
10's targets met or missed by how much, every run's raw figures, and the exact commands.

Reads the environment bench_peers.sh exports (WORK: the run directory with NAME.json reports,
runs.tsv and commands.txt; OUT: the markdown file). Only the text between
`<!-- bench-peers:begin -->` and `<!-- bench-peers:end -->` is replaced; the rest is kept.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_report_parts import (CONTENTION_RULE, commands_block, cores_of, g, load_runs,  # noqa: E402
                          machine_lines, mark, now_utc, num, replace_section, rss_flat)

BEGIN = "<!-- bench-peers:begin -->"
END = "<!-- bench-peers:end -->"
# Deliveries count as "≥ 1.0× the best peer" within this: every server gets the same R, but
# each feed draws its own random symbols, so the deliveries of two complete runs differ by
# well under 1%.
DELIVERY_TOLERANCE = 0.99
# A tester at this much of its core may be what limits the run.
TESTER_BUSY_PERCENT = 90

env = os.environ
work = env["WORK"]
S, K = int(env["S"]), int(env["K"])
pin = env.get("PINNED") == "yes"
quick = env.get("QUICK") == "1"
PEERS = [("bun", f"Bun {env.get('BUN_VERSION', '?')} `server.publish`"),
         ("tokio", "bare tokio fan-out")]
SERVER_NAMES = {"gateway": "gateway", "bun": "Bun", "tokio": "tokio fan-out"}

reports = load_runs(work)
runs = {}  # (row, server) -> report, with "_c", "_r", "_name"
with open(os.path.join(work, "runs.tsv")) as f:
    for line in f:
        name, row, server, c, r = line.rstrip("\n").split("\t")
        if name in reports:
            rep = reports[name]
            rep.update(_name=name, _row=row, _server=server, _c=int(c), _r=int(r))
            runs[(row, server)] = rep


def run(row, server="gateway"):
    return runs.get((row, server))


def flags(r):
    """⚠ on a run made while other work shared the cores, ‡ where the tester neared its limit."""
    if not r:
        return ""
    _, contended = cores_of(r, pin)
    tester = g(r, "tester.cpu_percent_of_core", 0) or 0
    return (" ⚠" if contended else "") + (" ‡" if tester >= TESTER_BUSY_PERCENT else "")


# ---- side by side ---------------------------------------------------------------------------

# (row, label, [(figure, path or function, digits, lower is better)])
cpu = ("server CPU, % of a core", lambda r: g(r, "gateway.cpu_percent_of_core"), 1, True)
p99 = ("p99 quote age, ms", lambda r: g(r, "fast.age_ms.p99"), 2, True)
jumps = ("seq jumps", lambda r: g(r, "fast.seq_jumps"), 0, True)
dps = ("deliveries/s", lambda r: g(r, "total.deliveries_per_sec"), 0, False)
missed = ("updates missed (conflated or dropped)", lambda r: g(r, "total.missed_updates"), 0, True)


def idle_kib(r):
    v = g(r, "gateway.rss_bytes_per_session")
    return None if v is None else v / 1024


def expected(c, r):
    return c * K * r / S


ROWS = [
    ("std", 1000, 2000, [cpu, p99, jumps]),
    ("c1k_r20k", 1000, 20000, [dps, missed, p99, cpu]),
    ("c1k_r40k", 1000, 40000, [dps, missed, p99, cpu]),
    ("c5k_r4k", 5000, 4000, [dps, jumps, missed, p99, cpu]),
    ("c5k_r8k", 5000, 8000, [dps, jumps, missed, p99, cpu]),
    ("idle", None, 1, [("RSS per idle session, KiB", idle_kib, 2, True)]),
]


def ratio(gw, peer, digits=2):
    if gw is None or peer is None:
        return "?"
    if peer == 0:
        # A count the peer has none of (missed updates, jumps): no ratio says more than the
        # figures beside it.
        return "–"
    return f"{gw / peer:.{digits}f}×"


def best_peer(fig, row):
    """(server, value) of the better peer for this figure, or (None, None)."""
    _, get, _, lower = fig
    vals = [(s, get(run(row, s))) for s, _ in PEERS if run(row, s)]
    vals = [(s, v) for s, v in vals if v is not None]
    if not vals:
        return None, None
    return (min if lower else max)(vals, key=lambda x: x[1])


side = []
side.append("| run | figure | gateway | " + " | ".join(label for _, label in PEERS)
            + " | gateway ÷ Bun | gateway ÷ tokio | gateway ÷ best peer |")
side.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for row, c, r, figs in ROWS:
    gw = run(row)
    if not gw and not any(run(row, s) for s, _ in PEERS):
        continue
    c = c or g(gw or run(row, "bun") or run(row, "tokio"), "settings.clients", 0)
    if row == "idle":
        label = f"idle, {num(c)} sessions × {K} subscriptions, R=1"
    else:
        label = f"C={num(c)}, R={num(r)} ({num(expected(c, r) / 1000, 0)}k deliveries/s expected)"
    for i, fig in enumerate(figs):
        name, get, digits, _ = fig
        values = [get(gw) if gw else None] + [get(run(row, s)) if run(row, s) else None
                                              for s, _ in PEERS]
        cells = [num(v, digits) + flags(rep) if rep else "not run"
                 for v, rep in zip(values, [gw] + [run(row, s) for s, _ in PEERS])]
        ratios = [ratio(values[0], v) for v in values[1:]]
        bs, bv = best_peer(fig, row)
        rb = ratio(values[0], bv)
        best = f"{rb} ({SERVER_NAMES[bs]})" if bs and rb not in ("–", "?") else rb
        side.append(f"| {label if i == 0 else ''} | {name} | " + " | ".join(cells) + " | "
                    + " | ".join(ratios) + f" | {best} |")

# ---- targets ---------------------------------------------------------------------------------

targets = []


def target(what, ok, measured, rows=()):
    """One target's line; `rows`: the rows its verdict rests on (a busy run voids it)."""
    verdict = "not run" if ok is None else mark(ok)
    busy = [rep for row in rows for rep in (run(row, s) for s in SERVER_NAMES) if rep
            and cores_of(rep, pin)[1]]
    if ok is not None and busy:
        verdict += " ⚠ (busy machine: not a verdict)"
    targets.append((what, measured, verdict))


def over(v, limit, unit):
    return f" (over by {num(v - limit, 2)} {unit})" if v is not None and v > limit else ""


std = run("std")
if std:
    bun = run("std", "bun")
    gcpu, bcpu = g(std, "gateway.cpu_percent_of_core"), g(bun, "gateway.cpu_percent_of_core") if bun else None
    if bcpu is not None and gcpu is not None:
        target("C=1,000, R=2,000: the gateway's CPU ≤ Bun's", gcpu <= bcpu,
               f"{num(gcpu)}% against Bun's {num(bcpu)}% ({ratio(gcpu, bcpu)}"
               + (f"; over by {num(gcpu - bcpu)} points" if gcpu > bcpu else "") + ")", ["std"])
    else:
        target("C=1,000, R=2,000: the gateway's CPU ≤ Bun's", None, "Bun not run")
    v = g(std, "fast.age_ms.p99")
    target("C=1,000, R=2,000: p99 ≤ 1 ms", v is not None and v <= 1, f"{num(v, 2)} ms{over(v, 1, 'ms')}",
           ["std"])
    v = g(std, "fast.seq_jumps")
    target("C=1,000, R=2,000: no `seq` jumps", v == 0,
           f"{num(v)} jumps ({num(g(std, 'fast.missed_updates'))} updates missed)", ["std"])
else:
    target("C=1,000, R=2,000: CPU ≤ Bun's, p99 ≤ 1 ms, no `seq` jumps", None, "–")


def delivery_target(row, label, with_jumps):
    gw = run(row)
    if not gw:
        target(f"{label}: deliveries ≥ 1.0× the best peer, p99 ≤ 100 ms", None, "–")
        return
    bs, bv = best_peer(dps, row)
    v = g(gw, "total.deliveries_per_sec")
    if bs:
        rt = v / bv if bv else None
        target(f"{label}: deliveries ≥ 1.0× the best peer", rt is not None and rt >= DELIVERY_TOLERANCE,
               f"{num(v, 0)}/s against {SERVER_NAMES[bs]}'s {num(bv, 0)}/s: {ratio(v, bv)}"
               + (f" (short by {num((1 - rt) * 100)}%)" if rt is not None and rt < DELIVERY_TOLERANCE else ""),
               [row])
    else:
        target(f"{label}: deliveries ≥ 1.0× the best peer", None, f"{num(v, 0)}/s; no peer run")
    p = g(gw, "fast.age_ms.p99")
    target(f"{label}: p99 ≤ 100 ms", p is not None and p <= 100, f"{num(p, 1)} ms{over(p, 100, 'ms')}",
           [row])
    if with_jumps:
        j = g(gw, "fast.seq_jumps")
        target(f"{label}: no `seq` jumps", j == 0,
               f"{num(j)} jumps ({num(g(gw, 'fast.missed_updates'))} updates missed)", [row])


delivery_target("c5k_r4k", "C=5,000, R=4,000", True)
delivery_target("c1k_r40k", "C=1,000, R=40,000", False)

r = run("gw_sessions")
if r:
    j = g(r, "total.seq_jumps")
    held = g(r, "connect.open_at_window_end", 0)
    target(f"{num(r['_c'])} sessions at R=200: no `seq` jumps", j == 0 and held == r["_c"],
           f"{num(j)} jumps ({num(g(r, 'total.missed_updates'))} updates missed); {num(held)} of "
           f"{num(r['_c'])} sessions held; p99 {num(g(r, 'fast.age_ms.p99'), 1)} ms", ["gw_sessions"])
else:
    target("19,500 sessions at R=200: no `seq` jumps", None, "–")

r = run("gw_overload")
if r:
    p = g(r, "fast.age_ms.p99")
    flat, start, end = rss_flat(r)
    target(f"2× overload (C=1,000, R={num(r['_r'])}): p99 ≤ 100 ms, RSS flat",
           p is not None and p <= 100 and bool(flat),
           f"p99 {num(p, 1)} ms{over(p, 100, 'ms')}; RSS {num((start or 0) / 1024)} → "
           f"{num((end or 0) / 1024)} MiB over the window ({'flat' if flat else 'not flat'}: "
           f"flat is ≤ 5% or 8 MiB of growth); {num(g(r, 'total.deliveries_per_sec'), 0)} deliveries/s, "
           f"{num(g(r, 'total.missed_updates'))} updates conflated", ["gw_overload"])
else:
    target("2× overload: p99 ≤ 100 ms, RSS flat", None, "–")

r = run("gw_slow")
if r:
    p, mx = g(r, "slow.age_ms.p99"), g(r, "slow.age_ms.max")
    target(f"a slow reader at a quarter of the pace ({env.get('SLOW_RATE')} messages/s of "
           f"{K * 2000 // S} quotes/s): quotes under 2 s old", p is not None and p < 2000,
           f"slow clients' p99 quote age {num(p, 0)} ms, max {num(mx, 0)} ms ({num(g(r, 'slow.clients'))} "
           f"slow clients, {num(g(r, 'slow.seq_jumps'))} jumps); fast clients' p99 "
           f"{num(g(r, 'fast.age_ms.p99'), 2)} ms beside them", ["gw_slow"])
else:
    target("a slow reader at a quarter of the pace: quotes under 2 s old", None, "–")

r = run("idle")
if r:
    v = idle_kib(r)
    target("idle session with 10 subscriptions ≤ 3 KiB", v is not None and v <= 3,
           f"{num(v, 2)} KiB{over(v, 3, 'KiB')} (Bun {num(idle_kib(run('idle', 'bun')), 2) if run('idle', 'bun') else '–'} KiB)",
           ["idle"])
else:
    target("idle session ≤ 3 KiB", None, "–")

# ---- every run ---------------------------------------------------------------------------------

raw = []
raw.append("| run | server | C | R | deliveries/s | expected | p50 ms | p99 ms | p99.9 ms | max ms "
           "| seq jumps | updates missed | violations | protocol errors | closes | connect fail "
           "| server CPU | tester CPU | cores busy % (steal) | RSS MiB (start → end) | RSS per session KiB |")
raw.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
           "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for (row, server), r in runs.items():
    cores_text, _ = cores_of(r, pin)
    protocol = sum(g(r, f"total.{k}", 0) for k in
                   ("welcome_not_first", "unexpected_symbols", "parse_errors", "protocol_errors"))
    closes = g(r, "total.closes_by_code", {})
    per = g(r, "gateway.rss_bytes_per_session")
    raw.append("| " + " | ".join([
        f"`{r['_name']}`" + flags(r),
        SERVER_NAMES[server],
        num(r["_c"]),
        num(r["_r"]),
        num(g(r, "total.deliveries_per_sec"), 0),
        num(expected(r["_c"], r["_r"]), 0),
        num(g(r, "fast.age_ms.p50"), 2),
        num(g(r, "fast.age_ms.p99"), 2),
        num(g(r, "fast.age_ms.p999"), 2),
        num(g(r, "fast.age_ms.max"), 2),
        num(g(r, "total.seq_jumps")),
        num(g(r, "total.missed_updates")),
        num(g(r, "total.order_violations")),
        num(protocol),
        ", ".join(f"{k}×{v}" for k, v in closes.items()) or "–",
        num(g(r, "connect.failures")),
        num(g(r, "gateway.cpu_percent_of_core")) + "%",
        num(g(r, "tester.cpu_percent_of_core")) + "%",
        cores_text,
        f"{num((g(r, 'gateway.rss_kib_window_start') or 0) / 1024)} → "
        f"{num((g(r, 'gateway.rss_kib_window_end') or 0) / 1024)}",
        num(per / 1024 if per is not None else None, 2),
    ]) + " |")

# ---- the section ---------------------------------------------------------------------------------

only = env.get("BENCH_ONLY", "").strip()
lines = [f"_Generated by `make bench-peers` (load-tests/bench_peers.sh) on {now_utc()}"
         + (" — QUICK mode: short runs and fewer sessions, not figures to publish" if quick else "")
         + (f" — only the rows `{only}` (BENCH_ONLY)" if only else "") + "._", ""]
lines += ["### Machine", ""]
lines += machine_lines(env, "each server on core 0 (the gateway with `--shards 1`), the tester "
                       "on core 1 (taskset)")
lines.append(f"- Workload: S={S} symbols, K={K} symbols per client (uniform draws, the same seed "
             "for every server), `throttle_ms` 0; every feed uniform (`--sim-activity uniform`), "
             "batches every 1 ms")
lines += ["", "### Side by side", ""]
lines.append("Ratios are the gateway's figure over the peer's: below 1 is better for CPU, age, "
             "misses and memory, above 1 for deliveries. Ages are the fast clients' (receive time "
             "− `ts`). CPU and RSS are the server process's, from `/proc` (all its threads), "
             "sampled the same way for every server. ⚠: other work shared the cores during that "
             f"run; ‡: the tester used ≥ {TESTER_BUSY_PERCENT}% of its core (the figure may be "
             "the tester's). The raw figures of every run are below.")
lines += [""] + side + [""]
lines += ["### Issue 10's targets", ""]
lines.append(f"Deliveries count as ≥ 1.0× within {round((1 - DELIVERY_TOLERANCE) * 100)}% (each "
             "feed draws its own random symbols at the same rate).")
lines += ["", "| target | measured | |", "| --- | --- | --- |"]
lines += [f"| {a} | {b} | {c} |" for a, b, c in targets]
lines += ["", "### Every run", ""]
lines.append("Expected deliveries/s = C × K × R / S. \"Updates missed\" is the sum of the `seq` "
             "gaps the clients saw (conflated by the gateway, dropped by a peer); protocol errors "
             "count messages out of the contract (welcome not first, a symbol not subscribed, "
             "unparsable). " + CONTENTION_RULE + " RSS per session: (RSS at window end − RSS "
             "before the first connection) / sessions.")
lines += [""] + raw + [""]
lines += ["### Commands", ""]
lines.append("Each `load-tests` line ran against the server line above it (`gateway` = "
             "`target/release/gateway`, `tokio_fanout` = `target/release/examples/tokio_fanout`, "
             "`bun` = `load-tests/peers/bun/node_modules/.bin/bun`, `load-tests` = "
             "`target/release/load-tests`; ports and PIDs were the run's own).")
lines.append("")
lines += commands_block(work)

replace_section(env["OUT"], BEGIN, END, "\n".join(lines), "Latest `make bench-peers`")
