//! `GET /ws` in its `{type,data}` dialect, with a real WebSocket client: the same hub as
//! `/ws/rpc`, recovery with `since`, errors in the dialect's own shape.

use crate::support::*;
use futures::SinkExt;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

async fn compat(addr: std::net::SocketAddr, token: Option<&str>) -> Ws {
    try_ws(addr, "/ws", token, &[]).await.expect("upgrade on /ws")
}

fn error_code(v: &Value) -> &str {
    assert_eq!(v["type"], "error", "{v}");
    v["data"]["code"].as_str().unwrap()
}

#[tokio::test]
async fn typed_clients_subscribe_and_get_every_door_s_publications_then_resume_with_since() {
    let addr = shared();
    let ch = channel("typed");
    publish(addr, &ch, json!({"n": 1})).await;
    let mut w = compat(addr, None).await;
    send(&mut w, json!({"type": "subscribe", "data": {"channel": ch}})).await;
    let snap = recv(&mut w).await;
    assert_eq!(
        (snap["type"].clone(), snap["channel"].clone(), snap["offset"].clone()),
        (json!("snapshot"), json!(ch), json!(1))
    );
    assert_eq!(snap["publications"][0]["data"], json!({"n": 1}));
    let epoch = snap["epoch"].as_str().unwrap().to_string();
    // A publication with an event name, made through /ws/rpc, arrives typed by that name.
    let mut publisher = ws(addr, Some(ADMIN)).await;
    call(&mut publisher, "publish", json!({"channel": ch, "data": {"n": 2}, "event": "trade"})).await;
    let live = recv(&mut w).await;
    assert_eq!(
        live,
        json!({"type": "trade", "channel": ch, "offset": 2, "ts": live["ts"], "event": "trade", "data": {"n": 2}})
    );
    call(&mut publisher, "publish", json!({"channel": ch, "data": {"n": 3}})).await;
    let plain = recv(&mut w).await;
    assert_eq!((plain["type"].clone(), plain["offset"].clone()), (json!("publication"), json!(3)));
    send(&mut w, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut w).await, json!({"type": "pong"}));
    send(&mut w, json!({"type": "unsubscribe", "data": {"channel": ch}})).await;
    assert_eq!(recv(&mut w).await, json!({"type": "unsubscribed", "data": {"channel": ch}}));
    // Away: two publications; back with `since`, exactly those.
    call(&mut publisher, "publish", json!({"channel": ch, "data": {"n": 4}})).await;
    call(&mut publisher, "publish", json!({"channel": ch, "data": {"n": 5}})).await;
    let mut back = compat(addr, None).await;
    send(
        &mut back,
        json!({"type": "subscribe", "data": {"channel": ch, "since": {"epoch": epoch, "offset": 3}}}),
    )
    .await;
    let resumed = recv(&mut back).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    let offsets: Vec<u64> =
        resumed["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [4, 5]);
}

