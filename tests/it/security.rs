//! The security gate, tried as an attacker would: every HTTP status before the upgrade, forged,
//! expired, wrongly signed and unsigned JWTs, claims that do not cover a channel, origins,
//! upgrade floods, token expiry on open connections, and logs that must not show tokens.

use crate::support::*;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rpchub::auth::Claims;
use rpchub::config::{Access, NamespaceConfig, Secret, StaticToken};
use serde_json::{Value, json};
use std::time::Duration;

const SECRET: &str = "test-jwt-secret-0123456789";

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn now() -> u64 {
    rpchub::broker::memory::now_ms() / 1000
}

fn claims(sub: &str, channels: &[&str], publish: &[&str], ttl: i64) -> Claims {
    Claims {
        sub: sub.into(),
        exp: (now() as i64 + ttl) as u64,
        nbf: None,
        channels: Some(channels.iter().map(|s| s.to_string()).collect()),
        publish: Some(publish.iter().map(|s| s.to_string()).collect()),
    }
}

fn hs256(c: &Claims) -> String {
    rpchub::auth::mint_hs256(SECRET, c).unwrap()
}

fn signed(alg: Algorithm, key: &EncodingKey, c: &Claims) -> String {
    jsonwebtoken::encode(&Header::new(alg), c, key).unwrap()
}

/// A server whose `conversation` namespace is claims-only for both subscribing and publishing.
fn secure_config() -> rpchub::Config {
    let mut c = config();
    c.jwt_secret = Some(Secret(SECRET.into()));
    let claims_only =
        NamespaceConfig { subscribe: Access::Claims, publish: Access::Claims, ..NamespaceConfig::default() };
    c.namespaces.insert("conversation".into(), claims_only);
    c.namespaces.insert(
        "members".into(),
        NamespaceConfig { subscribe: Access::Authenticated, ..NamespaceConfig::default() },
    );
    c.tokens.push(StaticToken {
        name: "feed".into(),
        token: Secret("static-feed-key".into()),
        admin: false,
        channels: vec![],
        publish: vec!["trades:*".into()],
        rate: None,
    });
    c
}

