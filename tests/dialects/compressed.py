"""permessage-deflate with Python's `websockets` (its deflate is zlib's), against rpchub.

usage: compressed.py ws://HOST:PORT CHANNEL TOKEN

On /ws/rpc: connects offering the extension (websockets does by default), subscribes to CHANNEL
with its history, publishes a compressible order book with TOKEN and reads it back live, and
sends a call whose params fill most of the message limit (compressed by the client). On /ws:
the same book through a {type,data} subscription. Prints one JSON line: what was negotiated and
what came back, for tests/it/dialects.rs to check.
"""

import asyncio
import json
import sys

import websockets


def book(levels):
    side = lambda sign: [{"px": f"{67000 + sign * i * 0.5:.1f}", "sz": "1.2500", "n": i % 7 + 1} for i in range(levels)]
    return {"coin": "BTC", "levels": [side(-1), side(1)]}


async def rpc(base, channel, token):
    out = {}
    async with websockets.connect(f"{base}/ws/rpc?token={token}", max_size=None) as ws:
        out["extensions"] = [e.name for e in ws.protocol.extensions]
        out["response_header"] = ws.response.headers.get("Sec-WebSocket-Extensions")
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"channel": channel, "limit": 10}}))
        sub = json.loads(await ws.recv())["result"]
        snap = json.loads(await ws.recv())["params"]["result"]
        out["snapshot"] = [p["data"] for p in snap["publications"]]
        data = book(40)
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "publish", "params": {"channel": channel, "data": data}}))
        live, published = None, None
        while live is None or published is None:
            m = json.loads(await ws.recv())
            if m.get("id") == 2:
                published = m
            elif m.get("method") == "subscription" and m["params"]["subscription"] == sub:
                live = m["params"]["result"]
        out["published"] = published.get("result")
        out["live_is_the_book"] = live["data"] == data
        # A call that compresses well and fills most of the server's 4,096-byte limit.
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 3, "method": "ping", "params": [], "pad": "z" * 3500}))
        out["big_call"] = json.loads(await ws.recv())
    return out


async def typed(base, channel, token):
    out = {}
    async with websockets.connect(f"{base}/ws", max_size=None) as ws:
        out["extensions"] = [e.name for e in ws.protocol.extensions]
        await ws.send(json.dumps({"type": "auth", "token": token}))
        json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "subscribe", "data": {"channel": channel, "limit": 10}}))
        while True:
            m = json.loads(await ws.recv())
            if m.get("type") == "snapshot":
                out["snapshot"] = [p["data"] for p in m["publications"]]
                break
    return out


async def main():
    base, channel, token = sys.argv[1:4]
    print(json.dumps({"rpc": await rpc(base, channel, token), "typed": await typed(base, channel, token), "book": book(40)}))


asyncio.run(main())
