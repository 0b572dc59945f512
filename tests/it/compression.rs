//! permessage-deflate (RFC 7692) on the wire: negotiated when a client offers it in a form the
//! server can honour (and never half-accepted), each publication compressed once for every
//! subscriber with their own ids spliced in, and clients' compressed messages inflated within
//! the message limit (a zip bomb is 1009 before it inflates past it). Frames are read and
//! written by hand over TCP and inflated with flate2; `tests/dialects/compressed.py` does the
//! same with Python's `websockets` (zlib), and the browser tests run compressed (Chromium
//! offers the extension).

use crate::support::raw::{self, connect_with, read_whole};
use crate::support::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
const ACCEPTED: &str =
    "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// What a receiver does with a compressed payload (RFC 7692 7.2.2): append the tail and inflate.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut all = payload.to_vec();
    all.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::new();
    // No final block: the read ends with the input.
    let _ = flate2::read::DeflateDecoder::new(&all[..]).read_to_end(&mut out);
    out
}

/// What a sender does: deflate, sync flush, take the tail off.
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    let mut out = e.flush_finish().unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A connection on `path` offering permessage-deflate: it must be accepted.
async fn deflating(addr: SocketAddr, path: &str) -> TcpStream {
    let (s, head) = connect_with(addr, path, OFFER).await;
    assert!(head.to_ascii_lowercase().contains(ACCEPTED), "{head}");
    s
}

/// The next data message: (compressed?, its JSON), inflated when it came compressed.
async fn message(s: &mut TcpStream) -> (bool, Value) {
    loop {
        let (b0, p) = read_whole(s).await.expect("a frame");
        match b0 & 0x0f {
            0x1 => {
                let compressed = b0 & 0x40 != 0;
                let text = if compressed { inflate(&p) } else { p };
                return (compressed, serde_json::from_slice(&text).unwrap());
            }
            0x8 => panic!("closed: {p:?}"),
            _ => continue,
        }
    }
}

/// A compressible publication: an order book of `levels` levels a side, ~50 bytes a level.
fn book(levels: usize) -> Value {
    let side = |sign: f64| -> Vec<Value> {
        (0..levels)
            .map(|i| json!({"px": format!("{:.1}", 67_000.0 + sign * i as f64 * 0.5), "sz": "1.2500", "n": i % 7 + 1}))
            .collect()
    };
    json!({"coin": "BTC", "time": 1_796_300_000_000u64, "levels": [side(-1.0), side(1.0)]})
}

