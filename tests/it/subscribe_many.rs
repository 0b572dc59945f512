//! `subscribe_many` on `/ws/rpc`, and the subscribe lists of the `/ws` dialects: one call (one
//! message) subscribes to many channels with resume, one result per item in order, each
//! subscription with its own snapshot; a bad item fails only itself; the cap and the list's
//! size are enforced with clear errors and nothing half-made.

use crate::support::{self, ADMIN, call, call_keep, recv, send, silent, ws};
use rpchub::config::{Access, NamespaceConfig};
use serde_json::{Value, json};
use std::time::Duration;

/// Publishes `n` publications to `channel` over `w` (an admin connection); returns the position
/// of the first.
async fn publish_n(w: &mut support::Ws, channel: &str, n: u64) -> Value {
    let mut first = Value::Null;
    for i in 0..n {
        let r = call(w, "publish", json!([channel, {"i": i}])).await;
        if i == 0 {
            first = r["result"].clone();
        }
    }
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_subscribes_to_fifty_channels_with_resume() {
    let server = support::start(support::config()).await;
    let addr = server.addr;
    let mut admin = ws(addr, Some(ADMIN)).await;
    let channels: Vec<String> = (0..50).map(|i| format!("{}-{i}", support::channel("many"))).collect();
    let mut items = Vec::new();
    for ch in &channels {
        let first = publish_n(&mut admin, ch, 3).await;
        items.push(json!({"channel": ch, "since": first}));
    }
    let mut bot = ws(addr, None).await;
    let mut notes = Vec::new();
    let r = call_keep(&mut bot, 1, "subscribe_many", json!({"subscriptions": items}), &mut notes).await;
    assert!(notes.is_empty(), "the answer comes before any snapshot: {notes:?}");
    let results = r["result"]["results"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(results.len(), 50);
    let mut ids = Vec::new();
    for (res, ch) in results.iter().zip(&channels) {
        assert_eq!(res["channel"], ch.as_str(), "in the order of the items");
        assert!(res.get("error").is_none(), "{res}");
        ids.push(res["subscription"].as_str().unwrap().to_string());
    }
    let limits = &r["result"]["limits"];
    assert_eq!(limits["subscriptions_left"], 1024 - 50, "{limits}");
    assert_eq!(limits["calls_per_s"], support::config().limits.calls_per_second, "{limits}");
    // Then each subscription's snapshot, in the order of the items, each recovered from its
    // own `since`: the two publications after the first.
    for (id, ch) in ids.iter().zip(&channels) {
        let n = recv(&mut bot).await;
        assert_eq!(n["params"]["subscription"], id.as_str(), "{n}");
        let snap = &n["params"]["result"];
        assert_eq!(snap["type"], "snapshot");
        assert_eq!(snap["channel"], ch.as_str());
        assert_eq!(snap["recovered"], true, "{snap}");
        let offsets: Vec<u64> =
            snap["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect();
        assert_eq!(offsets, [2, 3]);
    }
    // Live: each continues at offset 4 under its own id.
    for i in [7, 42] {
        call(&mut admin, "publish", json!([channels[i], {"live": i}])).await;
        let n = recv(&mut bot).await;
        assert_eq!(n["params"]["subscription"], ids[i].as_str(), "{n}");
        assert_eq!(n["params"]["result"]["offset"], 4);
        assert_eq!(n["params"]["result"]["data"]["live"], i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_item_fails_alone_and_the_cap_is_kept() {
    let mut config = support::config();
    config.limits.max_subscriptions = 5;
    config
        .namespaces
        .insert("private".into(), NamespaceConfig { subscribe: Access::Authenticated, ..Default::default() });
    let server = support::start(config).await;
    let addr = server.addr;
    let ch = support::channel("items");
    let mut c = ws(addr, None).await;
    let r = call(
        &mut c,
        "subscribe_many",
        json!([[
            {"channel": format!("{ch}-a")},
            {"channel": "not a channel"},
            {"channel": "private:x"},
            {"channel": format!("{ch}-a")},
            {"channel": format!("{ch}-b"), "limit": 0}
        ]]),
    )
    .await;
    let results = r["result"]["results"].as_array().unwrap_or_else(|| panic!("{r}"));
    let codes: Vec<Value> = results.iter().map(|x| x["error"]["code"].clone()).collect();
    assert_eq!(codes, [json!(null), json!(-32005), json!(-32001), json!(-32005), json!(null)], "{r}");
    assert_eq!(results[1]["error"]["data"]["code"], "invalid_request");
    assert_eq!(results[2]["error"]["data"]["code"], "unauthorized");
    assert!(results[3]["error"]["message"].as_str().unwrap().contains("more than once"), "{r}");
    assert_eq!(r["result"]["limits"]["subscriptions_left"], 3);
    // Exactly two snapshots follow, of the two good items.
    for want in [format!("{ch}-a"), format!("{ch}-b")] {
        let n = recv(&mut c).await;
        assert_eq!(n["params"]["result"]["type"], "snapshot");
        assert_eq!(n["params"]["result"]["channel"], want.as_str());
    }
    assert!(silent(&mut c, Duration::from_millis(200)).await);

    // Three places left: of four more items, the fourth is over the cap (-32002), alone.
    let items: Vec<Value> =
        ["c", "d", "e", "f"].iter().map(|x| json!({"channel": format!("{ch}-{x}")})).collect();
    let r = call(&mut c, "subscribe_many", json!({"subscriptions": items})).await;
    let results = r["result"]["results"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert!(results[..3].iter().all(|x| x["subscription"].is_string()), "{r}");
    assert_eq!(results[3]["error"]["code"], -32002, "{r}");
    assert_eq!(results[3]["error"]["data"]["code"], "subscription_failed");
    assert_eq!(r["result"]["limits"]["subscriptions_left"], 0);
    for _ in 0..3 {
        assert_eq!(recv(&mut c).await["params"]["result"]["type"], "snapshot");
    }

    // A list longer than the limit, an empty one, a malformed item: -32602 for the whole call,
    // and nothing is made.
    let mut d = ws(addr, None).await;
    let six: Vec<Value> = (0..6).map(|i| json!({"channel": format!("{ch}-x{i}")})).collect();
    for params in [json!([six]), json!([[]]), json!([[{"chan": "typo"}]]), json!([[{"channel": 5}]])] {
        let r = call(&mut d, "subscribe_many", params.clone()).await;
        assert_eq!(r["error"]["code"], -32602, "{params}: {r}");
    }
    assert!(silent(&mut d, Duration::from_millis(200)).await, "no snapshot of a refused call");
    let r = call(&mut d, "subscribe_many", json!([[{"channel": format!("{ch}-y")}]])).await;
    assert_eq!(r["result"]["limits"]["subscriptions_left"], 4, "the refused calls took no place: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dialects_take_a_list_of_subscriptions() {
    let addr = support::shared();
    let ch = support::channel("dialect-list");
    let mut admin = ws(addr, Some(ADMIN)).await;
    let first = publish_n(&mut admin, &format!("{ch}-a"), 2).await;

    // {type,data}: `data` a list; one snapshot per good item, an error naming the bad one's
    // channel, in order.
    let mut t = support::try_ws(addr, "/ws", None, &[]).await.unwrap();
    send(
        &mut t,
        json!({"type": "subscribe", "data": [
            {"channel": format!("{ch}-a"), "since": first},
            {"channel": "bad channel"},
            {"channel": format!("{ch}-b")}
        ]}),
    )
    .await;
    let a = recv(&mut t).await;
    assert_eq!(
        (a["type"].as_str(), a["channel"].as_str()),
        (Some("snapshot"), Some(&*format!("{ch}-a"))),
        "{a}"
    );
    assert_eq!(a["recovered"], true);
    assert_eq!(a["publications"].as_array().unwrap().len(), 1);
    let e = recv(&mut t).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["data"]["code"], "invalid_request");
    assert_eq!(e["data"]["channel"], "bad channel");
    let b = recv(&mut t).await;
    assert_eq!(
        (b["type"].as_str(), b["channel"].as_str()),
        (Some("snapshot"), Some(&*format!("{ch}-b"))),
        "{b}"
    );
    send(&mut t, json!({"type": "subscribe", "data": []})).await;
    let e = recv(&mut t).await;
    assert_eq!(e["data"]["code"], "invalid_request", "{e}");
    assert!(e["data"]["message"].as_str().unwrap().contains("1 to 1024 items"), "{e}");

    // Hyperliquid: `subscription` a list; a subscriptionResponse and a snapshot per good item,
    // an error frame for a bad one.
    let coin = ch.replace([':', '-'], "");
    let mut h = support::try_ws(addr, "/ws", None, &[]).await.unwrap();
    send(
        &mut h,
        json!({"method": "subscribe", "subscription": [
            {"type": "trades", "coin": format!("{coin}A")},
            {"type": "teleport", "coin": "X"},
            {"type": "l2Book", "coin": format!("{coin}B")}
        ]}),
    )
    .await;
    let mut frames = Vec::new();
    for _ in 0..5 {
        frames.push(recv(&mut h).await);
    }
    let kinds: Vec<&str> = frames.iter().map(|f| f["channel"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["subscriptionResponse", "trades", "error", "subscriptionResponse", "l2Book"],
        "{frames:?}"
    );
    assert_eq!(frames[0]["data"]["subscription"]["coin"], format!("{coin}A"));
    assert_eq!(frames[1]["isSnapshot"], true);
    assert!(frames[2]["data"].as_str().unwrap().contains("unknown subscription type"));
    assert_eq!(frames[3]["data"]["subscription"]["type"], "l2Book");
    call(&mut admin, "publish", json!([format!("l2Book:{coin}B"), {"levels": []}])).await;
    let live = recv(&mut h).await;
    assert_eq!(live["channel"], "l2Book", "{live}");
    assert!(live.get("isSnapshot").is_none());
}
