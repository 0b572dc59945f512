//! Conversations with real clients: presence and join/leave on `/ws/rpc` and on the `{type,data}`
//! door, read cursors shared by a user's connections (pushed to the others, never to another
//! user), unread counts, on the embedded broker and across two nodes on one Redis, and a node
//! SIGKILLed without goodbye whose clients leave once its presence expires.

use crate::redis_support::shared as shared_redis;
use crate::support::*;
use futures::StreamExt;
use rpchub::config::{NamespaceConfig, Secret, StaticToken};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn key(name: &str) -> StaticToken {
    StaticToken {
        name: name.into(),
        token: Secret(format!("{name}-key")),
        admin: false,
        channels: vec![],
        publish: vec![],
        rate: None,
    }
}

/// `chat` keeps presence and signals joins and leaves; `notifications` has user channels;
/// `short` keeps two publications; alice, bob and carol have static keys.
fn chat_config() -> rpchub::Config {
    let mut c = config();
    let chat = NamespaceConfig { presence: true, join_leave: true, ..NamespaceConfig::default() };
    c.namespaces.insert("chat".into(), chat);
    c.namespaces.insert(
        "notifications".into(),
        NamespaceConfig { user_channels: true, ..NamespaceConfig::default() },
    );
    c.namespaces.insert("short".into(), NamespaceConfig { history_size: 2, ..NamespaceConfig::default() });
    c.tokens.extend(["alice", "bob", "carol"].map(key));
    // Room for a call naming more channels than a cursor call may.
    c.limits.max_message_bytes = 64 * 1024;
    c
}

/// Every message that arrives within `d`.
async fn drain(ws: &mut Ws, d: Duration) -> Vec<Value> {
    let mut got = Vec::new();
    let until = Instant::now() + d;
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until.into(), ws.next()).await {
        if let Message::Text(t) = m {
            got.push(serde_json::from_str(&t).unwrap());
        }
    }
    got
}

/// The next message for which `want` holds (others are dropped), within `WAIT`.
async fn next_where(ws: &mut Ws, want: impl Fn(&Value) -> bool) -> Value {
    loop {
        let v = recv(ws).await;
        if want(&v) {
            return v;
        }
    }
}

/// A JSON-RPC subscription event of `kind` (`join`, `leave`) about `user`.
fn is_presence(v: &Value, kind: &str, user: &str) -> bool {
    let e = &v["params"]["result"];
    v["method"] == "subscription" && e["type"] == kind && e["info"]["user"] == user
}

/// A `{type,data}` connection of `token`, authenticated.
async fn typed(addr: SocketAddr, token: &str) -> Ws {
    let mut w = try_ws(addr, "/ws", None, &[]).await.unwrap();
    send(&mut w, json!({"type": "auth", "token": token})).await;
    let r = recv(&mut w).await;
    assert_eq!(r["type"], "auth", "{r}");
    w
}

