#!/usr/bin/env python3
"""The example clients, run against the real gateway the way a client author would run them.

Starts `$GATEWAY_BIN` (default target/debug/gateway) on 127.0.0.1:0, then:
  - examples/quotes.py prints a welcome, an ack, a snapshot per symbol and quotes, seq strictly
    increasing per symbol;
  - examples/client.py and examples/node/client.mjs do the same and report throttled seq gaps as
    conflation; when their connection is cut (a TCP proxy on loopback drops it and refuses new
    ones for a while) with the gateway up, they reconnect and resume: no snapshot, every missed
    seq exactly once and in order; when the gateway is stopped and started again on the same port
    (a new simulator, a new epoch), they reconnect and their resume is answered with snapshots;
  - `curl -N` reads `/sse` as a client author would: welcome, ack, snapshots, quotes, each an
    `event:`/`data:` pair; with `resume_epoch` and `since` the stream replays, without snapshots.
Every wait is bounded, every process started here is stopped by its PID. The last line printed is
`N passed, N failed`; the exit status is non-zero on any failure.
"""
import json, os, re, signal, socket, subprocess, sys, threading, time, traceback
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_BIN = os.environ.get("GATEWAY_BIN", str(ROOT / "target/debug/gateway"))
ARTIFACTS = ROOT / "target/test-artifacts"
SERVING_RE = re.compile(r"http://([0-9.]+):([0-9]+)/")
LINE_RE = re.compile(r"^(snapshot|quote) (\S+) seq=(\d+)")
WHOLE_RUN_TIMEOUT_S = 300
# How long the proxy refuses connections after a cut: the gateway publishes meanwhile, and all of
# it must be replayed (the gateway holds 5 s of history by default).
CUT_S = 1.5

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


class TcpProxy:
    """The network between a client and the gateway, on loopback: `cut(refuse_s)` breaks every
    connection through it (as a dropped link would) and refuses new ones for `refuse_s`."""

    def __init__(self, target_port):
        self.target = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.lock, self.conns, self.refuse_until = threading.Lock(), set(), 0.0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            if time.monotonic() < self.refuse_until:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock, how in ((dst, socket.SHUT_WR), (src, None)):
            try:
                sock.shutdown(how) if how is not None else sock.close()
            except OSError:
                pass

    def cut(self, refuse_s):
        self.refuse_until = time.monotonic() + refuse_s
        with self.lock:
            conns, self.conns = self.conns, set()
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.cut(0)
        self.server.close()


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


def client_argv(kind, gw, symbols, *flags, url=None):
    url = url or gw.ws_url
    if kind == "python":
        return [sys.executable, "examples/client.py", *symbols, "--url", url, *flags]
    return ["node", "examples/node/client.mjs", *symbols, "--url", url, *flags]


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
    # It asked to resume, in the old simulator's epoch: the new one answers with snapshots.
    assert epoch_of(s[0]) != epoch_of(s[-1]), "a restarted simulator kept its epoch"
    resume = [l for l in s[-1] if l.startswith("resume: ")]
    assert resume == [f"resume: 0 resumed (), {len(symbols)} snapshotted ({','.join(symbols)})"], f"resume lines: {resume}"
    done = [l for l in p.lines if l.startswith("done: ")]
    assert done and re.search(r"[1-9]\d* reconnects \(0 symbols resumed, [1-9]\d* snapshotted\)", done[0]), f"summary: {done}"


def epoch_of(session):
    return re.search(r" epoch=(\S+)", session[0]).group(1)


def test_client_resumes(kind, gw, symbols):
    """Cuts the client's connection with the gateway up: it must resume, every missed seq once."""
    proxy = TcpProxy(gw.port)
    url = f"ws://127.0.0.1:{proxy.port}/ws"
    p = Proc(client_argv(kind, gw, symbols, "--max-seconds", "60", url=url), f"{kind} client")
    try:
        p.wait_for(count_quotes_after_snapshots(symbols, 20), 15, "no snapshots and quotes")
        proxy.cut(CUT_S)
        p.wait_for(lambda ls: len(sessions(ls)) >= 2, 20, "did not reconnect after the cut")

        def live_again(lines):
            last = sessions(lines)[-1]
            return sum(1 for l in last if l.startswith("quote ") and not l.endswith(" replayed")) >= 20
        p.wait_for(live_again, 15, "no live quotes after the resume")
    finally:
        p.stop(signal.SIGINT)
        proxy.close()
    one, two = sessions(p.lines)[:2]
    assert epoch_of(one) == epoch_of(two), "the epoch changed with the gateway up"
    resume = [l for l in two if l.startswith("resume: ")]
    assert resume == [f"resume: {len(symbols)} resumed ({','.join(symbols)}), 0 snapshotted ()"], f"resume lines: {resume}"
    replayed = 0
    for sym in symbols:
        before = [int(m.group(3)) for m in map(LINE_RE.match, one) if m and m.group(2) == sym]
        after = [(m.group(1), int(m.group(3)), l.endswith(" replayed")) for l, m in ((l, LINE_RE.match(l)) for l in two)
                 if m and m.group(2) == sym]
        assert before and after, f"{sym}: no messages before or after the cut"
        assert all(kind == "quote" for kind, _, _ in after), f"{sym}: a snapshot after a resume"
        seqs = [before[-1]] + [q for _, q, _ in after]
        # Every missed (replayed) seq exactly once and in order, then strictly increasing.
        missed = sum(1 for _, _, r in after if r)
        for i in range(1, len(seqs)):
            assert seqs[i] > seqs[i - 1], f"{sym}: seq {seqs[i]} after {seqs[i - 1]}"
            if i <= missed:
                assert seqs[i] == seqs[i - 1] + 1, f"{sym}: replayed seq {seqs[i]} after {seqs[i - 1]} (a gap or a repeat)"
        assert all(r for _, _, r in after[:missed]), f"{sym}: replayed quotes are not the first after the resume"
        replayed += missed
    assert replayed > 0, f"nothing replayed after a {CUT_S} s cut"
    print(f"     {replayed} updates missed during a {CUT_S} s cut, replayed", flush=True)
    assert not any("OUT-OF-ORDER" in l for l in p.lines), "a seq arrived twice or out of order"
    done = [l for l in p.lines if l.startswith("done: ")]
    assert done and f"({len(symbols)} symbols resumed, 0 snapshotted)" in done[0], f"summary: {done}"
    return replayed


