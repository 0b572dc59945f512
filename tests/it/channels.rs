//! Channels over real sockets: subscribe, publish, history, unsubscribe, channels; the snapshot
//! and recovery rules; the no-gap invariant with concurrent publishers.

use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test]
async fn subscribe_gets_snapshot_then_live_publications_in_exact_wire_format() {
    let addr = shared();
    let ch = channel("trades");
    for i in 1..=3 {
        publish(addr, &ch, json!({"n": i})).await;
    }
    let mut ws = ws(addr, None).await;
    send(&mut ws, json!({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": [ch]})).await;
    let answer = recv(&mut ws).await;
    let id = answer["result"].as_str().expect("the subscription id is a string").to_string();
    assert_eq!(answer, json!({"jsonrpc": "2.0", "id": 1, "result": id}));
    assert_eq!(id.len(), 16);
    let snap = recv(&mut ws).await;
    let epoch = snap["params"]["result"]["epoch"].as_str().unwrap().to_string();
    let ts = |v: &Value, i: usize| v["params"]["result"]["publications"][i]["ts"].clone();
    assert_eq!(
        snap,
        json!({"jsonrpc": "2.0", "method": "subscription", "params": {"subscription": id, "result": {
        "type": "snapshot", "channel": ch, "epoch": epoch, "offset": 3, "recovered": false,
        "publications": [
            {"offset": 1, "ts": ts(&snap, 0), "data": {"n": 1}},
            {"offset": 2, "ts": ts(&snap, 1), "data": {"n": 2}},
            {"offset": 3, "ts": ts(&snap, 2), "data": {"n": 3}},
        ]}}})
    );

    let mut publisher = crate::support::ws(addr, Some(ADMIN)).await;
    let r = call(&mut publisher, "publish", json!([ch, {"n": 4}, "trade"])).await;
    assert_eq!(r["result"], json!({"epoch": epoch, "offset": 4}));
    let live = recv(&mut ws).await;
    let ts = live["params"]["result"]["ts"].clone();
    assert!(ts.as_u64().unwrap() > 1_700_000_000_000, "ts is Unix milliseconds");
    assert_eq!(
        live,
        json!({"jsonrpc": "2.0", "method": "subscription", "params": {"subscription": id, "result": {
            "type": "publication", "channel": ch, "offset": 4, "ts": ts, "event": "trade", "data": {"n": 4}}}})
    );

    // Unsubscribe: true once, then false; nothing more arrives.
    let r = call(&mut ws, "unsubscribe", json!([id])).await;
    assert_eq!(r["result"], true);
    let r = call(&mut ws, "unsubscribe", json!([id])).await;
    assert_eq!(r["result"], false);
    publish(addr, &ch, json!({"n": 5})).await;
    assert!(silent(&mut ws, Duration::from_millis(300)).await);
}

#[tokio::test]
async fn params_by_name_and_by_position_mean_the_same() {
    let addr = shared();
    let ch = channel("pos");
    let mut w = ws(addr, Some(ADMIN)).await;
    let a = call(&mut w, "publish", json!({"channel": ch, "data": 1, "event": "e", "idempotency_key": "k"}))
        .await;
    let b = call(&mut w, "publish", json!([ch, 2, "e", "k"])).await;
    assert_eq!(a["result"], b["result"], "same idempotency key: the first result, nothing published");
    let h1 = call(&mut w, "history", json!({"channel": ch, "limit": 5})).await;
    let h2 = call(&mut w, "history", json!([ch, null, 5])).await;
    assert_eq!(h1["result"], h2["result"]);
    assert_eq!(h1["result"]["publications"].as_array().unwrap().len(), 1);
    let (_, s1) = subscribe(&mut w, json!({"channel": ch, "limit": 0})).await;
    let (_, s2) = subscribe(&mut w, json!([ch, null, 0])).await;
    assert_eq!(s1, s2);
}

#[tokio::test]
async fn history_with_and_without_since() {
    let addr = shared();
    let ch = channel("hist");
    let mut last = Value::Null;
    for i in 1..=6 {
        last = publish(addr, &ch, json!(i)).await;
    }
    let epoch = last["epoch"].clone();
    let mut w = ws(addr, None).await;
    let offsets = |r: &Value| -> Vec<u64> {
        r["result"]["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect()
    };
    let r = call(&mut w, "history", json!({"channel": ch, "limit": 2})).await;
    assert_eq!(
        (offsets(&r), r["result"]["offset"].clone(), r["result"]["epoch"].clone()),
        (vec![5, 6], 6.into(), epoch.clone())
    );
    let r =
        call(&mut w, "history", json!({"channel": ch, "since": {"epoch": epoch, "offset": 2}, "limit": 2}))
            .await;
    assert_eq!(offsets(&r), vec![3, 4], "with since: the first `limit` after it");
    let r = call(&mut w, "history", json!({"channel": ch, "since": {"epoch": epoch, "offset": 6}})).await;
    assert_eq!(offsets(&r), Vec::<u64>::new());
    let r = call(&mut w, "history", json!({"channel": ch})).await;
    assert_eq!(offsets(&r), vec![1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn recovery_with_since_and_after_history_loss() {
    let mut c = config();
    c.default_namespace.history_size = 3;
    let server = start(c).await;
    let addr = server.addr;
    let ch = "room:recover";
    let p = publish(addr, ch, json!("a")).await;
    let epoch = p["epoch"].as_str().unwrap().to_string();
    for d in ["b", "c", "d"] {
        publish(addr, ch, json!(d)).await;
    }
    let mut w = ws(addr, None).await;
    // Missed 2..=4, all still in history (3 kept: 2, 3, 4).
    let (_, snap) = subscribe(&mut w, json!({"channel": ch, "since": {"epoch": epoch, "offset": 1}})).await;
    assert_eq!(snap["recovered"], true);
    let data: Vec<_> = snap["publications"].as_array().unwrap().iter().map(|p| p["data"].clone()).collect();
    assert_eq!(data, vec![json!("b"), json!("c"), json!("d")]);
    // Too far behind: the tail, not recovered.
    let (_, snap) =
        subscribe(&mut w, json!({"channel": ch, "since": {"epoch": epoch, "offset": 0}, "limit": 1})).await;
    assert_eq!(
        (snap["recovered"].clone(), snap["publications"].as_array().unwrap().len()),
        (json!(false), 1)
    );
    // History lost: a restarted memory broker has a new epoch; the old position recovers nothing.
    server.shutdown();
    server.wait().await;
    let mut c = config();
    c.default_namespace.history_size = 3;
    let server = start(c).await;
    publish(server.addr, ch, json!("e")).await;
    let mut w = crate::support::ws(server.addr, None).await;
    let (_, snap) = subscribe(&mut w, json!({"channel": ch, "since": {"epoch": epoch, "offset": 4}})).await;
    assert_eq!(snap["recovered"], false);
    assert_ne!(snap["epoch"], json!(epoch));
    assert_eq!((snap["offset"].clone(), snap["publications"][0]["data"].clone()), (json!(1), json!("e")));
}

#[tokio::test]
async fn channels_lists_subscribed_channels_for_token_holders_only() {
    let server = start(config()).await;
    let addr = server.addr;
    let mut a = ws(addr, None).await;
    subscribe(&mut a, json!(["trades:BTC"])).await;
    subscribe(&mut a, json!(["trades:ETH"])).await;
    subscribe(&mut a, json!(["other:x"])).await;
    publish(addr, "trades:BTC", json!(1)).await;
    let r = call(&mut a, "channels", json!([])).await;
    assert_eq!(r["error"]["code"], -32001, "anonymous callers may not list channels: {r}");
    let mut admin = ws(addr, Some(ADMIN)).await;
    let r = call(&mut admin, "channels", json!(["trades:"])).await;
    assert_eq!(
        r["result"],
        json!([{"channel": "trades:BTC", "subscribers": 1, "offset": 1}, {"channel": "trades:ETH", "subscribers": 1, "offset": 0}])
    );
}

/// The central invariant over real sockets: four publishers race, subscribers join mid-stream,
/// and every subscriber sees snapshot offset N then N+1, N+2, ... to the end, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_gap_no_duplicate_with_concurrent_publishers_and_late_joiners() {
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 1_000;
    let mut c = config();
    c.limits.calls_per_second = 1_000_000;
    c.limits.outbound_queue_messages = 100_000;
    let server = start(c).await;
    let addr = server.addr;
    let ch = "race:one";

    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        publishers.push(tokio::spawn(async move {
            let mut w = crate::support::ws(addr, Some(ADMIN)).await;
            // Pipelined: many publishes in flight, answers read afterwards.
            for i in 0..EACH {
                send(&mut w, json!({"jsonrpc": "2.0", "id": i, "method": "publish", "params": [ch, [p, i]]}))
                    .await;
            }
            let mut answered = 0;
            while answered < EACH {
                let v = recv(&mut w).await;
                assert!(v["result"]["offset"].as_u64().is_some(), "{v}");
                answered += 1;
            }
        }));
    }
    let mut subscribers = Vec::new();
    for s in 0..6u64 {
        subscribers.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(15 * s)).await;
            let mut w = crate::support::ws(addr, None).await;
            let (_, snap) = subscribe(&mut w, json!({"channel": ch, "limit": 0})).await;
            let start = snap["offset"].as_u64().unwrap();
            let mut next = start + 1;
            while next <= PUBLISHERS * EACH {
                let e = event(&mut w).await;
                assert_eq!(e["offset"].as_u64(), Some(next), "subscriber {s}: after {} came {e}", next - 1);
                next += 1;
            }
            start
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let mut starts = Vec::new();
    for s in subscribers {
        starts.push(s.await.unwrap());
    }
    assert!(starts.iter().any(|&s| s > 0), "some subscribers joined mid-stream: {starts:?}");
}

#[tokio::test]
async fn bad_channel_names_and_rights() {
    let addr = shared();
    let mut w = ws(addr, None).await;
    let r = call(&mut w, "subscribe", json!(["has space"])).await;
    assert_eq!(r["error"]["code"], -32005);
    assert_eq!(r["error"]["data"]["code"], "invalid_request");
    assert!(r["error"]["message"].as_str().unwrap().contains("channel"), "{r}");
    let r = call(&mut w, "publish", json!(["trades:SOL", 1])).await;
    assert_eq!(r["error"]["code"], -32001, "publishing needs rights: {r}");
    assert_eq!(r["error"]["data"]["code"], "unauthorized");
    let r = call(&mut w, "unsubscribe", json!(["not-an-id"])).await;
    assert_eq!(r["result"], false);
}

#[tokio::test]
async fn subscription_limit_per_connection() {
    let mut c = config();
    c.limits.max_subscriptions = 2;
    let server = start(c).await;
    let mut w = ws(server.addr, None).await;
    let (id, _) = subscribe(&mut w, json!(["a"])).await;
    subscribe(&mut w, json!(["b"])).await;
    let r = call(&mut w, "subscribe", json!(["c"])).await;
    assert_eq!(
        (r["error"]["code"].clone(), r["error"]["data"]["code"].clone()),
        (json!(-32002), json!("subscription_failed"))
    );
    assert_eq!(call(&mut w, "unsubscribe", json!([id])).await["result"], true);
    subscribe(&mut w, json!(["c"])).await;
}
