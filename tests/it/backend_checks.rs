//! The backend's permission checks (`subscribe_proxy`, `publish_proxy`, `connect_proxy`) and
//! the headers it is forwarded, against a real HTTP backend (axum on port 0) that records every
//! request and decides by what it is asked: a channel holding `deny` is refused, one holding
//! `rewrite` has its publications' data replaced; at `/connect`, token `alice-session` is user
//! alice (channels and publish `claims:*`), `expired-session` is refused, no token is anonymous.

use crate::support::{ADMIN, Ws, call, channel, event, http, metric, recv, send, start, try_ws, ws};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use parking_lot::Mutex;
use rpchub::config::{Access, NamespaceConfig};
use rpchub::{Config, Running};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;

/// One request the backend received.
#[derive(Clone, Debug)]
struct Seen {
    /// `subscribe`, `publish`, `connect`.
    kind: String,
    headers: HeaderMap,
    body: Value,
}

/// What the backend received, in order.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    /// The requests of `kind` whose body names `channel`.
    fn about(&self, kind: &str, channel: &str) -> Vec<Seen> {
        self.of(kind).into_iter().filter(|s| s.body["channel"] == channel).collect()
    }

    /// The requests of `kind`.
    fn of(&self, kind: &str) -> Vec<Seen> {
        self.0.lock().iter().filter(|s| s.kind == kind).cloned().collect()
    }
}

/// The backend's verdict on one request.
fn decide(kind: &str, body: &Value) -> Value {
    let channel = body["channel"].as_str().unwrap_or("");
    match kind {
        "subscribe" if channel.contains("deny") => {
            json!({"error": {"code": "forbidden", "message": format!("no entry to {channel}")}})
        }
        "publish" if channel.contains("deny") => {
            json!({"error": {"code": "forbidden", "message": format!("publishing to {channel} is closed")}})
        }
        "publish" if channel.contains("rewrite") => {
            json!({"result": {"data": {"rewritten": true, "was": body["data"]}}})
        }
        "connect" => match body["token"].as_str() {
            Some("alice-session") => {
                json!({"result": {"user": "alice", "channels": ["claims:*"], "publish": ["claims:*"]}})
            }
            Some("expired-session") => {
                json!({"error": {"code": "expired", "message": "session expired: sign in again"}})
            }
            _ => json!({"result": {"user": ""}}),
        },
        _ => json!({"result": {}}),
    }
}

/// Starts the backend; its URL and what it receives.
async fn backend() -> (String, Log) {
    async fn handle(
        State(log): State<Log>,
        Path(kind): Path<String>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> Json<Value> {
        let answer = decide(&kind, &body);
        log.0.lock().push(Seen { kind, headers, body });
        Json(answer)
    }
    let log = Log::default();
    let app = Router::new().route("/{kind}", post(handle)).with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), log)
}

/// A URL where no backend listens (a port bound, then let go).
fn dead_backend() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// A server asking the backend at `url`: namespace `gated` (anyone subscribes and publishes,
/// the backend asked for both), `trades` (Hyperliquid's, subscribe asked), `claims` (a token's
/// globs decide), `plain` (the backend never asked); `x-tenant` forwarded.
fn config(url: &str, connect_proxy: bool) -> Config {
    let mut c = crate::support::config();
    c.node_id = Some("n1".into());
    c.backend.url = url.into();
    c.backend.connect_proxy = connect_proxy;
    c.backend.forward_headers = vec!["X-Tenant".into()];
    c.backend.timeout = std::time::Duration::from_secs(5);
    let asked = NamespaceConfig {
        publish: Access::Public,
        subscribe_proxy: true,
        publish_proxy: true,
        ..NamespaceConfig::default()
    };
    c.namespaces.insert("gated".into(), asked.clone());
    c.namespaces.insert("trades".into(), asked);
    let claims = NamespaceConfig { subscribe: Access::Claims, ..NamespaceConfig::default() };
    c.namespaces.insert("claims".into(), claims);
    c.namespaces
        .insert("plain".into(), NamespaceConfig { publish: Access::Public, ..NamespaceConfig::default() });
    c
}

async fn server(url: &str, connect_proxy: bool) -> Running {
    start(config(url, connect_proxy)).await
}

