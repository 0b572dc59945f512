//! `POST /api/publish`, the server API for backends, over real TCP: each status, the batch
//! (order, mixed results, the 1,000 bound), rights and budgets, and that subscribers receive
//! what was published.

use crate::support::*;
use serde_json::{Value, json};

const JSON: (&str, &str) = ("content-type", "application/json");

/// POSTs `body` to `/api/publish` with `token` (as a bearer) and returns the status and the
/// body as JSON.
async fn post(addr: std::net::SocketAddr, token: Option<&str>, body: &str) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![JSON];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    let (status, text) = http(addr, "POST", "/api/publish", &headers, body).await;
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: not JSON: {text:?}")))
}

/// The error body of every refusal.
fn is_error_body(v: &Value) -> bool {
    v["success"] == false && v["error"]["message"].is_string()
}

/// A config with a bot key that may publish to `trades:*` only, at 5 calls a second.
fn with_bot() -> rpchub::Config {
    let mut c = config();
    c.tokens.push(rpchub::config::StaticToken {
        name: "bot".into(),
        token: rpchub::config::Secret("bot-key-1234".into()),
        admin: false,
        channels: vec![],
        publish: vec!["trades:*".into()],
        rate: Some(5),
    });
    c
}

#[tokio::test]
async fn a_publication_reaches_subscribers_and_answers_its_position() {
    let addr = shared();
    let ch = channel("api");
    let mut w = ws(addr, None).await;
    let (_, snap) = subscribe(&mut w, json!({"channel": ch})).await;
    let body = json!({"channel": ch, "data": {"px": "1.5", "n": [1, 2]}, "event": "trade"}).to_string();
    let (status, pos) = post(addr, Some(ADMIN), &body).await;
    assert_eq!(status, 200, "{pos}");
    assert_eq!(pos, json!({"epoch": snap["epoch"], "offset": 1}));
    let e = event(&mut w).await;
    assert_eq!((e["type"].clone(), e["offset"].clone()), (json!("publication"), json!(1)));
    assert_eq!((e["event"].clone(), e["data"].clone()), (json!("trade"), json!({"px": "1.5", "n": [1, 2]})));
    // The same idempotency key twice publishes once, and answers the first position both times.
    let keyed = json!({"channel": ch, "data": 2, "idempotency_key": "k-1"}).to_string();
    let first = post(addr, Some(ADMIN), &keyed).await;
    assert_eq!(first, post(addr, Some(ADMIN), &keyed).await);
    assert_eq!(first.1["offset"], 2);
    // Any of the three token sources works.
    let (status, _) = http(addr, "POST", &format!("/api/publish?token={ADMIN}"), &[JSON], &body).await;
    assert_eq!(status, 200, "?token=");
    let (status, _) = http(addr, "POST", "/api/publish", &[JSON, ("token", ADMIN)], &body).await;
    assert_eq!(status, 200, "token header");
}

#[tokio::test]
async fn a_batch_is_answered_in_order_each_item_on_its_own() {
    let addr = shared();
    let (a, b) = (channel("api"), channel("api"));
    let mut w = ws(addr, None).await;
    subscribe(&mut w, json!({"channel": a})).await;
    let body = json!([
        {"channel": a, "data": 1},
        {"channel": "bad name", "data": 2},
        {"channel": b, "data": 3, "event": "x"},
        7,
        {"channel": a, "data": 4, "event": ""},
        {"channel": a, "data": 5},
    ])
    .to_string();
    let (status, results) = post(addr, Some(ADMIN), &body).await;
    assert_eq!(status, 200, "{results}");
    let r = results.as_array().unwrap();
    assert_eq!(r.len(), 6);
    assert_eq!(r[0]["offset"], 1);
    assert_eq!(r[1]["error"]["code"], "invalid_request", "{}", r[1]);
    assert!(r[1]["error"]["message"].as_str().unwrap().contains("channel"));
    assert_eq!(r[2]["offset"], 1, "another channel's own offsets");
    assert_eq!(r[3]["error"]["code"], "invalid_request", "not a publication");
    assert_eq!(r[4]["error"]["code"], "invalid_request", "an empty event");
    assert_eq!(r[5]["offset"], 2);
    // The subscriber sees the channel's publications in the batch's order.
    assert_eq!(event(&mut w).await["data"], 1);
    assert_eq!(event(&mut w).await["data"], 5);
    // 1,000 is the most; an empty batch or one more is 400.
    let many = |n: usize| serde_json::to_string(&vec![json!({"channel": b, "data": 0}); n]).unwrap();
    let (status, results) = post(addr, Some(ADMIN), &many(1000)).await;
    assert_eq!((status, results.as_array().map(Vec::len)), (200, Some(1000)));
    assert_eq!(results[999]["offset"], 1001);
    for n in [0, 1001] {
        let (status, v) = post(addr, Some(ADMIN), &many(n)).await;
        assert_eq!(status, 400, "{n}: {v}");
        assert!(is_error_body(&v) && v["error"]["message"].as_str().unwrap().contains("1 to 1000"), "{v}");
    }
}

