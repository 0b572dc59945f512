//! What clients and operators see while a shared broker cannot be reached, over a
//! [`FaultyBroker`] switched down and up again: publish, subscribe and history fail fast with
//! -32008 `broker_unavailable` on every front door (in each door's shape), `/health` answers 503
//! degraded, `info` and `/metrics` say the broker is down; subscribers stay connected, and when
//! the broker is back they receive what was published meanwhile, in order, or are told
//! `closed` `insufficient_state` when history no longer covers it.

use crate::support::{self, ADMIN, Ws, call, call_keep, event, http, metric, send};
use rpchub::broker::testing::{Faults, FaultyBroker};
use rpchub::broker::{Broker, NewPublication, Retention};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A server over a fault-free [`FaultyBroker`], with the broker's handle.
async fn server() -> (rpchub::Running, Arc<FaultyBroker>) {
    server_with(support::config()).await
}

/// A server of `config` over a fault-free [`FaultyBroker`], with the broker's handle.
async fn server_with(config: rpchub::Config) -> (rpchub::Running, Arc<FaultyBroker>) {
    let broker = FaultyBroker::start(config.limits.max_channels, Faults::default());
    let running = rpchub::start_with(config, broker.clone()).await.expect("server starts");
    (running, broker)
}

/// `data` published to `channel` behind the node's back, as another node would while this one
/// cannot reach the broker, keeping `keep` publications.
async fn publish_elsewhere(broker: &FaultyBroker, channel: &str, data: Value, keep: usize) {
    let p = NewPublication {
        data: serde_json::value::to_raw_value(&data).unwrap(),
        event: None,
        idempotency_key: None,
        key: None,
    };
    let retention = Retention { size: keep, ttl: Duration::from_secs(600), state: false };
    broker.inner().publish(channel, p, retention).await.expect("the broker underneath works");
}

