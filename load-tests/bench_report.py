#!/usr/bin/env python3
"""Writes the generated part of docs/benchmarks.md from the JSON reports of load-tests/bench.sh.

Reads its inputs from the environment bench.sh exports (WORK: the run directory with NAME.json
reports and commands.txt; OUT: the markdown file). Only the text between the markers
`<!-- bench:begin -->` and `<!-- bench:end -->` is replaced; the rest of OUT is kept.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_report_parts import (CONTENTION_RULE, commands_block, cores_of, g, load_runs,  # noqa: E402
                          machine_lines, mark, now_utc, num, replace_section, rss_flat)

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"

env = os.environ
work = env["WORK"]
S, K = int(env["S"]), int(env["K"])


def rate_of(r):
    """The gateway's simulated rate R, from the gateway command logged for the run."""
    return r.get("_rate")


# Attach each run's gateway rate: commands.txt has a gateway line before each load-tests line.
rates = {}
with open(os.path.join(work, "commands.txt")) as f:
    last_rate = None
    for line in f:
        words = line.split()
        if "gateway" in words and "--sim-rate" in words:
            last_rate = int(words[words.index("--sim-rate") + 1])
        elif "load-tests" in words and "--json" in words:
            name = words[words.index("--json") + 1].removesuffix(".json")
            rates[name] = last_rate

runs = load_runs(work)
for name, r in runs.items():
    r["_rate"] = rates.get(name.removesuffix("_first"))

a = runs.get("a_standard")
b1 = runs.get(env.get("B1_NAME", "none"))
b5 = runs.get(env.get("B5_NAME", "none"))
c1 = runs.get("c_c1000")
c5 = runs.get("c_c5000")
d = runs.get("d_idle")
e = runs.get("e_stuck")
f_ = runs.get("f_sessions")

rows = []

if a:
    jumps = g(a, "fast.seq_jumps", 0)
    p99 = g(a, "fast.age_ms.p99")
    cpu = g(a, "gateway.cpu_percent_of_core")
    ok = jumps == 0 and p99 is not None and p99 <= 5 and cpu is not None and cpu <= 45
    rows.append((
        "(a) standard workload: R=2,000, C=1,000",
        "no `seq` jumps, p99 ≤ 5 ms, gateway ≤ 45% of a core",
        f"{num(jumps)} seq jumps ({num(g(a, 'fast.missed_updates'))} updates missed), "
        f"p99 {num(p99, 2)} ms, gateway {num(cpu)}% of a core, "
        f"{num(g(a, 'total.deliveries_per_sec'), 0)} deliveries/s",
        mark(ok),
    ))


def max_row(label, r, c):
    if not r:
        fail = env.get("B1_FAIL" if c == 1000 else "B5_FAIL")
        rows.append((label, "≥ 400k deliveries/s with p99 ≤ 100 ms",
                     f"no rate kept p99 ≤ 100 ms (first failing R: {fail})", mark(False)))
        return
    dps = g(r, "total.deliveries_per_sec", 0)
    fail = env.get("B1_FAIL" if c == 1000 else "B5_FAIL")
    rows.append((
        label,
        "≥ 400k deliveries/s with p99 ≤ 100 ms",
        f"{num(dps, 0)} deliveries/s at R={num(rate_of(r))}, p99 {num(g(r, 'fast.age_ms.p99'), 1)} ms "
        + (f"(at R={fail} p99 went over 100 ms); " if fail not in (None, "none")
           else "(still within 100 ms at the search's last step); ")
        + f"gateway {num(g(r, 'gateway.cpu_percent_of_core'))}%, "
        f"tester {num(g(r, 'tester.cpu_percent_of_core'))}%",
        mark(dps >= 400_000),
    ))


max_row("(b) max sustained, C=1,000", b1, 1000)
max_row("(b) max sustained, C=5,000", b5, 5000)


for label, r in (("(c) overload at 2× max, C=1,000", c1), ("(c) overload at 2× max, C=5,000", c5)):
    if not r:
        continue
    p99 = g(r, "fast.age_ms.p99")
    flat, start, end = rss_flat(r)
    ok = p99 is not None and p99 <= 100 and bool(flat)
    rows.append((
        label,
        "p99 ≤ 100 ms, memory flat (conflation, not queueing)",
        f"R={num(rate_of(r))}: p99 {num(p99, 1)} ms; RSS {num((start or 0) / 1024)} → "
        f"{num((end or 0) / 1024)} MiB over the window; {num(g(r, 'total.deliveries_per_sec'), 0)} "
        f"deliveries/s, {num(g(r, 'total.missed_updates'))} updates conflated",
        mark(ok),
    ))

if d:
    per = g(d, "gateway.rss_bytes_per_session")
    rows.append((
        "(d) memory per idle subscribed session (10,000 sessions)",
        "≤ 6 KiB RSS",
        f"{num(per / 1024 if per is not None else None, 2)} KiB "
        f"({num(g(d, 'connect.open_at_window_end'))} sessions; RSS "
        f"{num(g(d, 'gateway.rss_kib_before', 0) / 1024)} → {num(g(d, 'gateway.rss_kib_window_end', 0) / 1024)} MiB)",
        mark(per is not None and per <= 6 * 1024),
    ))