/// A channel of `ns` for this test, with `tag` (`deny`, `rewrite`, `ok`) in its name.
fn ch(ns: &str, tag: &str) -> String {
    format!("{}-{tag}", channel(ns))
}

/// The headers of an upgrade request, for [`http`], plus `extra`.
fn upgrade<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    h.extend_from_slice(extra);
    h
}

/// Asserts `r` is error `code` with `message`, and `data.code` `name`.
fn assert_error(r: &Value, code: i64, name: &str, message: Option<&str>) {
    assert_eq!(r["error"]["code"], code, "{r}");
    assert_eq!(r["error"]["data"]["code"], name, "{r}");
    if let Some(m) = message {
        assert_eq!(r["error"]["message"], m, "{r}");
    }
}

/// The connection still answers.
async fn still_open(w: &mut Ws) {
    assert_eq!(call(w, "ping", json!([])).await["result"], "pong");
}

#[tokio::test]
async fn subscribe_and_history_ask_the_backend_on_ws_rpc() {
    let (url, log) = backend().await;
    let s = server(&url, false).await;
    let mut w = ws(s.addr, None).await;

    let ok = ch("gated", "ok");
    let r = call(&mut w, "subscribe", json!({"channel": ok})).await;
    assert!(r["result"].is_string(), "allowed: {r}");
    let asked = log.about("subscribe", &ok);
    assert_eq!(asked.len(), 1, "one question per subscribe");
    let client = &asked[0].body["client"];
    assert!(client["id"].as_str().unwrap().starts_with("n1-"), "{client}");
    assert!(client.get("user").is_none(), "an anonymous client has no user: {client}");
    assert!(client["remote"].as_str().unwrap().starts_with("127.0.0.1:"), "{client}");
    assert!(asked[0].body.get("data").is_none(), "a subscribe carries no data: {}", asked[0].body);

    let denied = ch("gated", "deny");
    let r = call(&mut w, "subscribe", json!({"channel": denied})).await;
    assert_error(&r, -32001, "unauthorized", Some(&format!("no entry to {denied}")));
    let r = call(&mut w, "history", json!({"channel": denied})).await;
    assert_error(&r, -32001, "unauthorized", Some(&format!("no entry to {denied}")));
    assert_eq!(log.about("subscribe", &denied).len(), 2, "the subscribe and the history read were asked");
    let r = call(&mut w, "history", json!({"channel": ok})).await;
    assert!(r["result"]["publications"].is_array(), "{r}");

    // A namespace without subscribe_proxy is never asked about.
    let plain = ch("plain", "deny");
    let r = call(&mut w, "subscribe", json!({"channel": plain})).await;
    assert!(r["result"].is_string(), "{r}");
    assert!(log.about("subscribe", &plain).is_empty());

    // What rpchub itself refuses is not asked about either.
    let claims = ch("claims", "ok");
    let r = call(&mut w, "subscribe", json!({"channel": claims})).await;
    assert_error(&r, -32001, "unauthorized", None);
    assert!(log.about("subscribe", &claims).is_empty());
    still_open(&mut w).await;
}