#[tokio::test]
async fn presence_joins_and_leaves_on_both_doors() {
    let server = start(chat_config()).await;
    let addr = server.addr;
    let room = "chat:room-1";
    let mut alice = ws(addr, Some("alice-key")).await;
    subscribe(&mut alice, json!([room])).await;
    // A subscriber hears of its own join, then of everyone else's.
    let own = next_where(&mut alice, |v| is_presence(v, "join", "alice")).await;
    assert_eq!(own["params"]["result"]["channel"], room, "{own}");
    let alice_id = own["params"]["result"]["info"]["client"].as_str().unwrap().to_string();
    let mut bob = typed(addr, "bob-key").await;
    send(&mut bob, json!({"type": "subscribe", "data": {"channel": room}})).await;
    assert_eq!(recv(&mut bob).await["type"], "snapshot");
    let joined = next_where(&mut bob, |v| v["type"] == "join").await;
    assert_eq!(joined["channel"], room, "the {{type,data}} form: {joined}");
    assert_eq!(joined["info"]["user"], "bob");
    let bob_id = joined["info"]["client"].as_str().unwrap().to_string();
    assert_ne!(bob_id, alice_id);
    let heard = next_where(&mut alice, |v| is_presence(v, "join", "bob")).await;
    assert_eq!(heard["params"]["result"]["info"]["client"], bob_id.as_str());

    // Presence and its stats, on each door.
    let p = call(&mut alice, "presence", json!([room])).await;
    assert_eq!(p["result"]["count"], 2, "{p}");
    let mut users: Vec<&str> =
        p["result"]["clients"].as_array().unwrap().iter().map(|c| c["user"].as_str().unwrap()).collect();
    users.sort();
    assert_eq!(users, ["alice", "bob"]);
    send(&mut bob, json!({"type": "presence_stats", "id": 7, "data": {"channel": room}})).await;
    let stats = next_where(&mut bob, |v| v["type"] == "presence_stats").await;
    assert_eq!(stats, json!({"type": "presence_stats", "id": 7, "data": {"clients": 2, "users": 2}}));
    // An anonymous reader of a public channel sees it too (permission as for history).
    let r = call(&mut ws(addr, None).await, "presence_stats", json!({"channel": room})).await;
    assert_eq!(r["result"], json!({"clients": 2, "users": 2}), "{r}");

    // Presence where its namespace keeps none, a pattern, a bad name: clear errors.
    for (ch, code) in [("trades:SOL", -32005), ("chat:*", -32005), ("bad channel", -32005)] {
        let r = call(&mut alice, "presence", json!([ch])).await;
        assert_eq!(r["error"]["code"], code, "{ch}: {r}");
    }
    send(&mut bob, json!({"type": "presence", "data": {"channel": "trades:SOL"}})).await;
    let e = next_where(&mut bob, |v| v["type"] == "error").await;
    assert_eq!(e["data"]["code"], "invalid_request", "{e}");
    assert!(e["data"]["message"].as_str().unwrap().contains("presence = true"), "{e}");

    // Bob goes: alice hears one leave, and presence no longer lists him.
    drop(bob);
    let left = next_where(&mut alice, |v| is_presence(v, "leave", "bob")).await;
    assert_eq!(left["params"]["result"]["info"]["client"], bob_id.as_str());
    let p = call(&mut alice, "presence_stats", json!([room])).await;
    assert_eq!(p["result"], json!({"clients": 1, "users": 1}), "{p}");

    // A client reconnecting in a loop: at most one join and one leave per connection, each join
    // followed by its leave, and nothing left behind.
    for _ in 0..15 {
        let mut carol = ws(addr, Some("carol-key")).await;
        subscribe(&mut carol, json!([room])).await;
        drop(carol);
    }
    let heard = drain(&mut alice, Duration::from_millis(600)).await;
    let mut open: std::collections::HashMap<String, (u32, u32)> = Default::default();
    for v in &heard {
        let e = &v["params"]["result"];
        if e["info"]["user"] != "carol" {
            continue;
        }
        let c = open.entry(e["info"]["client"].as_str().unwrap().to_string()).or_default();
        match e["type"].as_str().unwrap() {
            "join" => {
                assert_eq!(*c, (0, 0), "one join per client, before its leave: {heard:?}");
                c.0 += 1;
            }
            "leave" => {
                assert_eq!(*c, (1, 0), "one leave, after the join: {heard:?}");
                c.1 += 1;
            }
            other => panic!("{other}: {v}"),
        }
    }
    assert!(open.values().all(|c| *c == (1, 1)), "every join has its leave: {open:?}");
    let p = call(&mut alice, "presence", json!([room])).await;
    assert_eq!(p["result"]["count"], 1, "only alice is left: {p}");
    assert_eq!(p["result"]["clients"][0]["client"], alice_id.as_str());
}

