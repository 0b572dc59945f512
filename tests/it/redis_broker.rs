//! What the Redis broker promises beyond the contract suite (`broker_contract::redis`, which
//! runs every contract test against it): several nodes on one Redis share channels, history and
//! epochs outlive a node, a lost stream starts a new epoch, and a Redis that is killed and comes
//! back is reported Down then Up, with publishes failing fast meanwhile and every subscribed
//! channel told to recheck afterwards. And two rpchub nodes on one Redis, end to end.

use crate::redis_support::{RedisServer, TlsFiles, shared};
use crate::support::{self, call, event, recv, subscribe, until, ws};
use rpchub::broker::redis::RedisBroker;
use rpchub::broker::{
    Broker, BrokerError, BrokerState, HistoryRange, Listener, NewPublication, Publication, Retention,
};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RETENTION: Retention = Retention { size: 100, ttl: Duration::from_secs(300), state: false };
const WAIT: Duration = Duration::from_secs(15);

/// What a broker called its listener with.
#[derive(Default)]
struct Recorder {
    deliveries: Mutex<Vec<(String, String, u64)>>,
    lagged: Mutex<Vec<String>>,
    published: Mutex<Vec<String>>,
}

impl Listener for Recorder {
    fn deliver(&self, channel: &str, epoch: &Arc<str>, p: &Arc<Publication>) {
        self.deliveries.lock().unwrap().push((channel.into(), epoch.to_string(), p.offset));
    }

    fn lagged(&self, channel: &str) {
        self.lagged.lock().unwrap().push(channel.into());
    }

    fn published(&self, channel: &str) {
        self.published.lock().unwrap().push(channel.into());
    }
}

impl Recorder {
    fn offsets_of(&self, channel: &str) -> Vec<u64> {
        self.deliveries.lock().unwrap().iter().filter(|d| d.0 == channel).map(|d| d.2).collect()
    }
}

fn new_publication(n: u64) -> NewPublication {
    NewPublication {
        data: RawValue::from_string(n.to_string()).unwrap(),
        event: None,
        idempotency_key: None,
        key: None,
    }
}