#[tokio::test]
async fn deflate_is_negotiated_when_offered_and_honourable_and_declined_otherwise() {
    let addr = shared();
    for path in ["/ws/rpc", "/ws"] {
        deflating(addr, path).await;
        let (_, head) = connect_with(addr, path, "").await;
        assert!(!head.to_ascii_lowercase().contains("sec-websocket-extensions"), "not offered: {head}");
        // A window smaller than the compressor's cannot be honoured: that offer is declined, a
        // later one taken.
        let small = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n";
        let (mut s, head) = connect_with(addr, path, small).await;
        assert!(!head.to_ascii_lowercase().contains("sec-websocket-extensions"), "{head}");
        // Without the extension a frame with RSV1 breaks the protocol.
        s.write_all(&raw::frame(0xc1, &deflate(b"{}"))).await.unwrap();
        assert_eq!(raw::close_code(&mut s).await, Some(1002));
        let two =
            "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10, permessage-deflate\r\n";
        let (_, head) = connect_with(addr, path, two).await;
        assert!(head.to_ascii_lowercase().contains(ACCEPTED), "{head}");
        for bad in ["permessage-deflate; foo", "permessage-deflate; client_max_window_bits=99"] {
            let (_, head) = connect_with(addr, path, &format!("Sec-WebSocket-Extensions: {bad}\r\n")).await;
            assert!(!head.to_ascii_lowercase().contains("sec-websocket-extensions"), "{bad}: {head}");
        }
    }
    // Switched off in the configuration: never negotiated.
    let mut c = config();
    c.compression = rpchub::config::Compression::Off;
    let off = start(c).await;
    let (_, head) = connect_with(off.addr, "/ws/rpc", OFFER).await;
    assert!(!head.to_ascii_lowercase().contains("sec-websocket-extensions"), "{head}");
    off.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_is_compressed_once_for_every_subscriber_with_its_own_id() {
    let server = start(config()).await;
    let ch = channel("z");
    let (mut a, mut b) = (deflating(server.addr, "/ws/rpc").await, deflating(server.addr, "/ws/rpc").await);
    let mut ids = Vec::new();
    for s in [&mut a, &mut b] {
        let sub = json!({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"channel": ch}});
        s.write_all(&raw::text(&sub.to_string())).await.unwrap();
        let (_, answer) = message(s).await;
        ids.push(answer["result"].as_str().expect("a subscription id").to_string());
        let (_, snap) = message(s).await;
        assert_eq!(snap["params"]["result"]["type"], "snapshot", "{snap}");
    }
    let mut plain = ws(server.addr, None).await;
    subscribe(&mut plain, json!([ch])).await;

    let data = book(40);
    publish(server.addr, &ch, data.clone()).await;
    let want = event(&mut plain).await;
    let plain_len = serde_json::to_string(
        &json!({"jsonrpc": "2.0", "method": "subscription", "params": {"subscription": "x", "result": want}}),
    )
    .unwrap()
    .len();
    let mut frames = Vec::new();
    for (s, id) in [(&mut a, &ids[0]), (&mut b, &ids[1])] {
        let (b0, p) = read_whole(s).await.unwrap();
        assert_eq!(b0, 0xc1, "a compressed text frame");
        let got: Value = serde_json::from_slice(&inflate(&p)).unwrap();
        assert_eq!(got["params"]["subscription"], id.as_str());
        assert_eq!(got["params"]["result"], want, "the same event as the plain subscriber's");
        assert_eq!(got["params"]["result"]["data"], data);
        assert!(p.len() * 100 <= plain_len * 35, "at most 0.35x on the wire: {} of {plain_len}", p.len());
        frames.push(p);
    }
    // One compression: the two frames differ only where the ids are.
    assert_eq!(frames[0].len(), frames[1].len());
    let differ = frames[0].iter().zip(&frames[1]).filter(|(x, y)| x != y).count();
    assert!(differ <= ids[0].len(), "{differ} bytes differ");

    // A snapshot with history in it is compressed too, and a short message is not.
    let mut late = deflating(server.addr, "/ws/rpc").await;
    let sub =
        json!({"jsonrpc": "2.0", "id": 2, "method": "subscribe", "params": {"channel": ch, "limit": 1}});
    late.write_all(&raw::text(&sub.to_string())).await.unwrap();
    let (compressed, answer) = message(&mut late).await;
    assert!(!compressed && answer["result"].is_string(), "{answer}");
    let (compressed, snap) = message(&mut late).await;
    assert!(compressed, "{snap}");
    assert_eq!(snap["params"]["result"]["publications"][0]["data"], data);

    // The /ws door: a Hyperliquid subscription's frames are compressed the same way.
    let mut hl = deflating(server.addr, "/ws").await;
    let coin = ch.split_once(':').unwrap().1.to_string();
    let hl_ch = format!("l2Book:{coin}");
    let sub = json!({"method": "subscribe", "subscription": {"type": "l2Book", "coin": coin}});
    hl.write_all(&raw::text(&sub.to_string())).await.unwrap();
    let (_, ack) = message(&mut hl).await;
    assert_eq!(ack["channel"], "subscriptionResponse", "{ack}");
    publish(server.addr, &hl_ch, data.clone()).await;
    loop {
        let (compressed, v) = message(&mut hl).await;
        if v["channel"] == "l2Book" && v["isSnapshot"] != true {
            assert!(compressed, "{v}");
            assert_eq!(v["data"]["levels"], data["levels"]);
            break;
        }
    }
    server.shutdown();
}

