#!/usr/bin/env python3
"""Every dashboard panel and alert rule against a real gateway and a real Prometheus.

Run by grafana/tests/run.sh (`make test-prometheus`); GATEWAY_BIN is the gateway binary.

1. promtool: `check config` (grafana/prometheus.yml), `check rules`, `test rules`.
2. The dashboard JSON is well formed (schema, datasource variable, job/instance variables).
3. A gateway on an ephemeral loopback port, with traffic: readers that keep up, slow readers
   (conflation), stuck clients (closed as slow consumers, 4008), a client that never answers
   pings (closed with 4000), bad requests (not JSON, unknown op, unknown symbol), short sessions
   closed by the client, and plain `GET /ws` requests (426).
4. `promtool check metrics` on its /metrics exposition.
5. A real Prometheus on a free loopback port scrapes it every second and loads the alert rules.
6. Every PromQL expression of every panel (variables substituted as Grafana would) is evaluated
   through /api/v1/query: each must succeed and return at least one finite value. Every panel
   that does not is named. The alert rules load with health "ok" and the metrics they use exist.

Bounded in time, targets 127.0.0.1 only, stops every process it started by PID, removes its
temporary directories, and ends with the line `N passed, N failed`.
"""
from __future__ import annotations

import asyncio
import base64
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
GRAFANA = os.path.dirname(HERE)
ROOT = os.path.dirname(GRAFANA)
DASHBOARD = os.path.join(GRAFANA, "dashboards", "gateway.json")
PROM_CONFIG = os.path.join(GRAFANA, "prometheus.yml")
RULES = os.path.join(GRAFANA, "rules", "gateway.rules.yml")
RULE_TESTS = os.path.join(GRAFANA, "rules", "gateway.rules.test.yml")

HARD_LIMIT_S = 120          # watchdog: the whole run, whatever happens
WAIT_EVENTS_S = 40          # for the slow-consumer and heartbeat closes to happen
SCRAPES_AFTER_EVENTS = 12   # seconds of 1 s scrapes after them, before evaluating
RATE_INTERVAL = "10s"       # $__rate_interval: Grafana uses max(interval + scrape, 4 * scrape)
INTERVAL = "2s"             # $__interval
RANGE = "1m"                # $__range

results: list[tuple[bool, str, str]] = []


def check(ok: bool, name: str, detail: str = "") -> bool:
    results.append((ok, name, detail))
    mark = "ok  " if ok else "FAIL"
    print(f"{mark} {name}" + (f"\n       {detail}" if detail and not ok else ""), flush=True)
    return ok


def log(msg: str) -> None:
    print(f"  .. {msg}", flush=True)


# --------------------------------------------------------------------------- processes

class Procs:
    """Every process this test starts, stopped by PID at the end."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **kw)
        self.procs.append((name, p))
        return p

    def stop_all(self) -> None:
        for name, p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for name, p in reversed(self.procs):
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                print(f"  .. {name} (pid {p.pid}) ignored SIGTERM; killing it", flush=True)
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=5)


def run_tool(argv: list[str], stdin: bytes | None = None, timeout: float = 30) -> tuple[int, str]:
    try:
        r = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, stdin=None if stdin is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout}s"
    return r.returncode, r.stdout.decode(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def gateway_flags(binary: str) -> dict[str, str]:
    """Short timeouts, if the gateway has flags for them (read from --help)."""
    code, out = run_tool([binary, "--help"], timeout=10)
    flags = set(re.findall(r"--([a-z][a-z0-9-]+)", out))
    chosen: dict[str, str] = {}

    def pick(pred, ms: int) -> None:
        for f in sorted(flags):
            if pred(f):
                if f.endswith("-ms") or f.endswith("-millis"):
                    chosen[f] = str(ms)
                elif f.endswith("-secs") or f.endswith("-s") or f.endswith("-seconds"):
                    chosen[f] = str(max(1, ms // 1000))
                else:
                    continue
                return

    pick(lambda f: "slow" in f and ("timeout" in f or "ms" in f), 1500)
    pick(lambda f: "idle" in f and "timeout" in f, 3000)
    pick(lambda f: "ping" in f and "interval" in f, 1000)
    pick(lambda f: f == "heartbeat-ms", 1000)
    if "max-connections" in flags:  # so the connection-limit panels show a visible share
        chosen["max-connections"] = "100"
    # the simulated feed: 200 symbols, 2000 updates/s (flag names as --help spells them)
    for names, value in ((("sim-symbols", "symbols"), "200"), (("sim-rate", "rate"), "2000")):
        for f in names:
            if f in flags:
                chosen[f] = value
                break
    return chosen


# --------------------------------------------------------------------------- raw WebSocket

def ws_frame(text: str, opcode: int = 1) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def raw_ws_connect(host: str, port: int, rcvbuf: int | None) -> socket.socket:
    """A WebSocket handshake on a plain socket (optionally with a tiny receive buffer)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(5)
    s.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(1)  # byte by byte: leave the frames after the headers in the socket
        if not chunk:
            raise ConnectionError("closed during handshake")
        buf += chunk
    status = buf.split(b"\r\n", 1)[0]
    if b" 101 " not in status + b" ":
        raise ConnectionError(f"handshake refused: {status!r}")
    return s


