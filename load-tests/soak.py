#!/usr/bin/env python3
"""The soak of issue 14, driven by load-tests/soak.sh (`make soak`), which builds, pins and
starts the gateway and passes everything here in SOAK_* environment variables.

Runs the load tester against that gateway for SOAK_MINUTES (the standard load, churning
`["*"]` sessions beside it, `--no-gateway-metrics`: nothing scrapes /metrics), samples the
gateway's RSS and open files every 30 s from /proc, keeps sampling for a minute after the
tester has left, then prints a summary and writes it into SOAK_OUT between the markers
`<!-- soak:begin -->` and `<!-- soak:end -->` (appended with a heading if the file has none;
the rest of the file is kept).

Targets: RSS slope after warm-up at most 1 MB per hour; RSS a minute after every client left
at most 10% above RSS after warm-up (below is fine: memory given back). Exit code 0 both met,
1 one missed, 2 the run failed.

SOAK_REPORT_ONLY=1 with SOAK_WORK (and SOAK_OUT) of an earlier run: no run, only the summary
and the section written again from that run's soak.json and load-tests reports.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

env = os.environ
WORK = env["SOAK_WORK"]
OUT = env["SOAK_OUT"]
REPORT_ONLY = env.get("SOAK_REPORT_ONLY") == "1"
saved: dict = {}
if REPORT_ONLY:
    with open(os.path.join(WORK, "soak.json")) as f:
        saved = json.load(f)
PID = int(env.get("SOAK_GATEWAY_PID", "0"))
PORT = env.get("SOAK_PORT", "0")
MINUTES = float(saved.get("minutes", env.get("SOAK_MINUTES", "30")))
SAMPLE_S = 30.0                     # RSS and open files, every 30 s
AFTER_S = 60.0                      # sampled for this long after the tester has left
MAX_SLOPE_MB_PER_HOUR = 1.0
MAX_LEAVE_RATIO = 0.10
MB = 1e6

BEGIN = "<!-- soak:begin -->"
END = "<!-- soak:end -->"

load_s = MINUTES * 60.0
warm_s = max(60.0, load_s / 6.0)
if warm_s >= load_s:
    sys.exit(f"soak: SOAK_MINUTES={MINUTES} leaves no time after the warm-up of {warm_s:.0f} s")


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_bytes() -> int | None:
    try:
        with open(f"/proc/{PID}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def open_files() -> int | None:
    try:
        return len(os.listdir(f"/proc/{PID}/fd"))
    except OSError:
        return None


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, bytes), in MB per hour."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    if den == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / den * 3600 / MB


samples: list[dict] = []


def sample(t: float, phase: str) -> dict:
    s = {"t_s": round(t, 1), "phase": phase, "rss_bytes": rss_bytes(), "open_files": open_files()}
    samples.append(s)
    if s["rss_bytes"] is None:
        log("the gateway is gone")
        write_json()
        sys.exit(2)
    return s


def write_json() -> None:
    with open(os.path.join(WORK, "soak.json"), "w") as f:
        json.dump({"samples": samples, "minutes": MINUTES, "warmup_s": warm_s,
                   "gateway_command": gateway_command, "tester_command": lt_command,
                   "pinned": bool(pin)}, f, indent=1)


def tester_args(url: str, pid: str, json_path: str) -> list[str]:
    return [
        "--url", url,
        "-c", env.get("SOAK_CLIENTS", "1000"), "-k", env.get("SOAK_SUBS", "10"), "--ramp-rate", "2000",
        "--warmup", f"{warm_s:g}", "--duration", f"{load_s - warm_s:g}",
        "--churn", env.get("SOAK_CHURN", "10"), "--churn-hold-ms", env.get("SOAK_CHURN_HOLD_MS", "2000"),
        "--no-gateway-metrics", "--gateway-pid", pid, "--quiet", "--json", json_path,
    ]


lt_args = tester_args(f"ws://127.0.0.1:{PORT}/ws", str(PID), os.path.join(WORK, "load.json"))
pin = shlex.split(env.get("SOAK_LT_PIN", ""))
lt_command = " ".join(pin + ["load-tests"] + tester_args("ws://127.0.0.1:PORT/ws", "PID", "load.json"))
gateway_command = env.get("SOAK_GATEWAY_COMMAND", "gateway")


def run() -> None:
    """The run itself: the tester, a sample every 30 s, and a minute after it has left."""
    time.sleep(5)  # let the feed and the shard settle, as bench.sh does

    start = sample(-5.0, "before clients")
    log(f"before clients: RSS {start['rss_bytes'] / MB:.1f} MB, {start['open_files']} open files")
    t0 = time.monotonic()
    with open(os.path.join(WORK, "load.summary"), "w") as out, \
            open(os.path.join(WORK, "load.progress"), "w") as err:
        tester = subprocess.Popen(pin + [env["SOAK_LOADTEST_BIN"]] + lt_args, stdout=out, stderr=err,
                                  stdin=subprocess.DEVNULL)
        next_at = SAMPLE_S
        while True:
            try:
                tester.wait(timeout=max(0.0, next_at - (time.monotonic() - t0)))
                break
            except subprocess.TimeoutExpired:
                pass
            t = time.monotonic() - t0
            s = sample(t, "warm-up" if t < warm_s else "load")
            load_points = [(x["t_s"], x["rss_bytes"]) for x in samples if x["phase"] == "load"]
            slope = slope_per_hour(load_points)
            log(f"{t / 60:5.1f}/{MINUTES:g} min {s['phase']:<7}  RSS {s['rss_bytes'] / MB:7.2f} MB  "
                f"open files {s['open_files']}" + (f"  slope so far {slope:+.2f} MB/h" if slope is not None else ""))
            next_at += SAMPLE_S
    t_end = time.monotonic() - t0
    if tester.returncode >= 2:
        log(f"load-tests failed (exit {tester.returncode}):")
        with open(os.path.join(WORK, "load.progress")) as f:
            sys.stderr.write("".join(f.readlines()[-20:]))
        sys.exit(2)
    log(f"every client has left at {t_end / 60:.1f} min; sampling for {AFTER_S:.0f} s more")
    t_after = 0.0
    while t_after < AFTER_S:
        time.sleep(SAMPLE_S)
        t_after += SAMPLE_S
        s = sample(time.monotonic() - t0, "after")
        log(f"after clients left +{t_after:.0f} s: RSS {s['rss_bytes'] / MB:.2f} MB, open files {s['open_files']}")
    write_json()


if REPORT_ONLY:
    samples = saved["samples"]
    gateway_command = saved.get("gateway_command", gateway_command)
    lt_command = saved.get("tester_command", lt_command)
    pin = ["taskset"] if saved.get("pinned", bool(pin)) else []
else:
    run()
start = samples[0]

with open(os.path.join(WORK, "load.json")) as f:
    load = json.load(f)
with open(os.path.join(WORK, "load.summary")) as f:
    load_summary = f.read()

load_samples = [x for x in samples if x["phase"] == "load"]
slope = slope_per_hour([(x["t_s"], x["rss_bytes"]) for x in load_samples])
warm = load_samples[0] if load_samples else None
leave = samples[-1]
peak = max(x["rss_bytes"] for x in samples)
ratio = (leave["rss_bytes"] / warm["rss_bytes"] - 1.0) if warm else None
slope_ok = slope is not None and slope <= MAX_SLOPE_MB_PER_HOUR
leave_ok = ratio is not None and ratio <= MAX_LEAVE_RATIO
churn = load.get("churn") or {}
fast = load.get("fast", {})

summary = [
    f"soak: {MINUTES:g} min at R={env.get('SOAK_RATE', '2000')}, C={load['settings']['clients']}, "
    f"K={load['settings']['subs']}, "
    f"{load['settings'].get('churn', '?')} churning [\"*\"] sessions; warm-up {warm_s / 60:g} min; nothing scraped",
    f"  RSS slope after warm-up : {slope:+.3f} MB/hour (target ≤ {MAX_SLOPE_MB_PER_HOUR:g})  "
    f"{'met' if slope_ok else 'MISSED'}" if slope is not None else "  RSS slope: too few samples  MISSED",
    f"  RSS after warm-up       : {warm['rss_bytes'] / MB:.2f} MB" if warm else "  RSS after warm-up: none",
    f"  RSS after clients left  : {leave['rss_bytes'] / MB:.2f} MB ({ratio * 100:+.1f}% of after warm-up; "
    f"target at most +{MAX_LEAVE_RATIO * 100:.0f}%)  {'met' if leave_ok else 'MISSED'}" if ratio is not None else "",
    f"  RSS before clients / peak: {start['rss_bytes'] / MB:.2f} / {peak / MB:.2f} MB",
    f"  open files before / after warm-up / max / after leaving: {start['open_files']} / "
    f"{warm['open_files'] if warm else '?'} / {max(x['open_files'] for x in samples)} / {leave['open_files']}",
    f"  churn: {churn.get('sessions', 0)} sessions, {churn.get('clean_closes', 0)} closed cleanly, "
    f"server closes {churn.get('server_closes_by_code', {})}, connect failures {churn.get('failures_by_reason', {})}",
    f"  fast clients: {fast.get('deliveries_per_sec', 0):.0f} deliveries/s, p99 "
    f"{fast.get('age_ms', {}).get('p99', 0):.2f} ms over the measured window",
]
print("\n".join(line for line in summary if line))

# ---- docs/benchmarks.md -------------------------------------------------------------------------
def mb(x: dict) -> str:
    return f"{x['rss_bytes'] / MB:.2f}"


rows = "\n".join(f"| {x['t_s'] / 60:.1f} | {x['phase']} | {mb(x)} | {x['open_files']} |" for x in samples)
machine_cpu = subprocess.run(["sh", "-c", "lscpu | sed -nE 's/^Model name:[[:space:]]+//p' | head -n1"],
                             capture_output=True, text=True).stdout.strip()
section = f"""{BEGIN}
<!-- Written by load-tests/soak.sh ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); edits here are replaced. -->

