//! Proxied methods against a real HTTP backend (axum, on 127.0.0.1 port 0): JSON answers and
//! streamed replies on `/ws/rpc`, `POST /rpc`, `{type,data}` and Hyperliquid `post` on `/ws`;
//! `stream_cancel` and disconnects reaching the backend; every way a backend fails, answered
//! with a clear error on a connection that stays open; the per-connection bound; the proxied
//! methods in the served OpenRPC document.

use crate::support::*;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

/// What the backend saw and the switches the tests flip.
#[derive(Default)]
struct Seen {
    /// Each call: the path's method, the body, the headers.
    calls: parking_lot::Mutex<Vec<(String, Value, HeaderMap)>>,
    /// Streams whose client went away (a write failed).
    cancelled: AtomicUsize,
    cancel: Notify,
    /// Lets the `gated` stream write its second line.
    gate: Notify,
}

/// An NDJSON response of the lines `lines` sends (each flushed as it is sent).
fn ndjson(lines: impl FnOnce(mpsc::Sender<String>) -> futures::future::BoxFuture<'static, ()>) -> Response {
    let (tx, rx) = mpsc::channel::<String>(1);
    tokio::spawn(lines(tx));
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|l| (Ok::<_, std::io::Error>(axum::body::Bytes::from(l + "\n")), rx))
    });
    ([("content-type", "application/x-ndjson")], Body::from_stream(body)).into_response()
}

/// Sends `line`; on failure (the body was dropped: its client left) counts a cancellation.
async fn put(seen: &Seen, tx: &mpsc::Sender<String>, line: Value) -> bool {
    if tx.send(line.to_string()).await.is_ok() {
        return true;
    }
    seen.cancelled.fetch_add(1, Ordering::SeqCst);
    seen.cancel.notify_waiters();
    false
}