# --------------------------------------------------------------------------- traffic

class Traffic:
    """All client behaviour, on one asyncio loop in a background thread."""

    def __init__(self, host: str, port: int, symbols: list[str]) -> None:
        self.host, self.port, self.symbols = host, port, symbols
        self.url = f"ws://{host}:{port}/ws"
        self.stats: dict[str, int] = {}
        self.errors: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self.stop_event: asyncio.Event | None = None
        self.raw_sockets: list[socket.socket] = []

    def bump(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(timeout=10)
        for s in self.raw_sockets:
            try:
                s.close()
            except OSError:
                pass

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())
        self.loop.close()

    async def _main(self) -> None:
        self.stop_event = asyncio.Event()
        tasks = []
        few = self.symbols[:5]
        some = self.symbols[:50]
        # readers that keep up: all symbols, some symbols, throttled subscriptions; one idle
        for i, (syms, throttle) in enumerate([(["*"], 0), (["*"], 0), (some, 0), (few, 0), (few, 250), (some, 100)]):
            tasks.append(asyncio.create_task(self._reader(i, syms, throttle)))
        for i in range(3):
            tasks.append(asyncio.create_task(self._slow(i)))
        for i in range(2):
            tasks.append(asyncio.create_task(self._stuck(i)))
        tasks.append(asyncio.create_task(self._reader(len(tasks), [], 0)))  # idle: heartbeats only
        tasks.append(asyncio.create_task(self._deaf()))
        tasks.append(asyncio.create_task(self._misbehaving()))
        await self.stop_event.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _reader(self, i: int, symbols: list[str], throttle: int) -> None:
        from websockets.asyncio.client import connect
        try:
            async with connect(self.url, max_size=None, ping_interval=None, open_timeout=5,
                               compression=None) as ws:
                if symbols:
                    await ws.send(json.dumps({"op": "subscribe", "id": 1, "symbols": symbols,
                                              "throttle_ms": throttle}))
                n = 0
                async for msg in ws:
                    n += 1
                    if n % 500 == 0:
                        self.bump("reader_messages", 500)
                        await ws.send(json.dumps({"op": "ping", "id": n}))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - reported, the checks decide
            self.errors.append(f"reader {i}: {type(e).__name__}: {e}")

    async def _slow(self, i: int) -> None:
        """Reads a little, rarely: the gateway conflates. Sends a ping request every second,
        so it is neither idle (4000) nor stuck (4008)."""
        loop = asyncio.get_running_loop()
        try:
            s = await loop.run_in_executor(None, raw_ws_connect, self.host, self.port, 4096)
            self.raw_sockets.append(s)
            s.setblocking(False)
            await loop.sock_sendall(s, ws_frame(json.dumps({"op": "subscribe", "id": 1, "symbols": ["*"]})))
            tick = 0
            while True:
                await asyncio.sleep(0.1)
                data = await asyncio.wait_for(loop.sock_recv(s, 2048), timeout=5)
                if not data:
                    self.bump("slow_closed")
                    return
                self.bump("slow_bytes", len(data))
                tick += 1
                if tick % 10 == 0:
                    await loop.sock_sendall(s, ws_frame(json.dumps({"op": "ping", "id": tick})))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"slow {i}: {type(e).__name__}: {e}")

    async def _stuck(self, i: int) -> None:
        """Subscribes to everything and never reads again: closed as a slow consumer (4008)."""
        loop = asyncio.get_running_loop()
        try:
            s = await loop.run_in_executor(None, raw_ws_connect, self.host, self.port, 2048)
            self.raw_sockets.append(s)
            s.sendall(ws_frame(json.dumps({"op": "subscribe", "id": 1, "symbols": ["*"]})))
            self.bump("stuck_started")
            await self.stop_event.wait()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"stuck {i}: {type(e).__name__}: {e}")

    async def _deaf(self) -> None:
        """Reads everything, answers nothing (no Pong): closed by the idle timeout (4000)."""
        loop = asyncio.get_running_loop()
        try:
            s = await loop.run_in_executor(None, raw_ws_connect, self.host, self.port, None)
            self.raw_sockets.append(s)
            s.setblocking(False)
            while True:
                data = await loop.sock_recv(s, 65536)
                if not data:
                    self.bump("deaf_closed")
                    await self.stop_event.wait()
                    return
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"deaf: {type(e).__name__}: {e}")

    async def _misbehaving(self) -> None:
        """Every ~1.5 s: a short session with bad requests, closed by the client; and a plain
        GET /ws (426)."""
        from websockets.asyncio.client import connect
        bad = ["this is not json", '["an", "array"]', '{"op":"frobnicate","id":1}',
               '{"op":"subscribe","id":2,"symbols":["NO_SUCH_SYMBOL_1"]}',
               '{"op":"subscribe","id":3,"symbols":[42]}']
        good = [json.dumps({"op": "subscribe", "id": 4, "symbols": self.symbols[:2]}),
                '{"op":"unsubscribe","id":5,"symbols":["' + self.symbols[0] + '"]}',
                '{"op":"ping","id":6}']
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with connect(self.url, max_size=None, ping_interval=None, open_timeout=5,
                                   compression=None) as ws:
                    for m in bad + good:
                        await ws.send(m)
                    deadline = loop.time() + 3
                    while loop.time() < deadline:
                        msg = json.loads(await asyncio.wait_for(ws.recv(), timeout=3))
                        if msg.get("type") == "error":
                            self.bump(f"error_{msg.get('code')}")
                        if msg.get("type") == "pong" and msg.get("id") == 6:
                            break
                self.bump("short_sessions")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - bad clients may be closed (e.g. 1008): not an error
                self.bump(f"misbehaving_{type(e).__name__}")
            try:
                status = await loop.run_in_executor(None, self._plain_get_ws)
                self.bump(f"plain_get_ws_{status}")
            except Exception as e:  # noqa: BLE001
                self.errors.append(f"plain GET /ws: {type(e).__name__}: {e}")
            await asyncio.sleep(1.5)

    def _plain_get_ws(self) -> int:
        c = http.client.HTTPConnection(self.host, self.port, timeout=5)
        try:
            c.request("GET", "/ws")
            r = c.getresponse()
            r.read()
            return r.status
        finally:
            c.close()