Machine: {machine_cpu or 'unknown CPU'}, {os.cpu_count()} cores, kernel {os.uname().release};
pinned: {'yes (gateway core 0, tester core 1)' if pin else 'no'}. {MINUTES:g} minutes of
load{' (a short run: `SOAK_MINUTES` was set)' if MINUTES != 30 else ''}, warm-up {warm_s / 60:g} min, sampled every
{SAMPLE_S:.0f} s. MB = 10⁶ bytes.

| | figure | target | |
|---|---|---|---|
| RSS slope after warm-up | {f'{slope:+.3f} MB/hour' if slope is not None else '?'} | ≤ {MAX_SLOPE_MB_PER_HOUR:g} MB/hour | {'met' if slope_ok else '**missed**'} |
| RSS after warm-up | {mb(warm) if warm else '?'} MB | | |
| RSS a minute after every client left | {mb(leave)} MB ({f'{ratio * 100:+.1f}%' if ratio is not None else '?'}) | at most {MAX_LEAVE_RATIO * 100:.0f}% above after warm-up | {'met' if leave_ok else '**missed**'} |
| RSS before any client / peak | {mb(start)} / {peak / MB:.2f} MB | | |
| open files before / after warm-up / max / after leaving | {start['open_files']} / {warm['open_files'] if warm else '?'} / {max(x['open_files'] for x in samples)} / {leave['open_files']} | back to the start | {'met' if leave['open_files'] == start['open_files'] else '**differs**'} |
| churning `["*"]` sessions opened / closed cleanly | {churn.get('sessions', 0)} / {churn.get('clean_closes', 0)} | | |
| fast clients: deliveries/s, p99 quote age | {fast.get('deliveries_per_sec', 0):.0f}/s, {fast.get('age_ms', {}).get('p99', 0):.2f} ms | | |

Commands (PORT and PID stand for the gateway's, filled in at run time):

```
SOAK_MINUTES={MINUTES:g} make soak
{gateway_command}
{lt_command}
```

<details><summary>Every sample</summary>

| minute | phase | RSS MB | open files |
|---|---|---|---|
{rows}

</details>

The load tester's summary:

```
{load_summary.rstrip()}
```
{END}"""

try:
    with open(OUT) as f:
        text = f.read()
except FileNotFoundError:
    text = ""
if BEGIN in text and END in text:
    text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END):]
else:
    text = text.rstrip("\n") + "\n\n## Latest soak (`make soak`)\n\n" + section + "\n"
with open(OUT, "w") as f:
    f.write(text)
log(f"wrote {OUT}; samples and the tester's reports in {WORK}")
sys.exit(0 if slope_ok and leave_ok else 1)
