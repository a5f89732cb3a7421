#!/usr/bin/env python3
"""A robust client of the market data gateway, in Python with `websockets` and asyncio.

It reconnects with exponential backoff and jitter and resumes: it keeps the `epoch` of its last
session and the last `seq` of each symbol, and subscribes again with `resume`, so the gateway
replays what it missed instead of sending snapshots (symbols it cannot replay, after a feed
restart or a long outage, get a snapshot). It tracks `seq` per symbol: a gap is conflation (a
throttle or a slow reader), not an error; a quote stamped before its session opened is marked
`replayed`.

    python3 examples/client.py AAPL MSFT NVDA --url ws://127.0.0.1:8080/ws --max-seconds 30
"""
import argparse, asyncio, json, random, signal, sys
import websockets  # pip install websockets (--token needs websockets >= 14)

BACKOFF_BASE_S, BACKOFF_MAX_S = 0.5, 15.0


class Client:
    def __init__(self, args):
        self.args, self.seq = args, {}  # seq: the last seq held per symbol, kept across sessions
        self.epoch = None  # welcome.epoch of the last session: the sequence space of self.seq
        self.session_ts = 0  # welcome.ts: quotes stamped earlier were missed, and are replayed
        self.messages = self.gaps = self.conflated = self.sessions = self.resumed = self.snapshotted = 0

    def subscribe_request(self, welcome):
        request = {"op": "subscribe", "id": 1, "symbols": self.args.symbols, "snapshot": True,
                   "throttle_ms": self.args.throttle_ms}
        held = {s: q for s, q in self.seq.items() if s in self.args.symbols or self.args.symbols == ["*"]}
        if self.epoch is not None and held:
            limit = welcome.get("limits", {}).get("max_subscriptions", len(held))
            request["resume"] = {"epoch": self.epoch, "seq": dict(list(held.items())[:limit])}
        return request

    async def run(self):
        attempt = 0
        while True:
            auth = {"additional_headers": {"Authorization": f"Bearer {self.args.token}"}} if self.args.token else {}
            try:
                async with websockets.connect(self.args.url, open_timeout=10, **auth) as ws:
                    async for raw in ws:
                        msg = json.loads(raw)
                        if msg["type"] == "welcome":
                            attempt = 0  # the link works again: the next outage starts from the base delay
                            # Resume in the old session's epoch; the gateway compares it with its own.
                            await ws.send(json.dumps(self.subscribe_request(msg)))
                        self.show(msg)
                        self.messages += 1
                        if self.messages == self.args.max_messages:
                            return
                    print(f"disconnected: code={ws.close_code} reason={ws.close_reason or '-'}", flush=True)
            except websockets.InvalidStatus as e:
                status = e.response.status_code
                print(f"handshake refused: HTTP {status}", flush=True)
                if status in (401, 403):
                    return 2  # retrying cannot fix a missing token or a refused Origin
            except (OSError, asyncio.TimeoutError, websockets.ConnectionClosed, websockets.InvalidHandshake) as e:
                print(f"disconnected: {type(e).__name__}: {e}", flush=True)
            # Half the ceiling for sure, a random half more: clients dropped together return apart.
            ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** attempt)
            delay = ceiling / 2 + random.random() * ceiling / 2
            attempt += 1
            print(f"reconnecting in {delay:.2f} s (attempt {attempt})", flush=True)
            await asyncio.sleep(delay)

    def show(self, m):
        t = m["type"]
        if t in ("snapshot", "quote"):
            sym, seq, note = m["symbol"], m["seq"], ""
            last = self.seq.get(sym)
            if t == "quote" and last is not None and seq > last + 1:
                self.gaps += 1
                self.conflated += seq - last - 1
                note = f" conflated={seq - last - 1}"
            elif t == "quote" and last is not None and seq <= last:
                note = f" OUT-OF-ORDER after {last}"
            if t == "quote" and m["ts"] < self.session_ts:
                note += " replayed"
            self.seq[sym] = seq  # a snapshot restarts tracking: a restarted feed may number anew
            print(f"{t} {sym} seq={seq} bid={m['bid']} ask={m['ask']} last={m['last']}"
                  f" volume={m['volume']}{note}", flush=True)
            return
        if t == "welcome":
            self.epoch, self.session_ts = m["epoch"], m["ts"]
            self.sessions += 1
            print(f"welcome server={m['server']} session={m['session']} epoch={m['epoch']}"
                  f" heartbeat_ms={m['heartbeat_ms']}", flush=True)
            return
        print(t, *(f"{k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}"
                   for k, v in m.items() if k != "type"), flush=True)  # ack, error, heartbeat, pong
        if t == "ack" and "resumed" in m:  # the answer to a subscribe with `resume`
            resumed = set(m["resumed"])
            named = [s for s in m["symbols"] if s != "*"] or list(self.seq)
            snapshotted = [s for s in named if s not in resumed]
            self.resumed += len(resumed)
            self.snapshotted += len(snapshotted)
            print(f"resume: {len(resumed)} resumed ({','.join(m['resumed'])}),"
                  f" {len(snapshotted)} snapshotted ({','.join(snapshotted)})", flush=True)

    def summary(self):
        print(f"done: {self.messages} messages, {self.gaps} seq gaps ({self.conflated} updates conflated),"
              f" {max(0, self.sessions - 1)} reconnects ({self.resumed} symbols resumed,"
              f" {self.snapshotted} snapshotted)", flush=True)


async def main():
    p = argparse.ArgumentParser(description="Print live quotes; reconnect and resume on failure.")
    p.add_argument("symbols", nargs="*", default=["AAPL", "MSFT", "NVDA"])
    p.add_argument("--url", default="ws://127.0.0.1:8080/ws")
    p.add_argument("--token", help="access token, sent as 'Authorization: Bearer TOKEN'")
    p.add_argument("--throttle-ms", type=int, default=0, help="at most one quote per symbol per interval")
    p.add_argument("--max-messages", type=int, default=0, help="stop after this many messages (0: never)")
    p.add_argument("--max-seconds", type=float, default=0, help="stop after this many seconds (0: never)")
    client = Client(p.parse_args())
    task = asyncio.ensure_future(client.run())  # ends on a signal, --max-seconds or --max-messages
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
    try:
        code = await asyncio.wait_for(task, client.args.max_seconds or None) or 0
    except (asyncio.CancelledError, asyncio.TimeoutError):
        code = 0
    client.summary()
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
