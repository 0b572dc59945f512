"""The official Hyperliquid SDK, unmodified, against rpchub's /ws with the demo feed.

`python hl_sdk.py http://127.0.0.1:PORT` subscribes to SOL trades and the BTC book the way
an SDK user does, waits for a few messages of each (at most 20 s) and prints them as one JSON
object; exits 1 if they did not all come.
"""

import json
import sys
import threading

from hyperliquid.info import Info

base_url = sys.argv[1]
# Given, so that the SDK asks the HTTP info API nothing (rpchub has none).
meta = {"universe": [{"name": c, "szDecimals": 4} for c in ("BTC", "ETH", "SOL")]}
spot_meta = {"universe": [], "tokens": []}

info = Info(base_url, skip_ws=False, meta=meta, spot_meta=spot_meta)
got = {"trades": [], "books": []}
done = threading.Event()


def keep(kind):
    def callback(message):
        got[kind].append(message)
        if len(got["trades"]) >= 3 and len(got["books"]) >= 2:
            done.set()

    return callback


info.subscribe({"type": "trades", "coin": "SOL"}, keep("trades"))
info.subscribe({"type": "l2Book", "coin": "BTC"}, keep("books"))
ok = done.wait(20)
info.disconnect_websocket()
print(json.dumps({"ok": ok, "trades": got["trades"][:3], "books": got["books"][:2]}))
sys.exit(0 if ok else 1)
