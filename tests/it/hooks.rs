//! Lifecycle hooks against a real HTTP backend (axum on port 0) that records what it is posted,
//! and can answer 503 or stop and come back on the same port: every connection opened and
//! closed is told, in `seq` order, across an outage, within the queue's bound, on a graceful
//! shutdown, and reconciled by `presence` after a node was killed.

use crate::support::{self, ADMIN, WAIT, call, closed, config, raw, start, subscribe, ws};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the backend was posted, and whether it refuses now.
#[derive(Default)]
struct Record {
    events: Mutex<Vec<Value>>,
    posts: Mutex<Vec<usize>>,
    failing: AtomicBool,
}

/// `POST /hooks`: 503 while failing, else keeps the batch.
async fn take(State(rec): State<Arc<Record>>, Json(batch): Json<Vec<Value>>) -> (StatusCode, &'static str) {
    if rec.failing.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down");
    }
    rec.posts.lock().unwrap().push(batch.len());
    rec.events.lock().unwrap().extend(batch);
    (StatusCode::OK, "{}")
}

/// A recording backend on 127.0.0.1.
struct HookBackend {
    addr: SocketAddr,
    rec: Arc<Record>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl HookBackend {
    /// A new backend on a free port.
    async fn start() -> HookBackend {
        HookBackend::serve(0, Arc::default()).await
    }

    async fn serve(port: u16, rec: Arc<Record>) -> HookBackend {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
        let listener = socket.listen(128).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/hooks", post(take)).with_state(rec.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        HookBackend { addr, rec, stop: Some(tx), task: Some(task) }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops listening and closes its connections: the node's posts are refused.
    async fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.task.take() {
            tokio::time::timeout(WAIT, t).await.expect("the backend stops").unwrap();
        }
    }

    /// Listens again on the same port, with the same record.
    async fn restart(&mut self) {
        *self = HookBackend::serve(self.addr.port(), self.rec.clone()).await;
    }

    fn events(&self) -> Vec<Value> {
        self.rec.events.lock().unwrap().clone()
    }

    /// Waits (up to [`WAIT`]) until the events received satisfy `done`; returns them.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let events = self.events();
            if done(&events) {
                return events;
            }
            assert!(Instant::now() < deadline, "waited in vain for {what}; received {events:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Every hook on, no reconciliation during the test (one presence at start).
fn hooks_config(node: &str, backend: &HookBackend) -> rpchub::Config {
    let mut c = config();
    c.node_id = Some(node.into());
    c.backend.url = backend.url();
    c.backend.hooks = ["connect", "disconnect", "subscribe", "unsubscribe"].map(String::from).to_vec();
    c.backend.hooks_reconcile = Duration::from_secs(3600);
    c
}

/// The events named `event`.
fn named<'a>(events: &'a [Value], event: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == event).collect()
}

/// How many events named `event` were received.
fn count(events: &[Value], event: &str) -> usize {
    named(events, event).len()
}

/// The events by `seq`, one each (a retried event may arrive twice: it must be the same), after
/// checking that every one has the node's id.
fn by_seq(events: &[Value], node: &str) -> BTreeMap<u64, Value> {
    let mut out = BTreeMap::new();
    for e in events {
        assert_eq!(e["node"], node, "{e}");
        let seq = e["seq"].as_u64().unwrap_or_else(|| panic!("a seq: {e}"));
        if let Some(before) = out.insert(seq, e.clone()) {
            assert_eq!(before, *e, "seq {seq} came twice with different events");
        }
    }
    out
}

/// Asserts that the seqs received are exactly 1..=N, arrived in that order (ignoring repeats).
fn assert_gapless(events: &[Value], node: &str) -> BTreeMap<u64, Value> {
    let all = by_seq(events, node);
    let seqs: Vec<u64> = all.keys().copied().collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "seq starts at 1 without gaps");
    let mut highest = 0;
    for e in events {
        let seq = e["seq"].as_u64().unwrap();
        assert!(seq <= highest + 1, "seq {seq} arrived before {}", highest + 1);
        highest = highest.max(seq);
    }
    all
}