#[tokio::test]
async fn read_cursors_are_a_users_own_and_reach_its_other_connections() {
    let server = start(chat_config()).await;
    let addr = server.addr;
    let room = "chat:room-2";
    for i in 1..=5 {
        publish(addr, room, json!(i)).await;
    }
    // Two devices of alice; the second listens (it subscribed to something).
    let mut phone = ws(addr, Some("alice-key")).await;
    let mut laptop = ws(addr, Some("alice-key")).await;
    subscribe(&mut laptop, json!(["notifications:#alice"])).await;
    subscribe(&mut phone, json!(["notifications:#alice"])).await;
    let r = call(&mut phone, "unread", json!([[room, "chat:never"]])).await;
    assert_eq!(
        r["result"],
        json!({room: {"count": 5, "capped": false}, "chat:never": {"count": 0, "capped": false}}),
        "{r}"
    );
    let r = call(&mut phone, "cursor_set", json!([room, 3])).await;
    assert_eq!(r["result"], json!({"offset": 3}), "{r}");
    let pushed = next_where(&mut laptop, |v| v["method"] == "cursor").await;
    assert_eq!(
        pushed,
        json!({"jsonrpc": "2.0", "method": "cursor", "params": {"channel": room, "offset": 3}})
    );
    // A lower value changes nothing and pushes nothing; the setter is never told.
    let r = call(&mut phone, "cursor_set", json!({"channel": room, "offset": 2})).await;
    assert_eq!(r["result"], json!({"offset": 3}), "{r}");
    assert!(drain(&mut laptop, Duration::from_millis(300)).await.iter().all(|v| v["method"] != "cursor"));
    assert!(drain(&mut phone, Duration::from_millis(100)).await.iter().all(|v| v["method"] != "cursor"));
    let r = call(&mut laptop, "cursor_get", json!([[room, "chat:never"]])).await;
    assert_eq!(r["result"], json!({room: 3, "chat:never": 0}), "{r}");
    let r = call(&mut laptop, "unread", json!([[room]])).await;
    assert_eq!(r["result"], json!({room: {"count": 2, "capped": false}}), "{r}");

    // Bad input: beyond the channel, anonymous, another user's channel, too many channels,
    // wrong params. None of it changes alice's cursor.
    let r = call(&mut phone, "cursor_set", json!([room, 6])).await;
    assert_eq!(r["error"]["code"], -32005, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("newest offset, 5"), "{r}");
    let mut anon = ws(addr, None).await;
    assert_eq!(call(&mut anon, "cursor_get", json!([[room]])).await["error"]["code"], -32001);
    let mut bob = ws(addr, Some("bob-key")).await;
    let r = call(&mut bob, "cursor_set", json!(["notifications:#alice", 0])).await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
    let many: Vec<String> = (0..1001).map(|i| format!("chat:c{i}")).collect();
    assert_eq!(call(&mut bob, "cursor_get", json!([many])).await["error"]["code"], -32602);
    assert_eq!(call(&mut bob, "cursor_set", json!([room, -1])).await["error"]["code"], -32602);
    assert_eq!(call(&mut bob, "cursor_set", json!([room])).await["error"]["code"], -32602);
    // Bob's cursors are his own: alice's is not his.
    assert_eq!(call(&mut bob, "cursor_get", json!([[room]])).await["result"], json!({room: 0}));
    assert_eq!(call(&mut phone, "cursor_get", json!([[room]])).await["result"], json!({room: 3}));

    // The {type,data} door: its own answer and push shapes; bob's moves never reach alice.
    let mut bob_web = typed(addr, "bob-key").await;
    send(&mut bob_web, json!({"type": "subscribe", "data": {"channel": "notifications:#bob"}})).await;
    assert_eq!(recv(&mut bob_web).await["type"], "snapshot");
    assert_eq!(call(&mut bob, "cursor_set", json!([room, 4])).await["result"], json!({"offset": 4}));
    let pushed = next_where(&mut bob_web, |v| v["type"] == "cursor").await;
    assert_eq!(pushed, json!({"type": "cursor", "channel": room, "offset": 4}));
    send(&mut bob_web, json!({"type": "cursor_set", "id": "a", "data": {"channel": room, "offset": 5}}))
        .await;
    let r = next_where(&mut bob_web, |v| v["type"] != "cursor").await;
    assert_eq!(r, json!({"type": "cursor_set", "id": "a", "data": {"offset": 5}}));
    send(&mut bob_web, json!({"type": "unread", "data": {"channels": [room]}})).await;
    let r = next_where(&mut bob_web, |v| v["type"] == "unread").await;
    assert_eq!(r["data"], json!({room: {"count": 0, "capped": false}}), "{r}");
    for w in [&mut laptop, &mut phone] {
        assert!(
            drain(w, Duration::from_millis(200)).await.iter().all(|v| v["method"] != "cursor"),
            "bob's cursors never reach alice"
        );
    }

    // Unread counts are capped at what history holds, and say so.
    let short = "short:feed";
    for i in 1..=5 {
        publish(addr, short, json!(i)).await;
    }
    let r = call(&mut phone, "unread", json!([[short]])).await;
    assert_eq!(r["result"], json!({short: {"count": 2, "capped": true}}), "{r}");
}

#[tokio::test]
async fn every_device_of_a_user_is_subscribed_to_its_user_channel_at_connect() {
    let mut c = chat_config();
    let inbox = NamespaceConfig { user_channels: true, auto_subscribe: true, ..NamespaceConfig::default() };
    c.namespaces.insert("inbox".into(), inbox);
    let server = start(c).await;
    let addr = server.addr;
    publish(addr, "inbox:#alice", json!("before")).await;
    // On /ws/rpc, a token in the upgrade: the snapshot arrives unasked, with a server-chosen id.
    let mut phone = ws(addr, Some("alice-key")).await;
    let snap = recv(&mut phone).await;
    assert_eq!(snap["method"], "subscription", "{snap}");
    let id = snap["params"]["subscription"].as_str().unwrap().to_string();
    assert_eq!(snap["params"]["result"]["type"], "snapshot");
    assert_eq!(snap["params"]["result"]["channel"], "inbox:#alice");
    assert_eq!(snap["params"]["result"]["publications"][0]["data"], "before");
    // On /ws ({type,data}), after its auth message.
    let mut web = typed(addr, "alice-key").await;
    let snap = recv(&mut web).await;
    assert_eq!((&snap["type"], &snap["channel"]), (&json!("snapshot"), &json!("inbox:#alice")), "{snap}");
    // A backend's publication reaches every device; nobody else's connection is subscribed.
    let mut bob = ws(addr, Some("bob-key")).await;
    let bobs = recv(&mut bob).await;
    assert_eq!(bobs["params"]["result"]["channel"], "inbox:#bob", "{bobs}");
    let mut anon = ws(addr, None).await;
    publish(addr, "inbox:#alice", json!("for alice")).await;
    let live = recv(&mut phone).await;
    assert_eq!(live["params"]["subscription"], id.as_str());
    assert_eq!(live["params"]["result"]["data"], "for alice");
    let live = recv(&mut web).await;
    assert_eq!((&live["channel"], &live["data"]), (&json!("inbox:#alice"), &json!("for alice")), "{live}");
    assert!(silent(&mut bob, Duration::from_millis(300)).await);
    assert!(silent(&mut anon, Duration::from_millis(100)).await);
    // The subscription is the client's like any other: it may end it.
    let r = call(&mut phone, "unsubscribe", json!([id])).await;
    assert_eq!(r["result"], true, "{r}");
}

