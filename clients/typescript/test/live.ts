// Drives the generated client against a live server: every method of the document, over
// WebSocket (the token as `?token=`, as a generated client cannot set headers) and the
// request/response ones over HTTP too, and a subscription that receives its snapshot and then
// a live publication. Compiled with the client by `tsc`, so the calls are type-checked against
// the generated signatures.
// Usage: node build/test/live.js HOST:PORT TOKEN CHANNEL. Prints one JSON line (what each call
// answered, the events received); exits 1 on the first failure, and stops by itself within 30 s.
import { Rpchub } from "../generated/src/index";

const [address, token, channel] = process.argv.slice(2);
if (!address || !token || !channel) {
  console.error("usage: node build/test/live.js HOST:PORT TOKEN CHANNEL");
  process.exit(2);
}
const [host, port] = [address.slice(0, address.lastIndexOf(":")), Number(address.slice(address.lastIndexOf(":") + 1))];
setTimeout(() => {
  console.error("live: not done within 30 s");
  process.exit(3);
}, 30_000).unref();

function check(what: string, ok: boolean, got: unknown): void {
  if (!ok) {
    throw new Error(`${what}: got ${JSON.stringify(got)}`);
  }
}

/** Waits until `events` has an element for which `pick` is true. */
async function waitFor<T>(events: T[], pick: (e: T) => boolean, what: string): Promise<T> {
  for (let i = 0; i < 200; i++) {
    const found = events.find(pick);
    if (found !== undefined) {
      return found;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no ${what} within 10 s; events: ${JSON.stringify(events)}`);
}

async function main(): Promise<void> {
  const called: Record<string, unknown> = {};
  const query = `?token=${encodeURIComponent(token)}`;
  const client = new Rpchub({ transport: { type: "websocket", host, port, path: `/ws/rpc${query}` } });
  client.setDefaultTimeout(10_000);
  // Every notification as it arrives: `subscription` with `{subscription, result: EVENT}`.
  const events: { subscription: string; result: any }[] = [];
  client.onNotification((n) => {
    if (n.method === "subscription") {
      events.push(n.params as { subscription: string; result: any });
    }
  });

  called.ping = await client.ping();
  check("ping", called.ping === "pong", called.ping);
  const info = await client.info();
  called.info = info;
  check("info", info.name === "rpchub" && info.connections >= 1, info);
  const auth = await client.auth(token);
  called.auth = auth;
  check("auth", auth.sub === "admin", auth);

  // `since` left out: the client sends `null` in its place, before `limit`.
  const id = await client.subscribe(channel, undefined, 10);
  called.subscribe = id;
  check("subscribe", typeof id === "string" && id.length > 0, id);
  const snapshot = (await waitFor(events, (e) => e.subscription === id, "snapshot")).result;
  check("snapshot", snapshot.type === "snapshot" && snapshot.channel === channel, snapshot);

  const position = await client.publish(channel, { from: "typescript", n: 1 }, "test", undefined);
  called.publish = position;
  check("publish", position.offset === snapshot.offset + 1 && typeof position.epoch === "string", position);
  const live = (
    await waitFor(events, (e) => e.subscription === id && e.result.type === "publication", "live publication")
  ).result;
  check("publication", live.offset === position.offset && live.data.from === "typescript" && live.event === "test", live);

  const newest = await client.history(channel, null, 1);
  called.history = newest;
  check("history", newest.offset === position.offset && newest.publications[0].offset === position.offset, newest);
  const after = await client.history(channel, { epoch: position.epoch, offset: position.offset - 1 }, 10);
  check("history since", after.publications.length === 1 && after.publications[0].data.n === 1, after);

  // Conversations: the server keeps presence on this channel's namespace; cursors are the
  // caller's (the admin token's subject).
  const presence = await client.presence(channel);
  called.presence = presence;
  check("presence", presence.count === 1 && presence.clients[0].user === "admin", presence);
  const stats = await client.presence_stats(channel);
  called.presence_stats = stats;
  check("presence_stats", stats.clients === 1 && stats.users === 1, stats);
  const cursor = await client.cursor_set(channel, position.offset - 1);
  called.cursor_set = cursor;
  check("cursor_set", cursor.offset === position.offset - 1, cursor);
  const cursors = await client.cursor_get([channel]);
  called.cursor_get = cursors;
  check("cursor_get", cursors[channel] === position.offset - 1, cursors);
  const unread = await client.unread([channel]);
  called.unread = unread;
  check("unread", unread[channel].count === 1 && unread[channel].capped === false, unread);

  const channels = await client.channels(channel);
  called.channels = channels;
  check("channels", channels.length === 1 && channels[0].channel === channel && channels[0].subscribers === 1, channels);

  called.unsubscribe = await client.unsubscribe(id);
  check("unsubscribe", called.unsubscribe === true, called.unsubscribe);
  const again = await client.unsubscribe(id);
  check("unsubscribe again", again === false, again);

  // Many at once, with resume: one result per item, then the snapshot of each.
  const many = await client.subscribe_many([
    { channel, since: { epoch: position.epoch, offset: position.offset - 1 } },
    { channel: "bad channel name" },
  ]);
  called.subscribe_many = many;
  const manyId = many.results[0].subscription;
  check(
    "subscribe_many",
    typeof manyId === "string" && many.results[1].error?.code === -32005 && many.limits.subscriptions_left > 0,
    many,
  );
  const resumed = (await waitFor(events, (e) => e.subscription === manyId, "subscribe_many snapshot")).result;
  check("subscribe_many snapshot", resumed.recovered === true && resumed.publications.length === 1, resumed);

  // No streamed reply runs on this connection: cancelling one is false.
  called.stream_cancel = await client.stream_cancel("1");
  check("stream_cancel", called.stream_cancel === false, called.stream_cancel);

  // A server error arrives as the client's JSONRPCError, with the document's code.
  const refused = await client.publish("bad channel name", 1).then(
    (r) => ({ resolved: r }),
    (e) => ({ code: e.code, data: e.data }),
  );
  check("publish to a bad channel", (refused as { code?: number }).code === -32005, refused);

  // The same client over HTTP (`POST /rpc`): every method but the subscriptions.
  const http = new Rpchub({ transport: { type: "http", host, port, path: `/rpc${query}` } });
  http.setDefaultTimeout(10_000);
  const overHttp = {
    ping: await http.ping(),
    history: (await http.history(channel, undefined, 1)).offset,
    published: (await http.publish(channel, { from: "http" })).offset,
  };
  check("over HTTP", overHttp.ping === "pong" && overHttp.published === position.offset + 1, overHttp);

  client.rpc.close();
  const first = events.filter((e) => e.subscription === id).map((e) => e.result);
  console.log(JSON.stringify({ called, events: first, refused, overHttp }));
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`live: ${e && e.stack ? e.stack : JSON.stringify(e)}`);
    process.exit(1);
  },
);
