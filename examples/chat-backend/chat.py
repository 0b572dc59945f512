#!/usr/bin/env python3
"""A chat client of the {type,data} style for rpchub's /ws door (pip install websocket-client).

Three ways to run it (see README.md beside it):

  chat.py "a message"              sends {"type":"chat"}; the backend's answer streams back on
                                   this connection, word by word, and is printed as it comes
  chat.py --publish "a message"    subscribes to conversation:SESSION, sends {"type":"chat_publish"}
                                   and prints the answer as it is published to the channel;
                                   with --drop-after N it disconnects after N chunks, reconnects
                                   and resubscribes with "since": the snapshot holds exactly the
                                   chunks it missed ("recovered": true), then the rest goes on live
  chat.py --watch                  another tab: prints the next answer published to the
                                   conversation, whoever asked for it

It exits 0 once the answer is done, 1 on an error from the server, 2 when nothing comes for
--timeout seconds. --summary prints a last line of JSON with what was received.
"""

import argparse
import json
import sys
import time

import websocket

DEFAULT_URL = "ws://127.0.0.1:7410/ws"
DEFAULT_TOKEN = "alice-demo-token"  # the demo user's key in rpchub.toml


class Failed(Exception):
    """The server said no, or went quiet: the message says which."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


class Printer:
    """Writes the answer as it comes: content words on one line, a tool call on its own."""

    def __init__(self, quiet=False):
        self.quiet = quiet
        self.line_start = True
        self.text = ""
        self.tools = []

    def content(self, data):
        word = data.get("content", "")
        self.text += word
        if self.line_start:
            word = word.lstrip()
        self.write(word)
        self.line_start = self.line_start and not word
        if data.get("done"):
            self.write("\n")
            self.line_start = True
            return True
        return False

    def tool(self, data):
        self.tools.append(data)
        head = "" if self.line_start else "\n"
        args = json.dumps(data.get("input"))
        out = json.dumps(data.get("output"))
        self.write(f"{head}[tool {data.get('name')} {args} -> {out}]\n")
        self.line_start = True

    def break_line(self):
        """Ends the line being written, so that a note goes on a line of its own."""
        if not self.line_start:
            self.write("\n")
            self.line_start = True

    def write(self, s):
        if not self.quiet and s:
            sys.stdout.write(s)
            sys.stdout.flush()


def note(s):
    """A line about the connection itself, on stderr, so stdout is the answer alone."""
    sys.stderr.write(f"-- {s}\n")
    sys.stderr.flush()


class Door:
    """One connection to /ws speaking {type,data}."""

    def __init__(self, args):
        self.args = args
        self.ws = websocket.create_connection(args.url, timeout=args.timeout)
        self.send({"type": "auth", "token": args.token})
        reply = self.next()
        if reply.get("type") != "auth":
            raise Failed(f"auth failed: {reply}")

    def send(self, message):
        self.ws.send(json.dumps(message))

    def next(self):
        """The next message, answering the server's text pings on the way."""
        while True:
            try:
                raw = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                raise Failed(f"nothing came for {self.args.timeout} s", status=2)
            if not raw:
                raise Failed("the server closed the connection")
            msg = json.loads(raw)
            if msg.get("type") == "ping":
                self.send({"type": "pong"})
                continue
            if msg.get("type") == "error":
                data = msg.get("data") or {}
                raise Failed(f"error {data.get('code')}: {data.get('message')}")
            return msg

    def subscribe(self, channel, since=None):
        """Subscribes; returns the snapshot."""
        data = {"channel": channel}
        if since is None:
            data["limit"] = 0  # an earlier answer in the conversation is not this one
        else:
            data["since"] = since
        self.send({"type": "subscribe", "data": data})
        while True:
            msg = self.next()
            if msg.get("type") == "snapshot" and msg.get("channel") == channel:
                return msg

    def close(self):
        self.ws.close()


def chat(args, printer):
    """The answer streamed back on this connection."""
    door = Door(args)
    door.send({"type": "chat", "data": {"message": args.message, "sessionId": args.session}})
    while True:
        msg = door.next()
        kind, data = msg.get("type"), msg.get("data") or {}
        if kind == "tool":
            printer.tool(data)
        elif kind == "content" and printer.content(data):
            door.close()
            return {}


