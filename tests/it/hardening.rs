//! What an anonymous client cannot do to a node: hold its descriptors, trickle a request, call
//! `POST /rpc` without limit, make small requests into big answers, or call from another
//! site's page. Each test attacks as the attacker did, with a legitimate client probing beside.

use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request head `POST /rpc` of a JSON body of `len` bytes, the body still to come.
fn post_head(len: usize) -> String {
    format!(
        "POST /rpc HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    )
}

/// Reads an HTTP answer to its end; returns its status and whole text.
async fn read_answer(s: &mut tokio::net::TcpStream) -> (u16, String) {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await.expect("an answer and the end");
    let text = String::from_utf8_lossy(&out).into_owned();
    (text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0), text)
}

#[tokio::test]
async fn an_address_holding_its_cap_of_connections_is_refused_and_others_are_served() {
    let mut c = config();
    c.limits.http_connections_per_address = 20;
    let server = start(c).await;
    let addr = server.addr;
    // The attacker: half-sent requests from 127.0.0.7, twice its cap.
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut s = connect_from("127.0.0.7", addr).await.unwrap();
        s.write_all(b"POST /rpc HTTP/1.1\r\nhost: x\r\n").await.unwrap();
        held.push(s);
    }
    // Beyond it, each new connection is closed at once, before it sends anything.
    for _ in 0..20 {
        let mut s = connect_from("127.0.0.7", addr).await.unwrap();
        assert!(closed_within(&mut s, Duration::from_secs(2)).await, "a connection over the address's cap");
    }
    // A client of another address is served: plain HTTP and a WebSocket.
    let probe = connect_from("127.0.0.8", addr).await.unwrap();
    drop(probe);
    assert_eq!(http(addr, "GET", "/health", &[], "").await.0, 200);
    let mut w = ws(addr, None).await;
    assert_eq!(call(&mut w, "ping", json!([])).await["result"], "pong");
    assert_eq!(metric(addr, r#"rpchub_connections_refused_total{reason="per_address"}"#).await, 20.0);
    // WebSockets leave the cap: the attacker's address, its connections gone, may upgrade
    // more than 20 times and still make plain requests.
    drop(held);
    let mut sockets = Vec::new();
    for _ in 0..25 {
        sockets.push(ws(addr, None).await);
    }
    assert_eq!(http(addr, "GET", "/health", &[], "").await.0, 200, "the cap counts no WebSocket");
    server.shutdown();
}

/// True if `GET /health` is answered 200 (a refused connection is no answer).
async fn healthy(addr: std::net::SocketAddr) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return false };
    if s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.is_err() {
        return false;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    out.starts_with(b"HTTP/1.1 200")
}