/// The client ids of the `connect` events, in the order the connections opened.
fn clients(events: &[Value]) -> Vec<String> {
    named(events, "connect").iter().map(|e| e["client"].as_str().unwrap().to_string()).collect()
}

/// A client's events (by `seq`) as `event channel? reason?` lines.
fn story(all: &BTreeMap<u64, Value>, client: &str) -> Vec<String> {
    all.values()
        .filter(|e| e["client"] == client)
        .map(|e| {
            let mut line = e["event"].as_str().unwrap().to_string();
            for k in ["channel", "reason"] {
                if let Some(v) = e[k].as_str() {
                    line.push(' ');
                    line.push_str(v);
                }
            }
            line
        })
        .collect()
}

/// The sum of `rpchub_connections_accepted_total` over the doors.
async fn accepted(addr: SocketAddr) -> f64 {
    let mut n = 0.0;
    for door in ["jsonrpc", "ws", "instance"] {
        n += support::metric(addr, &format!("rpchub_connections_accepted_total{{door=\"{door}\"}}")).await;
    }
    n
}

#[tokio::test]
async fn every_door_tells_connects_subscriptions_and_disconnects_with_their_reasons() {
    let backend = HookBackend::start().await;
    let mut c = hooks_config("hooks-doors", &backend);
    c.limits.ping_interval = Duration::from_millis(200);
    c.limits.pong_timeout = Duration::from_millis(600);
    c.instances.insert(
        "hooked".into(),
        rpchub::config::InstanceConfig {
            token: rpchub::config::Secret("hooked-token-0123456789".into()),
            enabled: true,
            events: vec![],
            media_base64: false,
        },
    );
    let running = start(c).await;
    let addr = running.addr;
    let (x, y, z) = (support::channel("hooks"), support::channel("hooks"), support::channel("hooks"));

    // A: subscribes, unsubscribes, subscribes again and closes with a subscription live.
    let mut a = ws(addr, None).await;
    let (sub, _) = subscribe(&mut a, json!({"channel": x})).await;
    assert_eq!(call(&mut a, "unsubscribe", json!([sub])).await["result"], true);
    subscribe(&mut a, json!({"channel": y})).await;
    a.close(None).await.unwrap();
    closed(&mut a).await;
    // B: with a token, so its events name the user; its socket just goes away.
    let mut b = ws(addr, Some(ADMIN)).await;
    subscribe(&mut b, json!({"channel": z})).await;
    drop(b);
    // C: the `/ws` door; D: an instance, which follows its channel.
    let mut c = support::try_ws(addr, "/ws", None, &[]).await.unwrap();
    c.close(None).await.unwrap();
    let mut d = support::try_ws(addr, "/ws/hooked", Some("hooked-token-0123456789"), &[]).await.unwrap();
    d.close(None).await.unwrap();
    // E: never answers a ping.
    let mut e = raw::connect(addr).await;
    assert_eq!(raw::close_code(&mut e).await, Some(1008), "closed for its silence");
    drop(e);
    // F: sends a binary frame, which the server does not take.
    let mut f = raw::connect(addr).await;
    tokio::io::AsyncWriteExt::write_all(&mut f, &raw::frame(0x82, &[0xff, 0xfe])).await.unwrap();
    assert_eq!(raw::close_code(&mut f).await, Some(1003));
    drop(f);

    let events = backend.wait_for("six disconnects", |ev| count(ev, "disconnect") == 6).await;
    let all = assert_gapless(&events, "hooks-doors");
    assert_eq!(all[&1]["event"], "presence", "a node starts by saying whom it holds");
    assert_eq!(all[&1]["clients"], json!([]));
    let ids = clients(&events);
    assert_eq!(ids.len(), 6);
    assert_eq!(accepted(addr).await, ids.len() as f64, "a connect for every connection opened");
    for id in &ids {
        assert!(id.starts_with("hooks-doors-"), "{id}");
        assert_eq!(
            named(&events, "disconnect").iter().filter(|e| e["client"] == id.as_str()).count(),
            1,
            "one disconnect for {id}"
        );
    }
    for e in all.values() {
        assert!(e["ts"].as_u64().is_some_and(|ts| ts > 1_700_000_000_000), "ts in unix ms: {e}");
    }
    assert_eq!(
        story(&all, &ids[0]),
        [
            "connect".to_string(),
            format!("subscribe {x}"),
            format!("unsubscribe {x} client"),
            format!("subscribe {y}"),
            format!("unsubscribe {y} disconnect"),
            "disconnect client".to_string(),
        ]
    );
    assert!(all.values().filter(|e| e["client"] == ids[0].as_str()).all(|e| e.get("user").is_none()));
    assert_eq!(
        story(&all, &ids[1]),
        [
            "connect".to_string(),
            format!("subscribe {z}"),
            format!("unsubscribe {z} disconnect"),
            "disconnect client".into()
        ]
    );
    assert!(all.values().filter(|e| e["client"] == ids[1].as_str()).all(|e| e["user"] == "admin"));
    assert_eq!(story(&all, &ids[2]), ["connect", "disconnect client"]);
    assert_eq!(
        story(&all, &ids[3]),
        [
            "connect",
            "subscribe instance:hooked",
            "unsubscribe instance:hooked disconnect",
            "disconnect client"
        ]
    );
    assert_eq!(story(&all, &ids[4]), ["connect", "disconnect ping_timeout"]);
    assert_eq!(story(&all, &ids[5]), ["connect", "disconnect kicked"]);
    let sent = support::metric(addr, "rpchub_hook_events_total{outcome=\"sent\"}").await;
    assert!(sent >= all.len() as f64, "every event counted as sent: {sent}");
}

