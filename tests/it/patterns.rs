//! Pattern subscriptions on `/ws/rpc`: `trades:*` follows the matching channels that exist and
//! those created later, each with its own snapshot under the pattern's id; `since` is a map; rights
//! are checked per channel; too many matches end it with `closed` `pattern_too_broad`; bad
//! patterns are refused and change nothing.

use crate::support::{self, ADMIN, call, recv, send, silent, ws};
use rpchub::config::{Access, NamespaceConfig, Secret, StaticToken};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

/// `pat`, `trades` and `small` allow patterns (`small` at most 3 channels each); `members`
/// wants claims; `plain` has them off.
async fn server() -> rpchub::Running {
    let mut c = support::config();
    c.namespaces.insert("pat".into(), NamespaceConfig { patterns: true, ..Default::default() });
    c.namespaces.insert(
        "small".into(),
        NamespaceConfig { patterns: true, max_pattern_channels: 3, history_size: 10, ..Default::default() },
    );
    c.namespaces.insert(
        "members".into(),
        NamespaceConfig { patterns: true, subscribe: Access::Claims, ..Default::default() },
    );
    c.namespaces.insert("plain".into(), NamespaceConfig::default());
    c.namespaces.insert("trades".into(), NamespaceConfig { patterns: true, ..Default::default() });
    c.tokens.push(StaticToken {
        name: "reader".into(),
        token: Secret("reader-key".into()),
        admin: false,
        channels: vec!["members:open-*".into()],
        publish: vec![],
        rate: None,
    });
    support::start(c).await
}

/// A unique stem inside namespace `ns`: `ns:tPID-N`.
fn stem(ns: &str) -> String {
    format!("{ns}:{}", support::channel("p").replace(':', "-"))
}

async fn pub_(admin: &mut support::Ws, ch: &str, data: Value) -> Value {
    let r = call(admin, "publish", json!([ch, data])).await;
    r["result"].clone()
}

