//! The node's channel table (`limits.max_channels`) against clients without a token: a history
//! read of a channel nobody uses takes no slot, anonymous subscriptions of one address hold at
//! most their share, a slot comes back as soon as the last subscriber leaves an empty channel,
//! and `rpchub_channels` says how many the node holds.

use crate::support::*;
use serde_json::{Value, json};
use std::net::SocketAddr;

/// The value of the metric line that starts with `name` (with its labels, if any).
async fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let (status, text) = http(addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `rpchub_channels` now.
async fn channels_held(addr: SocketAddr) -> f64 {
    metric(addr, "rpchub_channels").await.expect("rpchub_channels is exported")
}

/// `rpchub_channels_refused_total` for `reason`.
async fn refused(addr: SocketAddr, reason: &str) -> f64 {
    let name = format!(r#"rpchub_channels_refused_total{{reason="{reason}"}}"#);
    metric(addr, &name).await.unwrap_or_else(|| panic!("{name} is exported"))
}

/// Asserts that `r` is the -32002 refusal whose message names `key`.
fn assert_refused(r: &Value, key: &str) {
    assert_eq!(r["error"]["code"], -32002, "{r}");
    assert_eq!(r["error"]["data"]["code"], "subscription_failed", "{r}");
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(key), "the message names {key}: {r}");
}

/// Subscribes until it succeeds (what a connection that just ended held is let go of when the
/// server has seen the end); returns the refusals it got meanwhile.
async fn subscribe_once_freed(w: &mut Ws, channel: &str, key: &str) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut refusals = 0;
    loop {
        let r = call(w, "subscribe", json!([channel])).await;
        if r["result"].is_string() {
            recv(w).await; // its snapshot
            return refusals;
        }
        assert_refused(&r, key);
        refusals += 1;
        assert!(tokio::time::Instant::now() < deadline, "{channel} never got a slot: {r}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn history_of_channels_nobody_uses_takes_no_slot() {
    let mut c = config();
    c.limits.max_channels = 3;
    let server = start(c).await;
    let addr = server.addr;
    let mut anon = ws(addr, None).await;
    // Far more reads of unknown channels than the node has slots: each an empty page.
    for i in 0..20 {
        let r = call(&mut anon, "history", json!({"channel": format!("nobody:{i}")})).await;
        assert_eq!(r["result"], json!({"epoch": "", "offset": 0, "publications": []}), "read {i}: {r}");
    }
    let r = call(
        &mut anon,
        "history",
        json!({"channel": "nobody:x", "since": {"epoch": "bc541b2435dd", "offset": 5}, "limit": 2}),
    )
    .await;
    assert_eq!(r["result"], json!({"epoch": "", "offset": 0, "publications": []}), "{r}");
    assert_eq!(channels_held(addr).await, 0.0, "the reads left nothing behind");
    // Every slot is still there for the channels that are used.
    let mut admin = ws(addr, Some(ADMIN)).await;
    for ch in ["used:a", "used:b", "used:c"] {
        subscribe(&mut admin, json!([ch])).await;
    }
    assert_eq!(channels_held(addr).await, 3.0);
    // A read of a channel that is used reads its stream.
    let r = call(&mut anon, "history", json!({"channel": "used:a"})).await;
    let epoch = r["result"]["epoch"].as_str().expect("an epoch");
    assert!(!epoch.is_empty(), "a channel with a stream has its epoch: {r}");
}

/// The empty page's position is the empty epoch at offset 0; a client that subscribes with it
/// after the channel came to life is told it did not recover, and gets what history retains of
/// the channel's epoch, from its first publication, then the live ones: nothing is lost silently.
#[tokio::test]
async fn a_subscriber_from_an_empty_page_gets_the_channels_whole_retained_stream() {
    let server = start(config()).await;
    let addr = server.addr;
    let ch = "news:fresh";
    let mut anon = ws(addr, None).await;
    let page = call(&mut anon, "history", json!({"channel": ch})).await["result"].clone();
    assert_eq!((page["epoch"].clone(), page["offset"].clone()), (json!(""), json!(0)), "{page}");
    let mut published = Value::Null;
    for n in 1..=3 {
        published = publish(addr, ch, json!(n)).await;
    }
    let epoch = published["epoch"].as_str().unwrap().to_string();
    // Paging on from the empty page reads from the oldest retained, in the channel's epoch.
    let r = call(&mut anon, "history", json!({"channel": ch, "since": page, "limit": 2})).await;
    assert_eq!(r["result"]["epoch"], json!(epoch), "{r}");
    let offsets: Vec<_> =
        r["result"]["publications"].as_array().unwrap().iter().map(|p| p["offset"].clone()).collect();
    assert_eq!(offsets, vec![json!(1), json!(2)], "{r}");
    // Subscribing from the empty page: not recovered (the empty epoch vouches for nothing), and
    // the snapshot holds the retained stream from offset 1.
    let (_, snap) = subscribe(&mut anon, json!({"channel": ch, "since": page})).await;
    assert_eq!(snap["recovered"], false, "{snap}");
    assert_eq!((snap["epoch"].clone(), snap["offset"].clone()), (json!(epoch), json!(3)), "{snap}");
    let data: Vec<_> = snap["publications"].as_array().unwrap().iter().map(|p| p["data"].clone()).collect();
    assert_eq!(data, vec![json!(1), json!(2), json!(3)]);
    publish(addr, ch, json!(4)).await;
    assert_eq!(event(&mut anon).await["offset"], 4, "live events continue at the snapshot's offset + 1");
    // A channel that has no stream yet when the client subscribes from the empty page: the
    // subscribe makes its stream, in an epoch of its own, not recovered.
    let quiet = "news:quiet";
    let page = call(&mut anon, "history", json!({"channel": quiet})).await["result"].clone();
    let (_, snap) = subscribe(&mut anon, json!({"channel": quiet, "since": page})).await;
    assert_eq!((snap["recovered"].clone(), snap["offset"].clone()), (json!(false), json!(0)), "{snap}");
    assert!(!snap["epoch"].as_str().unwrap().is_empty(), "{snap}");
}

#[tokio::test]
async fn the_last_subscriber_leaving_an_empty_channel_frees_its_slot_at_once() {
    let mut c = config();
    c.limits.max_channels = 2;
    let server = start(c).await;
    let addr = server.addr;
    let mut admin = ws(addr, Some(ADMIN)).await;
    let (a, _) = subscribe(&mut admin, json!(["free:a"])).await;
    subscribe(&mut admin, json!(["free:b"])).await;
    assert_eq!(channels_held(addr).await, 2.0);
    let r = call(&mut admin, "subscribe", json!(["free:c"])).await;
    assert_refused(&r, "limits.max_channels");
    let mut refusals = 1.0;
    assert_eq!(call(&mut admin, "unsubscribe", json!([a])).await["result"], true);
    subscribe(&mut admin, json!(["free:c"])).await;
    assert_eq!(channels_held(addr).await, 2.0);

    // A connection that ends lets go of its channels as well.
    admin.close(None).await.unwrap();
    let mut other = ws(addr, Some(ADMIN)).await;
    refusals += subscribe_once_freed(&mut other, "free:d", "limits.max_channels").await as f64;
    refusals += subscribe_once_freed(&mut other, "free:e", "limits.max_channels").await as f64;
    assert_eq!(channels_held(addr).await, 2.0);
    other.close(None).await.unwrap();

    // A channel that holds publications keeps its slot for its history's sake, subscribers or not.
    let mut w = ws(addr, Some(ADMIN)).await;
    refusals += subscribe_once_freed(&mut w, "free:f", "limits.max_channels").await as f64;
    publish(addr, "free:kept", json!("news")).await;
    assert_eq!(channels_held(addr).await, 2.0, "free:f and free:kept");
    let r = call(&mut w, "subscribe", json!(["free:g"])).await;
    assert_refused(&r, "limits.max_channels");
    refusals += 1.0;
    let (kept, snap) = subscribe(&mut w, json!(["free:kept"])).await;
    assert_eq!(snap["publications"][0]["data"], "news");
    assert_eq!(call(&mut w, "unsubscribe", json!([kept])).await["result"], true);
    assert_eq!(channels_held(addr).await, 2.0, "its history still holds free:kept");
    assert_eq!(refused(addr, "max_channels").await, refusals);
}

#[tokio::test]
async fn anonymous_subscriptions_of_one_address_hold_at_most_their_share() {
    let mut c = config();
    c.limits.max_channels = 1_000;
    c.limits.anonymous_channel_share = 0.002; // two channels per address
    let server = start(c).await;
    let addr = server.addr;
    let key = "limits.anonymous_channel_share";
    let mut a = ws(addr, None).await;
    let (a1, _) = subscribe(&mut a, json!(["share:1"])).await;
    subscribe(&mut a, json!(["share:2"])).await;
    let (a1_again, _) = subscribe(&mut a, json!(["share:1"])).await;
    let r = call(&mut a, "subscribe", json!(["share:3"])).await;
    assert_refused(&r, key);
    let mut refusals = 1.0;
    // Another anonymous connection from the same address shares the same share.
    let mut b = ws(addr, None).await;
    let r = call(&mut b, "subscribe", json!(["share:3"])).await;
    assert_refused(&r, key);
    refusals += 1.0;
    subscribe(&mut b, json!(["share:2"])).await; // a channel the address holds costs nothing
    // A client with a token is not counted.
    let mut admin = ws(addr, Some(ADMIN)).await;
    subscribe(&mut admin, json!(["share:3"])).await;
    // Unsubscribing lets go, once no subscription of the address holds the channel.
    assert_eq!(call(&mut a, "unsubscribe", json!([a1])).await["result"], true);
    let r = call(&mut b, "subscribe", json!(["share:3"])).await;
    assert_refused(&r, key);
    refusals += 1.0;
    assert_eq!(call(&mut a, "unsubscribe", json!([a1_again])).await["result"], true);
    subscribe(&mut b, json!(["share:3"])).await;
    let r = call(&mut a, "subscribe", json!(["share:4"])).await;
    assert_refused(&r, key);
    refusals += 1.0;
    // A connection that ends lets go of what it held: b held share:3 alone.
    b.close(None).await.unwrap();
    refusals += subscribe_once_freed(&mut a, "share:4", key).await as f64;
    let r = call(&mut a, "subscribe", json!(["share:5"])).await;
    assert_refused(&r, key);
    refusals += 1.0;
    assert_eq!(refused(addr, "anonymous_share").await, refusals);
    assert_eq!(refused(addr, "max_channels").await, 0.0);
}