#[tokio::test]
async fn auth_and_rights_follow_the_same_rules_as_json_rpc() {
    let mut c = config();
    c.default_namespace.subscribe = rpchub::config::Access::Authenticated;
    let server = start(c).await;
    let mut w = compat(server.addr, None).await;
    let ch = channel("private");
    send(&mut w, json!({"type": "subscribe", "data": {"channel": ch}})).await;
    assert_eq!(error_code(&recv(&mut w).await), "unauthorized");
    send(&mut w, json!({"type": "auth", "token": "not-a-token"})).await;
    assert_eq!(error_code(&recv(&mut w).await), "unauthorized");
    send(&mut w, json!({"type": "auth", "token": ADMIN})).await;
    let ok = recv(&mut w).await;
    assert_eq!((ok["type"].clone(), ok["data"]["sub"].clone()), (json!("auth"), json!("admin")), "{ok}");
    send(&mut w, json!({"type": "subscribe", "data": {"channel": ch}})).await;
    assert_eq!(recv(&mut w).await["type"], "snapshot");
    // The connection is counted under its own door.
    let (_, metrics) = http(server.addr, "GET", "/metrics", &[], "").await;
    assert!(metrics.contains(r#"rpchub_connections{door="ws"} 1"#), "{metrics}");
    server.shutdown();
}

#[tokio::test]
async fn bad_input_gets_errors_in_the_dialect_and_subscribes_nothing() {
    let addr = shared();
    let mut w = compat(addr, None).await;
    // Fits no dialect: told so, and the connection may still choose one.
    send(&mut w, json!({"jsonrpc": "2.0", "method": "ping", "id": 1})).await;
    assert_eq!(error_code(&recv(&mut w).await), "invalid_request");
    send(&mut w, "not json").await;
    assert_eq!(error_code(&recv(&mut w).await), "invalid_request");
    send(&mut w, json!({"type": "subscribe"})).await;
    assert_eq!(error_code(&recv(&mut w).await), "invalid_request", "no data");
    send(&mut w, json!({"type": "subscribe", "data": {"channel": "bad channel!"}})).await;
    assert_eq!(error_code(&recv(&mut w).await), "invalid_request", "an invalid channel name");
    send(&mut w, json!({"type": "dance"})).await;
    let e = recv(&mut w).await;
    assert!(error_code(&e) == "invalid_request" && e["data"]["message"].as_str().unwrap().contains("dance"));
    send(&mut w, json!({"type": "unsubscribe", "data": {"channel": "a:b"}})).await;
    assert_eq!(error_code(&recv(&mut w).await), "invalid_request", "not subscribed");
    let ch = channel("twice");
    send(&mut w, json!({"type": "subscribe", "data": {"channel": ch}})).await;
    assert_eq!(recv(&mut w).await["type"], "snapshot");
    send(&mut w, json!({"type": "subscribe", "data": {"channel": ch}})).await;
    assert_eq!(error_code(&recv(&mut w).await), "subscription_failed", "one subscription per channel");
    // A binary message is taken as text when it is UTF-8 (answered in text); one that is not
    // fails the connection as on /ws/rpc, and so does an oversized message.
    w.send(Message::Binary(br#"{"type":"ping"}"#.to_vec().into())).await.unwrap();
    assert_eq!(recv(&mut w).await, json!({"type": "pong"}));
    w.send(Message::Binary(vec![0xff, 0xfe].into())).await.unwrap();
    assert_eq!(closed(&mut w).await, Some(1003));
    let mut big = compat(addr, None).await;
    let padding = "x".repeat(5000);
    send(&mut big, json!({"type": "subscribe", "data": {"channel": "a:b"}, "pad": padding})).await;
    assert_eq!(closed(&mut big).await, Some(1009));
}

#[tokio::test]
async fn the_server_pings_typed_clients_in_their_dialect() {
    let mut c = config();
    c.limits.ping_interval = Duration::from_millis(300);
    c.limits.pong_timeout = Duration::from_secs(5);
    let server = start(c).await;
    let mut w = compat(server.addr, None).await;
    send(&mut w, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut w).await, json!({"type": "pong"}));
    assert_eq!(recv(&mut w).await, json!({"type": "ping"}), "a text ping every ping interval");
    send(&mut w, json!({"type": "pong"})).await;
    assert!(
        silent(&mut w, Duration::from_millis(100)).await || recv(&mut w).await == json!({"type": "ping"})
    );
    server.shutdown();
}

#[tokio::test]
async fn hyperliquid_clients_get_their_frames_from_the_demo_and_resume_with_since() {
    let mut c = config();
    c.demo = true;
    let server = start(c.with_demo_namespaces()).await;
    let mut w = compat(server.addr, None).await;
    send(&mut w, json!({"method": "ping"})).await;
    assert_eq!(recv(&mut w).await, json!({"channel": "pong"}));
    let sub = json!({"type": "trades", "coin": "SOL"});
    send(&mut w, json!({"method": "subscribe", "subscription": sub})).await;
    assert_eq!(
        recv(&mut w).await,
        json!({"channel": "subscriptionResponse", "data": {"method": "subscribe", "subscription": sub}})
    );
    let snap = recv(&mut w).await;
    assert_eq!(
        (snap["channel"].clone(), snap["isSnapshot"].clone()),
        (json!("trades"), json!(true)),
        "{snap}"
    );
    assert!(snap["data"].is_array() && snap["epoch"].is_string() && snap["offset"].is_u64(), "{snap}");
    let live = recv(&mut w).await;
    assert_eq!(live["channel"], "trades", "{live}");
    assert_eq!(live["data"][0]["coin"], "SOL", "the publisher's list of trades");
    assert!(live.get("isSnapshot").is_none());
    // Books: the snapshot is the latest book itself.
    let book = json!({"type": "l2Book", "coin": "BTC"});
    send(&mut w, json!({"method": "subscribe", "subscription": book})).await;
    let (mut got_response, mut book_snapshot) = (false, None);
    while book_snapshot.is_none() {
        let v = recv(&mut w).await;
        if v["channel"] == "subscriptionResponse" {
            got_response = true;
        } else if v["channel"] == "l2Book" {
            assert!(got_response, "the response comes before the snapshot");
            book_snapshot = Some(v);
        }
    }
    let b = book_snapshot.unwrap();
    assert_eq!(b["isSnapshot"], true);
    assert!(b["data"]["coin"] == "BTC" || b["data"] == json!([]), "the latest book: {b}");
    // A post request runs a JSON-RPC method and comes back by id.
    send(&mut w, json!({"method": "post", "id": 7, "request": {"type": "history", "payload": {"channel": "trades:SOL", "limit": 1}}})).await;
    let post = loop {
        let v = recv(&mut w).await;
        if v["channel"] == "post" {
            break v;
        }
    };
    assert_eq!(
        (post["data"]["id"].clone(), post["data"]["response"]["type"].clone()),
        (json!(7), json!("info")),
        "{post}"
    );
    let position = post["data"]["response"]["payload"].clone();
    send(&mut w, json!({"method": "post", "id": 8, "request": {"type": "nope"}})).await;
    let err = loop {
        let v = recv(&mut w).await;
        if v["channel"] == "post" {
            break v;
        }
    };
    assert_eq!(err["data"]["response"]["type"], "error", "{err}");
    // Bad subscriptions: the real API's error frame, nothing subscribed.
    for bad in [
        json!({"type": "trades"}),
        json!({"type": "teleport", "coin": "SOL"}),
        json!({"type": "trades", "coin": "bad coin"}),
    ] {
        send(&mut w, json!({"method": "subscribe", "subscription": bad})).await;
        let e = loop {
            let v = recv(&mut w).await;
            if v["channel"] == "error" {
                break v;
            }
        };
        assert!(e["data"].is_string(), "{e}");
    }
    // Unsubscribe, then resume from the history read's position with `since`.
    send(&mut w, json!({"method": "unsubscribe", "subscription": sub})).await;
    loop {
        let v = recv(&mut w).await;
        if v["channel"] == "subscriptionResponse" && v["data"]["method"] == "unsubscribe" {
            break;
        }
    }
    let since = json!({"epoch": position["epoch"], "offset": position["offset"]});
    let mut back = compat(server.addr, None).await;
    send(
        &mut back,
        json!({"method": "subscribe", "subscription": {"type": "trades", "coin": "SOL", "since": since}}),
    )
    .await;
    let _response = recv(&mut back).await;
    let resumed = recv(&mut back).await;
    assert_eq!(
        (resumed["isSnapshot"].clone(), resumed["recovered"].clone()),
        (json!(true), json!(true)),
        "{resumed}"
    );
    server.shutdown();
}

#[tokio::test]
async fn a_flooding_client_is_told_then_closed_in_either_dialect() {
    let mut c = config();
    c.limits.calls_per_second = 5;
    let server = start(c).await;
    for (first, ping, refusal) in [
        (
            json!({"type": "ping"}),
            json!({"type": "ping"}),
            r#"{"type":"error","data":{"code":"rate_limited""#,
        ),
        (json!({"method": "ping"}), json!({"method": "ping"}), r#"{"channel":"error","data":"too many"#),
    ] {
        let mut w = compat(server.addr, None).await;
        send(&mut w, first).await;
        // Far over 5 a second: refused ones are told so, then the connection is closed (1008).
        for _ in 0..400 {
            if w.send(Message::text(ping.to_string())).await.is_err() {
                break;
            }
        }
        let mut told = false;
        let code = loop {
            match tokio::time::timeout(WAIT, futures::StreamExt::next(&mut w)).await.expect("an end") {
                Some(Ok(Message::Text(t))) => told |= t.starts_with(refusal),
                Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break None,
            }
        };
        assert!(told, "the refused messages were answered with the dialect's error first: {refusal}");
        assert_eq!(code, Some(1008));
    }
    server.shutdown();
}