#[tokio::test]
async fn token_sources_and_401_before_the_upgrade() {
    let server = start(secure_config()).await;
    let addr = server.addr;
    let good = hs256(&claims("alice", &["conversation:a"], &[], 60));
    // Header `token`, bearer, query: all accepted when valid...
    for (path, headers) in
        [("/ws/rpc".to_string(), vec![("token", good.as_str())]), (format!("/ws/rpc?token={good}"), vec![])]
    {
        let mut w = try_ws(addr, &path, None, &headers).await.expect("a valid token upgrades");
        subscribe(&mut w, json!(["conversation:a"])).await;
    }
    let mut w = try_ws(addr, "/ws/rpc", Some(&good), &[]).await.unwrap();
    subscribe(&mut w, json!(["conversation:a"])).await;
    // ...and a present but invalid token is 401 with a JSON body, from any source.
    let bad = hs256(&claims("alice", &["conversation:a"], &[], 60)).replace('.', ".x");
    assert_eq!(try_ws(addr, "/ws/rpc", Some("wrong"), &[]).await.err(), Some(401));
    assert_eq!(try_ws(addr, "/ws/rpc", None, &[("token", bad.as_str())]).await.err(), Some(401));
    assert_eq!(try_ws(addr, "/ws/rpc?token=nope", None, &[]).await.err(), Some(401));
    let headers = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("authorization", "Bearer forged-token"),
    ];
    let (status, body) = http(addr, "GET", "/ws/rpc", &headers, "").await;
    assert_eq!(status, 401);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["success"], false);
    assert!(!body.contains("forged-token"), "the token is not echoed: {body}");
    // The HTTP API checks tokens the same way.
    let (status, _) = http(
        addr,
        "POST",
        "/rpc",
        &[("authorization", "Bearer forged-token")],
        r#"{"jsonrpc":"2.0","method":"ping","id":1}"#,
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn forged_expired_unsigned_and_confused_jwts_are_refused() {
    let mut c = secure_config();
    c.jwt_public_key_file = Some(fixture("jwt-rs256-public.pem"));
    let server = start(c).await;
    let addr = server.addr;
    let ok = claims("mallory", &["conversation:*"], &[], 60);

    let wrong_secret =
        jsonwebtoken::encode(&Header::default(), &ok, &EncodingKey::from_secret(b"guessed")).unwrap();
    let expired = hs256(&claims("mallory", &["conversation:*"], &[], -5));
    let future = hs256(&Claims { nbf: Some(now() + 60), ..ok.clone() });
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let body = b64.encode(serde_json::to_vec(&ok).unwrap());
    let alg_none = format!("{}.{}.", b64.encode(br#"{"alg":"none","typ":"JWT"}"#), body);
    // Algorithm confusion: HS256 signed with the RSA public key as the HMAC secret.
    let public_pem = std::fs::read(fixture("jwt-rs256-public.pem")).unwrap();
    let confused =
        jsonwebtoken::encode(&Header::default(), &ok, &EncodingKey::from_secret(&public_pem)).unwrap();
    for (what, token) in [
        ("wrong secret", wrong_secret),
        ("expired", expired),
        ("not yet valid", future),
        ("alg none", alg_none),
        ("algorithm confusion", confused),
    ] {
        assert_eq!(try_ws(addr, "/ws/rpc", Some(&token), &[]).await.err(), Some(401), "{what}");
        // Through `auth` after connecting: -32001, rights unchanged.
        let mut w = ws(addr, None).await;
        let r = call(&mut w, "auth", json!([token])).await;
        assert_eq!(r["error"]["code"], -32001, "{what}: {r}");
        let r = call(&mut w, "subscribe", json!(["conversation:a"])).await;
        assert_eq!(r["error"]["code"], -32001, "{what}: {r}");
    }
    // The RS256 key itself works.
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(fixture("jwt-rs256-private.pem")).unwrap()).unwrap();
    let mut w = ws(addr, Some(&signed(Algorithm::RS256, &rsa, &ok))).await;
    subscribe(&mut w, json!(["conversation:z"])).await;
}

#[tokio::test]
async fn es256_tokens_verify_with_an_ec_public_key() {
    let mut c = secure_config();
    c.jwt_secret = None;
    c.jwt_public_key_file = Some(fixture("jwt-es256-public.pem"));
    c.jwt_audience = Some("rpchub".into());
    let server = start(c).await;
    let key = EncodingKey::from_ec_pem(&std::fs::read(fixture("jwt-es256-private.pem")).unwrap()).unwrap();
    #[derive(serde::Serialize)]
    struct WithAud {
        #[serde(flatten)]
        c: Claims,
        aud: String,
    }
    let token = |aud: &str| {
        let c = WithAud { c: claims("bob", &["conversation:b"], &[], 60), aud: aud.into() };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &c, &key).unwrap()
    };
    let mut w = ws(server.addr, Some(&token("rpchub"))).await;
    subscribe(&mut w, json!(["conversation:b"])).await;
    assert_eq!(try_ws(server.addr, "/ws/rpc", Some(&token("someone-else")), &[]).await.err(), Some(401));
    // HS256 is not accepted when no secret is configured.
    assert_eq!(
        try_ws(server.addr, "/ws/rpc", Some(&hs256(&claims("bob", &[], &[], 60))), &[]).await.err(),
        Some(401)
    );
}

#[tokio::test]
async fn claims_decide_who_subscribes_publishes_and_reads_history() {
    let server = start(secure_config()).await;
    let addr = server.addr;
    let alice = hs256(&claims("alice", &["conversation:a"], &["conversation:a"], 60));
    let mut w = ws(addr, Some(&alice)).await;
    subscribe(&mut w, json!(["conversation:a"])).await;
    for (method, params) in [
        ("subscribe", json!(["conversation:b"])),
        ("history", json!(["conversation:b"])),
        ("publish", json!(["conversation:b", 1])),
        ("publish", json!(["trades:SOL", 1])),
    ] {
        let r = call(&mut w, method, params.clone()).await;
        assert_eq!(
            (r["error"]["code"].clone(), r["error"]["data"]["code"].clone()),
            (json!(-32001), json!("unauthorized")),
            "{method} {params}: {r}"
        );
        let m = r["error"]["message"].as_str().unwrap();
        assert!(m.contains("alice") && m.contains("conversation:"), "the message says what is missing: {m}");
    }
    assert_eq!(call(&mut w, "publish", json!(["conversation:a", "hi"])).await["result"]["offset"], 1);
    assert_eq!(call(&mut w, "history", json!(["conversation:a"])).await["result"]["offset"], 1);
    // Anonymous: public namespaces yes, claims ones no, authenticated ones no.
    let mut anon = ws(addr, None).await;
    subscribe(&mut anon, json!(["trades:SOL"])).await;
    let r = call(&mut anon, "subscribe", json!(["conversation:a"])).await;
    assert!(r["error"]["message"].as_str().unwrap().contains("token"), "{r}");
    assert_eq!(call(&mut anon, "subscribe", json!(["members:x"])).await["error"]["code"], -32001);
    // A static key with publish rights on trades:*.
    let mut feed = ws(addr, Some("static-feed-key")).await;
    assert_eq!(call(&mut feed, "publish", json!(["trades:SOL", 1])).await["result"]["offset"], 1);
    subscribe(&mut feed, json!(["members:x"])).await;
}

#[tokio::test]
async fn auth_upgrades_rights_and_a_failed_auth_changes_nothing() {
    let server = start(secure_config()).await;
    let mut w = ws(server.addr, None).await;
    assert_eq!(call(&mut w, "subscribe", json!(["conversation:a"])).await["error"]["code"], -32001);
    let c = claims("alice", &["conversation:a"], &[], 60);
    let r = call(&mut w, "auth", json!({"token": hs256(&c)})).await;
    assert_eq!(r["result"], json!({"sub": "alice", "expires_at": c.exp}));
    subscribe(&mut w, json!(["conversation:a"])).await;
    let r = call(&mut w, "auth", json!(["not-a-token"])).await;
    assert_eq!(r["error"]["code"], -32001);
    subscribe(&mut w, json!(["conversation:a"])).await;
    let r = call(&mut w, "auth", json!([ADMIN])).await;
    assert_eq!(r["result"]["sub"], "admin");
    assert!(call(&mut w, "channels", json!([])).await["result"].is_array());
}

#[tokio::test]
async fn expiring_tokens_end_protected_subscriptions_unless_refreshed() {
    let server = start(secure_config()).await;
    let addr = server.addr;
    let short = hs256(&claims("alice", &["conversation:*"], &[], 2));
    let mut w = ws(addr, Some(&short)).await;
    let (protected, _) = subscribe(&mut w, json!(["conversation:a"])).await;
    let (public, _) = subscribe(&mut w, json!(["trades:X"])).await;
    // Another connection with the same short token refreshes in time.
    let mut refreshed = ws(addr, Some(&short)).await;
    let (kept, _) = subscribe(&mut refreshed, json!(["conversation:a"])).await;
    let r =
        call(&mut refreshed, "auth", json!([hs256(&claims("alice", &["conversation:*"], &[], 60))])).await;
    assert!(r["result"].is_object(), "{r}");

    let closed =
        tokio::time::timeout(Duration::from_secs(6), recv(&mut w)).await.expect("closed within the expiry");
    assert_eq!(
        closed,
        json!({"jsonrpc":"2.0","method":"subscription","params":{"subscription":protected,
        "result":{"type":"closed","channel":"conversation:a","reason":"token_expired"}}})
    );
    // The public subscription goes on; new protected calls are refused; the refreshed one lives.
    let admin_pub = |ch: &'static str| async move { publish(addr, ch, json!("after")).await };
    admin_pub("trades:X").await;
    let e = recv(&mut w).await;
    assert_eq!(
        (e["params"]["subscription"].clone(), e["params"]["result"]["data"].clone()),
        (json!(public), json!("after"))
    );
    let r = call(&mut w, "subscribe", json!(["conversation:a"])).await;
    assert!(r["error"]["message"].as_str().unwrap().contains("expired"), "{r}");
    admin_pub("conversation:a").await;
    let e = recv(&mut refreshed).await;
    assert_eq!(
        (e["params"]["subscription"].clone(), e["params"]["result"]["type"].clone()),
        (json!(kept), json!("publication"))
    );
}

#[tokio::test]
async fn origins_are_checked_for_browsers() {
    // Default: same origin only.
    let server = start(config()).await;
    let addr = server.addr;
    let same = format!("http://{addr}");
    assert!(try_ws(addr, "/ws/rpc", None, &[("origin", &same)]).await.is_ok());
    assert_eq!(try_ws(addr, "/ws/rpc", None, &[("origin", "http://evil.example")]).await.err(), Some(403));
    assert!(try_ws(addr, "/ws/rpc", None, &[]).await.is_ok(), "no Origin (not a browser): accepted");
    let headers = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("origin", "http://evil.example"),
    ];
    let (status, body) = http(addr, "GET", "/ws/rpc", &headers, "").await;
    assert_eq!((status, body.as_str()), (403, ""), "403 with an empty body");
    // An allowlist replaces same-origin.
    let mut c = config();
    c.allowed_origins = vec!["https://app.example.com".into()];
    let server = start(c).await;
    assert!(try_ws(server.addr, "/ws/rpc", None, &[("origin", "https://app.example.com")]).await.is_ok());
    assert_eq!(
        try_ws(server.addr, "/ws/rpc", None, &[("origin", &format!("http://{}", server.addr))]).await.err(),
        Some(403)
    );
}

