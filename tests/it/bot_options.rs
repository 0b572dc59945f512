//! What bots need besides the basics, on `/ws/rpc` and the `/ws` dialects: a failed recovery
//! says how far back history reaches (`earliest`), and a quiet channel is told apart from a
//! dead one by heartbeats that carry its offset.

use crate::support::{self, ADMIN, call, recv, send, subscribe, ws};
use rpchub::config::NamespaceConfig;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A server whose `short` namespace keeps 3 publications and whose `beat` and `trades`
/// namespaces send a heartbeat after 300 ms of quiet.
async fn server() -> rpchub::Running {
    let mut c = support::config();
    c.namespaces.insert("short".into(), NamespaceConfig { history_size: 3, ..Default::default() });
    for ns in ["beat", "trades"] {
        c.namespaces.insert(
            ns.into(),
            NamespaceConfig { heartbeat: Some(Duration::from_millis(300)), ..Default::default() },
        );
    }
    support::start(c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_recovery_says_where_history_starts() {
    let server = server().await;
    let addr = server.addr;
    let mut admin = ws(addr, Some(ADMIN)).await;
    let ch = format!("short:{}", support::channel("earliest").replace(':', "-"));
    let mut epoch = Value::Null;
    for i in 1..=10 {
        epoch = call(&mut admin, "publish", json!([ch, {"i": i}])).await["result"]["epoch"].clone();
    }
    let mut c = ws(addr, None).await;
    // Offset 2 is long gone (history holds 8..10): not recovered, and earliest says 8, with or
    // without a limit on the snapshot, and from another epoch too.
    for (since, limit) in [
        (json!({"epoch": epoch, "offset": 2}), json!(null)),
        (json!({"epoch": epoch, "offset": 2}), json!(1)),
        (json!({"epoch": "gone", "offset": 9}), json!(1)),
    ] {
        let (_, snap) = subscribe(&mut c, json!({"channel": ch, "since": since, "limit": limit})).await;
        assert_eq!(snap["recovered"], false, "{snap}");
        assert_eq!(snap["earliest"], json!({"epoch": epoch, "offset": 8}), "{since} {limit}: {snap}");
        assert_eq!(snap["offset"], 10);
    }
    // Recovered, or no `since` at all: no earliest.
    let (_, snap) = subscribe(&mut c, json!({"channel": ch, "since": {"epoch": epoch, "offset": 8}})).await;
    assert_eq!(snap["recovered"], true);
    assert!(snap.get("earliest").is_none(), "{snap}");
    let (_, snap) = subscribe(&mut c, json!([ch])).await;
    assert!(snap.get("earliest").is_none(), "{snap}");
    // A channel with nothing retained: earliest is the offset after the newest.
    let (_, snap) =
        subscribe(&mut c, json!({"channel": format!("{ch}-empty"), "since": {"epoch": "x", "offset": 4}}))
            .await;
    assert_eq!(snap["earliest"]["offset"], 1, "{snap}");

    // The dialects' snapshots say it too.
    let mut t = support::try_ws(addr, "/ws", None, &[]).await.unwrap();
    send(
        &mut t,
        json!({"type": "subscribe", "data": {"channel": ch, "since": {"epoch": epoch, "offset": 1}}}),
    )
    .await;
    let snap = recv(&mut t).await;
    assert_eq!(
        (snap["type"].as_str(), snap["recovered"].as_bool()),
        (Some("snapshot"), Some(false)),
        "{snap}"
    );
    assert_eq!(snap["earliest"], json!({"epoch": epoch, "offset": 8}));
}

/// Reads frames from a `/ws/rpc` connection for `d`, with when each arrived.
async fn frames_for(w: &mut support::Ws, d: Duration) -> Vec<(Duration, Value)> {
    let start = Instant::now();
    let mut got = Vec::new();
    while start.elapsed() < d {
        let left = d.saturating_sub(start.elapsed());
        use futures::StreamExt;
        match tokio::time::timeout(left, w.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                got.push((start.elapsed(), serde_json::from_str(&t).unwrap()))
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_channels_send_heartbeats_with_their_offset() {
    let server = server().await;
    let addr = server.addr;
    let ch = format!("beat:{}", support::channel("hb").replace(':', "-"));
    let never = format!("{ch}-never");
    let mut admin = ws(addr, Some(ADMIN)).await;
    call(&mut admin, "publish", json!([ch, {"n": 1}])).await;
    call(&mut admin, "publish", json!([ch, {"n": 2}])).await;

    let mut c = ws(addr, None).await;
    let (id, snap) = subscribe(&mut c, json!([ch])).await;
    assert_eq!(snap["offset"], 2);
    let (never_id, _) = subscribe(&mut c, json!([never])).await;
    // A channel in a namespace without heartbeats stays silent.
    let (plain_id, _) = subscribe(&mut c, json!([support::channel("no-beat")])).await;

    // Quiet for 1 s: a heartbeat every 300 ms or so on each beat channel, at offset 2 (and 0 on
    // the one never published to).
    let got = frames_for(&mut c, Duration::from_millis(1_000)).await;
    let beats = |sub: &str| -> Vec<(Duration, Value)> {
        got.iter().filter(|(_, v)| v["params"]["subscription"] == sub).cloned().collect()
    };
    let on_ch = beats(&id);
    assert!((1..=4).contains(&on_ch.len()), "{got:?}");
    for (_, b) in &on_ch {
        assert_eq!(b["params"]["result"], json!({"type": "heartbeat", "channel": ch, "offset": 2}));
    }
    assert!(
        on_ch[0].0 >= Duration::from_millis(200),
        "not before the channel was quiet that long: {on_ch:?}"
    );
    assert!(
        beats(&never_id).iter().all(|(_, b)| b["params"]["result"]["offset"] == 0)
            && !beats(&never_id).is_empty()
    );
    assert!(beats(&plain_id).is_empty(), "{got:?}");

    // Publications keep the heartbeats away: one every 30 ms or so for most of a second, and
    // none comes on the channel.
    let publisher = tokio::spawn(async move {
        for n in 3..33 {
            call(&mut admin, "publish", json!([ch, {"n": n}])).await;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        admin
    });
    let got = frames_for(&mut c, Duration::from_millis(1_000)).await;
    publisher.await.unwrap();
    let on_ch: Vec<&Value> =
        got.iter().map(|(_, v)| v).filter(|v| v["params"]["subscription"] == id.as_str()).collect();
    assert!(on_ch.iter().all(|v| v["params"]["result"]["type"] == "publication"), "{on_ch:?}");
    assert!(on_ch.len() >= 20, "{on_ch:?}");

    // The dialects: `{"type":"heartbeat",...}` and Hyperliquid's `{"channel":"heartbeat",...}`.
    let mut t = support::try_ws(addr, "/ws", None, &[]).await.unwrap();
    send(&mut t, json!({"type": "subscribe", "data": {"channel": never}})).await;
    assert_eq!(recv(&mut t).await["type"], "snapshot");
    let hb = recv(&mut t).await;
    assert_eq!(hb, json!({"type": "heartbeat", "channel": never, "offset": 0}));
    let mut h = support::try_ws(addr, "/ws", None, &[]).await.unwrap();
    let coin = support::channel("HB").replace([':', '-'], "");
    send(&mut h, json!({"method": "subscribe", "subscription": {"type": "trades", "coin": coin}})).await;
    assert_eq!(recv(&mut h).await["channel"], "subscriptionResponse");
    assert_eq!(recv(&mut h).await["isSnapshot"], true);
    let hb = recv(&mut h).await;
    assert_eq!(
        hb,
        json!({"channel": "heartbeat", "data": {"channel": format!("trades:{coin}"), "offset": 0}})
    );
}

/// Checks a subscriber's publication events: each offset is the one after the last plus the
/// `skipped` it announces, so every offset is accounted for. Returns the total skipped.
fn accounted(events: &[Value], after: u64) -> u64 {
    let mut last = after;
    let mut skipped = 0;
    for e in events {
        let k = e["skipped"].as_u64().unwrap_or(0);
        assert!(e.get("skipped").is_none() || k > 0, "skipped is never 0: {e}");
        assert_eq!(
            e["offset"].as_u64().unwrap(),
            last + 1 + k,
            "offset {} after {last} with skipped {k}",
            e["offset"]
        );
        last += 1 + k;
        skipped += k;
    }
    skipped
}

/// A server with conflating namespaces: `book` conflates every subscription to 100 ms, `slow`
/// conflates subscribers that fall behind (`on_slow`); small queues, so falling behind is quick.
async fn conflating_server() -> rpchub::Running {
    let mut c = support::config();
    c.limits.outbound_queue_messages = 64;
    c.limits.outbound_queue_bytes = 1 << 20;
    c.namespaces.insert("book".into(), NamespaceConfig { conflate_ms: Some(100), ..Default::default() });
    c.namespaces.insert(
        "slow".into(),
        NamespaceConfig { on_slow: rpchub::config::OnSlow::Conflate, ..Default::default() },
    );
    support::start(c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflated_subscriptions_get_the_latest_with_skipped_counts() {
    let server = conflating_server().await;
    let addr = server.addr;
    let mut admin = ws(addr, Some(ADMIN)).await;
    let ch = support::channel("conflate");
    let book = format!("book:{}", support::channel("b").replace(':', "-"));

    let mut c = ws(addr, None).await;
    let (id, _) = subscribe(&mut c, json!({"channel": ch, "conflate_ms": 200})).await;
    let (book_id, _) = subscribe(&mut c, json!([book])).await;
    let (plain_id, _) = subscribe(&mut c, json!([ch])).await;
    // A burst of 50 on each channel, well within one interval.
    for n in 1..=50 {
        call(&mut admin, "publish", json!([ch, {"n": n}])).await;
        call(&mut admin, "publish", json!([book, {"n": n}])).await;
    }
    let got = frames_for(&mut c, Duration::from_millis(700)).await;
    let of = |sub: &str| -> Vec<Value> {
        got.iter()
            .filter(|(_, v)| v["params"]["subscription"] == sub)
            .map(|(_, v)| v["params"]["result"].clone())
            .collect()
    };
    for (sub, what) in [(&id, "conflate_ms 200"), (&book_id, "the namespace's 100 ms")] {
        let events = of(sub);
        assert!((2..=8).contains(&events.len()), "{what}: {events:?}");
        assert_eq!(events[0]["offset"], 1, "the first goes out at once, {what}");
        assert_eq!(events.last().unwrap()["offset"], 50, "the latest always arrives, {what}: {events:?}");
        assert!(accounted(&events, 0) >= 40, "{what}: {events:?}");
    }
    // The same channel without conflation: all 50, none skipped.
    let plain = of(&plain_id);
    assert_eq!(plain.len(), 50);
    assert_eq!(accounted(&plain, 0), 0);
    assert!(support::metric(addr, "rpchub_conflated_total").await >= 80.0);

    // After a quiet interval the next one goes out at once, with nothing skipped.
    call(&mut admin, "publish", json!([ch, {"n": 51}])).await;
    let next = frames_for(&mut c, Duration::from_millis(150)).await;
    let on_id: Vec<&Value> =
        next.iter().map(|(_, v)| v).filter(|v| v["params"]["subscription"] == id.as_str()).collect();
    assert_eq!(on_id.len(), 1, "{next:?}");
    assert_eq!(on_id[0]["params"]["result"]["offset"], 51);
    assert!(on_id[0]["params"]["result"].get("skipped").is_none());

    // The dialects: `skipped` on {type,data} events and on Hyperliquid frames.
    let mut t = support::try_ws(addr, "/ws", None, &[]).await.unwrap();
    send(&mut t, json!({"type": "subscribe", "data": {"channel": ch, "conflate_ms": 300}})).await;
    assert_eq!(recv(&mut t).await["type"], "snapshot");
    for n in 52..=60 {
        call(&mut admin, "publish", json!([ch, {"n": n}])).await;
    }
    let first = recv(&mut t).await;
    let last = recv(&mut t).await;
    assert_eq!((first["offset"].as_u64(), first.get("skipped")), (Some(52), None), "{first}");
    assert_eq!((last["offset"].as_u64(), last["skipped"].as_u64()), (Some(60), Some(7)), "{last}");
    let coin = support::channel("CF").replace([':', '-'], "");
    let mut h = support::try_ws(addr, "/ws", None, &[]).await.unwrap();
    send(
        &mut h,
        json!({"method": "subscribe", "subscription": {"type": "l2Book", "coin": coin, "conflate_ms": 300}}),
    )
    .await;
    assert_eq!(recv(&mut h).await["channel"], "subscriptionResponse");
    assert_eq!(recv(&mut h).await["isSnapshot"], true);
    for n in 1..=5 {
        call(&mut admin, "publish", json!([format!("l2Book:{coin}"), {"n": n}])).await;
    }
    assert_eq!(recv(&mut h).await["data"]["n"], 1);
    let latest = recv(&mut h).await;
    assert_eq!((latest["data"]["n"].as_u64(), latest["skipped"].as_u64()), (Some(5), Some(3)), "{latest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflate_ms_out_of_bounds_is_refused_and_changes_nothing() {
    let server = conflating_server().await;
    let addr = server.addr;
    let mut c = ws(addr, None).await;
    for bad in [json!(0), json!(5), json!(60_001)] {
        let r = call(&mut c, "subscribe", json!({"channel": "x", "conflate_ms": bad})).await;
        assert_eq!(r["error"]["code"], -32602, "{bad}: {r}");
        assert!(r["error"]["message"].as_str().unwrap().contains("10 to 60000"), "{r}");
    }
    let r = call(&mut c, "subscribe", json!({"channel": "x", "conflate_ms": -1})).await;
    assert_eq!(r["error"]["code"], -32602, "a negative interval is the wrong type: {r}");
    let r = call(
        &mut c,
        "subscribe_many",
        json!([[{"channel": "x", "conflate_ms": 5}, {"channel": "y", "conflate_ms": 10}]]),
    )
    .await;
    let results = &r["result"]["results"];
    assert_eq!(results[0]["error"]["code"], -32602, "{r}");
    assert!(results[1]["subscription"].is_string(), "{r}");
    assert_eq!(r["result"]["limits"]["subscriptions_left"], 1023, "the refused item took no place: {r}");
    let mut t = support::try_ws(addr, "/ws", None, &[]).await.unwrap();
    send(&mut t, json!({"type": "subscribe", "data": {"channel": "x", "conflate_ms": 1}})).await;
    let e = recv(&mut t).await;
    assert_eq!(
        (e["type"].as_str(), e["data"]["code"].as_str()),
        (Some("error"), Some("invalid_request")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_on_a_conflating_namespace_keeps_the_latest_and_is_not_dropped() {
    use support::raw;
    let server = conflating_server().await;
    let addr = server.addr;
    let ch = format!("slow:{}", support::channel("s").replace(':', "-"));
    let control = support::channel("drop-control");
    let mut admin = ws(addr, Some(ADMIN)).await;

    // Two clients that stop reading: one on the conflating namespace, one on an ordinary one.
    let mut slow = raw::connect_small_window(addr, 4 << 10).await;
    let mut dropped = raw::connect_small_window(addr, 4 << 10).await;
    for (s, channel) in [(&mut slow, &ch), (&mut dropped, &control)] {
        use tokio::io::AsyncWriteExt;
        let sub = json!({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": [channel]}).to_string();
        s.write_all(&raw::text(&sub)).await.unwrap();
        for _ in 0..2 {
            let (op, _) = raw::read(s).await.unwrap();
            assert_eq!(op, 1, "the answer, then the snapshot");
        }
    }
    // 2,000 publications of 2 KB to each: far more than either socket and queue hold.
    let pad = "x".repeat(2000);
    let mut last = 0;
    for n in 1..=2000u64 {
        last = call(&mut admin, "publish", json!([ch, {"n": n, "pad": pad}])).await["result"]["offset"]
            .as_u64()
            .unwrap();
        call(&mut admin, "publish", json!([control, {"n": n, "pad": pad}])).await;
    }
    assert_eq!(last, 2000);
    // The ordinary one was dropped as a slow consumer; the conflated one reads on, every offset
    // accounted for, up to the latest.
    assert_ne!(raw::close_code(&mut dropped).await, Some(1000), "dropped (1008, or reset)");
    let mut events = Vec::new();
    while events.last().is_none_or(|e: &Value| e["offset"] != last) {
        let (op, p) = raw::read(&mut slow).await.expect("still connected");
        assert_eq!(op, 1);
        let v: Value = serde_json::from_slice(&p).unwrap();
        events.push(v["params"]["result"].clone());
    }
    let skipped = accounted(&events, 0);
    assert!(skipped > 0, "it was conflated: {} events", events.len());
    assert!(support::metric(addr, "rpchub_slow_conflations_total").await >= 1.0);
    // Caught up: the next publications come one by one again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 1..=3u64 {
        call(&mut admin, "publish", json!([ch, {"n": 2000 + n}])).await;
        let (_, p) = raw::read(&mut slow).await.expect("still connected");
        let v: Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["params"]["result"]["offset"], 2000 + n, "{v}");
        assert!(v["params"]["result"].get("skipped").is_none(), "{v}");
    }
}
