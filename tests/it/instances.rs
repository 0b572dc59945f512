//! `GET /ws/{instance}` and `POST /api/events/websocket/{instance}` with real clients: the
//! statuses of the upgrade and of the API, the frames and the `events` filter, ignored client
//! messages, no token in any frame, recovery with `since`, and instances that survive a restart.

use crate::support::*;
use futures::SinkExt;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const JSON: (&str, &str) = ("content-type", "application/json");
const SHOP_TOKEN: &str = "shop-token-0123456789";

/// A fresh instances file path (not created).
fn instances_file() -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "rpchub-it-instances-{}-{}.json",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A config with the instances file `file` and instance `shop` (token [`SHOP_TOKEN`]) from the
/// config file.
fn with_shop(file: &std::path::Path) -> rpchub::Config {
    let mut c = config();
    c.instances_file = file.to_path_buf();
    c.instances.insert(
        "shop".into(),
        rpchub::config::InstanceConfig {
            token: rpchub::config::Secret(SHOP_TOKEN.into()),
            enabled: true,
            events: vec![],
            media_base64: false,
        },
    );
    c
}

/// POSTs `body` to `path` with `token` as a bearer.
async fn post(addr: std::net::SocketAddr, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![JSON];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    let (status, text) = http(addr, "POST", path, &headers, body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Configures instance `name` with `body` (admin token).
async fn configure(addr: std::net::SocketAddr, name: &str, body: Value) -> (u16, Value) {
    post(addr, &format!("/api/events/websocket/{name}"), Some(ADMIN), &body.to_string()).await
}

/// Publishes to `instance:{name}` through `POST /api/publish`; returns `{epoch, offset}`.
async fn publish_to(addr: std::net::SocketAddr, name: &str, event: Option<&str>, data: Value) -> Value {
    let mut p = json!({"channel": format!("instance:{name}"), "data": data});
    if let Some(e) = event {
        p["event"] = json!(e);
    }
    let (status, pos) = post(addr, "/api/publish", Some(ADMIN), &p.to_string()).await;
    assert_eq!(status, 200, "{pos}");
    pos
}

/// The next text frame, raw.
async fn next_text(w: &mut Ws) -> String {
    loop {
        let m =
            tokio::time::timeout(WAIT, futures::StreamExt::next(w)).await.expect("a frame").expect("open");
        match m.expect("a message") {
            Message::Text(t) => return t.to_string(),
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn upgrade_statuses_tokens_and_the_frames_of_an_instance() {
    let file = instances_file();
    let running = start(with_shop(&file)).await;
    let addr = running.addr;
    // Unknown instance: 404 with the error body, whatever the token.
    assert_eq!(try_ws(addr, "/ws/nope", Some(SHOP_TOKEN), &[]).await.err(), Some(404));
    let upgrade = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let (status, body) = http(addr, "GET", "/ws/nope", &upgrade, "").await;
    assert_eq!(status, 404);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body, json!({"success": false, "error": {"message": "unknown instance"}}));
    // No token, a wrong one, another instance's kind of token: 401.
    assert_eq!(try_ws(addr, "/ws/shop", None, &[]).await.err(), Some(401));
    assert_eq!(try_ws(addr, "/ws/shop", Some("wrong"), &[]).await.err(), Some(401));
    assert_eq!(try_ws(addr, "/ws/shop?token=wrong", None, &[]).await.err(), Some(401));
    // The instance's token by each source, and the admin token: 101.
    drop(try_ws(addr, "/ws/shop", None, &[("token", SHOP_TOKEN)]).await.expect("token header"));
    drop(try_ws(addr, &format!("/ws/shop?token={SHOP_TOKEN}"), None, &[]).await.expect("?token="));
    drop(try_ws(addr, "/ws/shop", Some(ADMIN), &[]).await.expect("admin"));
    // The instance's token opens nothing else.
    assert_eq!(try_ws(addr, "/ws/rpc", Some(SHOP_TOKEN), &[]).await.err(), Some(401));

    let mut w = try_ws(addr, "/ws/shop", Some(SHOP_TOKEN), &[]).await.expect("bearer");
    let pos = publish_to(addr, "shop", Some("order.created"), json!({"id": 7})).await;
    let text = next_text(&mut w).await;
    assert!(!text.contains(SHOP_TOKEN), "the token is never echoed: {text}");
    let frame: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        frame,
        json!({
            "event": "order.created",
            "data": {"id": 7},
            "instanceData": {
                "baseUrl": format!("http://{addr}"),
                "instance": "shop",
                "epoch": pos["epoch"],
                "offset": pos["offset"],
            },
        })
    );
    // Client messages of any kind are ignored: nothing answers, the connection stays open.
    send(&mut w, json!({"type": "ping"})).await;
    send(&mut w, "not json at all").await;
    w.send(Message::Ping(b"hi".to_vec().into())).await.unwrap();
    // The next text frame is the next publication: nothing answered them (a pong is no text).
    let pos = publish_to(addr, "shop", None, json!("plain")).await;
    let frame: Value = serde_json::from_str(&next_text(&mut w).await).unwrap();
    assert_eq!((frame["event"].clone(), frame["data"].clone()), (Value::Null, json!("plain")));
    assert_eq!(frame["instanceData"]["offset"], pos["offset"]);
    // Metrics are labelled by the door.
    let text = http(addr, "GET", "/metrics", &[], "").await.1;
    assert!(text.contains(r#"door="instance""#), "{text}");
    running.shutdown();
    running.wait().await;
    let _ = std::fs::remove_file(&file);
}

#[tokio::test]
async fn the_api_creates_updates_and_disables_instances_and_the_filter_drops_other_events() {
    let file = instances_file();
    let running = start(with_shop(&file)).await;
    let addr = running.addr;
    let path = "/api/events/websocket/crm";
    let body =
        json!({"enabled": true, "events": ["contact.new"], "mediaBase64": true, "token": "crm-token-1"});
    // Without the admin token: 401 (none) and 403 (another valid token); 415 not JSON; 400 bad.
    assert_eq!(post(addr, path, None, &body.to_string()).await.0, 401);
    assert_eq!(post(addr, path, Some("wrong"), &body.to_string()).await.0, 401);
    let mut c = with_shop(&instances_file());
    c.tokens.push(rpchub::config::StaticToken {
        name: "bot".into(),
        token: rpchub::config::Secret("bot-key-1234".into()),
        admin: false,
        channels: vec![],
        publish: vec!["*".into()],
        rate: None,
    });
    let other = start(c).await;
    assert_eq!(post(other.addr, path, Some("bot-key-1234"), &body.to_string()).await.0, 403);
    other.shutdown();
    let (status, _) =
        http(addr, "POST", &format!("{path}?token={ADMIN}"), &[("content-type", "text/plain")], "{}").await;
    assert_eq!(status, 415);
    assert_eq!(post(addr, path, Some(ADMIN), "{not json").await.0, 400);
    assert_eq!(post(addr, path, Some(ADMIN), r#"{"enabled":"yes"}"#).await.0, 400);
    assert_eq!(post(addr, path, Some(ADMIN), r#"{"other":1}"#).await.0, 400);
    assert_eq!(configure(addr, "crm", json!({"enabled": true})).await.0, 400, "a new instance needs a token");
    assert_eq!(configure(addr, "bad.name", body.clone()).await.0, 400);
    assert_eq!(configure(addr, "rpc", body.clone()).await.0, 400);
    assert_eq!(try_ws(addr, "/ws/crm", Some("crm-token-1"), &[]).await.err(), Some(404), "not made yet");

    // Create: 200 with the instance, no token.
    let (status, made) = configure(addr, "crm", body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(
        made,
        json!({"instance": "crm", "enabled": true, "events": ["contact.new"], "mediaBase64": true})
    );
    let mut w = try_ws(addr, "/ws/crm", Some("crm-token-1"), &[]).await.expect("the new instance");
    publish_to(addr, "crm", Some("contact.gone"), json!(1)).await;
    publish_to(addr, "crm", None, json!(2)).await;
    publish_to(addr, "crm", Some("contact.new"), json!(3)).await;
    let frame: Value = serde_json::from_str(&next_text(&mut w).await).unwrap();
    assert_eq!((frame["event"].clone(), frame["data"].clone()), (json!("contact.new"), json!(3)));

    // Update without a token keeps it; the filter changes at once for connected clients.
    let (status, updated) = configure(addr, "crm", json!({"events": []})).await;
    assert_eq!(status, 200);
    assert_eq!(updated["events"], json!([]));
    assert_eq!(updated["mediaBase64"], true, "missing fields keep their value");
    publish_to(addr, "crm", Some("anything"), json!(4)).await;
    let frame: Value = serde_json::from_str(&next_text(&mut w).await).unwrap();
    assert_eq!(frame["data"], json!(4));

    // Disable: new upgrades are 400, connected clients receive nothing more.
    let (status, disabled) = configure(addr, "crm", json!({"enabled": false})).await;
    assert_eq!((status, disabled["enabled"].clone()), (200, json!(false)));
    assert_eq!(try_ws(addr, "/ws/crm", Some("crm-token-1"), &[]).await.err(), Some(400));
    let (status, body) = http(
        addr,
        "GET",
        "/ws/crm?token=crm-token-1",
        &[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        "",
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("instance not enabled"), "{body}");
    publish_to(addr, "crm", Some("contact.new"), json!(5)).await;
    assert!(silent(&mut w, Duration::from_millis(300)).await);
    // A new token replaces the old one.
    assert_eq!(configure(addr, "crm", json!({"enabled": true, "token": "crm-token-2"})).await.0, 200);
    assert_eq!(try_ws(addr, "/ws/crm", Some("crm-token-1"), &[]).await.err(), Some(401));
    drop(try_ws(addr, "/ws/crm", Some("crm-token-2"), &[]).await.expect("the new token"));
    // The file holds what the API made, and nothing answered the token.
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(saved["version"], 1);
    assert_eq!(saved["instances"]["crm"]["token"], "crm-token-2");
    assert!(saved["instances"].get("shop").is_none(), "config-file instances stay in the config file");
    running.shutdown();
    running.wait().await;
    let _ = std::fs::remove_file(&file);
}

#[tokio::test]
async fn since_resumes_with_exactly_the_missed_publications_or_says_resync() {
    let file = instances_file();
    let running = start(with_shop(&file)).await;
    let addr = running.addr;
    let mut w = try_ws(addr, "/ws/shop", Some(SHOP_TOKEN), &[]).await.unwrap();
    publish_to(addr, "shop", Some("a"), json!(1)).await;
    let last: Value = serde_json::from_str(&next_text(&mut w).await).unwrap();
    let (epoch, offset) =
        (last["instanceData"]["epoch"].as_str().unwrap().to_string(), &last["instanceData"]["offset"]);
    drop(w);
    for n in 2..=4 {
        publish_to(addr, "shop", Some("a"), json!(n)).await;
    }
    let path = format!("/ws/shop?since={epoch}:{offset}");
    let mut w = try_ws(addr, &path, Some(SHOP_TOKEN), &[]).await.unwrap();
    for n in 2..=4 {
        let f: Value = serde_json::from_str(&next_text(&mut w).await).unwrap();
        assert_eq!((f["data"].clone(), f["instanceData"]["offset"].clone()), (json!(n), json!(n)));
    }
    let pos = publish_to(addr, "shop", Some("a"), json!(5)).await;
    let f: Value = serde_json::from_str(&next_text(&mut w).await).unwrap();
    assert_eq!((f["data"].clone(), f["instanceData"]["offset"].clone()), (json!(5), pos["offset"].clone()));
    assert!(silent(&mut w, Duration::from_millis(200)).await, "no duplicate");
    // A position of another epoch cannot be recovered: a resync frame first, then live.
    let mut w = try_ws(addr, "/ws/shop?since=gone:1", Some(SHOP_TOKEN), &[]).await.unwrap();
    let f: Value = serde_json::from_str(&next_text(&mut w).await).unwrap();
    assert_eq!(f["event"], "resync");
    assert_eq!(f["data"], json!({"recovered": false, "epoch": epoch, "offset": 5}));
    assert_eq!(f["instanceData"]["instance"], "shop");
    assert_eq!(try_ws(addr, "/ws/shop?since=nonsense", Some(SHOP_TOKEN), &[]).await.err(), Some(400));
    running.shutdown();
    running.wait().await;
    let _ = std::fs::remove_file(&file);
}

#[tokio::test]
async fn instances_made_by_the_api_survive_a_restart() {
    let file = instances_file();
    let running = start(with_shop(&file)).await;
    let body = json!({"enabled": true, "events": ["x"], "mediaBase64": false, "token": "kept-token"});
    assert_eq!(configure(running.addr, "kept", body).await.0, 200);
    // An API change to a config-file instance wins over the config file after a restart.
    assert_eq!(configure(running.addr, "shop", json!({"enabled": false})).await.0, 200);
    running.shutdown();
    running.wait().await;

    let again = start(with_shop(&file)).await;
    let addr = again.addr;
    let mut w = try_ws(addr, "/ws/kept", Some("kept-token"), &[]).await.expect("kept after the restart");
    assert_eq!(try_ws(addr, "/ws/shop", Some(SHOP_TOKEN), &[]).await.err(), Some(400), "still disabled");
    publish_to(addr, "kept", Some("y"), json!(1)).await;
    publish_to(addr, "kept", Some("x"), json!(2)).await;
    let f: Value = serde_json::from_str(&next_text(&mut w).await).unwrap();
    assert_eq!((f["event"].clone(), f["data"].clone()), (json!("x"), json!(2)));
    again.shutdown();
    assert_eq!(closed(&mut w).await, Some(1001));
    again.wait().await;
    let _ = std::fs::remove_file(&file);
}
