"""An instance-style client, as one written for per-instance event streams: connects to
/ws/{instance} with the instance's token in the URL, says something (which the server must
ignore), and prints the first COUNT frames it receives as one JSON object (at most 20 s).

`python instance.py ws://127.0.0.1:PORT/ws/NAME?token=T COUNT`
"""

import json
import sys

from websockets.sync.client import connect

url, count = sys.argv[1], int(sys.argv[2])
frames = []
with connect(url) as ws:
    ws.send(json.dumps({"type": "hello", "note": "ignored by the server"}))
    print(json.dumps({"ready": True}), flush=True)
    while len(frames) < count:
        frames.append(json.loads(ws.recv(timeout=20)))
print(json.dumps({"ok": True, "frames": frames}))