# ---- curl -N on /sse ---------------------------------------------------------------------------
def curl_sse(gw, query, seconds):
    """`curl -N` on /sse for `seconds`: the events as (type, message), in order."""
    out = subprocess.run(["curl", "-N", "-sS", "--max-time", str(seconds), f"http://127.0.0.1:{gw.port}/sse?{query}"],
                         cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, timeout=seconds + 10)
    assert out.returncode in (0, 28), f"curl exited {out.returncode}: {out.stderr.decode()[:200]}"  # 28: --max-time
    events = []
    for block in out.stdout.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        if "event" in fields and "data" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_curl_sse(gw, symbols):
    events = curl_sse(gw, f"symbols={','.join(symbols)}", 2)
    assert events and events[0][0] == "welcome", f"first event: {events[:1]}"
    assert events[1] == ("ack", {"type": "ack", "op": "subscribe", "symbols": symbols}), f"second event: {events[1]}"
    last = {}
    for name, m in events[2:]:
        assert name == m["type"], f"event: {name} carries a {m['type']}"
        if name in ("snapshot", "quote"):
            assert name == "snapshot" or m["symbol"] in last, f"quote of {m['symbol']} before its snapshot"
            assert m["seq"] > last.get(m["symbol"], 0), f"{m['symbol']}: seq {m['seq']} after {last.get(m['symbol'])}"
            last[m["symbol"]] = m["seq"]
    assert set(last) == set(symbols), f"messages for {sorted(last)} only"
    assert sum(name == "quote" for name, _ in events) >= 10, "fewer than 10 quotes in 2 s"
    return events[0][1]["epoch"], last


def test_curl_sse_resume(gw, symbols, epoch, last):
    """A stream opened with resume_epoch and since= replays from there, with no snapshot."""
    since = ",".join(f"{s}:{q}" for s, q in last.items())
    events = curl_sse(gw, f"symbols={','.join(symbols)}&resume_epoch={epoch}&since={since}", 2)
    welcome = events[0][1]
    assert events[1][1].get("resumed") == symbols, f"ack: {events[1]}"
    seqs = {s: [last[s]] for s in symbols}
    replayed = 0
    for name, m in events[2:]:
        assert name != "snapshot", f"a snapshot of {m['symbol']} in a resumed stream"
        if name == "quote":
            prev = seqs[m["symbol"]][-1]
            if m["ts"] < welcome["ts"]:  # missed before the stream opened: replayed, without a gap
                assert m["seq"] == prev + 1, f"{m['symbol']}: replayed seq {m['seq']} after {prev}"
                replayed += 1
            assert m["seq"] > prev, f"{m['symbol']}: seq {m['seq']} after {prev}"
            seqs[m["symbol"]].append(m["seq"])
    assert replayed > 0, "nothing replayed"
    print(f"     {replayed} updates replayed from since=", flush=True)
    # The same positions in another epoch: snapshots instead.
    events = curl_sse(gw, f"symbols={','.join(symbols)}&resume_epoch=not-{epoch}&since={since}", 1)
    assert events[1][1].get("resumed") == [], f"ack with a wrong epoch: {events[1]}"
    assert [m["symbol"] for name, m in events[2:2 + len(symbols)]] == symbols and all(
        name == "snapshot" for name, _ in events[2:2 + len(symbols)]), f"no snapshots first: {events[2:5]}"
    return replayed


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
        sse = run("curl -N /sse: welcome, ack, snapshots and quotes as event/data pairs", test_curl_sse, gw, symbols[:2])
        if sse:
            run("curl -N /sse with resume_epoch and since: replayed without a gap, no snapshot; a wrong epoch snapshots",
                test_curl_sse_resume, gw, symbols[:2], *sse)
        for kind in ("python", "node"):
            label = "client.py" if kind == "python" else "node client.mjs"
            run(f"{label}: welcome, ack, snapshots, quotes with strictly increasing seq", test_client_steady, kind, live["gw"], symbols)
            run(f"{label}: a throttle's seq gaps are reported as conflation", test_client_conflation, kind, live["gw"], symbols)
            run(f"{label}: a cut connection, the gateway up: resumes, every missed seq once and in order",
                test_client_resumes, kind, live["gw"], symbols)
            run(f"{label}: reconnects when the gateway restarts; a new epoch, so its resume gets snapshots",
                test_client_reconnects, kind, live, symbols)
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