/// Reads notifications of subscription `id` until `n` have come, returning their events.
async fn events(w: &mut support::Ws, id: &str, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let v = recv(w).await;
        if v["params"]["subscription"] == id {
            got.push(v["params"]["result"].clone());
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_follows_existing_and_new_channels_each_from_its_snapshot() {
    let server = server().await;
    let addr = server.addr;
    let mut admin = ws(addr, Some(ADMIN)).await;
    let s = stem("pat");
    let (a, b) = (format!("{s}-A"), format!("{s}-B"));
    pub_(&mut admin, &a, json!({"a": 1})).await;
    pub_(&mut admin, &a, json!({"a": 2})).await;
    pub_(&mut admin, &b, json!({"b": 1})).await;
    // Not matched: another stem.
    pub_(&mut admin, &format!("{}-A", stem("pat")), json!({"other": 1})).await;

    let mut c = ws(addr, None).await;
    let r = call(&mut c, "subscribe", json!({"channel": format!("{s}-*"), "limit": 1})).await;
    let id = r["result"].as_str().unwrap_or_else(|| panic!("{r}")).to_string();
    // One snapshot per existing channel, in name order, under the pattern's id, each with the
    // limit applied.
    let snaps = events(&mut c, &id, 2).await;
    assert_eq!(snaps[0]["type"], "snapshot");
    assert_eq!((snaps[0]["channel"].as_str(), snaps[0]["offset"].as_u64()), (Some(a.as_str()), Some(2)));
    assert_eq!(snaps[0]["publications"].as_array().unwrap().len(), 1);
    assert_eq!(snaps[1]["channel"], b.as_str());

    // Live on both, then a channel created later: its snapshot (holding its first publication)
    // and then its publications.
    pub_(&mut admin, &b, json!({"b": 2})).await;
    let e = events(&mut c, &id, 1).await;
    assert_eq!(
        (e[0]["type"].as_str(), e[0]["channel"].as_str(), e[0]["offset"].as_u64()),
        (Some("publication"), Some(b.as_str()), Some(2))
    );
    let new = format!("{s}-NEW");
    pub_(&mut admin, &new, json!({"n": 1})).await;
    let snap = &events(&mut c, &id, 1).await[0];
    assert_eq!(
        (snap["type"].as_str(), snap["channel"].as_str()),
        (Some("snapshot"), Some(new.as_str())),
        "{snap}"
    );
    assert_eq!(snap["publications"][0]["data"], json!({"n": 1}), "{snap}");
    pub_(&mut admin, &new, json!({"n": 2})).await;
    pub_(&mut admin, &a, json!({"a": 3})).await;
    let e = events(&mut c, &id, 2).await;
    assert_eq!((e[0]["channel"].as_str(), e[0]["offset"].as_u64()), (Some(new.as_str()), Some(2)));
    assert_eq!((e[1]["channel"].as_str(), e[1]["offset"].as_u64()), (Some(a.as_str()), Some(3)));

    // Unsubscribing the pattern ends every channel of it: nothing more arrives.
    let r = call(&mut c, "unsubscribe", json!([id])).await;
    assert_eq!(r["result"], true);
    pub_(&mut admin, &a, json!({"a": 4})).await;
    pub_(&mut admin, &format!("{s}-LATER"), json!({"l": 1})).await;
    assert!(silent(&mut c, Duration::from_millis(300)).await);
    assert_eq!(call(&mut c, "unsubscribe", json!([id])).await["result"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_on_a_pattern_is_a_map_and_recovers_each_channel() {
    let server = server().await;
    let addr = server.addr;
    let mut admin = ws(addr, Some(ADMIN)).await;
    let s = stem("pat");
    let (a, b) = (format!("{s}-A"), format!("{s}-B"));
    let mut pos = HashMap::new();
    for i in 1..=3 {
        pos.insert(a.clone(), pub_(&mut admin, &a, json!({"i": i})).await);
        if i == 1 {
            pos.insert(b.clone(), pub_(&mut admin, &b, json!({"i": i})).await);
        }
    }
    let mut c = ws(addr, None).await;
    // A had 3, the client saw up to 1; B it saw whole.
    let since = json!({a.clone(): {"epoch": pos[&a]["epoch"], "offset": 1}, b.clone(): pos[&b]});
    let r = call(&mut c, "subscribe", json!({"channel": format!("{s}-*"), "since": since})).await;
    let id = r["result"].as_str().unwrap_or_else(|| panic!("{r}")).to_string();
    let snaps = events(&mut c, &id, 2).await;
    let by: HashMap<&str, &Value> = snaps.iter().map(|v| (v["channel"].as_str().unwrap(), v)).collect();
    assert_eq!(by[a.as_str()]["recovered"], true);
    let offsets: Vec<u64> = by[a.as_str()]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [2, 3]);
    assert_eq!(by[b.as_str()]["recovered"], true);
    assert_eq!(by[b.as_str()]["publications"], json!([]));

    // A since map naming a channel the pattern does not match: -32602, and nothing subscribed.
    let r = call(
        &mut c,
        "subscribe",
        json!({"channel": format!("{s}-*"), "since": {"pat:elsewhere": {"epoch": "e", "offset": 1}}}),
    )
    .await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("pat:elsewhere"), "{r}");
    // A single position on a pattern, or a map on a plain channel: -32602 too.
    let r = call(&mut c, "subscribe", json!({"channel": format!("{s}-*"), "since": pos[&a]})).await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    let r = call(&mut c, "subscribe", json!({"channel": a, "since": {a.clone(): pos[&a]}})).await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    pub_(&mut admin, &b, json!({"i": 2})).await;
    // Only the one good pattern delivers.
    let e = events(&mut c, &id, 1).await;
    assert_eq!((e[0]["channel"].as_str(), e[0]["offset"].as_u64()), (Some(b.as_str()), Some(2)));
    assert!(silent(&mut c, Duration::from_millis(200)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_patterns_are_refused_with_clear_errors() {
    let server = server().await;
    let addr = server.addr;
    let mut c = ws(addr, None).await;
    for (pattern, code, says) in [
        ("plain:*", -32005, "patterns = true"),
        ("*", -32005, "namespace"),
        ("p*t:x", -32005, "namespace"),
        ("pat:a b*", -32005, "' '"),
        ("members:*", -32001, "token"),
    ] {
        let r = call(&mut c, "subscribe", json!([pattern])).await;
        assert_eq!(r["error"]["code"], code, "{pattern}: {r}");
        let m = r["error"]["message"].as_str().unwrap();
        assert!(m.contains(says), "{pattern}: {m}");
    }
    // A token whose claims reach none of the pattern's channels: -32001; one that reaches some
    // gets only those.
    let mut reader = ws(addr, Some("reader-key")).await;
    let r = call(&mut reader, "subscribe", json!(["members:closed-*"])).await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
    let mut admin = ws(addr, Some(ADMIN)).await;
    let s = support::channel("m").replace(':', "-");
    let (open, closed) = (format!("members:open-{s}"), format!("members:other-{s}"));
    pub_(&mut admin, &open, json!(1)).await;
    pub_(&mut admin, &closed, json!(2)).await;
    let r = call(&mut reader, "subscribe", json!(["members:*"])).await;
    let id = r["result"].as_str().unwrap_or_else(|| panic!("{r}")).to_string();
    let snaps = events(&mut reader, &id, 1).await;
    assert_eq!(snaps[0]["channel"], open.as_str());
    pub_(&mut admin, &closed, json!(3)).await;
    pub_(&mut admin, &open, json!(4)).await;
    let e = events(&mut reader, &id, 1).await;
    assert_eq!((e[0]["channel"].as_str(), e[0]["data"].clone()), (Some(open.as_str()), json!(4)), "{e:?}");
    // The connection still works as before.
    assert_eq!(call(&mut c, "ping", json!([])).await["result"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_matches_than_the_limit_end_the_pattern_as_too_broad() {
    let server = server().await;
    let addr = server.addr;
    let mut admin = ws(addr, Some(ADMIN)).await;
    let s = stem("small");
    for i in 0..4 {
        pub_(&mut admin, &format!("{s}-{i}"), json!(i)).await;
    }
    let mut c = ws(addr, None).await;
    // Four exist, three are allowed: refused at once, nothing made.
    let r = call(&mut c, "subscribe", json!([format!("{s}-*")])).await;
    assert_eq!(r["error"]["code"], -32005, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("max_pattern_channels"), "{r}");

    // Three fit; the fourth, created later, ends the pattern with closed pattern_too_broad, sent
    // before any snapshot of it, and nothing follows.
    let t = stem("small");
    for i in 0..3 {
        pub_(&mut admin, &format!("{t}-{i}"), json!(i)).await;
    }
    let pattern = format!("{t}-*");
    let r = call(&mut c, "subscribe", json!([pattern])).await;
    let id = r["result"].as_str().unwrap_or_else(|| panic!("{r}")).to_string();
    let snaps = events(&mut c, &id, 3).await;
    assert!(snaps.iter().all(|v| v["type"] == "snapshot"), "{snaps:?}");
    pub_(&mut admin, &format!("{t}-3"), json!(3)).await;
    let e = events(&mut c, &id, 1).await;
    assert_eq!(e[0], json!({"type": "closed", "channel": pattern, "reason": "pattern_too_broad"}));
    pub_(&mut admin, &format!("{t}-0"), json!("after")).await;
    assert!(silent(&mut c, Duration::from_millis(300)).await);
    assert_eq!(call(&mut c, "unsubscribe", json!([id])).await["result"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_counts_as_one_subscription_and_ends_with_its_connection() {
    let mut c = support::config();
    c.namespaces.insert("pat".into(), NamespaceConfig { patterns: true, ..Default::default() });
    c.limits.max_subscriptions = 2;
    let server = support::start(c).await;
    let addr = server.addr;
    let mut admin = ws(addr, Some(ADMIN)).await;
    let s = stem("pat");
    for i in 0..5 {
        pub_(&mut admin, &format!("{s}-{i}"), json!(i)).await;
    }
    let mut c = ws(addr, None).await;
    let r = call(&mut c, "subscribe", json!([format!("{s}-*")])).await;
    let id = r["result"].as_str().unwrap_or_else(|| panic!("{r}")).to_string();
    events(&mut c, &id, 5).await;
    let r = call(&mut c, "subscribe", json!([format!("{s}-0")])).await;
    assert!(r["result"].is_string(), "{r}");
    let r = call(&mut c, "subscribe", json!([format!("{s}-1")])).await;
    assert_eq!(r["error"]["code"], -32002, "{r}");
    let before = support::metric(addr, "rpchub_subscriptions").await;
    drop(c);
    assert!(
        tokio::time::timeout(support::WAIT, async {
            loop {
                if support::metric(addr, "rpchub_subscriptions").await <= before - 6.0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .is_ok(),
        "the pattern's five channels and the plain subscription end with the connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ws_dialects_take_patterns_in_their_own_shapes() {
    let server = server().await;
    let addr = server.addr;
    let mut admin = ws(addr, Some(ADMIN)).await;

    // {type,data}: one snapshot per existing channel, then a new channel's, every event naming
    // its channel; unsubscribe by the pattern ends it.
    let s = stem("pat");
    pub_(&mut admin, &format!("{s}-A"), json!({"a": 1})).await;
    let mut t = support::try_ws(addr, "/ws", None, &[]).await.unwrap();
    let pattern = format!("{s}-*");
    send(&mut t, json!({"type": "subscribe", "data": {"channel": pattern}})).await;
    let snap = recv(&mut t).await;
    assert_eq!(
        (snap["type"].as_str(), snap["channel"].as_str()),
        (Some("snapshot"), Some(format!("{s}-A").as_str())),
        "{snap}"
    );
    pub_(&mut admin, &format!("{s}-B"), json!({"b": 1})).await;
    let snap = recv(&mut t).await;
    assert_eq!(
        (snap["type"].as_str(), snap["channel"].as_str()),
        (Some("snapshot"), Some(format!("{s}-B").as_str())),
        "{snap}"
    );
    pub_(&mut admin, &format!("{s}-A"), json!({"a": 2})).await;
    let e = recv(&mut t).await;
    assert_eq!(
        (e["type"].as_str(), e["channel"].as_str(), e["offset"].as_u64()),
        (Some("publication"), Some(format!("{s}-A").as_str()), Some(2)),
        "{e}"
    );
    // Twice is refused; a pattern on a namespace without patterns is an error frame.
    send(&mut t, json!({"type": "subscribe", "data": {"channel": pattern}})).await;
    assert_eq!(recv(&mut t).await["data"]["code"], "subscription_failed");
    send(&mut t, json!({"type": "subscribe", "data": {"channel": "plain:*"}})).await;
    let e = recv(&mut t).await;
    assert_eq!(
        (e["type"].as_str(), e["data"]["code"].as_str()),
        (Some("error"), Some("invalid_request")),
        "{e}"
    );
    send(&mut t, json!({"type": "unsubscribe", "data": {"channel": pattern}})).await;
    assert_eq!(recv(&mut t).await, json!({"type": "unsubscribed", "data": {"channel": pattern}}));
    pub_(&mut admin, &format!("{s}-A"), json!({"a": 3})).await;
    assert!(silent(&mut t, Duration::from_millis(300)).await);

    // Hyperliquid: coin "*" follows every coin's trades.
    let coin = support::channel("c").replace(':', "-");
    pub_(&mut admin, &format!("trades:{coin}-X"), json!([{"coin": "X", "px": "1"}])).await;
    let mut h = support::try_ws(addr, "/ws", None, &[]).await.unwrap();
    let sub = json!({"type": "trades", "coin": format!("{coin}-*")});
    send(&mut h, json!({"method": "subscribe", "subscription": sub})).await;
    let ack = recv(&mut h).await;
    assert_eq!(ack["channel"], "subscriptionResponse", "{ack}");
    let snap = recv(&mut h).await;
    assert_eq!(snap["channel"], "trades", "{snap}");
    pub_(&mut admin, &format!("trades:{coin}-Y"), json!([{"coin": "Y", "px": "2"}])).await;
    // The new coin's snapshot holds its first trade; then its live trades.
    let snap = recv(&mut h).await;
    assert_eq!(snap["channel"], "trades", "{snap}");
    assert!(snap.to_string().contains("\"Y\""), "{snap}");
    pub_(&mut admin, &format!("trades:{coin}-Y"), json!([{"coin": "Y", "px": "3"}])).await;
    let live = recv(&mut h).await;
    assert_eq!(live, json!({"channel": "trades", "data": [{"coin": "Y", "px": "3"}]}));
}
