#!/usr/bin/env python3
"""The example clients, run against the real gateway the way a client author would run them.

Starts `$GATEWAY_BIN` (default target/debug/gateway) on 127.0.0.1:0, then:
  - examples/quotes.py prints a welcome, an ack, a snapshot per symbol and quotes, seq strictly
    increasing per symbol;
  - examples/client.py and examples/node/client.mjs do the same, report throttled seq gaps as
    conflation, and, when the gateway is stopped and started again on the same port, reconnect by
    themselves and subscribe again (a new welcome, ack and fresh snapshots, then quotes).
Every wait is bounded, every process started here is stopped by its PID. The last line printed is
`N passed, N failed`; the exit status is non-zero on any failure.
"""
import json, os, re, signal, subprocess, sys, threading, time, traceback
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_BIN = os.environ.get("GATEWAY_BIN", str(ROOT / "target/debug/gateway"))
ARTIFACTS = ROOT / "target/test-artifacts"
SERVING_RE = re.compile(r"http://([0-9.]+):([0-9]+)/")
LINE_RE = re.compile(r"^(snapshot|quote) (\S+) seq=(\d+)")
WHOLE_RUN_TIMEOUT_S = 300

ARTIFACTS.mkdir(parents=True, exist_ok=True)
gateway_log = open(ARTIFACTS / "examples-gateway.log", "ab")
started = []  # every Popen we started, to stop on the way out
clients = []  # the client processes of the running test, whose output is kept when it fails


class Proc:
    """A child process whose output lines are collected by a thread, so waits can be bounded."""

    def __init__(self, argv, name, stderr=subprocess.STDOUT):
        self.name, self.lines, self.cond = name, [], threading.Condition()
        self.p = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr)
        started.append(self.p)
        if name != "gateway":
            clients.append(self)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.p.stdout:
            with self.cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, pred, timeout, what):
        """Wait until pred(lines) is true; fail naming `what` and showing the tail of the output."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or (self.p.poll() is not None and not pred(self.lines)):
                    if left > 0:
                        self.cond.wait(0.2)  # let the reader drain what the process printed last
                        if pred(self.lines):
                            return list(self.lines)
                    tail = "\n        ".join(self.lines[-8:])
                    state = "still running" if self.p.poll() is None else f"exited {self.p.returncode}"
                    raise AssertionError(f"{self.name}: {what} (after {timeout} s, {state}); last output:\n        {tail}")
                self.cond.wait(min(left, 0.5))
            return list(self.lines)

    def stop(self, sig=signal.SIGINT, timeout=10):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return self.p.returncode


class Gateway:
    def __init__(self, port=0):
        self.proc = Proc([GATEWAY_BIN, "--listen", f"127.0.0.1:{port}"], "gateway", stderr=gateway_log)
        lines = self.proc.wait_for(lambda ls: any(SERVING_RE.search(l) for l in ls), 20, "no serving line")
        self.port = int(next(SERVING_RE.search(l) for l in lines if SERVING_RE.search(l)).group(2))
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"

    def stop(self):
        self.proc.stop(signal.SIGTERM)

    @staticmethod
    def start_on(port):
        """The same port again: retry briefly in case the kernel has not released it yet."""
        for attempt in range(10):
            try:
                return Gateway(port)
            except AssertionError:
                if attempt == 9:
                    raise
                time.sleep(0.5)


# ---- checks on what a client printed -----------------------------------------------------------
def sessions(lines):
    """Split a readable client's output into sessions, each starting at a `welcome` line."""
    out = []
    for line in lines:
        if line.startswith("welcome "):
            out.append([])
        if out:
            out[-1].append(line)
    return out