# --------------------------------------------------------------------------- Prometheus API

class Prom:
    def __init__(self, base: str) -> None:
        self.base = base

    def api(self, path: str, **params) -> dict:
        url = f"{self.base}/api/v1/{path}"
        data = None
        if path == "query":  # POST form for queries, as Grafana does (no URL length limit)
            data = urllib.parse.urlencode(params).encode()
        elif params:
            url += "?" + urllib.parse.urlencode(params)
        req = urllib.request.Request(url, data=data)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return json.loads(body)
            except ValueError:
                return {"status": "error", "error": f"HTTP {e.code}: {body[:200]!r}"}

    def query(self, expr: str) -> dict:
        return self.api("query", query=expr)

    def scalar(self, expr: str) -> float | None:
        r = self.query(expr)
        if r.get("status") != "success" or not r["data"]["result"]:
            return None
        res = r["data"]["result"]
        return float(res[1]) if r["data"]["resultType"] == "scalar" else float(res[0]["value"][1])


def finite_values(data: dict) -> int:
    rt, res = data["resultType"], data["result"]
    if rt == "scalar":
        vals = [res[1]]
    elif rt == "vector":
        vals = [s["value"][1] for s in res]
    elif rt == "matrix":
        vals = [v[1] for s in res for v in s["values"]]
    else:
        vals = []
    return sum(1 for v in vals if math.isfinite(float(v)))