#[tokio::test]
async fn subscribe_asks_the_backend_on_the_ws_dialects() {
    let (url, log) = backend().await;
    let s = server(&url, false).await;

    let mut typed = try_ws(s.addr, "/ws", None, &[]).await.unwrap();
    let ok = ch("gated", "ok");
    send(&mut typed, json!({"type": "subscribe", "data": {"channel": ok}})).await;
    let snap = recv(&mut typed).await;
    assert_eq!(
        (snap["type"].as_str(), snap["channel"].as_str()),
        (Some("snapshot"), Some(ok.as_str())),
        "{snap}"
    );
    let denied = ch("gated", "deny");
    send(&mut typed, json!({"type": "subscribe", "data": {"channel": denied}})).await;
    assert_eq!(
        recv(&mut typed).await,
        json!({"type": "error", "data": {"code": "unauthorized", "message": format!("no entry to {denied}")}})
    );
    assert_eq!(log.about("subscribe", &ok).len() + log.about("subscribe", &denied).len(), 2);

    let mut hl = try_ws(s.addr, "/ws", None, &[]).await.unwrap();
    send(&mut hl, json!({"method": "subscribe", "subscription": {"type": "trades", "coin": "deny"}})).await;
    assert_eq!(recv(&mut hl).await, json!({"channel": "error", "data": "no entry to trades:deny"}));
    assert_eq!(log.about("subscribe", "trades:deny").len(), 1);
    send(&mut hl, json!({"method": "subscribe", "subscription": {"type": "trades", "coin": "SOL"}})).await;
    assert_eq!(recv(&mut hl).await["channel"], "subscriptionResponse");
    // A publish through a `post` request is a client's: the backend is asked.
    let denied = ch("gated", "deny");
    let post = json!({"method": "post", "id": 7, "request": {"type": "publish", "payload": {"channel": denied, "data": 1}}});
    send(&mut hl, post).await;
    loop {
        let v = recv(&mut hl).await;
        if v["channel"] == "post" {
            let expected = json!({"type": "error", "payload": format!("publishing to {denied} is closed")});
            assert_eq!(v["data"], json!({"id": 7, "response": expected}));
            break;
        }
    }
    assert_eq!(log.about("publish", &denied).len(), 1);
}

#[tokio::test]
async fn a_backend_that_is_down_is_32021_and_the_connection_stays() {
    let s = server(&dead_backend(), false).await;
    let mut w = ws(s.addr, None).await;
    let c = ch("gated", "ok");
    let r = call(&mut w, "subscribe", json!({"channel": c})).await;
    assert_error(&r, -32021, "backend_unavailable", None);
    let r = call(&mut w, "history", json!({"channel": c})).await;
    assert_error(&r, -32021, "backend_unavailable", None);
    let r = call(&mut w, "publish", json!({"channel": c, "data": 1})).await;
    assert_error(&r, -32021, "backend_unavailable", None);
    still_open(&mut w).await;

    let mut typed = try_ws(s.addr, "/ws", None, &[]).await.unwrap();
    send(&mut typed, json!({"type": "subscribe", "data": {"channel": c}})).await;
    let e = recv(&mut typed).await;
    assert_eq!(
        (e["type"].as_str(), e["data"]["code"].as_str()),
        (Some("error"), Some("internal_error")),
        "{e}"
    );
    send(&mut typed, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut typed).await, json!({"type": "pong"}));
    // Nothing was published while the backend could not say yes: the server API's first
    // publication there is offset 1.
    let body = json!({"channel": c, "data": 2}).to_string();
    let auth = format!("Bearer {ADMIN}");
    let headers = [("content-type", "application/json"), ("authorization", auth.as_str())];
    let (status, answer) = http(s.addr, "POST", "/api/publish", &headers, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(serde_json::from_str::<Value>(&answer).unwrap()["offset"], 1, "{answer}");
}

#[tokio::test]
async fn publish_is_allowed_refused_or_replaced_by_the_backend() {
    let (url, log) = backend().await;
    let s = server(&url, false).await;
    let mut sub = ws(s.addr, None).await;
    let mut publisher = ws(s.addr, None).await;

    for (tag, data, expected) in [
        ("ok", json!({"n": 1}), json!({"n": 1})),
        ("rewrite", json!({"n": 2}), json!({"rewritten": true, "was": {"n": 2}})),
    ] {
        let c = ch("gated", tag);
        crate::support::subscribe(&mut sub, json!({"channel": c})).await;
        let r = call(&mut publisher, "publish", json!({"channel": c, "data": data})).await;
        assert_eq!(r["result"]["offset"], 1, "{r}");
        assert_eq!(event(&mut sub).await["data"], expected, "{tag}");
        let asked = log.about("publish", &c);
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].body["data"], data, "the backend sees the data the client sent");
        assert!(asked[0].body["client"]["id"].as_str().unwrap().starts_with("n1-"));
    }

    let denied = ch("gated", "deny");
    let r = call(&mut publisher, "publish", json!({"channel": denied, "data": 3})).await;
    assert_error(&r, -32001, "unauthorized", Some(&format!("publishing to {denied} is closed")));
    let r = call(&mut publisher, "publish", json!({"channel": denied, "data": 4})).await;
    assert!(r["error"].is_object(), "{r}");
    assert_eq!(log.about("publish", &denied).len(), 2);
    // Nothing refused was stored: the server API's first publication there is offset 1.
    let body = json!({"channel": denied, "data": 5}).to_string();
    let auth = format!("Bearer {ADMIN}");
    let headers = [("content-type", "application/json"), ("authorization", auth.as_str())];
    let (status, answer) = http(s.addr, "POST", "/api/publish", &headers, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(serde_json::from_str::<Value>(&answer).unwrap()["offset"], 1, "{answer}");
}