if e and a:
    pe = g(e, "fast.age_ms.p99")
    pa = g(a, "fast.age_ms.p99")
    ok = pe is not None and pa is not None and pe <= 1.5 * pa
    rows.append((
        "(e) 10% stuck clients",
        "fast clients' p99 ≤ 1.5× the run without them",
        f"fast p99 {num(pe, 2)} ms vs {num(pa, 2)} ms in (a) ({num(pe / pa if pe and pa else None, 2)}×); "
        f"stuck clients closed: {g(e, 'stuck.closes_by_code', {}) or 'none'}",
        mark(ok),
    ))

if f_:
    held = g(f_, "connect.open_at_window_end", 0)
    rows.append((
        "(f) sessions in one process",
        "≥ 19,000",
        f"{num(held)} held of 19,500 opened (connect failures: "
        f"{num(g(f_, 'connect.failures'))} {g(f_, 'connect.failures_by_reason', {}) or ''}; "
        f"closes {g(f_, 'total.closes_by_code', {}) or 'none'})",
        mark(held >= 19_000),
    ))

lines = []
lines.append(f"_Generated by `make bench` (load-tests/bench.sh) on {now_utc()}"
             + (" — QUICK mode: short runs, not figures to publish" if env.get("QUICK") == "1" else "")
             + "._")
lines.append("")
lines.append("### Machine")
lines.append("")
pin = env.get("PINNED") == "yes"
lines += machine_lines(env, "gateway on core 0 (`--shards 1`), tester on core 1 (taskset)")
lines.append(f"- Workload: S={S} symbols, K={K} symbols per client, uniform draws, `throttle_ms` 0")
lines.append("")
lines.append("### Results against the targets")
lines.append("")
lines.append("| figure | target | measured | |")
lines.append("| --- | --- | --- | --- |")
for row in rows:
    lines.append("| " + " | ".join(row) + " |")
lines.append("")
lines.append("### Every run")
lines.append("")
lines.append("Expected deliveries/s = C × K × R / S (every update to every subscriber). Ages are the "
             "fast clients' quote age at receipt (receive time − `ts`); \"gateway p99\" is the bucket "
             "bound of the gateway's own `gateway_quote_age_seconds` (feed `ts` → socket write) over "
             "the same window, from its `/metrics`. CPU in % of one core over the measured window; "
             "CPU wait: seconds the process was runnable but waited for a core (other work on the "
             "machine, or its own threads sharing one core), from /proc/PID/task/*/schedstat (this "
             "figure includes wake-up latency of an idle virtual CPU, so it is large in a VM even when "
             "nothing else runs). " + CONTENTION_RULE + " A `_first` run is a search step that "
             "missed and was run again.")
lines.append("")
lines.append("| run | C | R | deliveries/s | expected | p50 ms | p99 ms | p99.9 ms | max ms "
             "| gateway p99 ms | seq jumps | violations | closes | connect fail | gateway CPU | tester CPU "
             "| CPU wait s (gw / tester) | cores busy % (steal) | gateway RSS MiB |")
lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: "
             "| ---: | ---: | ---: | ---: |")
order = sorted(runs, key=lambda n: (n[0], g(runs[n], "settings.clients", 0), runs[n].get("_rate") or 0))
for name in order:
    r = runs[name]
    c = g(r, "settings.clients", 0)
    rate = r.get("_rate")
    expected = c * K * rate / S if rate else None
    closes = g(r, "total.closes_by_code", {})
    cores_text, contended = cores_of(r, pin)
    lines.append("| " + " | ".join([
        f"`{name}`" + (" ⚠" if contended else ""),
        num(c),
        num(rate),
        num(g(r, "total.deliveries_per_sec"), 0),
        num(expected, 0),
        num(g(r, "fast.age_ms.p50"), 2),
        num(g(r, "fast.age_ms.p99"), 2),
        num(g(r, "fast.age_ms.p999"), 2),
        num(g(r, "fast.age_ms.max"), 2),
        ("≤ " + num(g(r, "gateway_metrics.quote_age_p99_ms_at_most"), 2))
        if g(r, "gateway_metrics.quote_age_p99_ms_at_most") is not None else "?",
        num(g(r, "total.seq_jumps")),
        num(g(r, "total.order_violations")),
        ", ".join(f"{k}×{v}" for k, v in closes.items()) or "–",
        num(g(r, "connect.failures")),
        num(g(r, "gateway.cpu_percent_of_core")) + "%",
        num(g(r, "tester.cpu_percent_of_core")) + "%",
        f"{num(g(r, 'gateway.run_queue_wait_seconds'), 2)} / {num(g(r, 'tester.run_queue_wait_seconds'), 2)}",
        cores_text,
        num((g(r, "gateway.rss_kib_window_end") or 0) / 1024),
    ]) + " |")
lines.append("")
lines.append("### Commands")
lines.append("")
lines.append("Each `load-tests` line ran against the gateway line above it (`gateway` = "
             "`target/release/gateway`, `load-tests` = `target/release/load-tests`; the port was "
             "the gateway's ephemeral one).")
lines.append("")
lines += commands_block(work)

replace_section(env["OUT"], BEGIN, END, "\n".join(lines), "Latest `make bench`")