# --------------------------------------------------------------------------- dashboard

def grafana_regex_escape(v: str) -> str:
    """What Grafana's Prometheus datasource does to a multi-value / All-able variable value."""
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", v)


def substitute(expr: str, variables: dict[str, str]) -> str:
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        return variables.get(name, m.group(0))
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


def dashboard_panels(d: dict) -> list[tuple[str, dict]]:
    """(row title, panel) for every non-row panel, including panels inside collapsed rows."""
    out = []
    row = "(no row)"
    for p in d.get("panels", []):
        if p.get("type") == "row":
            row = p.get("title", "")
            for q in p.get("panels", []):
                out.append((row, q))
        else:
            out.append((row, p))
    return out


def check_dashboard(d: dict) -> None:
    check(d.get("schemaVersion", 0) >= 39, "dashboard: schemaVersion >= 39", f"got {d.get('schemaVersion')}")
    check("__inputs" not in d, "dashboard: no __inputs (import-ready without prompts)")
    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    check(ds.get("type") == "datasource" and ds.get("query") == "prometheus",
          "dashboard: datasource variable of type prometheus", json.dumps(ds)[:200])
    check("job" in variables and "instance" in variables, "dashboard: job and instance variables",
          f"variables: {sorted(variables)}")
    panels = dashboard_panels(d)
    ids = [p.get("id") for _, p in panels] + [p.get("id") for p in d.get("panels", []) if p.get("type") == "row"]
    check(len(ids) == len(set(ids)), "dashboard: panel ids are unique")
    bad_ds = [p.get("title") for _, p in panels
              if p.get("datasource", {}).get("uid") != "${datasource}"
              or any(t.get("datasource", {}).get("uid") != "${datasource}" for t in p.get("targets", []))]
    check(not bad_ds, "dashboard: every panel and target uses ${datasource}", f"not: {bad_ds}")
    no_rate_interval = [p.get("title") for _, p in panels for t in p.get("targets", [])
                        if re.search(r"\[\d+[smh]\]", t.get("expr", "")) and "5m" not in t.get("expr", "")]
    check(not no_rate_interval, "dashboard: range vectors use $__rate_interval", f"fixed ranges in: {no_rate_interval}")
    rows = [p.get("title") for p in d.get("panels", []) if p.get("type") == "row"]
    want = ["Traffic", "Latency", "Sessions and subscriptions", "Backpressure", "Errors and rejections",
            "Feed health", "Process"]
    check(all(w in rows for w in want), "dashboard: has the rows " + ", ".join(want), f"rows: {rows}")


# --------------------------------------------------------------------------- main

def _inc(sel: str) -> str:
    return f"sum(increase({sel}[5m]))"