def conversation(args, printer, ask):
    """The answer published to conversation:SESSION, sent for with chat_publish when `ask`."""
    channel = f"conversation:{args.session}"
    door = Door(args)
    snapshot = door.subscribe(channel)
    last = {"epoch": snapshot["epoch"], "offset": snapshot["offset"]}
    if ask:
        door.send({"type": "chat_publish", "data": {"message": args.message, "sessionId": args.session}})
    else:
        note(f"watching {channel} from offset {last['offset']}")
    seen, summary, chunks = [], {}, 0

    def take(offset, event, data):
        """One chunk of the answer; True once it is done."""
        nonlocal chunks
        if offset <= last["offset"]:
            raise Failed(f"offset {offset} came twice")
        last["offset"] = offset
        seen.append(offset)
        chunks += 1
        if event == "tool":
            printer.tool(data)
            return False
        return event == "content" and printer.content(data)

    while True:
        msg = door.next()
        kind = msg.get("type")
        if kind == "chat_publish":
            note(f"the backend publishes the answer to {msg['data']['channel']}")
            continue
        if msg.get("channel") != channel or "offset" not in msg or kind == "snapshot":
            continue
        if take(msg["offset"], msg.get("event"), msg.get("data") or {}):
            break
        if args.drop_after and chunks == args.drop_after and "dropped_at" not in summary:
            summary["dropped_at"] = last["offset"]
            door.close()
            printer.break_line()
            note(f"disconnected after {chunks} chunks (offset {last['offset']}); reconnecting")
            time.sleep(args.away)
            door = Door(args)
            snapshot = door.subscribe(channel, since=dict(last))
            missed = snapshot.get("publications", [])
            summary["recovered"] = snapshot.get("recovered")
            summary["missed"] = [p["offset"] for p in missed]
            note(
                f"resubscribed with since={json.dumps(last)}: recovered={json.dumps(snapshot.get('recovered'))}, "
                f"{len(missed)} missed chunks in the snapshot"
            )
            if not snapshot.get("recovered"):
                raise Failed("the server could not recover the missed chunks")
            if any(take(p["offset"], p.get("event"), p.get("data") or {}) for p in missed):
                break
    door.close()
    summary["offsets"] = seen
    return summary


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("message", nargs="*", help="what to ask (default: a greeting)")
    p.add_argument("--url", default=DEFAULT_URL, help=f"rpchub's /ws (default {DEFAULT_URL})")
    p.add_argument("--token", default=DEFAULT_TOKEN, help="the token sent with {\"type\":\"auth\"}")
    p.add_argument("--session", default="demo", help="the sessionId: the conversation's name (default demo)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--publish", action="store_true", help="ask with chat_publish and read the conversation's channel")
    mode.add_argument("--watch", action="store_true", help="print the next answer published to the conversation")
    p.add_argument("--drop-after", type=int, default=0, metavar="N", help="with --publish or --watch: disconnect after N chunks, then resume with since")
    p.add_argument("--away", type=float, default=0.3, metavar="S", help="seconds to stay away after --drop-after (default 0.3)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="give up when nothing comes for S seconds (default 30)")
    p.add_argument("--summary", action="store_true", help="print a last line of JSON: the text, tool calls, offsets")
    args = p.parse_args()
    args.message = " ".join(args.message) or "hello from a websocket-client script"
    if args.drop_after and not (args.publish or args.watch):
        p.error("--drop-after needs --publish or --watch: only a channel can be recovered with since")
    printer = Printer()
    try:
        if args.publish or args.watch:
            summary = conversation(args, printer, ask=args.publish)
        else:
            summary = chat(args, printer)
    except Failed as e:
        note(str(e))
        return e.status
    except (OSError, websocket.WebSocketException) as e:
        note(f"cannot talk to {args.url}: {e}")
        return 1
    if args.summary:
        print(json.dumps({"text": printer.text, "tools": printer.tools, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
