"""What the report writers of `make bench` (bench_report.py) and `make bench-peers`
(bench_peers_report.py) share: reading the JSON reports of a run directory, formatting figures,
the Machine section, the mark of a run made on a busy machine, and replacing a generated
section of docs/benchmarks.md between its markers (the rest of the file is kept).

It only reads reports and writes markdown; it never starts or judges a server.
"""

import datetime
import glob
import json
import os


def load_runs(work):
    """Every NAME.json report of the run directory, by NAME."""
    runs = {}
    for path in sorted(glob.glob(os.path.join(work, "*.json"))):
        with open(path) as f:
            runs[os.path.basename(path).removesuffix(".json")] = json.load(f)
    return runs


def g(r, path, default=None):
    """The value at a.b.c of a report, or `default` when any part is missing or null."""
    v = r
    for k in path.split("."):
        if not isinstance(v, dict) or k not in v or v[k] is None:
            return default
        v = v[k]
    return v


def num(v, digits=1):
    if v is None:
        return "?"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.{digits}f}"
    return f"{int(v):,}"


def mark(ok):
    return "met" if ok else "**missed**"


def now_utc():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def machine_lines(env, pinning):
    """The Machine section's list. `pinning`: what ran where, when pinned."""
    pin = env.get("PINNED") == "yes"
    return [
        f"- CPU: {env.get('MACHINE_CPU') or '?'}, {env.get('MACHINE_CORES')} cores",
        f"- Kernel: Linux {env.get('KERNEL')}",
        "- Pinning: " + (pinning if pin else "none (taskset missing or one core)"),
        f"- Load average (1, 5, 15 min) before the build: {env.get('LOAD_BEFORE', '?')}; "
        f"after the last run: {env.get('LOAD_AFTER', '?')}. Anything well above 1–2 means "
        "other work shared the cores: see the cores column and the ⚠ marks below.",
    ]


# The rule for "other work shared the cores", explained where the tables use it.
CONTENTION_RULE = (
    "Cores: each core's busy % over the window (`/proc/stat`), and the hypervisor's steal; ⚠ "
    "marks a run where core 1 was busier than the tester by over 15 points (other work shared "
    "the tester's core) or over 5% was stolen: its latencies include that."
)


def cores_of(r, pinned):
    """(cores column text, contended?) of one run."""
    # Other work on the tester's core: core 1's busy time less the tester's own CPU (the
    # loopback's receive work runs on the sender's core, so little else belongs to this run).
    # Core 0 is not judged this way: the server's network softirq time lands there outside its
    # own CPU figure.
    cores = {c["core"]: c for c in (r.get("cores") or [])}
    other1 = None
    if pinned and 1 in cores:
        other1 = cores[1]["busy_percent"] - (g(r, "tester.cpu_percent_of_core", 0) or 0)
    steal = max((c["steal_percent"] for c in cores.values()), default=0)
    contended = (other1 is not None and other1 > 15) or steal > 5
    text = (" / ".join(f"{c['busy_percent']:.0f}" for c in cores.values())
            + (f" ({steal:.0f})" if steal >= 0.5 else "")) if cores else "?"
    return text, contended


def rss_flat(r):
    """(flat?, RSS at window start, at window end), KiB. Flat: grew by at most 5% or 8 MiB
    over the measured window."""
    start = g(r, "gateway.rss_kib_window_start")
    end = g(r, "gateway.rss_kib_window_end")
    if start is None or end is None:
        return None, start, end
    return (end - start) <= max(0.05 * start, 8 * 1024), start, end


def commands_block(work):
    with open(os.path.join(work, "commands.txt")) as f:
        return ["```"] + [line.rstrip() for line in f] + ["```"]


def replace_section(out, begin, end, generated, heading):
    """Writes `generated` between the markers `begin` and `end` of the file `out`; a file
    without them gets them appended under `heading`."""
    if os.path.exists(out):
        with open(out) as f:
            doc = f.read()
    else:
        doc = f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end, 1)
        doc = f"{head}{begin}\n{generated}\n{end}{tail}"
    else:
        doc = f"{doc.rstrip()}\n\n## {heading}\n\n{begin}\n{generated}\n{end}\n"
    with open(out, "w") as f:
        f.write(doc)