#[tokio::test]
async fn max_connections_stays_below_the_descriptor_limit() {
    // 400 descriptors, 256 kept for the process: 108 WebSockets and 36 other connections.
    let (child, addr) = serve_binary_limited(&["--set", "limits.request_timeout=60s"], &[], Some(400)).await;
    // 60 half-sent requests from 3 addresses (20 each, within the per-address cap).
    let mut opened = Vec::new();
    for i in 0..60 {
        let from = format!("127.0.0.{}", 10 + i % 3);
        let mut s = connect_from(&from, addr).await.unwrap();
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n").await;
        opened.push(s);
    }
    let (mut held, mut refused) = (Vec::new(), 0);
    for mut s in opened {
        if closed_within(&mut s, Duration::from_millis(20)).await {
            refused += 1;
        } else {
            held.push(s);
        }
    }
    if held.len() > 36 {
        let n = held.len();
        drop(held);
        panic!("held {n} connections over the limit; log: {}", stop_for_log(child).await);
    }
    assert_eq!(refused, 60 - held.len());
    assert!(refused >= 24, "refused only {refused}");
    drop(held);
    // Room again: served at once.
    let deadline = std::time::Instant::now() + WAIT;
    while !healthy(addr).await {
        assert!(std::time::Instant::now() < deadline, "served again once the attacker left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(metric(addr, r#"rpchub_connections_refused_total{reason="limit"}"#).await >= refused as f64);
    let log = stop_for_log(child).await;
    assert!(log.contains("serving at most 108 WebSocket connections and 36 other ones"), "{log}");
    assert!(!log.contains("accept failed"), "accept never ran out of descriptors: {log}");
}

#[tokio::test]
async fn a_trickled_body_is_cut_off_and_an_honest_slow_one_is_not() {
    let mut c = config();
    c.limits.request_timeout = Duration::from_secs(1);
    c.limits.request_min_rate = 100;
    let server = start(c).await;
    let addr = server.addr;
    let body = r#"{"jsonrpc":"2.0","method":"ping","id":1}"#;
    // One byte every 200 ms: 5 bytes a second where 100 are asked for.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(post_head(body.len()).as_bytes()).await.unwrap();
    let trickle = async {
        for b in body.bytes() {
            if s.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), trickle).await;
    let (status, text) = read_answer(&mut s).await;
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("limits.request_timeout"), "{text}");
    assert_eq!(metric(addr, r#"rpchub_http_refused_total{reason="request_timeout"}"#).await, 1.0);
    // A body that comes in two halves half a second apart is in time.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(post_head(body.len()).as_bytes()).await.unwrap();
    let (a, b) = body.split_at(10);
    s.write_all(a.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.write_all(b.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 512];
    let n = tokio::time::timeout(WAIT, s.read(&mut head)).await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    server.shutdown();
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test]
async fn a_body_sent_a_byte_at_a_time_costs_its_size() {
    let (child, addr) =
        serve_binary(&["--set", "limits.request_timeout=60s", "--set", "limits.request_min_rate=0"], &[])
            .await;
    let before = rss(child.id());
    // 30 connections each send 4,000 body bytes one at a time, each its own TCP segment.
    let len = 4000;
    let mut tasks = Vec::new();
    for _ in 0..30 {
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            s.write_all(post_head(len).as_bytes()).await.unwrap();
            for _ in 0..len - 1 {
                s.write_all(b" ").await.unwrap();
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            s
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let grown = rss(child.id()).saturating_sub(before);
    // 30 bodies of 4 KB: well under a megabyte, whatever hyper's buffers; 4 KB per byte
    // would be 480 MB.
    assert!(grown < 32 << 20, "resident memory grew by {grown} bytes");
    for mut s in held {
        s.write_all(b"1").await.unwrap();
    }
    let _ = stop_for_log(child).await;
}

/// `n` pings as one batch.
fn ping_batch(n: usize) -> String {
    let calls: Vec<Value> = (0..n).map(|i| json!({"jsonrpc": "2.0", "method": "ping", "id": i})).collect();
    serde_json::to_string(&calls).unwrap()
}

const JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test]
async fn post_rpc_calls_are_charged_to_their_client_across_requests() {
    let mut c = config();
    c.limits.calls_per_second = 10;
    let server = start(c).await;
    let addr = server.addr;
    // Three requests of 5 calls, each on its own connection: 15 calls, 10 allowed.
    let mut refused = 0;
    for _ in 0..3 {
        let (status, body) = http(addr, "POST", "/rpc", &[JSON], &ping_batch(5)).await;
        assert_eq!(status, 200);
        let answers: Vec<Value> = serde_json::from_str(&body).unwrap();
        refused += answers.iter().filter(|a| a["error"]["code"] == -32003).count();
    }
    assert!(refused >= 4, "a batch counts its calls and the budget outlives a request: {refused} refused");
    // The admin is not limited.
    let auth = format!("Bearer {ADMIN}");
    let (_, body) = http(addr, "POST", "/rpc", &[JSON, ("authorization", &auth)], &ping_batch(50)).await;
    assert!(!body.contains("-32003"), "{body}");
    // Flooding: hundreds of refused calls a second get 429 and the connection closed.
    let mut flooded = None;
    for _ in 0..10 {
        let (status, body) = http(addr, "POST", "/rpc", &[JSON], &ping_batch(90)).await;
        if status == 429 {
            flooded = Some(body);
            break;
        }
    }
    let body = flooded.expect("a flood is answered 429");
    assert!(body.contains("-32003") && body.contains("limits.calls_per_second"), "{body}");
    assert!(metric(addr, r#"rpchub_http_refused_total{reason="flood"}"#).await >= 1.0);
    server.shutdown();
}

#[tokio::test]
async fn answers_are_capped_and_the_connection_kept() {
    let mut c = config();
    c.limits.max_response_bytes = 4096;
    let server = start(c).await;
    let addr = server.addr;
    let ch = channel("big");
    for i in 0..20 {
        publish(addr, &ch, json!({"i": i, "pad": "x".repeat(300)})).await;
    }
    let mut w = ws(addr, None).await;
    // One call whose answer is over the limit.
    let r = call(&mut w, "history", json!({"channel": ch})).await;
    assert_eq!(r["error"]["code"], -32007, "{r}");
    assert_eq!(r["error"]["data"]["code"], "message_too_big", "{r}");
    let data = r["error"]["data"]["detail"].as_str().unwrap();
    assert!(data.contains("4096 bytes (limits.max_response_bytes)"), "{data}");
    // Within it, the same call answers.
    let r = call(&mut w, "history", json!({"channel": ch, "limit": 3})).await;
    assert_eq!(r["result"]["publications"].as_array().unwrap().len(), 3, "{r}");
    // A batch: the answers that fit, then -32007 for the rest, which are not run.
    let batch: Vec<Value> = (0..8)
        .map(|i| json!({"jsonrpc": "2.0", "method": "history", "params": {"channel": ch, "limit": 3}, "id": i}))
        .collect();
    send(&mut w, Value::Array(batch.clone())).await;
    let answers = recv(&mut w).await;
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), 8);
    let fitted = answers.iter().take_while(|a| a.get("result").is_some()).count();
    assert!((1..8).contains(&fitted), "{fitted} answers fitted");
    assert!(answers[fitted..].iter().all(|a| a["error"]["code"] == -32007));
    assert!(serde_json::to_string(answers).unwrap().len() <= 4096 + 8 * 300, "the batch's answer is bounded");
    // The connection is kept.
    assert_eq!(call(&mut w, "ping", json!([])).await["result"], "pong");
    // The same over HTTP.
    let (status, body) = http(addr, "POST", "/rpc", &[JSON], &serde_json::to_string(&batch).unwrap()).await;
    assert_eq!(status, 200);
    assert!(body.contains("-32007"), "{body}");
    assert!(metric(addr, "rpchub_responses_too_big_total").await >= 2.0);
    server.shutdown();
}

#[tokio::test]
async fn an_http_answer_nobody_reads_is_dropped_after_the_write_timeout() {
    let mut c = config();
    c.limits.write_timeout = Duration::from_secs(1);
    c.limits.calls_per_second = 100_000;
    let server = start(c).await;
    let addr = server.addr;
    let ch = channel("wt");
    for _ in 0..100 {
        publish(addr, &ch, json!("x".repeat(3800))).await;
    }
    // Pipelined requests for 100 history pages (about 40 MB), none of their answers read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let body = json!({"jsonrpc": "2.0", "method": "history", "params": {"channel": ch}, "id": 1}).to_string();
    let request = format!("{}{body}", post_head(body.len()));
    for _ in 0..100 {
        if s.write_all(request.as_bytes()).await.is_err() {
            break;
        }
    }
    let deadline = std::time::Instant::now() + WAIT;
    while metric(addr, r#"rpchub_connections_closed_total{reason="write_timeout"}"#).await < 1.0 {
        assert!(std::time::Instant::now() < deadline, "the stalled answer was not dropped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What the socket took is still readable; then the connection ends, short of 100 answers.
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await.expect("the connection ends");
    let answers = String::from_utf8_lossy(&got).matches("HTTP/1.1 200").count();
    assert!(answers < 100, "{answers} answers");
    server.shutdown();
}

#[tokio::test]
async fn post_rpc_takes_json_only_and_no_cross_origin_calls_by_default() {
    let server = start(config()).await;
    let addr = server.addr;
    let auth = format!("Bearer {ADMIN}");
    let ch = channel("csrf");
    let publish =
        json!({"jsonrpc": "2.0", "method": "publish", "params": [ch, {"a": 1}], "id": 1}).to_string();
    // The CSRF "simple requests": nothing runs.
    for ct in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let (status, body) =
            http(addr, "POST", "/rpc", &[("content-type", ct), ("authorization", &auth)], &publish).await;
        assert_eq!(status, 415, "{ct}: {body}");
    }
    let (status, _) = http(addr, "POST", "/rpc", &[("authorization", &auth)], &publish).await;
    assert_eq!(status, 415, "no content type");
    let history = json!({"jsonrpc": "2.0", "method": "history", "params": [ch], "id": 2}).to_string();
    let (_, body) = http(addr, "POST", "/rpc", &[JSON], &history).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["result"]["publications"], json!([]), "nothing was published: {v}");
    assert_eq!(metric(addr, r#"rpchub_http_refused_total{reason="media_type"}"#).await, 4.0);
    // JSON with a charset, and application/json-rpc, are fine.
    for ct in ["application/json; charset=utf-8", "application/json-rpc"] {
        let (status, _) = http(addr, "POST", "/rpc", &[("content-type", ct)], &history).await;
        assert_eq!(status, 200, "{ct}");
    }
    // A page of another origin: refused, even with JSON; its preflight too.
    let evil = ("origin", "https://evil.example");
    let (status, _) = http(addr, "POST", "/rpc", &[JSON, evil, ("authorization", &auth)], &publish).await;
    assert_eq!(status, 403);
    let preflight =
        [evil, ("access-control-request-method", "POST"), ("access-control-request-headers", "content-type")];
    let (status, _) = http(addr, "OPTIONS", "/rpc", &preflight, "").await;
    assert_eq!(status, 403);
    // The server's own pages may call.
    let own = format!("http://{addr}");
    let (status, _) = http(addr, "POST", "/rpc", &[JSON, ("origin", &own)], &history).await;
    assert_eq!(status, 200);
    server.shutdown();
}

#[tokio::test]
async fn an_allowed_origin_gets_its_preflight_and_its_answers() {
    let mut c = config();
    c.cors_origins = vec!["https://app.example".into()];
    let server = start(c).await;
    let addr = server.addr;
    let app = ("origin", "https://app.example");
    let raw = |method: &str, headers: &[(&str, &str)], body: &str| {
        let mut req = format!(
            "{method} /rpc HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req + "\r\n" + body
    };
    let exchange = |req: String| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        read_answer(&mut s).await
    };
    let (status, text) =
        exchange(raw("OPTIONS", &[app, ("access-control-request-method", "POST")], "")).await;
    assert_eq!(status, 204, "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(lower.contains("access-control-allow-origin: https://app.example"), "{text}");
    assert!(lower.contains("access-control-allow-methods: post"), "{text}");
    assert!(lower.contains("access-control-allow-headers: content-type"), "{text}");
    let ping = r#"{"jsonrpc":"2.0","method":"ping","id":1}"#;
    let (status, text) = exchange(raw("POST", &[app, JSON], ping)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.to_ascii_lowercase().contains("access-control-allow-origin: https://app.example"), "{text}");
    let (status, _) = exchange(raw("POST", &[("origin", "https://other.example"), JSON], ping)).await;
    assert_eq!(status, 403, "an origin not listed");
    server.shutdown();
}