#[tokio::test]
async fn the_server_api_publishes_without_asking() {
    let (url, log) = backend().await;
    let s = server(&url, false).await;
    let mut sub = ws(s.addr, None).await;
    let c = ch("gated", "rewrite");
    crate::support::subscribe(&mut sub, json!({"channel": c})).await;
    let body = json!({"channel": c, "data": {"from": "api"}}).to_string();
    let auth = format!("Bearer {ADMIN}");
    let headers = [("content-type", "application/json"), ("authorization", auth.as_str())];
    let (status, answer) = http(s.addr, "POST", "/api/publish", &headers, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(event(&mut sub).await["data"], json!({"from": "api"}), "published as sent, not replaced");
    assert!(log.about("publish", &c).is_empty(), "the server API is the backend's own door");
}

#[tokio::test]
async fn connect_proxy_gives_the_connection_its_identity() {
    let (url, log) = backend().await;
    let s = server(&url, true).await;

    let mut alice = try_ws(s.addr, "/ws/rpc", Some("alice-session"), &[("x-tenant", "acme")]).await.unwrap();
    let connects = log.of("connect");
    assert_eq!(connects.len(), 1);
    let asked = &connects[0].body;
    assert_eq!(asked["token"], "alice-session", "{asked}");
    assert_eq!(asked["headers"], json!({"x-tenant": "acme"}), "{asked}");
    let id = asked["client"]["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("n1-") && asked["client"]["remote"].as_str().unwrap().starts_with("127.0.0.1:"));
    // The user's channels open the claims namespace, which an anonymous client may not read.
    let claims = ch("claims", "ok");
    let r = call(&mut alice, "subscribe", json!({"channel": claims})).await;
    assert!(r["result"].is_string(), "{r}");
    let r = call(&mut alice, "publish", json!({"channel": claims, "data": 1})).await;
    assert_eq!(r["result"]["offset"], 1, "{r}");
    // Later requests about the connection carry the same client id, and the user.
    let gated = ch("gated", "ok");
    assert!(call(&mut alice, "subscribe", json!({"channel": gated})).await["result"].is_string());
    let client = &log.about("subscribe", &gated)[0].body["client"];
    assert_eq!((client["id"].as_str(), client["user"].as_str()), (Some(id.as_str()), Some("alice")));

    // No token: the backend says anonymous.
    let mut anon = ws(s.addr, None).await;
    assert_eq!(log.of("connect").len(), 2);
    assert!(log.of("connect")[1].body.get("token").is_none());
    let r = call(&mut anon, "subscribe", json!({"channel": claims})).await;
    assert_error(&r, -32001, "unauthorized", None);
}

#[tokio::test]
async fn connect_proxy_refusals_come_before_the_upgrade() {
    let (url, log) = backend().await;
    let s = server(&url, true).await;
    let auth_before = metric(s.addr, r#"rpchub_upgrades_rejected_total{reason="auth"}"#).await;
    let (status, body) = http(s.addr, "GET", "/ws/rpc?token=expired-session", &upgrade(&[]), "").await;
    assert_eq!(status, 401, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body, json!({"success": false, "error": {"message": "session expired: sign in again"}}));
    assert_eq!(metric(s.addr, r#"rpchub_upgrades_rejected_total{reason="auth"}"#).await, auth_before + 1.0);
    assert_eq!(try_ws(s.addr, "/ws", Some("expired-session"), &[]).await.err(), Some(401), "/ws too");

    // The admin token is rpchub's own: it stands, and the backend is not asked.
    let asked = log.of("connect").len();
    let mut admin = ws(s.addr, Some(ADMIN)).await;
    assert_eq!(log.of("connect").len(), asked);
    assert!(call(&mut admin, "subscribe", json!({"channel": ch("claims", "x")})).await["result"].is_string());
    // POST /rpc is no upgrade: an unknown token there is 401, never the backend's to judge.
    let rpc = r#"{"jsonrpc":"2.0","method":"ping","id":1}"#;
    let headers = [("content-type", "application/json"), ("token", "alice-session")];
    assert_eq!(http(s.addr, "POST", "/rpc", &headers, rpc).await.0, 401);
    assert_eq!(log.of("connect").len(), asked);
}

#[tokio::test]
async fn connect_proxy_without_a_backend_is_503() {
    let s = server(&dead_backend(), true).await;
    let before = metric(s.addr, r#"rpchub_upgrades_rejected_total{reason="backend"}"#).await;
    let (status, body) = http(s.addr, "GET", "/ws/rpc", &upgrade(&[]), "").await;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["success"], false);
    assert!(body["error"]["message"].as_str().unwrap().contains("backend"), "{body}");
    assert_eq!(metric(s.addr, r#"rpchub_upgrades_rejected_total{reason="backend"}"#).await, before + 1.0);
    // The retry hint, read from the raw answer.
    let head = raw_head(s.addr, "/ws/rpc").await;
    assert!(head.contains("retry-after: 1"), "{head}");
    // An rpchub token needs no backend.
    assert!(try_ws(s.addr, "/ws/rpc", Some(ADMIN), &[]).await.is_ok());
}

/// The head of the answer to an upgrade of `path`, lower-cased.
async fn raw_head(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: Upgrade\r\n");
    for (k, v) in &upgrade(&[])[1..] {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(crate::support::WAIT, s.read(&mut buf)).await.unwrap().unwrap();
    String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase()
}

#[tokio::test]
async fn only_forward_headers_reach_the_backend() {
    let (url, log) = backend().await;
    let s = server(&url, true).await;
    let secret_headers = [("x-tenant", "acme"), ("cookie", "sid=cookie-secret"), ("token", "header-secret")];
    let mut w = try_ws(s.addr, "/ws/rpc?token=query-secret", None, &secret_headers).await.unwrap();
    // With both, the token header is the one taken; the backend sees it only in connect's body.
    let c = ch("gated", "ok");
    assert!(call(&mut w, "subscribe", json!({"channel": c})).await["result"].is_string());
    assert_eq!(call(&mut w, "publish", json!({"channel": c, "data": 1})).await["result"]["offset"], 1);
    let mut bearer =
        try_ws(s.addr, "/ws/rpc", Some("bearer-secret"), &[("x-tenant", "other"), ("cookie", "c=2")])
            .await
            .unwrap();
    assert!(call(&mut bearer, "subscribe", json!({"channel": c})).await["result"].is_string());

    let seen = log.0.lock().clone();
    assert_eq!(seen.len(), 5, "two connects, two subscribes, a publish: {seen:?}");
    for s in &seen {
        let tenant = s.headers.get("x-tenant").and_then(|v| v.to_str().ok());
        assert!(matches!(tenant, Some("acme" | "other")), "{}: the named header arrives", s.kind);
        for name in ["authorization", "cookie", "token"] {
            assert!(s.headers.get(name).is_none(), "{}: {name} was forwarded", s.kind);
        }
        let text = s.body.to_string();
        assert!(!text.contains("cookie-secret") && !text.contains("c=2"), "{}: {text}", s.kind);
        assert!(!text.contains("query-secret"), "{}: {text}", s.kind);
        if s.kind != "connect" {
            assert!(!text.contains("header-secret") && !text.contains("bearer-secret"), "{}: {text}", s.kind);
        }
    }
    let connects: Vec<&Seen> = seen.iter().filter(|s| s.kind == "connect").collect();
    assert_eq!(connects[0].body["token"], "header-secret");
    assert_eq!(connects[0].body["headers"], json!({"x-tenant": "acme"}));
    assert_eq!(connects[1].body["token"], "bearer-secret");
    assert_eq!(connects[1].body["headers"], json!({"x-tenant": "other"}));
}