#[tokio::test]
async fn only_the_events_asked_for_are_posted() {
    let backend = HookBackend::start().await;
    let mut c = hooks_config("hooks-some", &backend);
    c.backend.hooks = vec!["disconnect".into()];
    let running = start(c).await;
    let mut a = ws(running.addr, None).await;
    subscribe(&mut a, json!({"channel": support::channel("hooks")})).await;
    a.close(None).await.unwrap();
    closed(&mut a).await;
    let events = backend.wait_for("the disconnect", |ev| count(ev, "disconnect") == 1).await;
    let all = assert_gapless(&events, "hooks-some");
    let kinds: Vec<_> = all.values().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["presence", "disconnect"], "no connect, subscribe or unsubscribe");
}

#[tokio::test]
async fn events_wait_out_a_backend_outage_and_all_arrive() {
    let mut backend = HookBackend::start().await;
    let running = start(hooks_config("hooks-outage", &backend)).await;
    let addr = running.addr;
    backend.wait_for("the first presence", |ev| count(ev, "presence") == 1).await;
    backend.stop().await;
    // Five clients come and go while nobody listens.
    for _ in 0..5 {
        let mut w = ws(addr, None).await;
        subscribe(&mut w, json!({"channel": support::channel("hooks")})).await;
        w.close(None).await.unwrap();
        closed(&mut w).await;
    }
    let retried = "rpchub_hook_events_total{outcome=\"retried\"}";
    let deadline = Instant::now() + WAIT;
    while support::metric(addr, retried).await < 2.0 {
        assert!(Instant::now() < deadline, "the node retries while the backend is down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Down for a few seconds in all.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&backend.events(), "connect"), 0, "nothing arrived while it was down");
    backend.restart().await;
    let events = backend.wait_for("five disconnects", |ev| count(ev, "disconnect") == 5).await;
    let all = assert_gapless(&events, "hooks-outage");
    assert_eq!(all.len(), 1 + 5 * 4, "a presence, then connect, subscribe, unsubscribe, disconnect each");
    assert_eq!(clients(&events).len(), 5);
    assert_eq!(accepted(addr).await, 5.0, "a connect for every connection opened");
    assert!(support::metric(addr, retried).await >= 20.0, "each event of the outage was retried");
    assert_eq!(support::metric(addr, "rpchub_hook_events_total{outcome=\"dropped\"}").await, 0.0);
    assert!(backend.rec.posts.lock().unwrap().iter().all(|n| *n <= 100), "at most 100 events a POST");
}

#[tokio::test]
async fn a_full_queue_drops_the_oldest_and_delivers_the_newest() {
    let backend = HookBackend::start().await;
    backend.rec.failing.store(true, Ordering::SeqCst);
    let mut c = hooks_config("hooks-bound", &backend);
    c.backend.hooks_queue = 5;
    let running = start(c).await;
    let addr = running.addr;
    // A presence, then a connect and a disconnect for each of ten clients: 21 events.
    for _ in 0..10 {
        let mut w = ws(addr, None).await;
        w.close(None).await.unwrap();
        closed(&mut w).await;
    }
    let dropped = "rpchub_hook_events_total{outcome=\"dropped\"}";
    let deadline = Instant::now() + WAIT;
    while support::metric(addr, dropped).await < 16.0 {
        assert!(Instant::now() < deadline, "the oldest 16 are dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(support::metric(addr, "rpchub_hook_queue").await, 5.0);
    // A retry that starts from now on carries the queue as it is now, the newest five.
    let retried = "rpchub_hook_events_total{outcome=\"retried\"}";
    let before = support::metric(addr, retried).await;
    while support::metric(addr, retried).await <= before {
        assert!(Instant::now() < deadline + WAIT, "the node keeps retrying");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    backend.rec.failing.store(false, Ordering::SeqCst);
    let events = backend.wait_for("the newest event", |ev| ev.iter().any(|e| e["seq"] == 21)).await;
    let all = by_seq(&events, "hooks-bound");
    assert_eq!(all.keys().copied().collect::<Vec<_>>(), [17, 18, 19, 20, 21], "the newest five only");
    assert_eq!(all[&21]["event"], "disconnect", "the last client's disconnect survived");
    assert_eq!(support::metric(addr, dropped).await, 16.0);
    assert_eq!(support::metric(addr, "rpchub_hook_queue").await, 0.0);
}

#[tokio::test]
async fn presence_lists_the_clients_and_their_channels() {
    let backend = HookBackend::start().await;
    let mut c = hooks_config("hooks-presence", &backend);
    c.backend.hooks = vec!["connect".into()];
    c.backend.hooks_reconcile = Duration::from_secs(1);
    let running = start(c).await;
    let (x, y) = (support::channel("hooks"), support::channel("hooks"));
    let mut a = ws(running.addr, None).await;
    subscribe(&mut a, json!({"channel": x})).await;
    subscribe(&mut a, json!({"channel": x})).await;
    subscribe(&mut a, json!({"channel": y})).await;
    let mut b = ws(running.addr, Some(ADMIN)).await;
    let events = backend.wait_for("two connects", |ev| count(ev, "connect") == 2).await;
    let ids = clients(&events);
    let after = events.iter().filter_map(|e| e["seq"].as_u64()).max().unwrap();
    // The first presence taken after both connected.
    let later = |ev: &[Value]| {
        ev.iter().find(|e| e["event"] == "presence" && e["seq"].as_u64().unwrap() > after).cloned()
    };
    let events = backend.wait_for("a presence after the connects", |ev| later(ev).is_some()).await;
    let presence = later(&events).unwrap();
    let mut listed: Vec<Value> = presence["clients"].as_array().unwrap().clone();
    listed.sort_by_key(|c| c["client"].as_str().unwrap().to_string());
    let mut channels = vec![x.clone(), x.clone(), y.clone()];
    channels.sort();
    let mut expected = vec![
        json!({"client": ids[0], "channels": channels}),
        json!({"client": ids[1], "user": "admin", "channels": []}),
    ];
    expected.sort_by_key(|c| c["client"].as_str().unwrap().to_string());
    assert_eq!(listed, expected);
    assert!(presence["ts"].as_u64().is_some());
    // A leaves: a later presence no longer holds it.
    a.close(None).await.unwrap();
    closed(&mut a).await;
    let gone = |ev: &[Value]| {
        ev.iter().rev().find(|e| e["event"] == "presence").is_some_and(|p| {
            let held: Vec<_> = p["clients"].as_array().unwrap().iter().map(|c| c["client"].clone()).collect();
            held == [json!(ids[1])]
        })
    };
    let events = backend.wait_for("a presence without the client that left", gone).await;
    assert_gapless(&events, "hooks-presence");
    drop(b.close(None).await);
}

#[tokio::test]
async fn a_graceful_shutdown_posts_every_disconnect_before_it_returns() {
    let backend = HookBackend::start().await;
    let mut c = hooks_config("hooks-shutdown", &backend);
    c.shutdown_grace = Duration::from_secs(10);
    let running = start(c).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut w = ws(running.addr, None).await;
        subscribe(&mut w, json!({"channel": support::channel("hooks")})).await;
        // Read on, so that the client answers the server's close at once.
        held.push(tokio::spawn(async move { closed(&mut w).await }));
    }
    backend.wait_for("three subscribes", |ev| count(ev, "subscribe") == 3).await;
    // The backend refuses for a while: the flush retries until it takes them.
    backend.rec.failing.store(true, Ordering::SeqCst);
    let rec = backend.rec.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        rec.failing.store(false, Ordering::SeqCst);
    });
    running.shutdown();
    running.wait().await;
    // No waiting here: the node has returned, so what it had to say is said.
    let events = backend.events();
    let all = assert_gapless(&events, "hooks-shutdown");
    for id in clients(&events) {
        let s = story(&all, &id);
        let channel = s[1].strip_prefix("subscribe ").unwrap();
        assert_eq!(s[2..], [format!("unsubscribe {channel} disconnect"), "disconnect shutdown".into()]);
    }
    assert_eq!(count(&events, "disconnect"), 3);
    for w in held {
        assert_eq!(w.await.unwrap(), Some(1001));
    }
}

/// `[backend]` of a node run as a process.
fn node_file(node: &str, backend: &HookBackend) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("rpchub-it-hooks-{}-{node}.toml", std::process::id()));
    let toml = format!(
        "node_id = \"{node}\"\n\n[backend]\nurl = \"{}\"\nhooks = [\"connect\", \"disconnect\", \
         \"subscribe\", \"unsubscribe\"]\nhooks_reconcile = \"1h\"\n",
        backend.url()
    );
    std::fs::write(&path, toml).unwrap();
    path
}