#[tokio::test]
async fn tokens_rights_and_their_statuses() {
    let server = start(with_bot()).await;
    let addr = server.addr;
    let body = json!({"channel": "trades:SOL", "data": 1}).to_string();
    // No token: 401, whatever the body; an invalid one: 401 from the gate.
    let (status, v) = post(addr, None, &body).await;
    assert_eq!(status, 401);
    assert!(is_error_body(&v), "{v}");
    assert_eq!(post(addr, Some("not-a-token"), &body).await.0, 401);
    // The bot may publish to trades:*, not elsewhere: 403 alone, an item's error in a batch.
    assert_eq!(post(addr, Some("bot-key-1234"), &body).await.0, 200);
    let other = json!({"channel": "l2Book:SOL", "data": 1}).to_string();
    let (status, v) = post(addr, Some("bot-key-1234"), &other).await;
    assert_eq!(status, 403);
    assert!(is_error_body(&v) && v["error"]["message"].as_str().unwrap().contains("trades:*"), "{v}");
    let (status, v) = post(addr, Some("bot-key-1234"), &format!("[{body},{other}]")).await;
    assert_eq!(status, 200);
    assert_eq!(v[1]["error"]["code"], "unauthorized", "{v}");
    // Bad bodies: 400 with the error body; another content type: 415 with Accept-Post.
    for bad in [
        "",
        "{",
        "7",
        r#"{"channel":"trades:SOL"}"#,
        r#"{"channel":"bad name","data":1}"#,
        r#"{"channel":"trades:SOL","data":1,"unknown":true}"#,
    ] {
        let (status, v) = post(addr, Some(ADMIN), bad).await;
        assert_eq!(status, 400, "{bad:?}: {v}");
        assert!(is_error_body(&v), "{v}");
    }
    let auth = format!("Bearer {ADMIN}");
    for ct in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(ct) = ct {
            headers.push(("content-type", ct));
        }
        let (status, text) = http(addr, "POST", "/api/publish", &headers, &body).await;
        assert_eq!(status, 415, "{ct:?}");
        assert!(is_error_body(&serde_json::from_str(&text).unwrap()));
    }
    // Other methods: 405 with Allow.
    let (status, _) = http(addr, "GET", "/api/publish", &[], "").await;
    assert_eq!(status, 405);
    server.shutdown();
}

#[tokio::test]
async fn the_size_limit_and_the_budget() {
    let mut c = with_bot();
    c.limits.max_publish_body_bytes = 64 * 1024;
    let server = start(c).await;
    let addr = server.addr;
    // Over limits.max_publish_body_bytes: 413, announced or not.
    let big = json!({"channel": "trades:SOL", "data": "x".repeat(70 * 1024)}).to_string();
    let (status, v) = post(addr, Some(ADMIN), &big).await;
    assert_eq!(status, 413);
    assert!(is_error_body(&v) && v["error"]["message"].as_str().unwrap().contains("max_publish_body_bytes"));
    // A body over limits.max_message_bytes (4 KiB) and within the publish limit is served.
    let mid = json!({"channel": "trades:SOL", "data": "x".repeat(16 * 1024)}).to_string();
    assert_eq!(post(addr, Some(ADMIN), &mid).await.0, 200);
    // The bot's 5 a second: a batch of 8 publishes 5 and refuses 3 as rate_limited; the next
    // single publication is 429 with Retry-After. The admin token has no budget.
    let one = json!({"channel": "trades:BTC", "data": 1});
    let (status, v) =
        post(addr, Some("bot-key-1234"), &serde_json::to_string(&vec![one.clone(); 8]).unwrap()).await;
    assert_eq!(status, 200);
    let refused = v.as_array().unwrap().iter().filter(|r| r["error"]["code"] == "rate_limited").count();
    assert_eq!(refused, 3, "{v}");
    let (status, text) = http(
        addr,
        "POST",
        "/api/publish",
        &[JSON, ("authorization", "Bearer bot-key-1234")],
        &one.to_string(),
    )
    .await;
    assert_eq!(status, 429, "{text}");
    let admin_batch = serde_json::to_string(&vec![one; 1000]).unwrap();
    let (status, v) = post(addr, Some(ADMIN), &admin_batch).await;
    assert_eq!(status, 200);
    assert!(v.as_array().unwrap().iter().all(|r| r["offset"].is_u64()), "admin is unlimited");
    server.shutdown();
}
