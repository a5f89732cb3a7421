"""Subscribe to a few symbols and print every message: python3 quotes.py [ws://HOST:PORT/ws] [SYMBOL ...]"""
import asyncio, json, sys
import websockets  # pip install websockets

async def main(args):
    url = args.pop(0) if args and args[0].startswith(("ws://", "wss://")) else "ws://127.0.0.1:8080/ws"
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"op": "subscribe", "id": 1, "symbols": args or ["AAPL", "MSFT", "NVDA"]}))
        async for message in ws:
            print(message, flush=True)

try:
    asyncio.run(main(sys.argv[1:]))
except KeyboardInterrupt:  # Ctrl-C ends it
    pass
