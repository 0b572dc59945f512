//! Hard limits: slow consumers, oversized messages, floods, silent clients, RFC 6455 violations.

use crate::support::raw;
use crate::support::*;
use futures::StreamExt;
use serde_json::json;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A subscriber that stops reading is dropped once the kernel's buffers and its queue are full;
/// a subscriber that reads gets every publication meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_is_dropped_and_a_fast_one_gets_everything() {
    const N: u64 = 3_000;
    let mut c = config();
    c.limits.outbound_queue_messages = 64;
    let server = start(c).await;
    let addr = server.addr;
    let ch = "feed:big";

    let mut slow = ws(addr, None).await;
    subscribe(&mut slow, json!([ch])).await;
    let mut fast = ws(addr, None).await;
    subscribe(&mut fast, json!({"channel": ch, "limit": 0})).await;
    let reader = tokio::spawn(async move {
        for expected in 1..=N {
            let e = event(&mut fast).await;
            assert_eq!(e["offset"].as_u64(), Some(expected));
        }
    });

    // 3,000 publications of 3,500 bytes: about 10 MB for each subscriber, more than loopback's
    // socket buffers hold for one that does not read.
    let payload = "x".repeat(3_500);
    let mut publisher = ws(addr, Some(ADMIN)).await;
    for i in 0..N {
        send(
            &mut publisher,
            json!({"jsonrpc": "2.0", "id": i, "method": "publish", "params": [ch, payload]}),
        )
        .await;
        if i % 200 == 199 {
            // Keep the publisher's own answers flowing.
            for _ in 0..200 {
                recv(&mut publisher).await;
            }
        }
    }
    tokio::time::timeout(Duration::from_secs(30), reader).await.expect("the fast reader finishes").unwrap();

    // The slow one now finds its connection ended: a 1008 close frame or a reset.
    let mut ended = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ended.is_none() && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), slow.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f)))) => {
                ended = Some(f.map(|f| u16::from(f.code)))
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => ended = Some(None),
            Err(_) => break,
        }
    }
    let ended = ended.expect("the slow subscriber was disconnected");
    assert!(matches!(ended, None | Some(1008)), "{ended:?}");
    // Counted once the server has finished with the connection.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, metrics) = http(addr, "GET", "/metrics", &[], "").await;
        if metrics.contains("rpchub_slow_consumers_total 1") {
            assert!(
                metrics.contains(r#"rpchub_connections_closed_total{reason="slow_consumer"} 1"#),
                "{metrics}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_message_over_the_limit_closes_with_1009_and_one_at_the_limit_is_served() {
    let addr = shared();
    let mut s = raw::connect(addr).await;
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let exact = format!("{call}{}", " ".repeat(4096 - call.len()));
    s.write_all(&raw::text(&exact)).await.unwrap();
    let (op, p) = raw::read(&mut s).await.unwrap();
    assert_eq!(
        (op, serde_json::from_slice::<serde_json::Value>(&p).unwrap()["result"].clone()),
        (1, json!("pong"))
    );
    s.write_all(&raw::text(&"x".repeat(4097))).await.unwrap();
    assert_eq!(raw::close_code(&mut s).await, Some(1009));
}

#[tokio::test]
async fn rfc6455_violations_fail_the_connection_with_the_rfc_codes() {
    let addr = shared();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", vec![0x81, 0x02, b'{', b'}'], 1002),
        ("reserved bit", raw::frame(0xC1, b"{}"), 1002),
        ("unknown opcode", raw::frame(0x83, b"{}"), 1002),
        ("fragmented ping", raw::frame(0x09, b""), 1002),
        ("continuation first", raw::frame(0x80, b"{}"), 1002),
        ("binary message not UTF-8", raw::frame(0x82, &[0xc3, 0x28]), 1003),
        ("text not UTF-8", raw::frame(0x81, &[0xc3, 0x28]), 1007),
        ("close code 1005", raw::frame(0x88, &1005u16.to_be_bytes()), 1002),
    ];
    for (what, bytes, code) in cases {
        let mut s = raw::connect(addr).await;
        s.write_all(&bytes).await.unwrap();
        assert_eq!(raw::close_code(&mut s).await, Some(code), "{what}");
    }
    // A fragmented message with a ping between its parts is fine, and the ping is answered.
    let mut s = raw::connect(addr).await;
    let mut bytes = raw::frame(0x01, br#"{"jsonrpc":"2.0","#);
    bytes.extend(raw::frame(0x89, b"hi"));
    bytes.extend(raw::frame(0x80, br#""id":7,"method":"ping"}"#));
    s.write_all(&bytes).await.unwrap();
    assert_eq!(raw::read(&mut s).await.unwrap(), (0xA, b"hi".to_vec()));
    let (op, p) = raw::read(&mut s).await.unwrap();
    assert_eq!(op, 1);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&p).unwrap(),
        json!({"jsonrpc":"2.0","id":7,"result":"pong"})
    );
    // The client's close is answered with the same code.
    s.write_all(&raw::frame(0x88, &4000u16.to_be_bytes())).await.unwrap();
    assert_eq!(raw::close_code(&mut s).await, Some(4000));
}

/// Calls that reach the server in pieces, with pauses between them, are all answered in order:
/// the reader waits for the rest of a frame after each read that empties the socket, whether the
/// pieces end inside a header, inside a payload or between frames.
#[tokio::test]
async fn calls_arriving_in_pieces_are_all_answered() {
    let addr = shared();
    let mut s = raw::connect(addr).await;
    // Ids long enough that one frame needs several reads; the last is near the message limit.
    let ids: Vec<String> = [1usize, 40, 300, 2000, 4000].iter().map(|n| "i".repeat(*n)).collect();
    let mut bytes = Vec::new();
    for id in &ids {
        bytes.extend(raw::text(&json!({"jsonrpc":"2.0","id":id,"method":"ping"}).to_string()));
    }
    let mut pieces = [1usize, 2, 7, 100, 1000, 3].iter().cycle();
    let mut at = 0;
    while at < bytes.len() {
        let n = (*pieces.next().unwrap()).min(bytes.len() - at);
        s.write_all(&bytes[at..at + n]).await.unwrap();
        at += n;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for id in &ids {
        let (op, p) = raw::read(&mut s).await.expect("an answer");
        assert_eq!(op, 1);
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v, json!({"jsonrpc":"2.0","id":id,"result":"pong"}), "id of {} bytes", id.len());
    }
    // All at once: more than one read takes, with no new data arriving after the first.
    s.write_all(&bytes).await.unwrap();
    for id in &ids {
        let (_, p) = raw::read(&mut s).await.expect("an answer");
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["id"], json!(id), "id of {} bytes, sent at once", id.len());
    }
}

/// A client over its call rate gets -32003; one that keeps flooding is closed with 1008. The
/// client does not read while it floods: the server stops reading it instead of queuing.
#[tokio::test]
async fn flooding_client_is_refused_then_closed() {
    let mut c = config();
    c.limits.calls_per_second = 50;
    let server = start(c).await;
    let mut s = raw::connect(server.addr).await;
    let mut burst = Vec::new();
    for i in 0..2_000 {
        burst.extend(raw::text(&format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"ping"}}"#)));
    }
    s.write_all(&burst).await.unwrap();
    let (mut ok, mut limited) = (0, 0);
    let code = raw::texts_until_close(&mut s, |v| {
        if v["result"] == "pong" {
            ok += 1;
        } else {
            assert_eq!(v["error"]["code"], -32003, "{v}");
            assert_eq!(v["error"]["data"]["code"], "rate_limited");
            limited += 1;
        }
    })
    .await;
    assert_eq!(code, Some(1008));
    assert!((50..=60).contains(&ok), "about one second's worth of calls answered: {ok}");
    assert!(limited > 100, "{limited}");
    assert!(ok + limited < 2_000, "the rest was never processed");
}

/// Invalid messages are charged like calls: a flood of garbage is closed the same way.
#[tokio::test]
async fn flooding_with_garbage_is_closed_too() {
    let mut c = config();
    c.limits.calls_per_second = 20;
    let server = start(c).await;
    let mut s = raw::connect(server.addr).await;
    let mut burst = Vec::new();
    for _ in 0..1_000 {
        burst.extend(raw::text("not json"));
    }
    s.write_all(&burst).await.unwrap();
    let mut parse_errors = 0;
    let code = raw::texts_until_close(&mut s, |v| {
        assert_eq!(v["error"]["code"], -32700, "{v}");
        parse_errors += 1;
    })
    .await;
    assert_eq!(code, Some(1008));
    assert!(
        (20..=25).contains(&parse_errors),
        "only the budget's worth is parsed and answered: {parse_errors}"
    );
}

#[tokio::test]
async fn silent_clients_are_disconnected_and_answering_ones_are_not() {
    let mut c = config();
    c.limits.ping_interval = Duration::from_secs(1);
    c.limits.pong_timeout = Duration::from_millis(2500);
    let server = start(c).await;
    // Never reads, so never answers a ping.
    let mut silent_one = ws(server.addr, None).await;
    // Reads (tungstenite answers pings while reading).
    let mut lively = ws(server.addr, None).await;
    let mut pings = 0;
    let t0 = tokio::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(4) {
        if let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(200), lively.next()).await {
            pings += m.is_ping() as u32;
        }
    }
    assert!(pings >= 2, "the server pings: {pings}");
    assert_eq!(call(&mut lively, "ping", json!([])).await["result"], "pong");
    assert_eq!(closed(&mut silent_one).await, Some(1008));
}

#[tokio::test]
async fn connection_limit_answers_429_before_the_upgrade() {
    let mut c = config();
    c.limits.max_connections = 2;
    let server = start(c).await;
    let _a = ws(server.addr, None).await;
    let b = ws(server.addr, None).await;
    assert_eq!(try_ws(server.addr, "/ws/rpc", None, &[]).await.err(), Some(429));
    drop(b);
    // The slot comes back once the connection is gone.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match try_ws(server.addr, "/ws/rpc", None, &[]).await {
            Ok(_) => break,
            Err(429) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => panic!("status {s}"),
        }
    }
}
