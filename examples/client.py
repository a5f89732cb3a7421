#!/usr/bin/env python3
"""A robust client of the market data gateway, in Python with `websockets` and asyncio.

It reconnects with exponential backoff and jitter, subscribes again (fresh snapshots) after every
reconnect, and tracks `seq` per symbol: a gap is conflation (a throttle or a slow reader), not an error.

    python3 examples/client.py AAPL MSFT NVDA --url ws://127.0.0.1:8080/ws --max-seconds 30
"""
import argparse, asyncio, json, random, signal, sys
import websockets  # pip install websockets (--token needs websockets >= 14)

BACKOFF_BASE_S, BACKOFF_MAX_S = 0.5, 15.0


class Client:
    def __init__(self, args):
        self.args, self.seq = args, {}
        self.messages = self.gaps = self.conflated = self.sessions = 0

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
                            await ws.send(json.dumps({"op": "subscribe", "id": 1, "symbols": self.args.symbols,
                                                      "snapshot": True, "throttle_ms": self.args.throttle_ms}))
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
            self.seq[sym] = seq  # a snapshot restarts tracking: a new session, or a restarted feed
            print(f"{t} {sym} seq={seq} bid={m['bid']} ask={m['ask']} last={m['last']}"
                  f" volume={m['volume']}{note}", flush=True)
        elif t == "welcome":
            self.seq.clear()
            self.sessions += 1
            print(f"welcome server={m['server']} session={m['session']} heartbeat_ms={m['heartbeat_ms']}", flush=True)
        else:  # ack, error, heartbeat, pong
            print(t, *(f"{k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}"
                       for k, v in m.items() if k != "type"), flush=True)

    def summary(self):
        print(f"done: {self.messages} messages, {self.gaps} seq gaps ({self.conflated} updates conflated),"
              f" {max(0, self.sessions - 1)} reconnects", flush=True)


async def main():
    p = argparse.ArgumentParser(description="Print live quotes; reconnect and resubscribe on failure.")
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