#[tokio::test]
async fn an_instance_stream_s_missed_events_come_compressed_each_in_its_own_frame() {
    let mut c = config();
    c.instances_file = std::env::temp_dir().join(format!("rpchub-it-deflate-{}.json", std::process::id()));
    let token = "deflate-shop-token-0123";
    let shop = rpchub::config::InstanceConfig {
        token: rpchub::config::Secret(token.into()),
        enabled: true,
        events: vec![],
        media_base64: false,
    };
    c.instances.insert("dshop".into(), shop);
    let server = start(c).await;
    let data = book(20);
    let publish_one = |n: u64| {
        let body =
            json!({"channel": "instance:dshop", "event": "e", "data": {"n": n, "book": data}}).to_string();
        let auth = format!("Bearer {ADMIN}");
        async move {
            let headers = [("content-type", "application/json"), ("authorization", auth.as_str())];
            let (status, pos) = http(server.addr, "POST", "/api/publish", &headers, &body).await;
            assert_eq!(status, 200, "{pos}");
            serde_json::from_str::<Value>(&pos).unwrap()
        }
    };
    let first = publish_one(1).await;
    for n in 2..=3 {
        publish_one(n).await;
    }
    let since = format!("{}:{}", first["epoch"].as_str().unwrap(), first["offset"].as_u64().unwrap() - 1);
    let mut s = deflating(server.addr, &format!("/ws/dshop?token={token}&since={since}")).await;
    // The three missed events went out together, each a compressed frame of its own.
    for n in 1..=3u64 {
        let (compressed, v) = message(&mut s).await;
        assert!(compressed, "{v}");
        assert_eq!((v["data"]["n"].as_u64(), &v["data"]["book"]), (Some(n), &data), "{v}");
    }
    server.shutdown();
}

#[tokio::test]
async fn compressed_client_messages_are_inflated_within_the_limit_and_bad_ones_fail_their_connection() {
    let addr = shared();
    let call = |id: u32| {
        json!({"jsonrpc": "2.0", "id": id, "method": "ping", "params": [], "pad": " ".repeat(2000)})
            .to_string()
    };
    let mut s = deflating(addr, "/ws/rpc").await;
    s.write_all(&raw::frame(0xc1, &deflate(call(1).as_bytes()))).await.unwrap();
    assert_eq!(message(&mut s).await.1, json!({"jsonrpc": "2.0", "id": 1, "result": "pong"}));
    // In fragments: RSV1 on the first only.
    let z = deflate(call(2).as_bytes());
    let (x, y) = z.split_at(z.len() / 2);
    s.write_all(&[raw::frame(0x41, x), raw::frame(0x80, y)].concat()).await.unwrap();
    assert_eq!(message(&mut s).await.1["result"], "pong");
    // An uncompressed message on the same connection is fine too.
    s.write_all(&raw::text(r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#)).await.unwrap();
    assert_eq!(message(&mut s).await.1["id"], 3);

    // A zip bomb: a few kilobytes that would inflate to 50 MB. Refused with 1009 at the limit.
    let bomb = deflate(&vec![b' '; 50 << 20]);
    assert!(bomb.len() < 100 << 10, "{}", bomb.len());
    let mut s = deflating(addr, "/ws/rpc").await;
    s.write_all(&raw::frame(0xc1, &bomb)).await.unwrap();
    assert_eq!(raw::close_code(&mut s).await, Some(1009));
    // Not deflate at all: 1007.
    let mut s = deflating(addr, "/ws/rpc").await;
    s.write_all(&raw::frame(0xc1, &[0xff, 0xfe, 0xfd, 0xfc])).await.unwrap();
    assert_eq!(raw::close_code(&mut s).await, Some(1007));
    // RSV1 on a continuation or a control frame breaks the protocol: 1002.
    let mut s = deflating(addr, "/ws/rpc").await;
    s.write_all(&[raw::frame(0x01, b"{\"a\""), raw::frame(0xc0, b":1}")].concat()).await.unwrap();
    assert_eq!(raw::close_code(&mut s).await, Some(1002));
    let mut s = deflating(addr, "/ws/rpc").await;
    s.write_all(&raw::frame(0xc9, b"")).await.unwrap();
    assert_eq!(raw::close_code(&mut s).await, Some(1002));
    // Each failed only its own connection: the server goes on.
    let mut w = ws(addr, None).await;
    assert_eq!(super::support::call(&mut w, "ping", json!([])).await["result"], "pong");
}
