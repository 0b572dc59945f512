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