_pos = (lambda v: v > 0)
# (what, PromQL, predicate): what the traffic above must have produced, as Prometheus saw it.
EVENT_CHECKS = [
    ("sessions opened", _inc("gateway_sessions_opened_total"), _pos),
    ("sessions open and subscribed", "max_over_time(gateway_sessions_active[5m]) * max_over_time(gateway_subscriptions_active[5m])", _pos),
    ("the connection limit (--max-connections 100)", "max(gateway_max_connections)", lambda v: v == 100),
    ("slow-consumer closes (reason slow_consumer)", _inc('gateway_sessions_closed_total{reason="slow_consumer"}'), _pos),
    ("slow-consumer closes (gateway_slow_consumer_closes_total)", _inc("gateway_slow_consumer_closes_total"), _pos),
    ("heartbeat-timeout closes (reason heartbeat_timeout)", _inc('gateway_sessions_closed_total{reason="heartbeat_timeout"}'), _pos),
    ("heartbeat timeouts (gateway_heartbeat_timeouts_total)", _inc("gateway_heartbeat_timeouts_total"), _pos),
    ("sessions closed by the client", _inc('gateway_sessions_closed_total{reason=~"client|normal"}'), _pos),
    ("426 handshake rejections", _inc('gateway_handshake_rejections_total{status="426"}'), _pos),
    ("bad_request errors", _inc('gateway_request_errors_total{code="bad_request"}'), _pos),
    ("unknown_symbol errors", _inc('gateway_request_errors_total{code="unknown_symbol"}'), _pos),
] + [
    (f"{op} requests", _inc(f'gateway_requests_total{{op="{op}"}}'), _pos)
    for op in ("subscribe", "unsubscribe", "ping", "invalid")
] + [
    (f"{t} messages and bytes sent",
     _inc('gateway_messages_sent_total{type="%s"}' % t) + " * " + _inc('gateway_sent_bytes_total{type="%s"}' % t), _pos)
    for t in ("welcome", "ack", "error", "snapshot", "quote", "heartbeat", "pong")
] + [
    ("conflated updates", _inc("gateway_conflated_updates_total"), _pos),
    ("a session with pending updates", "max_over_time(gateway_session_pending_updates_max[5m])", _pos),
    ("quote age observations", _inc("gateway_quote_age_seconds_count"), _pos),
    ("fan-out duration observations", _inc("gateway_fanout_duration_seconds_count"), _pos),
    ("feed updates", _inc("gateway_feed_updates_total"), _pos),
    ("a fresh feed (staleness < 5 s)", "max(gateway_feed_staleness_seconds)", lambda v: 0 <= v < 5),
    ("the symbols (--sim-symbols 200)", "max(gateway_symbols)", lambda v: v == 200),
    ("process CPU time", _inc("process_cpu_seconds_total"), _pos),
    ("process memory and fds", "max(process_resident_memory_bytes) * max(process_open_fds)", _pos),
    ("a recent process start time", "time() - max(process_start_time_seconds)", lambda v: 0 < v < 600),
    ("build info with a version", 'count(gateway_build_info{version=~".+"} == 1)', lambda v: v == 1),
]


def metric_value(text: str, name: str, labels: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name):len(name) + 1] in ("{", " ")):
            if labels and labels not in line:
                continue
            try:
                total += float(line.rsplit(" ", 1)[1])
            except ValueError:
                pass
    return total


