"""Reconnect with recovery in each /ws dialect, as a client written for it would: follow
trades:SOL of a demo server, disconnect, come back with the last offset seen, and check that
exactly the missed publications come back, then live ones with no gap.

`python resume.py ws://127.0.0.1:PORT/ws typed|hyperliquid` prints one JSON object; exits 1 on
the first broken rule (saying which).
"""

import json
import sys
import time

from websockets.sync.client import connect

url, dialect = sys.argv[1], sys.argv[2]


def fail(why, **seen):
    print(json.dumps({"ok": False, "why": why, **seen}))
    sys.exit(1)


def subscribe(ws, since=None):
    if dialect == "typed":
        data = {"channel": "trades:SOL"}
        if since:
            data["since"] = since
        ws.send(json.dumps({"type": "subscribe", "data": data}))
    else:
        sub = {"type": "trades", "coin": "SOL"}
        if since:
            sub["since"] = since
        ws.send(json.dumps({"method": "subscribe", "subscription": sub}))


def next_event(ws):
    """The next snapshot or publication, as (kind, message)."""
    while True:
        m = json.loads(ws.recv(timeout=10))
        if dialect == "typed":
            if m["type"] == "snapshot":
                return "snapshot", m
            if m["type"] in ("trade", "publication"):
                return "publication", m
            if m["type"] == "error":
                fail("an error", message=m)
        else:
            if m.get("channel") == "trades":
                return ("snapshot" if m.get("isSnapshot") else "publication"), m
            if m.get("channel") == "error":
                fail("an error", message=m)


def live_offsets(ws, first, n):
    """Reads n live events and checks they are first, first + 1, ... (typed: offsets; the
    Hyperliquid frames carry none, so their trade ids are checked to grow instead)."""
    seen = []
    for _ in range(n):
        kind, m = next_event(ws)
        if kind != "publication":
            fail("a second snapshot", message=m)
        seen.append(m["offset"] if dialect == "typed" else m["data"][0]["tid"])
    if dialect == "typed" and seen != list(range(first, first + n)):
        fail("a gap or a duplicate in live events", offsets=seen, expected_from=first)
    if dialect != "typed" and seen != sorted(set(seen)):
        fail("trades out of order or repeated", tids=seen)
    return seen


with connect(url) as ws:
    subscribe(ws)
    kind, snap = next_event(ws)
    if kind != "snapshot":
        fail("the first event is not the snapshot", message=snap)
    epoch, offset = snap["epoch"], snap["offset"]
    live_offsets(ws, offset + 1, 2)
    last = offset + 2
# Away for a while: the demo keeps publishing. Another connection waits until it has published
# at least once more (its trades come at random, a few a second), so something was missed.
time.sleep(0.5)
with connect(url) as watcher:
    subscribe(watcher)
    kind, _ = next_event(watcher)
    kind, _ = next_event(watcher)
    if kind != "publication":
        fail("the watcher saw no publication")
with connect(url) as ws:
    subscribe(ws, since={"epoch": epoch, "offset": last})
    kind, snap = next_event(ws)
    if kind != "snapshot" or snap.get("recovered") is not True:
        fail("not recovered", message=snap)
    if dialect == "typed":
        missed = [p["offset"] for p in snap["publications"]]
        if missed != list(range(last + 1, snap["offset"] + 1)):
            fail("the recovered publications are not exactly the missed ones", missed=missed, since=last)
    else:
        missed = [t["tid"] for t in snap["data"]]
    if not missed:
        fail("nothing was published while away (the demo is expected to publish)")
    live_offsets(ws, snap["offset"] + 1, 1)
print(json.dumps({"ok": True, "dialect": dialect, "missed": len(missed)}))