#[tokio::test]
async fn a_node_killed_without_warning_comes_back_with_a_presence_that_holds_nobody() {
    let backend = HookBackend::start().await;
    let file = node_file("hooks-killed", &backend);
    let file = file.to_str().unwrap();
    let (mut child, addr) = support::serve_binary(&["--config", file], &[]).await;
    let mut a = ws(addr, None).await;
    subscribe(&mut a, json!({"channel": support::channel("hooks")})).await;
    let _b = ws(addr, None).await;
    let events = backend
        .wait_for("two connects and a subscribe", |ev| {
            count(ev, "connect") == 2 && count(ev, "subscribe") == 1
        })
        .await;
    let dead = clients(&events);
    child.kill().unwrap();
    child.wait().unwrap();
    let before = events.len();
    let (mut child, _addr) = support::serve_binary(&["--config", file], &[]).await;
    let events = backend
        .wait_for("a presence from the restarted node", |ev| count(&ev[before..], "presence") == 1)
        .await;
    let first = named(&events[before..], "presence")[0].clone();
    assert_eq!(first["node"], "hooks-killed");
    assert_eq!(first["seq"], 1, "a restarted node counts again from 1, starting with a presence");
    assert_eq!(first["clients"], json!([]), "the dead node's clients {dead:?} are gone");
    assert_eq!(count(&events, "disconnect"), 0, "nobody could tell their ends");
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_file(file);
}