#[tokio::test]
async fn upgrade_rate_limit_per_ip_refills() {
    let mut c = config();
    c.limits.upgrades_per_minute = 120; // two a second come back
    let server = start(c).await;
    let addr = server.addr;
    let mut open = Vec::new();
    for _ in 0..120 {
        open.push(ws(addr, None).await);
    }
    let headers = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let raw = http(addr, "GET", "/ws/rpc", &headers, "").await;
    assert_eq!(raw.0, 429);
    assert!(raw.1.contains("retry"), "{}", raw.1);
    assert_eq!(try_ws(addr, "/ws/rpc", None, &[]).await.err(), Some(429));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(try_ws(addr, "/ws/rpc", None, &[]).await.is_ok(), "the bucket refilled");
    // Other requests are not limited.
    assert_eq!(http(addr, "GET", "/health", &[], "").await.0, 200);
}

#[tokio::test]
async fn retry_after_header_on_429() {
    let mut c = config();
    c.limits.upgrades_per_minute = 1;
    let server = start(c).await;
    let _a = ws(server.addr, None).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /ws/rpc HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 429"), "{head}");
    let retry: u64 =
        head.lines().find_map(|l| l.strip_prefix("retry-after: ")).unwrap().trim().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
}

/// `rpchub_upgrades_rejected_total` by reason, from the Prometheus text.
fn rejections(metrics: &str) -> std::collections::BTreeMap<String, u64> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("rpchub_upgrades_rejected_total{reason=\""))
        .filter_map(|rest| {
            let (reason, value) = rest.split_once("\"} ")?;
            Some((reason.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Every refusal before the upgrade is counted once, under its reason.
#[tokio::test]
async fn every_refused_upgrade_is_counted_by_reason() {
    let mut c = config();
    c.limits.max_connections = 2;
    // Two bad tokens, two connections and the one refused for capacity take the five upgrades of
    // the minute (the next comes back in 12 s); origin, handshake and not_found refusals happen
    // before the rate layer and take none.
    c.limits.upgrades_per_minute = 5;
    let server = start(c).await;
    let addr = server.addr;
    let metrics = || async move { rejections(&http(addr, "GET", "/metrics", &[], "").await.1) };
    let before = metrics().await;
    assert_eq!(before.len(), 7, "every reason is exported from the start: {before:?}");

    let upgrade = vec![
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let with = |extra| [upgrade.clone(), vec![extra]].concat();
    let mut caused = std::collections::BTreeMap::<&str, u64>::new();
    let mut cause = |reason, n| *caused.entry(reason).or_default() += n;

    for _ in 0..2 {
        assert_eq!(http(addr, "GET", "/ws/rpc", &with(("token", "not-a-token")), "").await.0, 401);
        assert_eq!(http(addr, "GET", "/ws/rpc", &with(("origin", "http://evil.example")), "").await.0, 403);
        assert_eq!(http(addr, "GET", "/ws/no/such", &upgrade, "").await.0, 404);
    }
    cause("auth", 2);
    cause("origin", 2);
    cause("not_found", 2);
    assert_eq!(http(addr, "GET", "/health", &upgrade, "").await.0, 404, "an upgrade to an HTTP route");
    cause("not_found", 1);
    assert_eq!(http(addr, "GET", "/ws/rpc", &[], "").await.0, 400, "a plain GET");
    assert_eq!(http(addr, "POST", "/ws/rpc", &upgrade, "").await.0, 405, "the wrong method");
    assert_eq!(http(addr, "GET", "/ws/rpc", &upgrade[..3], "").await.0, 400, "no key");
    assert_eq!(http(addr, "GET", "/ws/rpc", &upgrade[..2], "").await.0, 400, "no version");
    cause("handshake", 4);

    let _open = [ws(addr, None).await, ws(addr, None).await];
    let (status, body) = http(addr, "GET", "/ws/rpc", &upgrade, "").await;
    assert_eq!(status, 429);
    assert!(body.contains("maximum of connections"), "{body}");
    cause("capacity", 1);
    for _ in 0..3 {
        let (status, body) = http(addr, "GET", "/ws/rpc", &upgrade, "").await;
        assert_eq!(status, 429);
        assert!(body.contains("too many WebSocket upgrades"), "{body}");
    }
    cause("rate", 3);

    // Refusals of requests that are no upgrades count nothing.
    assert_eq!(http(addr, "GET", "/nowhere", &[], "").await.0, 404);
    assert_eq!(http(addr, "GET", "/rpc", &[], "").await.0, 405);
    let rpc = r#"{"jsonrpc":"2.0","method":"ping","id":1}"#;
    assert_eq!(http(addr, "POST", "/rpc", &[("token", "not-a-token")], rpc).await.0, 401);

    let after = metrics().await;
    // `backend` needs connect_proxy and a backend that gives no answer: backend_checks.rs.
    assert_eq!(caused.len(), 6, "every reason but backend was provoked");
    for (reason, n) in &before {
        let caused = caused.get(reason.as_str()).copied().unwrap_or(0);
        assert_eq!(after[reason] - n, caused, "{reason}: {before:?} -> {after:?}");
    }
}

/// Runs the binary with every log line on (trace, every crate), offers it tokens every way it
/// takes them (query in any spelling that decodes to `token`, bearer, header, the `auth`
/// method), and reads its log.
#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let (child, addr) = serve_binary(&["--log", "trace"], &[("RPCHUB_JWT_SECRET", SECRET)]).await;
    let jwt = hs256(&claims("alice", &["x:*"], &[], 60));
    let secrets = [
        "query-secret-111",
        "bearer-secret-222",
        "header-secret-333",
        "auth-secret-444",
        "spelled-secret-555",
    ];
    let _ = try_ws(addr, &format!("/ws/rpc?token={}", secrets[0]), None, &[]).await;
    let _ = try_ws(addr, &format!("/ws/rpc?tok%65n={}", secrets[4]), None, &[]).await;
    let _ = try_ws(addr, &format!("/nope?tok%65n={}", secrets[4]), None, &[]).await;
    let _ = http(addr, "GET", &format!("/nope?tok%65n={}", secrets[4]), &[], "").await;
    let _ = try_ws(addr, "/nope?token=query-secret-111", None, &[]).await;
    let _ = http(addr, "GET", "/nope?token=query-secret-111", &[], "").await;
    let _ = try_ws(addr, "/ws/rpc", Some(secrets[1]), &[]).await;
    let _ = try_ws(addr, "/ws/rpc", None, &[("token", secrets[2]), ("origin", "http://evil.example")]).await;
    let mut w = ws(addr, Some(&jwt)).await;
    call(&mut w, "auth", json!([secrets[3]])).await;
    call(&mut w, "auth", json!([ADMIN])).await;
    drop(w);
    let log = stop_for_log(child).await;
    assert!(log.contains("WebSocket upgrade blocked from origin http://evil.example"), "{log}");
    for s in secrets.iter().chain([&ADMIN, &jwt.as_str(), &SECRET]) {
        assert!(!log.contains(s), "{s} leaked into the log:\n{log}");
    }
}

/// Sends `request` as it is and returns the response head (status line and headers).
async fn raw_head(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk)).await.expect("an answer").unwrap();
        assert!(n > 0, "the connection closed before an answer");
        out.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&out).to_string();
    text.split("\r\n\r\n").next().unwrap().to_ascii_lowercase()
}

/// RFC 6455 and RFC 9112: one Host, one Sec-WebSocket-Key, one Sec-WebSocket-Version (13), or
/// 400; a version refused names the one spoken.
#[tokio::test]
async fn ambiguous_handshakes_are_refused() {
    let addr = shared();
    let key = "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let upgrade = "connection: Upgrade\r\nupgrade: websocket\r\n";
    let req = |host: &str, rest: &str| format!("GET /ws/rpc HTTP/1.1\r\n{host}{upgrade}{rest}\r\n");
    let host = format!("host: {addr}\r\n");
    let ok = raw_head(addr, &req(&host, &format!("{key}sec-websocket-version: 13\r\n"))).await;
    assert!(ok.starts_with("http/1.1 101"), "{ok}");
    for (what, h, rest, names_version) in [
        ("two keys", host.as_str(), format!("{key}{key}sec-websocket-version: 13\r\n"), false),
        ("no key", host.as_str(), "sec-websocket-version: 13\r\n".to_string(), false),
        (
            "two versions",
            host.as_str(),
            format!("{key}sec-websocket-version: 13\r\nsec-websocket-version: 8\r\n"),
            true,
        ),
        ("a list of versions", host.as_str(), format!("{key}sec-websocket-version: 13, 8\r\n"), true),
        ("version 8", host.as_str(), format!("{key}sec-websocket-version: 8\r\n"), true),
        ("no host", "", format!("{key}sec-websocket-version: 13\r\n"), false),
    ] {
        let head = raw_head(addr, &req(h, &rest)).await;
        assert!(head.starts_with("http/1.1 400"), "{what}: {head}");
        assert_eq!(head.contains("sec-websocket-version: 13"), names_version, "{what}: {head}");
    }
    let doubled = format!("{host}host: other.example\r\n");
    let head = raw_head(addr, &req(&doubled, &format!("{key}sec-websocket-version: 13\r\n"))).await;
    assert!(head.starts_with("http/1.1 400"), "two hosts: {head}");
}

/// A client refused for its Origin again and again, with a huge header, costs the log a few
/// short lines a second: header values cut to 256 bytes with their length, lines beyond ten a
/// second left out and counted in the next one.
#[tokio::test]
async fn refusals_flood_neither_the_log_nor_its_lines() {
    let (child, addr) = serve_binary(&[], &[]).await;
    let origin = format!("http://{}.example", "x".repeat(20_000));
    let started = std::time::Instant::now();
    for _ in 0..60 {
        assert_eq!(try_ws(addr, "/ws/rpc", None, &[("origin", &origin)]).await.err(), Some(403));
    }
    let flood = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(try_ws(addr, "/ws/rpc", None, &[("origin", "http://evil.example")]).await.err(), Some(403));
    let log = stop_for_log(child).await;
    let lines: Vec<&str> =
        log.lines().filter(|l| l.contains("WebSocket upgrade blocked from origin")).collect();
    // Ten lines at once, then ten a second (a loaded machine makes the flood take longer).
    let allowed = 11 + (10.0 * (flood.as_secs_f64() + 0.3)).ceil() as usize;
    assert!(
        (2..=allowed).contains(&lines.len()),
        "{} lines for 61 refusals in {flood:?}:\n{log}",
        lines.len()
    );
    assert!(lines.iter().all(|l| l.len() < 700), "a line longer than the cut values allow");
    assert!(lines[0].contains(&format!("... ({} bytes)", origin.len())), "{}", lines[0]);
    let last = lines.last().unwrap();
    assert!(last.contains("http://evil.example"), "{last}");
    // Every refusal is a line or counted in a later one.
    let left_out: usize =
        lines.iter().filter_map(|l| l.split(" [").nth(1)?.split(' ').next()?.parse::<usize>().ok()).sum();
    assert_eq!(lines.len() + left_out, 61, "lines and the counts of those left out:\n{log}");
    assert!(log.len() < 16 << 10, "the whole log stays small: {} bytes", log.len());
}

#[tokio::test]
async fn a_user_channel_is_its_users_alone() {
    let mut c = secure_config();
    c.namespaces.insert(
        "notifications".into(),
        NamespaceConfig { user_channels: true, patterns: true, ..NamespaceConfig::default() },
    );
    let server = start(c).await;
    let addr = server.addr;
    let mine = "notifications:#alice";
    // The backend (the admin token) publishes to alice's channel; publishing follows the rule.
    assert_eq!(publish(addr, mine, json!("for alice")).await["offset"], 1);
    let alice = hs256(&claims("alice", &[], &[], 60));
    let mut w = ws(addr, Some(&alice)).await;
    let (_, snap) = subscribe(&mut w, json!([mine, null, 10])).await;
    assert_eq!(snap["publications"][0]["data"], "for alice", "{snap}");
    assert_eq!(call(&mut w, "history", json!([mine])).await["result"]["offset"], 1);
    // Anyone else, whatever their rights, is refused, and nothing is reserved for them.
    let bob = hs256(&claims("bob", &["notifications:*"], &[], 60));
    for token in [None, Some(bob.as_str()), Some(ADMIN)] {
        let mut other = ws(addr, token).await;
        for method in ["subscribe", "history"] {
            let r = call(&mut other, method, json!([mine])).await;
            assert_eq!(r["error"]["code"], -32001, "{token:?} {method}: {r}");
            assert!(r["error"]["message"].as_str().unwrap().contains("alice"), "{r}");
        }
    }
    // A pattern over the namespace follows its other channels, never a user's.
    let mut anon = ws(addr, None).await;
    // (One snapshot per channel followed: alice's is the namespace's only one, so none comes.)
    let r = call(&mut anon, "subscribe", json!(["notifications:*"])).await;
    assert!(r["result"].is_string(), "{r}");
    assert!(silent(&mut anon, Duration::from_millis(300)).await, "no snapshot of alice's channel");
    let r = call(&mut ws(addr, None).await, "subscribe", json!(["notifications:#*"])).await;
    assert_eq!(r["error"]["code"], -32005, "{r}");
    assert_eq!(publish(addr, mine, json!("again")).await["offset"], 2);
    assert_eq!(event(&mut w).await["data"], "again");
    assert!(
        silent(&mut anon, Duration::from_millis(300)).await,
        "the pattern stayed away from alice's channel"
    );
    // '#' outside a namespace with user channels is no valid name.
    let r = call(&mut anon, "subscribe", json!(["conversation:#alice"])).await;
    assert_eq!(r["error"]["code"], -32005, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("user_channels"), "{r}");
}