fn channel(what: &str) -> String {
    support::channel(&format!("redis-{what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_on_one_node_reaches_the_other_in_order() {
    let Some(server) = shared() else { return };
    let a = RedisBroker::connect(&server.url()).await.unwrap();
    let b = RedisBroker::connect(&server.url()).await.unwrap();
    let recorder = Arc::new(Recorder::default());
    let listener: Arc<dyn Listener> = recorder.clone();
    b.set_listener(Arc::downgrade(&listener));
    let ch = channel("two-nodes");
    b.subscribe(&ch, RETENTION).await.unwrap();
    let mut epoch = String::new();
    for n in 1..=50 {
        epoch = a.publish(&ch, new_publication(n), RETENTION).await.unwrap().position.epoch;
    }
    assert!(until(WAIT, || recorder.offsets_of(&ch).len() >= 50).await, "all 50 arrive on the other node");
    assert_eq!(recorder.offsets_of(&ch), (1..=50).collect::<Vec<_>>(), "in order, each once");
    assert!(recorder.deliveries.lock().unwrap().iter().all(|d| d.1 == epoch), "in the publishers' epoch");
    assert!(a.held().is_none() && b.latency().is_some_and(|l| l < WAIT), "streams live in Redis");
}

#[tokio::test]
async fn history_and_epoch_outlive_a_node() {
    let Some(server) = shared() else { return };
    let ch = channel("outlive");
    let first = RedisBroker::connect(&server.url()).await.unwrap();
    let mut last = None;
    for n in 1..=5 {
        last = Some(first.publish(&ch, new_publication(n), RETENTION).await.unwrap().position);
    }
    drop(first);
    let again = RedisBroker::connect(&server.url()).await.unwrap();
    let page = again.history(&ch, HistoryRange::Newest(None), RETENTION).await.unwrap();
    let last = last.unwrap();
    assert_eq!((&*page.epoch, page.offset), (&*last.epoch, 5), "the stream is where the node left it");
    assert_eq!(page.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert_eq!(page.publications[2].data(), "3");
    let next = again.publish(&ch, new_publication(6), RETENTION).await.unwrap().position;
    assert_eq!((next.epoch, next.offset), (last.epoch, 6), "and goes on in its epoch");
}

#[tokio::test]
async fn a_flushed_redis_starts_new_epochs() {
    let Some(server) = RedisServer::start() else { return };
    let b = RedisBroker::connect(&server.url()).await.unwrap();
    let ch = channel("flushed");
    let before = b.publish(&ch, new_publication(1), RETENTION).await.unwrap().position;
    b.publish(&ch, new_publication(2), RETENTION).await.unwrap();
    server.cli(&["FLUSHALL"]);
    let page = b.history(&ch, HistoryRange::Newest(None), RETENTION).await.unwrap();
    assert_eq!((&*page.epoch, page.offset), ("", 0), "the stream is gone: no epoch");
    let after = b.publish(&ch, new_publication(3), RETENTION).await.unwrap().position;
    assert_ne!(after.epoch, before.epoch, "the next publication starts a new epoch");
    assert_eq!(after.offset, 1, "from offset 1");
}

#[tokio::test]
async fn a_redis_that_forgot_the_scripts_is_given_them_again() {
    let Some(server) = shared() else { return };
    let b = RedisBroker::connect(&server.url()).await.unwrap();
    let ch = channel("script-flush");
    let first = b.publish(&ch, new_publication(1), RETENTION).await.unwrap().position;
    // What a restarted Redis (or an operator's SCRIPT FLUSH) leaves: no script is known.
    server.cli(&["SCRIPT", "FLUSH"]);
    let next =
        b.publish(&ch, new_publication(2), RETENTION).await.expect("publish loads the script again").position;
    assert_eq!(
        (next.epoch.as_str(), next.offset),
        (first.epoch.as_str(), 2),
        "the same stream, the next offset"
    );
    let page = b.history(&ch, HistoryRange::Newest(None), RETENTION).await.unwrap();
    let data: Vec<&str> = page.publications.iter().map(|p| p.data()).collect();
    assert_eq!(data, ["1", "2"], "each publication once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_lost_on_a_quiet_channel_is_caught_by_the_position_check() {
    let Some(server) = shared() else { return };
    let b = RedisBroker::connect(&server.url()).await.unwrap();
    let recorder = Arc::new(Recorder::default());
    let listener: Arc<dyn Listener> = recorder.clone();
    b.set_listener(Arc::downgrade(&listener));
    let ch = channel("quiet");
    b.subscribe(&ch, RETENTION).await.unwrap();
    b.publish(&ch, new_publication(1), RETENTION).await.unwrap();
    assert!(until(WAIT, || recorder.offsets_of(&ch) == [1]).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(recorder.lagged.lock().unwrap().is_empty(), "a channel whose deliveries all came is not lagged");
    // A publication whose pub/sub message never came: the stream moved on, nothing was sent.
    server.cli(&["HINCRBY", &format!("rpchub:{{{ch}}}:meta"), "offset", "1"]);
    assert!(
        until(WAIT, || recorder.lagged.lock().unwrap().contains(&ch)).await,
        "the periodic position check tells the listener to recheck the channel"
    );
}

#[tokio::test]
async fn history_older_than_its_ttl_is_not_read_and_an_unused_stream_expires() {
    let Some(server) = shared() else { return };
    let b = RedisBroker::connect(&server.url()).await.unwrap();
    let ch = channel("ttl");
    b.publish(&ch, new_publication(1), RETENTION).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = b.publish(&ch, new_publication(2), RETENTION).await.unwrap().position;
    let short = Retention { ttl: Duration::from_millis(200), ..RETENTION };
    for range in [HistoryRange::Newest(None), HistoryRange::After(0, Some(1)), HistoryRange::After(0, None)] {
        let page = b.history(&ch, range, short).await.unwrap();
        let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
        assert_eq!((page.offset, offsets), (2, vec![2]), "{range:?}: only what is younger than the ttl");
    }
    // Published with a short ttl and then left alone: every key of the channel expires.
    let quick = channel("ttl-quick");
    let gone = b.publish(&quick, new_publication(1), short).await.unwrap().position;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let page = b.history(&quick, HistoryRange::Newest(None), short).await.unwrap();
    assert_eq!((&*page.epoch, page.offset, page.publications.len()), ("", 0, 0), "the stream went away");
    let next = b.publish(&quick, new_publication(2), short).await.unwrap().position;
    assert!(next.epoch != gone.epoch && next.offset == 1, "its next use starts a new epoch: {next:?}");
    assert_ne!(first.epoch, next.epoch);
}

/// A creation notice lost (here: a channel made without one, as when pub/sub was cut while it
/// was published) is made up for when the pub/sub connection comes back: the watched prefixes
/// are listed again and every channel under them told of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_whose_creation_notice_was_lost_is_told_once_pub_sub_is_back() {
    let Some(server) = RedisServer::start() else { return };
    let b = RedisBroker::connect(&server.url()).await.unwrap();
    let recorder = Arc::new(Recorder::default());
    let listener: Arc<dyn Listener> = recorder.clone();
    b.set_listener(Arc::downgrade(&listener));
    let prefix = format!("{}-", channel("lost"));
    b.watch(&prefix).await.unwrap();
    let (told, quiet) = (format!("{prefix}told"), format!("{prefix}quiet"));
    b.publish(&told, new_publication(1), RETENTION).await.unwrap();
    assert!(until(WAIT, || recorder.published.lock().unwrap().contains(&told)).await);
    server.cli(&["HSET", &format!("rpchub:{{{quiet}}}:meta"), "epoch", "0123456789ab", "offset", "7"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!recorder.published.lock().unwrap().contains(&quiet), "no notice, nothing told yet");
    server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(
        until(WAIT, || recorder.published.lock().unwrap().contains(&quiet)).await,
        "listed again once pub/sub is back: {:?}",
        recorder.published.lock().unwrap()
    );
    b.unwatch(&prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_is_down_then_up_and_its_channels_are_rechecked() {
    let Some(mut server) = RedisServer::start() else { return };
    let b = RedisBroker::connect(&server.url()).await.unwrap();
    let recorder = Arc::new(Recorder::default());
    let listener: Arc<dyn Listener> = recorder.clone();
    b.set_listener(Arc::downgrade(&listener));
    let ch = channel("killed");
    b.subscribe(&ch, RETENTION).await.unwrap();
    let before = b.publish(&ch, new_publication(1), RETENTION).await.unwrap().position;
    assert!(until(WAIT, || recorder.offsets_of(&ch) == [1]).await);
    assert_eq!(b.state(), BrokerState::Up);

    server.kill();
    assert!(until(WAIT, || b.state() == BrokerState::Down).await, "a killed Redis is reported down");
    let at = Instant::now();
    let failed = b.publish(&ch, new_publication(2), RETENTION).await;
    assert!(matches!(failed, Err(BrokerError::Unavailable(_))), "publishing fails: {failed:?}");
    let subscribing = b.subscribe(&channel("while-down"), RETENTION).await;
    assert!(matches!(subscribing, Err(BrokerError::Unavailable(_))), "subscribing fails: {subscribing:?}");
    assert!(at.elapsed() < Duration::from_secs(1), "both fail fast: {:?}", at.elapsed());

    let _server = RedisServer::on(server.port);
    assert!(until(WAIT, || b.state() == BrokerState::Up).await, "Redis back: reported up");
    assert!(
        until(WAIT, || recorder.lagged.lock().unwrap().contains(&ch)).await,
        "the subscribed channel is told it may have lagged"
    );
    // Pub/sub is subscribed again once the broker reconnected it: publications made after that
    // are delivered again (those made before were never promised to be, only signalled).
    let deadline = Instant::now() + WAIT;
    let mut epochs = Vec::new();
    let delivered = loop {
        assert!(Instant::now() < deadline, "deliveries resume on the resubscribed channel");
        if let Ok(p) = b.publish(&ch, new_publication(3), RETENTION).await {
            epochs.push(p.position.epoch);
        }
        let found = until(Duration::from_millis(200), || {
            recorder.deliveries.lock().unwrap().iter().any(|d| d.1 != before.epoch)
        });
        if found.await {
            break recorder.deliveries.lock().unwrap().last().cloned().unwrap();
        }
    };
    epochs.dedup();
    assert_eq!(epochs.len(), 1, "one new epoch after the restart: {epochs:?}");
    assert_ne!(epochs[0], before.epoch, "a Redis without persistence lost the stream: a new epoch");
    assert_eq!(delivered.1, epochs[0], "deliveries come in it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cluster_shard_comes_back_and_its_channels_are_rechecked() {
    let Some(mut cluster) = crate::redis_support::RedisCluster::start() else { return };
    let b = RedisBroker::connect(&cluster.url()).await.unwrap();
    let recorder = Arc::new(Recorder::default());
    let listener: Arc<dyn Listener> = recorder.clone();
    b.set_listener(Arc::downgrade(&listener));
    let ch = channel("shard");
    b.subscribe(&ch, RETENTION).await.unwrap();
    let before = b.publish(&ch, new_publication(1), RETENTION).await.unwrap().position;
    assert!(until(WAIT, || recorder.offsets_of(&ch) == [1]).await, "delivered through the shard");
    let owner = cluster.owner(&format!("rpchub:{{{ch}}}:meta"));
    cluster.nodes[owner].kill();
    let failed =
        tokio::time::timeout(Duration::from_secs(5), b.publish(&ch, new_publication(2), RETENTION)).await;
    assert!(
        matches!(failed, Ok(Err(BrokerError::Unavailable(_)))),
        "a publication to the killed shard fails, within the command timeout: {failed:?}"
    );
    cluster.restart(owner);
    cluster.wait_ok();
    assert!(
        until(WAIT, || recorder.lagged.lock().unwrap().contains(&ch)).await,
        "the channel of the shard that came back is told it may have lagged"
    );
    let deadline = Instant::now() + WAIT;
    let next = loop {
        match b.publish(&ch, new_publication(3), RETENTION).await {
            Ok(p) => break p.position,
            Err(e) => {
                assert!(Instant::now() < deadline, "publishing works again: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_ne!(next.epoch, before.epoch, "the shard restarted without persistence: a new epoch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_through_a_redis_restart_is_told_and_never_sees_a_silent_gap() {
    let Some(mut server) = RedisServer::start() else { return };
    let a = node(&server.url()).await;
    let ch = channel("restart");
    let mut sub = ws(a.addr, None).await;
    let (_, snap) = subscribe(&mut sub, json!([ch])).await;
    let epoch = snap["epoch"].as_str().unwrap().to_string();
    let mut publisher = ws(a.addr, Some(support::ADMIN)).await;
    for n in 1..=3 {
        call(&mut publisher, "publish", json!([ch, n])).await;
        assert_eq!(event(&mut sub).await["offset"], n);
    }
    server.kill();
    let failed = call(&mut publisher, "publish", json!([ch, 4])).await;
    assert_eq!(failed["error"]["code"], -32008, "publishing fails while Redis is down: {failed}");
    let (status, body) = support::http(a.addr, "GET", "/health", &[], "").await;
    assert_eq!(status, 503, "the node is degraded while Redis is down: {body}");
    let _server = RedisServer::on(server.port);
    let deadline = Instant::now() + WAIT;
    loop {
        let r = call(&mut publisher, "publish", json!([ch, 5])).await;
        if r.get("result").is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "publishing works again once Redis is back: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Redis came back empty: the stream is in a new epoch, which the subscriber is told of.
    let closed = event(&mut sub).await;
    assert_eq!(
        (closed["type"].as_str(), closed["reason"].as_str()),
        (Some("closed"), Some("insufficient_state"))
    );
    // A client retries a subscribe answered -32008 (pub/sub may come back a moment after commands).
    let deadline = Instant::now() + WAIT;
    let since = json!({"channel": ch, "since": {"epoch": epoch, "offset": 3}});
    loop {
        let r = call(&mut sub, "subscribe", since.clone()).await;
        if r.get("result").is_some() {
            break;
        }
        assert_eq!(r["error"]["code"], -32008, "{r}");
        assert!(Instant::now() < deadline, "subscribing works again once Redis is back: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = event(&mut sub).await;
    assert_eq!(again["recovered"], false, "a since of the lost epoch is not recovered: {again}");
    assert_ne!(again["epoch"], json!(epoch), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_with_aof_keeps_epochs_and_offsets() {
    if shared().is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("rpchub-it-aof-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let args = ["--appendonly", "yes", "--appendfsync", "always", "--dir", dir.to_str().unwrap()];
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = RedisServer::with(port, &args);
    let b = RedisBroker::connect(&server.url()).await.unwrap();
    let ch = channel("aof");
    let mut last = None;
    for n in 1..=3 {
        last = Some(b.publish(&ch, new_publication(n), RETENTION).await.unwrap().position);
    }
    server.kill();
    let _server = RedisServer::with(port, &args);
    let deadline = Instant::now() + WAIT;
    let next = loop {
        match b.publish(&ch, new_publication(4), RETENTION).await {
            Ok(p) => break p.position,
            Err(e) => {
                assert!(Instant::now() < deadline, "publishing works again: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let last = last.unwrap();
    assert_eq!(
        (next.epoch, next.offset),
        (last.epoch, 4),
        "the stream survived the restart: same epoch, next offset"
    );
    let page = b.history(&ch, HistoryRange::Newest(None), RETENTION).await.unwrap();
    assert_eq!(page.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A node on `url`.
async fn node(url: &str) -> rpchub::Running {
    let mut config = support::config();
    config.broker = url.to_string();
    support::start(config).await
}

fn offsets(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["offset"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rpchub_nodes_on_one_redis() {
    let Some(server) = shared() else { return };
    two_nodes(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rpchub_nodes_on_a_redis_cluster() {
    let Some(cluster) = crate::redis_support::shared_cluster() else { return };
    two_nodes(&cluster.url()).await;
}

/// Two nodes on the Redis `url` names: a client of B gets what is published on A, in order; a
/// client moving from A to B with `since` recovers exactly, then goes on live.
async fn two_nodes(url: &str) {
    let (a, b) = (node(url).await, node(url).await);
    let ch = channel("nodes");
    let mut on_b = ws(b.addr, None).await;
    let (_, snap) = subscribe(&mut on_b, json!([ch])).await;
    assert_eq!(snap["offset"], 0);
    let mut publisher = ws(a.addr, Some(support::ADMIN)).await;
    let info = call(&mut publisher, "info", json!([])).await;
    assert_eq!(info["result"]["broker"], "redis", "{info}");
    for n in 1..=20 {
        let r = call(&mut publisher, "publish", json!([ch, n])).await;
        assert_eq!(r["result"]["offset"], n, "{r}");
    }
    let mut got = Vec::new();
    for _ in 1..=20 {
        got.push(event(&mut on_b).await);
    }
    assert_eq!(offsets(&got), (1..=20).collect::<Vec<_>>(), "node B gets node A's publications in order");
    let epoch = snap["epoch"].as_str().unwrap().to_string();

    // A client of A moves to B with since: exactly what it missed, recovered.
    let mut on_a = ws(a.addr, None).await;
    let (_, first) = subscribe(&mut on_a, json!([ch, null, 0])).await;
    assert_eq!((first["epoch"].as_str(), first["offset"].as_u64()), (Some(&*epoch), Some(20)));
    drop(on_a);
    for n in 21..=25 {
        call(&mut publisher, "publish", json!([ch, n])).await;
    }
    let mut moved = ws(b.addr, None).await;
    let (_, snap) =
        subscribe(&mut moved, json!({"channel": ch, "since": {"epoch": epoch, "offset": 20}})).await;
    assert_eq!(snap["recovered"], true, "{snap}");
    assert_eq!(offsets(snap["publications"].as_array().unwrap()), vec![21, 22, 23, 24, 25]);
    call(&mut publisher, "publish", json!([ch, 26])).await;
    let live = event(&mut moved).await;
    assert_eq!(live["offset"], 26, "then live, no gap and no duplicate: {live}");
    for _ in 21..=26 {
        let _ = recv(&mut on_b).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_and_state_channels_across_two_nodes_on_one_redis() {
    let Some(server) = shared() else { return };
    patterns_and_state_across_nodes(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_and_state_channels_across_two_nodes_on_a_redis_cluster() {
    let Some(cluster) = crate::redis_support::shared_cluster() else { return };
    patterns_and_state_across_nodes(&cluster.url()).await;
}

/// A node on `url` with a namespace of patterns (`pat`) and one of state channels (`book`).
async fn bot_node(url: &str) -> rpchub::Running {
    use rpchub::config::{Mode, NamespaceConfig};
    let mut config = support::config();
    config.broker = url.to_string();
    config.namespaces.insert("pat".into(), NamespaceConfig { patterns: true, ..Default::default() });
    config
        .namespaces
        .insert("book".into(), NamespaceConfig { mode: Mode::State, history_size: 2, ..Default::default() });
    support::start(config).await
}

/// The next `n` events of subscription `id`.
async fn events_of(w: &mut support::Ws, id: &str, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let v = recv(w).await;
        if v["params"]["subscription"] == id {
            got.push(v["params"]["result"].clone());
        }
    }
    got
}

/// CRC-32 of `[[key,data],...]` sorted by key, written out from the protocol's definition.
fn state_checksum(state: &[(&str, &str)]) -> u64 {
    let mut pairs = state.to_vec();
    pairs.sort();
    let items: Vec<String> =
        pairs.iter().map(|(k, d)| format!("[{},{d}]", serde_json::to_string(k).unwrap())).collect();
    u64::from(crc32fast::hash(format!("[{}]", items.join(",")).as_bytes()))
}

/// Two nodes on the Redis `url` names. A pattern subscribed on B follows a channel that existed
/// and one created later by a publish on A, each from its own snapshot, then live. A state
/// channel published on A is read on B as its state with the checksum of its definition, and
/// every live event's checksum is that of the state rebuilt from the events.
async fn patterns_and_state_across_nodes(url: &str) {
    let (a, b) = (bot_node(url).await, bot_node(url).await);
    let mut admin = ws(a.addr, Some(support::ADMIN)).await;
    let stem = format!("pat:{}", support::channel("p").replace(':', "-"));
    let old = format!("{stem}-OLD");
    for n in 1..=2 {
        call(&mut admin, "publish", json!([old, n])).await;
    }
    let mut on_b = ws(b.addr, None).await;
    let r = call(&mut on_b, "subscribe", json!({"channel": format!("{stem}-*")})).await;
    let id = r["result"].as_str().unwrap_or_else(|| panic!("{r}")).to_string();
    let snap = &events_of(&mut on_b, &id, 1).await[0];
    assert_eq!(
        (snap["type"].as_str(), snap["channel"].as_str(), snap["offset"].as_u64()),
        (Some("snapshot"), Some(old.as_str()), Some(2)),
        "{snap}"
    );
    let new = format!("{stem}-NEW");
    call(&mut admin, "publish", json!([new, "first"])).await;
    let snap = &events_of(&mut on_b, &id, 1).await[0];
    assert_eq!(
        (snap["type"].as_str(), snap["channel"].as_str()),
        (Some("snapshot"), Some(new.as_str())),
        "{snap}"
    );
    assert_eq!(
        snap["publications"][0]["data"], "first",
        "its snapshot holds the publication that made it: {snap}"
    );
    call(&mut admin, "publish", json!([new, "second"])).await;
    call(&mut admin, "publish", json!([old, 3])).await;
    let live = events_of(&mut on_b, &id, 2).await;
    let got: Vec<(&str, u64)> =
        live.iter().map(|e| (e["channel"].as_str().unwrap(), e["offset"].as_u64().unwrap())).collect();
    assert_eq!(got, [(new.as_str(), 2), (old.as_str(), 3)], "then live on both");

    // A state channel: keys outlive the history's size (2), a null deletes.
    let book = format!("book:{}", support::channel("s").replace(':', "-"));
    for (key, data) in
        [("a", json!(1)), ("b", json!(2)), ("a", json!(3)), ("b", Value::Null), ("c", json!({"x": 1}))]
    {
        let r = call(&mut admin, "publish", json!({"channel": book, "data": data, "key": key})).await;
        assert!(r["result"]["offset"].is_u64(), "{r}");
    }
    let mut reader = ws(b.addr, None).await;
    let (sid, snap) = subscribe(&mut reader, json!({"channel": book, "checksum": true})).await;
    let kept: Vec<(&str, u64)> = snap["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["key"].as_str().unwrap(), p["offset"].as_u64().unwrap()))
        .collect();
    assert_eq!(kept, [("a", 3), ("c", 5)], "{snap}");
    assert_eq!(snap["checksum"], state_checksum(&[("a", "3"), ("c", r#"{"x":1}"#)]), "{snap}");
    call(&mut admin, "publish", json!({"channel": book, "data": 4, "key": "d"})).await;
    call(&mut admin, "publish", json!({"channel": book, "data": null, "key": "a"})).await;
    let e = events_of(&mut reader, &sid, 2).await;
    assert_eq!((e[0]["key"].as_str(), e[0]["offset"].as_u64()), (Some("d"), Some(6)), "{}", e[0]);
    assert_eq!(e[0]["checksum"], state_checksum(&[("a", "3"), ("c", r#"{"x":1}"#), ("d", "4")]));
    assert_eq!(e[1]["checksum"], state_checksum(&[("c", r#"{"x":1}"#), ("d", "4")]), "{}", e[1]);
}

/// The `[broker_tls]` of the files of `tls`: their CA, and the client certificate if `client`.
fn broker_tls(tls: &TlsFiles, ca: &str, client: bool) -> rpchub::config::BrokerTls {
    rpchub::config::BrokerTls {
        ca_file: Some(tls.path(ca)),
        cert_file: client.then(|| tls.path("client.pem")),
        key_file: client.then(|| tls.path("client-key.pem")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_redis_is_reached_with_its_ca_and_a_client_certificate() {
    let tls = TlsFiles::new();
    let Some((server, tls_port)) = RedisServer::start_tls(&tls) else { return };
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let good = broker_tls(&tls, "ca.pem", true);

    // A node on the TLS Redis: its subscriber gets what a broker of another node publishes.
    let mut config = support::config();
    config.broker = url.clone();
    config.broker_tls = good.clone();
    let node = support::start(config).await;
    let ch = channel("tls");
    let mut sub = ws(node.addr, None).await;
    let (_, snap) = subscribe(&mut sub, json!([ch])).await;
    let other = RedisBroker::connect_with(&url, &good).await.unwrap();
    for n in 1..=5 {
        let p = other.publish(&ch, new_publication(n), RETENTION).await.unwrap();
        assert_eq!(json!(p.position.epoch), snap["epoch"], "one stream, seen through both");
    }
    let mut got = Vec::new();
    for _ in 1..=5 {
        got.push(event(&mut sub).await);
    }
    assert_eq!(offsets(&got), vec![1, 2, 3, 4, 5], "over TLS, in order");
    let meta = server.cli(&["HGET", &format!("rpchub:{{{ch}}}:meta"), "offset"]);
    assert_eq!(meta.trim(), "5", "the stream lives in that Redis");

    // What Redis refuses: no client certificate; and what the node refuses: a Redis whose
    // certificate its CA did not sign, and plain text to a TLS port.
    let refusals = [
        (url.clone(), broker_tls(&tls, "ca.pem", false)),
        (url.clone(), broker_tls(&tls, "other-ca.pem", true)),
        (format!("redis://127.0.0.1:{tls_port}"), rpchub::config::BrokerTls::default()),
    ];
    for (url, tls) in refusals {
        let e =
            RedisBroker::connect_with(&url, &tls).await.expect_err(&format!("{url} with {tls:?} is refused"));
        assert!(matches!(e, BrokerError::Unavailable(_)), "{url}: {e}");
    }
    let missing = rpchub::config::BrokerTls { ca_file: Some(tls.path("nowhere.pem")), ..Default::default() };
    let e = RedisBroker::connect_with(&url, &missing).await.unwrap_err();
    assert!(e.to_string().contains("broker_tls.ca_file") && e.to_string().contains("nowhere.pem"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_redis_cluster_carries_publications_between_nodes() {
    let tls = TlsFiles::new();
    let Some(cluster) = crate::redis_support::RedisCluster::start_tls(&tls) else { return };
    let url = cluster.url();
    assert!(url.starts_with("rediss+cluster://"), "{url}");
    let good = broker_tls(&tls, "ca.pem", true);
    let a = RedisBroker::connect_with(&url, &good).await.unwrap();
    let b = RedisBroker::connect_with(&url, &good).await.unwrap();
    let recorder = Arc::new(Recorder::default());
    let listener: Arc<dyn Listener> = recorder.clone();
    b.set_listener(Arc::downgrade(&listener));
    let ch = channel("tls-cluster");
    b.subscribe(&ch, RETENTION).await.unwrap();
    for n in 1..=20 {
        a.publish(&ch, new_publication(n), RETENTION).await.unwrap();
    }
    assert!(until(WAIT, || recorder.offsets_of(&ch).len() >= 20).await, "all 20 reach the other node");
    assert_eq!(recorder.offsets_of(&ch), (1..=20).collect::<Vec<_>>(), "in order, each once, over TLS");
    let page = b.history(&ch, HistoryRange::Newest(None), RETENTION).await.unwrap();
    assert_eq!(page.publications.len(), 20);
    let e = RedisBroker::connect_with(&url, &broker_tls(&tls, "ca.pem", false)).await.unwrap_err();
    assert!(matches!(e, BrokerError::Unavailable(_)), "no client certificate: {e}");
}