def main() -> int:
    gateway_bin = os.environ.get("GATEWAY_BIN", "")
    procs = Procs()
    tmp = tempfile.mkdtemp(prefix="gateway-prom-test.")
    traffic: Traffic | None = None

    def on_alarm(signum, frame):
        raise TimeoutError(f"hard time limit of {HARD_LIMIT_S}s reached")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(HARD_LIMIT_S)
    try:
        # ---- 1. promtool on the static files
        code, out = run_tool(["promtool", "check", "config", PROM_CONFIG])
        check(code == 0, "promtool check config grafana/prometheus.yml", out.strip())
        code, out = run_tool(["promtool", "check", "rules", RULES])
        check(code == 0, "promtool check rules grafana/rules/gateway.rules.yml", out.strip())
        code, out = run_tool(["promtool", "test", "rules", RULE_TESTS])
        check(code == 0, "promtool test rules grafana/rules/gateway.rules.test.yml", out.strip())

        # ---- 2. the dashboard JSON
        with open(DASHBOARD) as f:
            dash = json.load(f)
        check_dashboard(dash)

        # ---- 3. the gateway, with traffic
        if not check(bool(gateway_bin) and os.access(gateway_bin, os.X_OK), "GATEWAY_BIN is an executable",
                     f"GATEWAY_BIN={gateway_bin!r}"):
            return 1
        extra = gateway_flags(gateway_bin)
        argv = [gateway_bin, "--listen", "127.0.0.1:0", "--feed", "sim"]
        for k, v in extra.items():
            argv += [f"--{k}", v]
        log("gateway: " + " ".join(argv[1:]))
        gw_out = open(os.path.join(tmp, "gateway.out"), "wb")
        gw_log = open(os.path.join(tmp, "gateway.log"), "wb")
        gw = procs.start("gateway", argv, stdout=gw_out, stderr=gw_log)
        host = port = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and gw.poll() is None:
            with open(os.path.join(tmp, "gateway.out"), "rb") as f:
                m = re.search(rb"http://([0-9.]+):([0-9]+)/", f.read())
            if m:
                host, port = m.group(1).decode(), int(m.group(2))
                break
            time.sleep(0.05)
        if not check(port is not None, "gateway starts and prints its address",
                     open(os.path.join(tmp, "gateway.log"), errors="replace").read()[-2000:]):
            return 1
        base = f"http://{host}:{port}"
        status, body = http_get(f"{base}/symbols")
        symbols = json.loads(body) if status == 200 else []
        if symbols and isinstance(symbols[0], dict):  # tolerate [{"symbol": ...}] as well
            symbols = [s.get("symbol") or s.get("name") for s in symbols]
        if not check(status == 200 and len(symbols) >= 5, "GET /symbols lists symbols", f"status {status}"):
            return 1

        # ---- 5. Prometheus, scraping before the traffic starts (a counter's first increase
        # is only seen if Prometheus saw it before)
        prom_port = free_port()
        with open(PROM_CONFIG) as f:
            cfg = f.read()
        subs = [('"127.0.0.1:8080"', f'"{host}:{port}"'), ("scrape_interval: 5s", "scrape_interval: 1s"),
                ("scrape_timeout: 4s", "scrape_timeout: 1s"), ("evaluation_interval: 5s", "evaluation_interval: 1s"),
                ("- rules/gateway.rules.yml", f"- {RULES}")]
        missing = [a for a, _ in subs if a not in cfg]
        check(not missing, "grafana/prometheus.yml has the target, intervals and rule file the tests rewrite",
              f"not found: {missing}")
        for a, b in subs:
            cfg = cfg.replace(a, b)
        cfg_path = os.path.join(tmp, "prometheus.yml")
        with open(cfg_path, "w") as f:
            f.write(cfg)
        code, out = run_tool(["promtool", "check", "config", cfg_path])
        check(code == 0, "promtool check config (the generated live config)", out.strip())
        prom_log = open(os.path.join(tmp, "prometheus.log"), "wb")
        prom_proc = procs.start("prometheus", [
            "prometheus", f"--config.file={cfg_path}", f"--storage.tsdb.path={os.path.join(tmp, 'data')}",
            f"--web.listen-address=127.0.0.1:{prom_port}", "--storage.tsdb.retention.time=1h",
        ], stdout=prom_log, stderr=subprocess.STDOUT)
        prom = Prom(f"http://127.0.0.1:{prom_port}")
        ready = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and prom_proc.poll() is None:
            try:
                if http_get(f"{prom.base}/-/ready", timeout=2)[0] == 200:
                    ready = True
                    break
            except OSError:
                pass
            time.sleep(0.2)
        if not check(ready, "Prometheus starts on a loopback port",
                     open(os.path.join(tmp, "prometheus.log"), errors="replace").read()[-2000:]):
            return 1

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (prom.scalar('sum(count_over_time(up{job="gateway"}[1m]))') or 0) < 2:
            time.sleep(0.25)
        check((prom.scalar('min(up{job="gateway"})') or 0) == 1, "Prometheus scrapes the idle gateway")
        traffic = Traffic(host, port, symbols)
        traffic.start()

        # ---- wait for the events the panels show: slow-consumer and heartbeat closes
        log("waiting for slow-consumer (4008) and heartbeat-timeout (4000) closes")
        deadline = time.monotonic() + WAIT_EVENTS_S
        text = ""
        while time.monotonic() < deadline:
            status, body = http_get(f"{base}/metrics")
            text = body.decode(errors="replace")
            slow = metric_value(text, "gateway_slow_consumer_closes_total")
            hb = metric_value(text, "gateway_heartbeat_timeouts_total")
            if slow >= 2 and hb >= 1 and traffic.stats.get("short_sessions", 0) >= 2:
                break
            time.sleep(0.5)
        check(metric_value(text, "gateway_slow_consumer_closes_total") >= 2,
              "the stuck clients are closed as slow consumers (gateway_slow_consumer_closes_total >= 2)",
              f"value {metric_value(text, 'gateway_slow_consumer_closes_total')}; traffic {traffic.stats}")
        check(metric_value(text, "gateway_heartbeat_timeouts_total") >= 1,
              "the client that never answers pings is closed (gateway_heartbeat_timeouts_total >= 1)",
              f"value {metric_value(text, 'gateway_heartbeat_timeouts_total')}; gateway flags used: {extra}")
        log(f"traffic so far: {traffic.stats}")

        # ---- 4. promtool check metrics on the exposition (every series exists by now)
        status, body = http_get(f"{base}/metrics")
        ctype = ""
        try:
            with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
                ctype = r.headers.get("Content-Type", "")
        except OSError:
            pass
        check(status == 200 and ctype.startswith("text/plain"), "GET /metrics answers 200 text/plain",
              f"status {status}, Content-Type {ctype!r}")
        code, out = run_tool(["promtool", "check", "metrics"], stdin=body)
        check(code == 0, "promtool check metrics accepts the /metrics exposition", out.strip()[:3000])

        log(f"letting Prometheus scrape for {SCRAPES_AFTER_EVENTS}s more")
        time.sleep(SCRAPES_AFTER_EVENTS)
        scrapes = prom.scalar('sum(count_over_time(up{job="gateway"}[5m]))') or 0
        up = prom.scalar('min(up{job="gateway"})')
        check(up == 1 and scrapes >= 10, "Prometheus scrapes the gateway (up == 1, >= 10 scrapes)",
              f"up={up}, scrapes={scrapes}")

        # ---- 6. every expression of every panel
        # the dashboard's variables: label_values(gateway_build_info, job) and (..., instance)
        jobs = prom.api("label/job/values", **{"match[]": "gateway_build_info"}).get("data") or []
        insts = prom.api("label/instance/values", **{"match[]": 'gateway_build_info{job=~".+"}'}).get("data") or []
        check(jobs == ["gateway"] and insts == [f"{host}:{port}"],
              "the job and instance variables resolve (label_values of gateway_build_info)",
              f"job values {jobs}, instance values {insts}")
        jobs, insts = jobs or ["gateway"], insts or [f"{host}:{port}"]
        variables = {
            "datasource": "prometheus",
            "job": "(" + "|".join(grafana_regex_escape(j) for j in jobs) + ")",
            "instance": "(" + "|".join(grafana_regex_escape(i) for i in insts) + ")",
            "__rate_interval": RATE_INTERVAL, "__interval": INTERVAL, "__range": RANGE,
            "__interval_ms": "2000", "__range_s": "60", "__range_ms": "60000",
        }
        log(f"variables: job={variables['job']} instance={variables['instance']} "
            f"$__rate_interval={RATE_INTERVAL}")
        n_targets = 0
        for row, panel in dashboard_panels(dash):
            problems = []
            targets = [t for t in panel.get("targets", []) if not t.get("hide")]
            if not targets:
                problems.append("has no queries")
            for t in targets:
                expr = substitute(t.get("expr", ""), variables)
                n_targets += 1
                if "$" in expr:
                    problems.append(f"target {t.get('refId')}: unsubstituted variable in {expr}")
                    continue
                r = prom.query(expr)
                if r.get("status") != "success":
                    problems.append(f"target {t.get('refId')}: query failed ({r.get('errorType')}: {r.get('error')}): {expr}")
                elif not r["data"]["result"]:
                    problems.append(f"target {t.get('refId')}: no data: {expr}")
                elif finite_values(r["data"]) == 0:
                    problems.append(f"target {t.get('refId')}: only NaN/Inf values: {expr}")
            check(not problems, f"panel \"{panel.get('title')}\" (row {row}) shows data",
                  "\n       ".join(problems))
        log(f"{n_targets} panel queries evaluated")

        # ---- the traffic's events reached Prometheus (every series exists from the start at 0,
        # so "has data" alone would not prove the panels show what happened)
        for what, expr, ok in EVENT_CHECKS:
            v = prom.scalar(expr)
            check(v is not None and ok(v), f"Prometheus saw {what}", f"{expr} = {v}")

        # ---- the alert rules, loaded by the live Prometheus
        rules = [r for g in prom.api("rules").get("data", {}).get("groups", []) for r in g.get("rules", [])]
        names = sorted(r.get("name") for r in rules)
        want = sorted(["GatewayDown", "GatewayFeedStale", "GatewayP99LatencyHigh", "GatewaySlowConsumerSpike",
                       "GatewayConnectionLimitNear", "GatewayFeedDisconnected", "GatewayFeedLagHigh",
                       "GatewayFeedRejectingUpdates", "GatewayInternalErrors"])
        check(names == want, "Prometheus loads the nine alert rules", f"got {names}")
        for r in rules:
            ok = r.get("health") == "ok" and not r.get("lastError")
            # every metric the rule reads exists in the live data
            metrics = sorted(set(re.findall(r"\b(gateway_[a-z0-9_]+|up)\b", r.get("query", ""))))
            absent = [m for m in metrics if not (prom.scalar(f"count({m})") or 0)]
            check(ok and not absent, f"alert {r.get('name')}: evaluates, and its metrics exist",
                  f"health={r.get('health')} lastError={r.get('lastError')!r} absent={absent}")
            if r.get("name") in ("GatewayDown", "GatewayFeedStale", "GatewayConnectionLimitNear",
                                 "GatewayFeedDisconnected", "GatewayFeedLagHigh", "GatewayFeedRejectingUpdates",
                                 "GatewayInternalErrors"):
                check(r.get("state", "inactive") == "inactive", f"alert {r.get('name')} is quiet on a healthy gateway",
                      f"state={r.get('state')}")

        check(not traffic.errors, "the well-behaved clients saw no unexpected errors",
              "; ".join(traffic.errors[:10]))
        return 0
    except (TimeoutError, KeyboardInterrupt) as e:
        check(False, "the test completes", str(e))
        return 1
    finally:
        signal.alarm(0)
        if traffic is not None:
            traffic.stop()
        procs.stop_all()
        if any(not ok for ok, _, _ in results):
            for name in ("gateway.log", "prometheus.log"):
                p = os.path.join(tmp, name)
                if os.path.exists(p):
                    tail = open(p, errors="replace").read()[-1500:]
                    if tail.strip():
                        print(f"--- last lines of {name}:\n{tail}", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
        passed = sum(1 for ok, _, _ in results if ok)
        failed = len(results) - passed
        print(f"{passed} passed, {failed} failed", flush=True)


def traffic_only(addr: str) -> int:
    """`live_prometheus.py --traffic HOST:PORT`: the test's client mix against a running gateway
    until SIGINT/SIGTERM (used by `OBSERVE_TRAFFIC=1 make observe`)."""
    host, port = addr.rsplit(":", 1)
    status, body = http_get(f"http://{host}:{port}/symbols")
    symbols = json.loads(body) if status == 200 else []
    if len(symbols) < 5:
        print(f"traffic: GET /symbols answered {status}", file=sys.stderr)
        return 1
    traffic = Traffic(host, int(port), symbols)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    traffic.start()
    print(f"traffic: readers, slow, stuck and misbehaving clients against {addr}", flush=True)
    while not stop.wait(1):
        pass
    traffic.stop()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--traffic":
        sys.exit(traffic_only(sys.argv[2]))
    rc = main()
    sys.exit(1 if rc or any(not ok for ok, _, _ in results) else 0)
