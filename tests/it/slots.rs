//! A connection's calls in slots: a slow call (here a history read that a test broker makes take
//! seconds) holds up neither the client's other calls nor its live publications, and can no
//! longer get a client that reads dropped as a slow consumer; calls that change the connection's
//! state keep their order; the number of calls handled at once is bounded.

use crate::support::{self, ADMIN, Ws, send};
use futures::StreamExt;
use rpchub::broker::testing::{Faults, FaultyBroker};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// A server whose broker takes `delay` for every history read.
async fn slow_history_server(delay: Duration, config: rpchub::Config) -> rpchub::Running {
    let broker =
        FaultyBroker::start(config.limits.max_channels, Faults { history_delay: delay, ..Faults::default() });
    rpchub::start_with(config, broker).await.expect("server starts")
}

/// Reads messages until `done` says so; every message is passed to it.
async fn read_until(ws: &mut Ws, within: Duration, mut done: impl FnMut(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let m =
            tokio::time::timeout_at(deadline, ws.next()).await.expect("the expected messages arrive in time");
        match m.expect("the connection stays open").expect("a message") {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).expect("JSON");
                if done(&v) {
                    return;
                }
            }
            Message::Close(f) => panic!("the server closed the connection: {f:?}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscribe_holds_up_nothing_and_gets_no_reading_client_dropped() {
    const PUBLICATIONS: u64 = 400;
    const DATA_BYTES: usize = 8_000;
    let mut c = support::config();
    c.limits.max_message_bytes = 16 << 10;
    // A connection may hold 1 MiB; 3.2 MB are published while the subscribe waits. (The kernel's
    // socket buffers absorb that much even from a client that reads slowly, so only holding
    // frames back for the subscribe, as a single-slot design would, could get this one dropped.)
    c.limits.outbound_queue_bytes = 1 << 20;
    c.limits.outbound_queue_messages = 1 << 20;
    let server = slow_history_server(Duration::from_secs(3), c).await;
    let mut a = support::ws(server.addr, None).await;
    let (_, snapshot) = support::subscribe(&mut a, json!({"channel": "busy"})).await;
    assert_eq!(snapshot["type"], "snapshot");

    // A subscribe that takes seconds, then a ping behind it.
    send(&mut a, json!({"jsonrpc":"2.0","id":"slow","method":"subscribe","params":{"channel":"other"}}))
        .await;
    send(&mut a, json!({"jsonrpc":"2.0","id":"ping","method":"ping"})).await;

    // A reads all along, as a client does.
    let first = snapshot["offset"].as_u64().unwrap();
    let reader = tokio::spawn(async move {
        let mut order = Vec::new();
        let mut last_offset = first;
        let mut other_snapshot = false;
        read_until(&mut a, Duration::from_secs(60), |v| {
            if let Some(id) = v.get("id") {
                order.push(id.as_str().unwrap().to_string());
            } else {
                let ev = &v["params"]["result"];
                if ev["channel"] == "other" {
                    assert_eq!(
                        order.last().map(String::as_str),
                        Some("slow"),
                        "the answer comes before the snapshot"
                    );
                    other_snapshot = true;
                } else {
                    assert_eq!(ev["offset"].as_u64().unwrap(), last_offset + 1, "no gap, no duplicate");
                    last_offset += 1;
                }
            }
            other_snapshot && last_offset == PUBLICATIONS
        })
        .await;
        order
    });

    // Meanwhile, while the subscribe waits, more than the 8 MiB a connection may hold is
    // published to the busy channel.
    let mut publisher = support::ws(server.addr, Some(ADMIN)).await;
    let data = "x".repeat(DATA_BYTES);
    for i in 0..PUBLICATIONS {
        send(&mut publisher, json!({"jsonrpc":"2.0","id":i,"method":"publish","params":["busy", data]}))
            .await;
    }
    let mut answered = 0;
    read_until(&mut publisher, Duration::from_secs(30), |v| {
        assert!(v.get("result").is_some(), "publish answered: {v}");
        answered += 1;
        answered == PUBLICATIONS
    })
    .await;
    let order = reader.await.unwrap();
    assert_eq!(order, ["ping", "slow"], "the ping behind the slow subscribe is answered first");
    let metrics = server.node.metrics.render();
    assert!(metrics.contains("rpchub_slow_consumers_total 0\n"), "nobody was dropped: {metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_change_the_connection_keep_their_order_and_others_do_not_wait() {
    let server = slow_history_server(Duration::from_millis(800), support::config()).await;
    let mut a = support::ws(server.addr, None).await;
    send(&mut a, json!({"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"channel":"slow:a"}})).await;
    send(&mut a, json!({"jsonrpc":"2.0","id":2,"method":"auth","params":[ADMIN]})).await;
    send(&mut a, json!({"jsonrpc":"2.0","id":3,"method":"ping"})).await;
    let mut order = Vec::new();
    read_until(&mut a, Duration::from_secs(10), |v| {
        if let Some(id) = v.get("id").and_then(Value::as_u64) {
            assert!(v.get("result").is_some(), "{v}");
            order.push(id);
        }
        order.len() == 3
    })
    .await;
    assert_eq!(order, [3, 1, 2], "ping at once; auth only after the subscribe sent before it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_calls_in_flight_calls_are_handled_at_once() {
    let mut c = support::config();
    c.limits.calls_in_flight = 4;
    let server = slow_history_server(Duration::from_millis(500), c).await;
    let mut a = support::ws(server.addr, None).await;
    for i in 0..10 {
        send(&mut a, json!({"jsonrpc":"2.0","id":i,"method":"history","params":{"channel":"h"}})).await;
    }
    send(&mut a, json!({"jsonrpc":"2.0","id":"ping","method":"ping"})).await;
    let mut history_before_ping = None;
    let mut answers = 0;
    read_until(&mut a, Duration::from_secs(20), |v| {
        if v["id"] == "ping" {
            history_before_ping = Some(answers);
        } else {
            assert_eq!(v["result"]["offset"], 0, "{v}");
            answers += 1;
        }
        answers == 10 && history_before_ping.is_some()
    })
    .await;
    let before = history_before_ping.unwrap();
    assert!(before >= 4, "the ping waited unread while every slot was taken ({before} answers before it)");
    assert!(before < 10, "and was answered as soon as a slot freed, not after every slow call ({before})");
}