def check_session(lines, symbols, min_quotes):
    """welcome, then the ack, a snapshot of each symbol before its quotes, seq strictly increasing."""
    assert lines and lines[0].startswith("welcome "), f"session does not open with welcome: {lines[:1]}"
    acks = [i for i, l in enumerate(lines) if l.startswith("ack ") and "op=subscribe" in l]
    assert acks, "no ack of the subscribe"
    last, quotes = {}, 0
    for i, line in enumerate(lines):
        m = LINE_RE.match(line)
        if not m:
            continue
        kind, sym, seq = m.group(1), m.group(2), int(m.group(3))
        assert i > acks[0], f"{kind} before the ack: {line}"
        assert sym in symbols, f"a message for {sym}, which was not subscribed"
        if kind == "quote":
            assert sym in last, f"quote of {sym} before its snapshot"
            quotes += 1
        if sym in last:
            assert seq > last[sym], f"{sym}: seq {seq} after {last[sym]} (must strictly increase)"
        last[sym] = seq
        assert "OUT-OF-ORDER" not in line, line
    assert set(last) == set(symbols), f"snapshots only for {sorted(last)}, subscribed {symbols}"
    assert quotes >= min_quotes, f"only {quotes} quotes"


def count_quotes_after_snapshots(symbols, min_quotes):
    """pred: the latest session has a snapshot of each symbol and at least min_quotes quotes."""
    def pred(lines):
        s = sessions(lines)
        if not s:
            return False
        seen = {LINE_RE.match(l).group(2) for l in s[-1] if LINE_RE.match(l)}
        return seen >= set(symbols) and sum(1 for l in s[-1] if l.startswith("quote ")) >= min_quotes
    return pred


# ---- the tests ---------------------------------------------------------------------------------
def test_quotes_py(gw, symbols):
    p = Proc([sys.executable, "examples/quotes.py", gw.ws_url, *symbols], "quotes.py")
    try:
        def enough(lines):
            msgs = [json.loads(l) for l in lines if l.startswith("{")]
            snaps = {m["symbol"] for m in msgs if m.get("type") == "snapshot"}
            return snaps >= set(symbols) and sum(m.get("type") == "quote" for m in msgs) >= 20
        lines = p.wait_for(enough, 20, "no welcome/ack/snapshots/20 quotes")
    finally:
        p.stop(signal.SIGINT)
    msgs = [json.loads(l) for l in lines if l.startswith("{")]
    assert msgs[0]["type"] == "welcome" and msgs[0]["protocol"] == 1, f"first message: {msgs[0]}"
    assert msgs[1]["type"] == "ack" and msgs[1]["symbols"] == symbols, f"second message: {msgs[1]}"
    readable = ["welcome x"] + ["ack op=subscribe"] + [
        f"{m['type']} {m['symbol']} seq={m['seq']}" for m in msgs[2:] if m["type"] in ("snapshot", "quote")]
    check_session(readable, symbols, 20)


def client_argv(kind, gw, symbols, *flags):
    if kind == "python":
        return [sys.executable, "examples/client.py", *symbols, "--url", gw.ws_url, *flags]
    return ["node", "examples/node/client.mjs", *symbols, "--url", gw.ws_url, *flags]


def test_client_steady(kind, gw, symbols):
    p = Proc(client_argv(kind, gw, symbols, "--max-messages", "60", "--max-seconds", "30"), f"{kind} client")
    try:
        lines = p.wait_for(lambda ls: any(l.startswith("done: ") for l in ls), 30, "did not stop after 60 messages")
        assert p.p.wait(10) == 0, f"exit status {p.p.returncode}"
    finally:
        p.stop()
    s = sessions(lines)
    assert len(s) == 1, f"{len(s)} sessions, expected 1"
    check_session(s[0], symbols, 10)
    assert "done: 60 messages" in lines[-1], lines[-1]


def test_client_conflation(kind, gw, symbols):
    p = Proc(client_argv(kind, gw, symbols, "--throttle-ms", "1000", "--max-seconds", "4"), f"{kind} client")
    try:
        lines = p.wait_for(lambda ls: any(l.startswith("done: ") for l in ls), 15, "did not stop after 4 s")
    finally:
        p.stop()
    s = sessions(lines)
    check_session(s[0], symbols, 1)
    assert any(" conflated=" in l for l in lines), "a 1 s throttle on busy symbols must show seq gaps as conflation"
    m = re.search(r"(\d+) seq gaps \((\d+) updates conflated\)", lines[-1])
    assert m and int(m.group(1)) > 0 and int(m.group(2)) >= int(m.group(1)), lines[-1]