/// The JSON-RPC error of `r`, checked to be -32008 `broker_unavailable`.
fn assert_unavailable(r: &Value, what: &str) {
    assert_eq!(r["error"]["code"], -32008, "{what}: {r}");
    assert_eq!(r["error"]["data"]["code"], "broker_unavailable", "{what}: {r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("cannot be reached"), "{what}: {r}");
}

const JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_door_answers_broker_unavailable_while_the_broker_is_down() {
    let (server, broker) = server().await;
    let addr = server.addr;
    let ch = support::channel("trades");
    let auth = format!("Bearer {ADMIN}");
    let admin = [JSON, ("authorization", auth.as_str())];
    broker.set_down(true);

    // /ws/rpc: publish, subscribe, history.
    let mut w = support::ws(addr, Some(ADMIN)).await;
    let r = call(&mut w, "publish", json!({"channel": ch, "data": 1})).await;
    assert_unavailable(&r, "publish");
    assert_unavailable(&call(&mut w, "subscribe", json!({"channel": ch})).await, "subscribe");
    assert_unavailable(&call(&mut w, "history", json!({"channel": ch})).await, "history");
    assert_eq!(call(&mut w, "ping", json!([])).await["result"], "pong", "the connection stays");

    // POST /rpc.
    for (method, params) in
        [("publish", json!({"channel": ch, "data": 1})), ("history", json!({"channel": ch}))]
    {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
        let (status, text) = http(addr, "POST", "/rpc", &admin, &body).await;
        assert_eq!(status, 200, "{text}");
        assert_unavailable(&serde_json::from_str(&text).unwrap(), method);
    }

    // POST /api/publish: one publication is a 503 with the error body; a batch item its error.
    let one = json!({"channel": ch, "data": 1}).to_string();
    let (status, text) = http(addr, "POST", "/api/publish", &admin, &one).await;
    assert_eq!(status, 503, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["success"], false, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("cannot be reached"), "{body}");
    let batch = json!([{"channel": ch, "data": 1}, {"channel": ch, "data": 2}]).to_string();
    let (status, text) = http(addr, "POST", "/api/publish", &admin, &batch).await;
    assert_eq!(status, 200, "{text}");
    let items: Vec<Value> = serde_json::from_str(&text).unwrap();
    for item in &items {
        assert_eq!(item["error"]["code"], "broker_unavailable", "{item}");
        assert!(item["error"]["message"].is_string(), "{item}");
    }

    // /ws, the {type,data} dialect and the Hyperliquid one.
    let mut typed = support::try_ws(addr, "/ws", None, &[]).await.unwrap();
    send(&mut typed, json!({"type": "subscribe", "data": {"channel": ch}})).await;
    let e = support::recv(&mut typed).await;
    assert_eq!((&e["type"], &e["data"]["code"]), (&json!("error"), &json!("broker_unavailable")), "{e}");
    let mut hl = support::try_ws(addr, "/ws", None, &[]).await.unwrap();
    send(&mut hl, json!({"method": "subscribe", "subscription": {"type": "trades", "coin": "SOL"}})).await;
    let e = support::recv(&mut hl).await;
    assert_eq!(e["channel"], "error", "{e}");
    assert!(e["data"].as_str().unwrap().contains("broker unavailable"), "{e}");

    // Nothing was asked of the broker but for the state: every call failed before reaching it.
    assert_eq!(broker.counts.unavailable.load(Ordering::Relaxed), 0);

    // Back up: the same calls work.
    broker.set_down(false);
    let r = call(&mut w, "publish", json!({"channel": ch, "data": 1})).await;
    assert_eq!(r["result"]["offset"], 1, "{r}");
    let (status, text) = http(addr, "POST", "/api/publish", &admin, &one).await;
    assert_eq!(status, 200, "{text}");
    let (_, snapshot) = support::subscribe(&mut w, json!({"channel": ch})).await;
    assert_eq!(snapshot["offset"], 2, "{snapshot}");
    send(&mut typed, json!({"type": "subscribe", "data": {"channel": ch}})).await;
    assert_ne!(support::recv(&mut typed).await["type"], "error");
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_info_and_metrics_say_whether_the_broker_is_up() {
    let (server, broker) = server().await;
    let addr = server.addr;
    let mut w = support::ws(addr, None).await;

    let (status, body) = http(addr, "GET", "/health", &[], "").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let info = call(&mut w, "info", json!([])).await["result"].clone();
    assert_eq!((&info["broker"], &info["broker_state"]), (&json!("faulty"), &json!("up")), "{info}");
    assert!(info["broker_latency_ms"].as_f64().unwrap() > 0.0, "{info}");
    assert_eq!(metric(addr, r#"rpchub_broker_up{broker="faulty"}"#).await, 1.0);
    assert!(metric(addr, r#"rpchub_broker_latency_seconds{broker="faulty"}"#).await > 0.0);

    broker.set_down(true);
    let (status, body) = http(addr, "GET", "/health", &[], "").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"status": "degraded", "broker_state": "down"})
    );
    let info = call(&mut w, "info", json!([])).await["result"].clone();
    assert_eq!(info["broker_state"], "down", "{info}");
    assert!(info.get("broker_latency_ms").is_none(), "no round trip to report: {info}");
    assert_eq!(metric(addr, r#"rpchub_broker_up{broker="faulty"}"#).await, 0.0);
    let (_, text) = http(addr, "GET", "/metrics", &[], "").await;
    assert!(!text.contains("rpchub_broker_latency_seconds{"), "no latency sample while down");

    broker.set_down(false);
    let (status, body) = http(addr, "GET", "/health", &[], "").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    assert_eq!(call(&mut w, "info", json!([])).await["result"]["broker_state"], "up");
    assert_eq!(metric(addr, r#"rpchub_broker_up{broker="faulty"}"#).await, 1.0);
    server.shutdown();
}

/// Subscribes `w` to `channel` and publishes one publication through the node, received.
async fn subscribed_with_one(addr: std::net::SocketAddr, w: &mut Ws, channel: &str) {
    let (_, snapshot) = support::subscribe(w, json!({"channel": channel})).await;
    assert_eq!(snapshot["offset"], 0, "{snapshot}");
    support::publish(addr, channel, json!({"n": 1})).await;
    let e = event(w).await;
    assert_eq!((&e["type"], &e["offset"]), (&json!("publication"), &json!(1)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_stay_and_receive_what_was_published_while_the_broker_was_down() {
    let (server, broker) = server().await;
    let ch = support::channel("trades");
    let mut w = support::ws(server.addr, None).await;
    subscribed_with_one(server.addr, &mut w, &ch).await;

    broker.set_down(true);
    for n in 2..=4 {
        publish_elsewhere(&broker, &ch, json!({"n": n}), 100).await;
    }
    // Still connected, and nothing reached it while the broker was away.
    let mut notes = Vec::new();
    let pong = call_keep(&mut w, 1, "ping", json!([]), &mut notes).await;
    assert_eq!(pong["result"], "pong");
    assert!(notes.is_empty(), "{notes:?}");

    // Back: the channel catches up from history, in order, then goes on live.
    broker.set_down(false);
    for n in 2..=4 {
        let e = event(&mut w).await;
        assert_eq!(
            (&e["type"], &e["offset"], &e["data"]["n"]),
            (&json!("publication"), &json!(n), &json!(n)),
            "{e}"
        );
    }
    support::publish(server.addr, &ch, json!({"n": 5})).await;
    let e = event(&mut w).await;
    assert_eq!((&e["type"], &e["offset"]), (&json!("publication"), &json!(5)), "{e}");
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stretch_history_no_longer_covers_is_announced_as_a_gap_and_the_stream_goes_on() {
    let (server, broker) = server().await;
    let ch = support::channel("trades");
    let mut w = support::ws(server.addr, None).await;
    subscribed_with_one(server.addr, &mut w, &ch).await;

    broker.set_down(true);
    // Four more while down, of which the stream keeps two: offsets 2 and 3 are gone.
    for n in 2..=5 {
        publish_elsewhere(&broker, &ch, json!({"n": n}), 2).await;
    }
    broker.set_down(false);
    let e = event(&mut w).await;
    assert_eq!(e, json!({"type": "gap", "channel": ch, "from": 2, "to": 3, "reason": "broker_lost"}));
    // Then what history holds, in order, and live publications after it, on the same subscription.
    for n in [4, 5] {
        let e = event(&mut w).await;
        assert_eq!(
            (&e["type"], &e["offset"], &e["data"]["n"]),
            (&json!("publication"), &json!(n), &json!(n)),
            "{e}"
        );
    }
    support::publish(server.addr, &ch, json!({"n": 6})).await;
    let e = event(&mut w).await;
    assert_eq!((&e["type"], &e["offset"]), (&json!("publication"), &json!(6)), "{e}");
    assert_eq!(metric(server.addr, "rpchub_gaps_announced_total").await, 1.0);
    assert_eq!(metric(server.addr, "rpchub_streams_lost_total").await, 0.0);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_being_filled_when_the_broker_goes_down_is_filled_once_it_is_back() {
    let (server, broker) = server().await;
    let ch = support::channel("trades");
    let mut w = support::ws(server.addr, None).await;
    subscribed_with_one(server.addr, &mut w, &ch).await;

    // Offset 2's delivery is lost; offset 3's opens a gap, whose history read is slow and meets
    // the broker gone (or, should it beat the switch, fills it at once: either way nothing is
    // closed and nothing skipped).
    broker.set_faults(Faults { drop: 1000, ..Faults::default() });
    publish_elsewhere(&broker, &ch, json!({"n": 2}), 100).await;
    broker.set_faults(Faults { history_delay: Duration::from_millis(300), ..Faults::default() });
    publish_elsewhere(&broker, &ch, json!({"n": 3}), 100).await;
    broker.set_down(true);
    // Until the fill's read has failed (unless it was done already: then offsets 2 and 3 are
    // on their way).
    let deadline = tokio::time::Instant::now() + support::WAIT;
    while broker.counts.unavailable.load(Ordering::Relaxed) == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut notes = Vec::new();
    assert_eq!(call_keep(&mut w, 1, "ping", json!([]), &mut notes).await["result"], "pong");
    broker.set_down(false);
    let mut got: Vec<Value> = notes.into_iter().map(|n| n["params"]["result"].clone()).collect();
    while got.len() < 2 && got.iter().all(|e| e["type"] == "publication") {
        got.push(event(&mut w).await);
    }
    for (e, n) in got.iter().zip(2..) {
        assert_eq!((&e["type"], &e["offset"]), (&json!("publication"), &json!(n)), "{got:?}");
    }
    support::publish(server.addr, &ch, json!({"n": 4})).await;
    let e = event(&mut w).await;
    assert_eq!((&e["type"], &e["offset"]), (&json!("publication"), &json!(4)), "{e}");
    assert_eq!(metric(server.addr, "rpchub_streams_lost_total").await, 0.0);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_connection_is_closed_try_again_later_while_the_broker_is_down() {
    let token = "broker-down-instance-token";
    let mut c = support::config();
    c.instances.insert(
        "shop".into(),
        rpchub::config::InstanceConfig {
            token: rpchub::config::Secret(token.into()),
            enabled: true,
            events: vec![],
            media_base64: false,
        },
    );
    let (server, broker) = server_with(c).await;
    broker.set_down(true);
    let mut w = support::try_ws(server.addr, "/ws/shop", Some(token), &[]).await.expect("upgraded");
    assert_eq!(support::closed(&mut w).await, Some(1013));
    broker.set_down(false);
    let mut w = support::try_ws(server.addr, "/ws/shop", Some(token), &[]).await.expect("upgraded");
    assert!(support::silent(&mut w, Duration::from_millis(200)).await, "it follows the instance");
    server.shutdown();
}