/// A node of the built binary on Redis `url` with presence entries living 1 s.
async fn chat_node(url: &str) -> (ServerProcess, SocketAddr) {
    let args = [
        "--broker",
        url,
        "--set",
        "namespaces.chat.presence=true",
        "--set",
        "namespaces.chat.join_leave=true",
        "--set",
        "presence_ttl=\"1s\"",
    ];
    serve_binary(&args, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_cursors_cross_nodes_and_a_dead_nodes_clients_leave() {
    let Some(redis) = shared_redis() else { return };
    let url = redis.url();
    let mut c = chat_config();
    c.broker = url.clone();
    c.presence_ttl = Duration::from_secs(1);
    let a = start(c.clone()).await;
    let b = start(c).await;
    let room = channel("chat");
    let mut on_a = ws(a.addr, Some("alice-key")).await;
    subscribe(&mut on_a, json!([room])).await;
    next_where(&mut on_a, |v| is_presence(v, "join", "alice")).await;
    let mut on_b = ws(b.addr, Some("bob-key")).await;
    subscribe(&mut on_b, json!([room])).await;
    // Node A's subscriber hears of a join on node B, and both nodes read the same presence.
    next_where(&mut on_a, |v| is_presence(v, "join", "bob")).await;
    for w in [&mut on_a, &mut on_b] {
        let r = call(w, "presence_stats", json!([room])).await;
        assert_eq!(r["result"], json!({"clients": 2, "users": 2}), "{r}");
    }
    // Alice's cursor set on node B reaches her connection on node A.
    publish(b.addr, &room, json!("hi")).await;
    let mut alice_b = ws(b.addr, Some("alice-key")).await;
    assert_eq!(call(&mut alice_b, "cursor_set", json!([room, 1])).await["result"], json!({"offset": 1}));
    let pushed = next_where(&mut on_a, |v| v["method"] == "cursor").await;
    assert_eq!(pushed["params"], json!({"channel": room, "offset": 1}));
    assert_eq!(call(&mut on_a, "cursor_get", json!([[room]])).await["result"], json!({room.as_str(): 1}));

    // A node dies without goodbye: its client stays listed until its entry expires (1 s here,
    // refreshed every third of it), then leaves, told once to the survivors' subscribers.
    let (mut doomed, addr) = chat_node(&url).await;
    let mut carol = ws(addr, Some(ADMIN)).await;
    subscribe(&mut carol, json!([room])).await;
    next_where(&mut on_a, |v| is_presence(v, "join", "admin")).await;
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let at = Instant::now();
    drop(carol);
    let left = next_where(&mut on_a, |v| is_presence(v, "leave", "admin")).await;
    assert_eq!(left["params"]["result"]["channel"], room.as_str());
    assert!(at.elapsed() < Duration::from_secs(10), "left within the expiry and a sweep: {:?}", at.elapsed());
    let r = call(&mut on_b, "presence_stats", json!([room])).await;
    assert_eq!(r["result"], json!({"clients": 2, "users": 2}), "{r}");
    let again = drain(&mut on_a, Duration::from_millis(1500)).await;
    assert!(!again.iter().any(|v| is_presence(v, "leave", "admin")), "one leave: {again:?}");

    // Read positions outlive the nodes: with both stopped, a new node on the same Redis reads
    // alice's cursor as she left it, and her unread count from it.
    drop((on_a, on_b, alice_b));
    a.shutdown();
    b.shutdown();
    let mut c = chat_config();
    c.broker = url.clone();
    let fresh = start(c).await;
    let mut alice = ws(fresh.addr, Some("alice-key")).await;
    assert_eq!(call(&mut alice, "cursor_get", json!([[room]])).await["result"], json!({room.as_str(): 1}));
    publish(fresh.addr, &room, json!("after the restart")).await;
    let r = call(&mut alice, "unread", json!([[room]])).await;
    assert_eq!(r["result"], json!({room.as_str(): {"count": 1, "capped": false}}), "{r}");
    fresh.shutdown();
}