def test_client_reconnects(kind, live, symbols):
    """Stops live["gw"] and puts a new gateway on the same port into live["gw"]."""
    gw = live["gw"]
    p = Proc(client_argv(kind, gw, symbols, "--max-seconds", "90"), f"{kind} client")
    try:
        p.wait_for(count_quotes_after_snapshots(symbols, 5), 15, "no snapshots and quotes")
        port = gw.port
        gw.stop()
        p.wait_for(lambda ls: any(l.startswith("disconnected") for l in ls), 10, "did not notice the gateway stop")
        p.wait_for(lambda ls: any(l.startswith("reconnecting in ") for l in ls), 5, "did not schedule a reconnect")
        time.sleep(1.0)  # a refused attempt or two while the gateway is down
        live["gw"] = Gateway.start_on(port)
        p.wait_for(lambda ls: len(sessions(ls)) >= 2, 30, "did not reconnect to the restarted gateway")
        lines = p.wait_for(count_quotes_after_snapshots(symbols, 5), 15, "no fresh snapshots and quotes after reconnect")
    finally:
        p.stop(signal.SIGINT)
    s = sessions(lines)
    for one in s:
        check_session([l for l in one if not l.startswith(("disconnected", "reconnecting", "connection error"))],
                      symbols, 0)
    check_session(s[-1], symbols, 5)
    done = [l for l in p.lines if l.startswith("done: ")]
    assert done and re.search(r"[1-9]\d* reconnects", done[0]), f"summary: {done}"


def main():
    results = {"passed": 0, "failed": 0}

    def run(name, fn, *args):
        t0 = time.monotonic()
        clients.clear()
        try:
            out = fn(*args)
            results["passed"] += 1
            print(f"ok   {name} ({time.monotonic() - t0:.1f} s)", flush=True)
            return out
        except Exception as e:  # noqa: BLE001 - a failed check, reported and counted
            results["failed"] += 1
            for i, proc in enumerate(p for p in clients if p.lines):
                out = ARTIFACTS / f"examples-failure-{results['failed']}-{i}.log"
                out.write_text("\n".join(proc.lines) + "\n")
                print(f"     {proc.name} output: {out}", flush=True)
            msg = str(e) if isinstance(e, AssertionError) else traceback.format_exc(limit=3)
            print(f"FAIL {name}\n     {msg}", flush=True)
            return None

    def on_alarm(*_):  # a BaseException, so that no test's own handler swallows it
        raise KeyboardInterrupt(f"the whole run took longer than {WHOLE_RUN_TIMEOUT_S} s")

    def on_stop(signum, _frame):  # Ctrl-C or a CI timeout: still stop what we started (finally)
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_stop)
    signal.alarm(WHOLE_RUN_TIMEOUT_S)
    live = {}
    try:
        if not Path(GATEWAY_BIN).exists():
            raise FileNotFoundError(f"no gateway binary at {GATEWAY_BIN} (cargo build -p gateway)")
        if not (ROOT / "examples/node/node_modules/ws").exists():
            raise FileNotFoundError("examples/node/node_modules/ws is missing: run scripts/setup.sh")
        gw = live["gw"] = Gateway()
        with urllib.request.urlopen(f"http://127.0.0.1:{gw.port}/symbols", timeout=5) as r:
            symbols = json.load(r)[:3]  # the well-known, busiest tickers come first
        print(f"gateway on port {gw.port}; symbols {symbols}", flush=True)
        run("quotes.py prints welcome, ack, snapshots and quotes in order", test_quotes_py, gw, symbols)
        for kind in ("python", "node"):
            label = "client.py" if kind == "python" else "node client.mjs"
            run(f"{label}: welcome, ack, snapshots, quotes with strictly increasing seq", test_client_steady, kind, live["gw"], symbols)
            run(f"{label}: a throttle's seq gaps are reported as conflation", test_client_conflation, kind, live["gw"], symbols)
            run(f"{label}: reconnects and resubscribes when the gateway restarts", test_client_reconnects, kind, live, symbols)
            if live["gw"].proc.p.poll() is not None:  # a failed restart test may leave no gateway up
                live["gw"] = Gateway.start_on(live["gw"].port)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001
        results["failed"] += 1
        print(f"FAIL {e}", flush=True)
    finally:
        signal.alarm(0)
        for p in started:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in started:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    print(f"gateway log: {ARTIFACTS / 'examples-gateway.log'}")
    print(f"{results['passed']} passed, {results['failed']} failed", flush=True)
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