async fn rpc(
    State(seen): State<Arc<Seen>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    seen.calls.lock().push((method.clone(), v.clone(), headers));
    let ok = |r: Value| axum::Json(json!({"result": r})).into_response();
    match method.as_str() {
        "echo" => ok(v),
        "refuse" => {
            axum::Json(json!({"error": {"code": "quota", "message": "out of quota"}})).into_response()
        }
        "slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            ok(json!("late"))
        }
        "boom" => (StatusCode::INTERNAL_SERVER_ERROR, "internal").into_response(),
        "garbage" => ([("content-type", "application/json")], "<html>not json").into_response(),
        "huge" => ok(json!("x".repeat(8192))),
        "words" => {
            let seen = seen.clone();
            ndjson(move |tx| {
                Box::pin(async move {
                    let s = &seen;
                    for w in ["The", "answer", "is"] {
                        put(s, &tx, json!({"type": "content", "data": {"content": w, "done": false}})).await;
                    }
                    put(s, &tx, json!({"type": "tool", "data": {"name": "lookup", "input": {"q": "42"}}}))
                        .await;
                    put(s, &tx, json!({"type": "content", "data": {"content": "42", "done": true}})).await;
                })
            })
        }
        "gated" => {
            let seen = seen.clone();
            ndjson(move |tx| {
                Box::pin(async move {
                    put(&seen, &tx, json!({"n": 1})).await;
                    seen.gate.notified().await;
                    put(&seen, &tx, json!({"n": 2})).await;
                })
            })
        }
        "forever" => {
            let seen = seen.clone();
            ndjson(move |tx| {
                Box::pin(async move {
                    let mut n = 0u64;
                    while put(&seen, &tx, json!({"tick": n})).await {
                        n += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
        }
        "flood" => {
            let seen = seen.clone();
            ndjson(move |tx| {
                Box::pin(async move {
                    let pad = "p".repeat(8000);
                    while put(&seen, &tx, json!({"pad": pad})).await {}
                })
            })
        }
        "badline" => {
            let seen = seen.clone();
            ndjson(move |tx| {
                Box::pin(async move {
                    put(&seen, &tx, json!({"n": 1})).await;
                    let _ = tx.send("this is not json".into()).await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    put(&seen, &tx, json!({"n": 2})).await;
                })
            })
        }
        "ended" => {
            let seen = seen.clone();
            ndjson(move |tx| {
                Box::pin(async move {
                    put(&seen, &tx, json!({"type": "content", "data": "a"})).await;
                    put(&seen, &tx, json!({"type": "end"})).await;
                    put(&seen, &tx, json!({"type": "content", "data": "after the end"})).await;
                })
            })
        }
        _ => axum::Json(json!({"error": {"code": "unknown", "message": "no such method"}})).into_response(),
    }
}

/// Starts the backend; returns its base URL and what it sees.
async fn backend() -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = axum::Router::new().route("/rpc/{method}", axum::routing::post(rpc)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

/// A node with the backend at `url` serving every method of the test backend.
fn with_backend(url: &str) -> rpchub::Config {
    let mut c = config();
    c.backend.url = url.into();
    c.backend.timeout = Duration::from_millis(700);
    c.backend.max_body_bytes = 4096;
    c.backend.methods = ["echo", "refuse", "slow", "boom", "garbage", "huge", "words", "gated", "forever"]
        .into_iter()
        .chain(["flood", "badline", "ended", "nobody"])
        .map(String::from)
        .collect();
    c.backend.forward_headers = vec!["x-tenant".into()];
    c
}

/// Reads a stream's notifications until its `end` or `error` line: the lines' results.
async fn stream_lines(w: &mut Ws, stream: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let v = recv(w).await;
        assert_eq!(v["method"], "stream", "{v}");
        assert_eq!(v["params"]["stream"], stream, "{v}");
        let r = v["params"]["result"].clone();
        let last = matches!(r["type"].as_str(), Some("end" | "error"));
        out.push(r);
        if last {
            return out;
        }
    }
}

/// Waits until the backend has seen `n` cancelled streams.
async fn cancelled(seen: &Seen, n: usize) {
    tokio::time::timeout(WAIT, async {
        loop {
            let notified = seen.cancel.notified();
            if seen.cancelled.load(Ordering::SeqCst) >= n {
                return;
            }
            notified.await;
        }
    })
    .await
    .expect("the backend saw the stream cancelled");
}

#[tokio::test]
async fn json_answers_reach_every_door_with_the_client_and_only_the_named_headers() {
    let (url, seen) = backend().await;
    let node = start(with_backend(&url)).await;
    let headers = [("x-tenant", "acme"), ("cookie", "session=secret"), ("authorization", "Bearer nope")];
    let mut w = try_ws(node.addr, "/ws/rpc", None, &headers[..2]).await.unwrap();
    let r = call(&mut w, "echo", json!({"q": "hi"})).await;
    let echoed = &r["result"];
    assert_eq!(echoed["method"], "echo");
    assert_eq!(echoed["params"], json!({"q": "hi"}));
    assert!(echoed["client"]["id"].as_str().unwrap().contains('-'), "{echoed}");
    assert!(echoed["client"]["remote"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(echoed["client"].get("user").is_none(), "anonymous: no user");
    let r = call(&mut w, "echo", json!([1, 2])).await;
    assert_eq!(r["result"]["params"], json!([1, 2]), "params by position pass as they are");
    {
        let calls = seen.calls.lock();
        let (_, _, h) = calls.last().unwrap();
        assert_eq!(h.get("x-tenant").unwrap(), "acme");
        assert!(h.get("cookie").is_none() && h.get("authorization").is_none(), "{h:?}");
        assert_eq!(h.get("accept").unwrap(), "application/json, application/x-ndjson");
    }

    // POST /rpc, with a token: the user is the token's subject; named headers only.
    let body = json!({"jsonrpc": "2.0", "id": "a", "method": "echo", "params": {"x": 1}}).to_string();
    let auth = format!("Bearer {ADMIN}");
    let (status, text) = http(
        node.addr,
        "POST",
        "/rpc",
        &[("content-type", "application/json"), ("authorization", &auth), ("x-tenant", "t2")],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((v["id"].clone(), v["result"]["client"]["user"].clone()), (json!("a"), json!("admin")));
    {
        let calls = seen.calls.lock();
        let (_, _, h) = calls.last().unwrap();
        assert_eq!(h.get("x-tenant").unwrap(), "t2");
        assert!(h.get("authorization").is_none(), "the token never reaches the backend");
        assert_eq!(h.get("accept").unwrap(), "application/json");
    }

    // {type,data} on /ws: the answer is typed by the message's type and carries its id.
    let mut t = try_ws(node.addr, "/ws", None, &[]).await.unwrap();
    send(&mut t, json!({"type": "echo", "id": 7, "data": {"message": "hello"}})).await;
    let a = recv(&mut t).await;
    assert_eq!((a["type"].clone(), a["id"].clone()), (json!("echo"), json!(7)), "{a}");
    assert_eq!(a["data"]["params"], json!({"message": "hello"}));
    send(&mut t, json!({"type": "refuse", "data": {}})).await;
    assert_eq!(recv(&mut t).await["data"], json!({"code": "quota", "message": "out of quota"}));

    // Hyperliquid post: the result is the post's payload.
    let mut h = try_ws(node.addr, "/ws", None, &[]).await.unwrap();
    send(&mut h, json!({"method": "post", "id": 3, "request": {"type": "echo", "payload": {"k": "v"}}}))
        .await;
    let p = recv(&mut h).await;
    assert_eq!(p["data"]["id"], 3, "{p}");
    assert_eq!(p["data"]["response"]["type"], "info");
    assert_eq!(p["data"]["response"]["payload"]["params"], json!({"k": "v"}));
    node.shutdown();
}

#[tokio::test]
async fn every_backend_failure_is_a_clear_error_on_a_connection_that_stays_open() {
    let (url, _seen) = backend().await;
    let node = start(with_backend(&url)).await;
    let mut w = ws(node.addr, None).await;
    let r = call(&mut w, "refuse", json!({})).await;
    assert_eq!(r["error"], json!({"code": -32020, "message": "out of quota", "data": {"code": "quota"}}));
    for (method, says) in [
        ("slow", "did not answer within"),
        ("boom", "HTTP 500"),
        ("garbage", "not {\"result\""),
        ("huge", "over 4096 bytes"),
    ] {
        let r = call(&mut w, method, json!({})).await;
        assert_eq!(r["error"]["code"], -32021, "{method}: {r}");
        assert_eq!(r["error"]["data"], json!({"code": "backend_unavailable"}));
        let m = r["error"]["message"].as_str().unwrap();
        assert!(m.contains(says), "{method}: {m}");
    }
    assert_eq!(call(&mut w, "ping", json!([])).await["result"], "pong", "the connection is still open");
    // A method the backend does not serve is not proxied.
    assert_eq!(call(&mut w, "not_proxied", json!([])).await["error"]["code"], -32601);

    // The backend down altogether.
    let mut c = with_backend("http://127.0.0.1:9");
    c.backend.timeout = Duration::from_secs(2);
    let down = start(c).await;
    let mut d = ws(down.addr, None).await;
    let r = call(&mut d, "echo", json!({})).await;
    assert_eq!(r["error"]["code"], -32021, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("cannot connect"), "{r}");
    let mut t = try_ws(down.addr, "/ws", None, &[]).await.unwrap();
    send(&mut t, json!({"type": "echo", "data": {}})).await;
    let e = recv(&mut t).await;
    assert_eq!(
        (e["type"].clone(), e["data"]["code"].clone()),
        (json!("error"), json!("internal_error")),
        "{e}"
    );
    send(&mut t, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut t).await, json!({"type": "pong"}));
    let unavailable = r#"rpchub_backend_requests_total{kind="method",outcome="unavailable"}"#;
    assert!(metric(down.addr, unavailable).await >= 2.0);
    node.shutdown();
    down.shutdown();
}

#[tokio::test]
async fn streamed_replies_are_relayed_line_by_line_and_end_once() {
    let (url, seen) = backend().await;
    let node = start(with_backend(&url)).await;
    let mut w = ws(node.addr, None).await;
    let r = call(&mut w, "words", json!({"message": "?"})).await;
    let stream = r["result"]["stream"].as_str().unwrap_or_else(|| panic!("{r}")).to_string();
    let lines = stream_lines(&mut w, &stream).await;
    let words: Vec<_> = lines.iter().filter_map(|l| l["data"]["content"].as_str()).collect();
    assert_eq!(words, ["The", "answer", "is", "42"]);
    assert_eq!(lines[3]["type"], "tool", "the tool event in its place");
    assert_eq!(lines.last().unwrap(), &json!({"type": "end"}), "rpchub ends a stream the backend did not");
    assert_eq!(lines.len(), 6);

    // Line by line as they arrive: the first line is here before the backend writes the second.
    let r = call(&mut w, "gated", json!({})).await;
    let stream = r["result"]["stream"].as_str().unwrap().to_string();
    let first = recv(&mut w).await;
    assert_eq!(first["params"]["result"], json!({"n": 1}));
    seen.gate.notify_one();
    assert_eq!(stream_lines(&mut w, &stream).await, [json!({"n": 2}), json!({"type": "end"})]);

    // A line of type end ends the stream: nothing after it, and no second end.
    let r = call(&mut w, "ended", json!({})).await;
    let stream = r["result"]["stream"].as_str().unwrap().to_string();
    let lines = stream_lines(&mut w, &stream).await;
    assert_eq!(lines, [json!({"type": "content", "data": "a"}), json!({"type": "end"})]);

    // A line that is not JSON fails the stream with an error line, and the backend is let go.
    let r = call(&mut w, "badline", json!({})).await;
    let stream = r["result"]["stream"].as_str().unwrap().to_string();
    let lines = stream_lines(&mut w, &stream).await;
    assert_eq!(lines[0], json!({"n": 1}));
    assert_eq!(lines[1]["data"]["code"], "backend_unavailable", "{lines:?}");
    assert!(silent(&mut w, Duration::from_millis(300)).await, "nothing after the error line");

    // Over POST /rpc a streamed reply is -32005.
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "words"}).to_string();
    let (_, text) = http(node.addr, "POST", "/rpc", &[("content-type", "application/json")], &body).await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], -32005, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("/ws/rpc"));
    node.shutdown();
}

#[tokio::test]
async fn typed_clients_get_the_backend_s_lines_as_they_are() {
    let (url, _seen) = backend().await;
    let node = start(with_backend(&url)).await;
    let mut t = try_ws(node.addr, "/ws", None, &[]).await.unwrap();
    send(&mut t, json!({"type": "words", "data": {"message": "?", "sessionId": "s1"}})).await;
    let mut got = Vec::new();
    while got.last().is_none_or(|l: &Value| l["data"]["done"] != true) {
        got.push(recv(&mut t).await);
    }
    assert_eq!(got[0], json!({"type": "content", "data": {"content": "The", "done": false}}));
    assert_eq!(got[3]["type"], "tool");
    assert_eq!(got.len(), 5);
    assert!(silent(&mut t, Duration::from_millis(300)).await, "no line of rpchub's own after a clean end");
    // While a stream runs the connection takes other messages.
    send(&mut t, json!({"type": "forever", "data": {}})).await;
    assert!(recv(&mut t).await.get("tick").is_some());
    send(&mut t, json!({"type": "stream_cancel"})).await;
    loop {
        let v = recv(&mut t).await;
        if v["type"] == "stream_cancel" {
            assert_eq!(v["data"]["cancelled"], 1);
            break;
        }
    }
    node.shutdown();
}

#[tokio::test]
async fn cancel_and_disconnect_reach_the_backend_and_free_the_connection_s_places() {
    let (url, seen) = backend().await;
    let mut c = with_backend(&url);
    c.backend.max_in_flight = 2;
    let node = start(c).await;
    let mut w = ws(node.addr, None).await;
    let a = call(&mut w, "forever", json!({})).await["result"]["stream"].as_str().unwrap().to_string();
    let b = call(&mut w, "forever", json!({})).await["result"]["stream"].as_str().unwrap().to_string();
    assert_ne!(a, b);
    let r = call(&mut w, "echo", json!({})).await;
    assert_eq!(r["error"]["code"], -32003, "two streams hold both places: {r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("backend.max_in_flight"));
    assert_eq!(call(&mut w, "stream_cancel", json!([a])).await["result"], true);
    cancelled(&seen, 1).await;
    assert_eq!(call(&mut w, "stream_cancel", json!([a])).await["result"], false, "only once");
    assert_eq!(call(&mut w, "echo", json!({})).await["result"]["method"], "echo", "the place is free again");
    assert_eq!(metric(node.addr, "rpchub_backend_streams").await, 1.0);
    // The client leaves: the other stream's backend request is dropped too.
    drop(w);
    cancelled(&seen, 2).await;
    let cancelled_streams = r#"rpchub_backend_requests_total{kind="stream",outcome="cancelled"}"#;
    tokio::time::timeout(WAIT, async {
        while metric(node.addr, cancelled_streams).await < 2.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(metric(node.addr, "rpchub_backend_streams").await, 0.0);
    node.shutdown();
}

#[tokio::test]
async fn a_stream_that_never_ends_is_cut_at_stream_timeout_and_a_client_that_does_not_read_is_dropped() {
    let (url, seen) = backend().await;
    let mut c = with_backend(&url);
    c.backend.stream_timeout = Duration::from_secs(1);
    c.limits.outbound_queue_bytes = 256 * 1024;
    c.backend.max_body_bytes = 16 * 1024;
    let node = start(c).await;
    let mut w = ws(node.addr, None).await;
    let r = call(&mut w, "forever", json!({})).await;
    let stream = r["result"]["stream"].as_str().unwrap().to_string();
    let lines = stream_lines(&mut w, &stream).await;
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "error");
    assert!(last["data"]["message"].as_str().unwrap().contains("backend.stream_timeout"), "{last}");
    assert!(lines.len() > 2, "ticks arrived before the cut");
    cancelled(&seen, 1).await;

    // A client that asks for a flood of lines and reads none is dropped like a slow subscriber,
    // and its stream's backend request with it; another client goes on.
    let mut reader = ws(node.addr, None).await;
    let mut sluggard = raw::connect_small_window(node.addr, 4096).await;
    use tokio::io::AsyncWriteExt;
    let hello = json!({"jsonrpc": "2.0", "id": 1, "method": "flood"}).to_string();
    sluggard.write_all(&raw::text(&hello)).await.unwrap();
    cancelled(&seen, 2).await;
    assert!(metric(node.addr, "rpchub_slow_consumers_total").await >= 1.0);
    assert_eq!(call(&mut reader, "echo", json!({})).await["result"]["method"], "echo");
    node.shutdown();
}

#[tokio::test]
async fn proxied_methods_are_in_the_served_document_with_their_schemas() {
    let (url, _seen) = backend().await;
    let dir = std::env::temp_dir().join(format!("rpchub-it-schemas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("words.json");
    let schema = json!({
        "summary": "Answers a question word by word",
        "params": {"type": "object", "required": ["message"], "properties": {
            "message": {"type": "string"}, "sessionId": {"type": "string"}}},
        "stream": {"type": "object", "properties": {"type": {"type": "string"}}},
    });
    std::fs::write(&file, schema.to_string()).unwrap();
    let mut c = with_backend(&url);
    c.backend.methods.push("eth_*".into());
    c.backend.schemas.insert("words".into(), file);
    let node = start(c).await;
    let mut w = ws(node.addr, None).await;
    let doc = call(&mut w, "rpc.discover", json!([])).await["result"].clone();
    let methods = doc["methods"].as_array().unwrap();
    let find = |n: &str| methods.iter().find(|m| m["name"] == n).cloned();
    let words = find("words").expect("words is listed");
    assert_eq!(words["summary"], "Answers a question word by word");
    assert_eq!(
        words["params"][0],
        json!({"name": "message", "required": true, "schema": {"type": "string"}})
    );
    assert_eq!(words["params"][1]["required"], false);
    assert_eq!(words["result"]["schema"]["required"], json!(["stream"]));
    assert_eq!(words["x-notifications"][0]["name"], "stream");
    let echo = find("echo").expect("a method without a schema is listed free-form");
    assert_eq!((echo["params"].clone(), echo["result"]["schema"].clone()), (json!([]), json!({})));
    assert!(find("eth_*").is_none(), "patterns are not methods");
    assert!(find("stream_cancel").is_some());
    let (_, served) = http(node.addr, "GET", "/openrpc.json", &[], "").await;
    assert!(served.contains("Answers a question word by word"), "GET /openrpc.json is the same document");

    // A schema file that cannot be read stops the start with a message naming it.
    let mut bad = with_backend(&url);
    bad.backend.schemas.insert("echo".into(), dir.join("missing.json"));
    let err = rpchub::start(bad).await.expect_err("a missing schema file is an error").to_string();
    assert!(err.contains("backend.schemas.echo") && err.contains("missing.json"), "{err}");
    node.shutdown();
}

#[tokio::test]
async fn lines_flow_while_other_clients_are_served() {
    // Many streams at once on many connections: each gets its own lines, whole and in order.
    let (url, _seen) = backend().await;
    let node = start(with_backend(&url)).await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(ws(node.addr, None).await);
    }
    let runs = clients.iter_mut().map(|w| async move {
        let r = call(w, "words", json!({})).await;
        let stream = r["result"]["stream"].as_str().unwrap().to_string();
        stream_lines(w, &stream).await.len()
    });
    let counts: Vec<usize> = futures::future::join_all(runs).await;
    assert!(counts.iter().all(|&n| n == 6), "{counts:?}");
    node.shutdown();
}

#[tokio::test]
async fn a_batch_answers_first_and_its_streams_follow_and_post_cannot_stream() {
    let (url, _seen) = backend().await;
    let node = start(with_backend(&url)).await;
    let mut w = ws(node.addr, None).await;
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"a": 1}},
        {"jsonrpc": "2.0", "id": 2, "method": "words", "params": {}},
        {"jsonrpc": "2.0", "id": 3, "method": "ping"},
    ]);
    send(&mut w, batch).await;
    let answers = recv(&mut w).await;
    let answers = answers.as_array().unwrap_or_else(|| panic!("the batch's answer comes first: {answers}"));
    assert_eq!(answers.len(), 3);
    assert_eq!(answers[0]["result"]["params"], json!({"a": 1}));
    let stream = answers[1]["result"]["stream"].as_str().unwrap().to_string();
    assert_eq!(answers[2]["result"], "pong");
    assert_eq!(stream_lines(&mut w, &stream).await.len(), 6);

    // A Hyperliquid post cannot deliver a stream: it answers an error naming /ws/rpc.
    let mut h = try_ws(node.addr, "/ws", None, &[]).await.unwrap();
    send(&mut h, json!({"method": "post", "id": 9, "request": {"type": "words", "payload": {}}})).await;
    let p = recv(&mut h).await;
    assert_eq!(p["data"]["response"]["type"], "error", "{p}");
    assert!(p["data"]["response"]["payload"].as_str().unwrap().contains("/ws/rpc"), "{p}");
    node.shutdown();
}

#[tokio::test]
async fn the_typed_client_follows_a_streamed_reply_and_cancels_one() {
    use rpchub::client::{self, StreamApiClient};
    let (url, seen) = backend().await;
    let node = start(with_backend(&url)).await;
    let c = client::connect(&format!("ws://{}/ws/rpc", node.addr), None).await.unwrap();
    let mut params = jsonrpsee::core::params::ObjectParams::new();
    params.insert("message", "?").unwrap();
    let mut lines = client::call_streamed(&c, "words", params).await.unwrap();
    let mut got = Vec::new();
    while let Some(line) = lines.next().await {
        got.push(line.unwrap());
    }
    assert_eq!(got.len(), 6, "{got:?}");
    assert_eq!(got[0]["data"]["content"], "The");
    assert_eq!(got[5], json!({"type": "end"}));
    drop(lines);
    let mut forever = client::call_streamed(&c, "forever", jsonrpsee::rpc_params![]).await.unwrap();
    assert_eq!(forever.next().await.unwrap().unwrap(), json!({"tick": 0}));
    assert!(c.stream_cancel(forever.id().to_string()).await.unwrap());
    cancelled(&seen, 1).await;
    node.shutdown();
}
