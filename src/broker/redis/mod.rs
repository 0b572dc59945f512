//! The Redis broker: channels' offsets, epochs, history and idempotency keys live in Redis
//! (>= 7), shared by every node that names the same Redis, and publications reach the other
//! nodes through Redis pub/sub.
//!
//! `broker = "redis://[user:password@]HOST:PORT[/DB]"` for one Redis, or
//! `"redis+cluster://[user:password@]HOST:PORT[,HOST:PORT...]"` (seed nodes) for a Redis Cluster.
//! The password is never logged or echoed (errors show the URL with its user part replaced by
//! `***`).
//!
//! # Key layout
//!
//! All of one channel's keys share the hash tag `{CH}` (channel names have no braces), so that
//! they sit in one hash slot and one script may touch them all, on Redis Cluster too:
//!
//! - `rpchub:{CH}:meta`: a hash, `epoch` (12 random hex digits) and `offset` (the newest
//!   publication's).
//! - `rpchub:{CH}:stream`: a Redis Stream of the retained publications, entry id `OFFSET-0`
//!   (so a read by offset is an `XRANGE`), fields `t` (ts, Unix ms), `a` (where `data` starts in
//!   `j`) and `j` (the publication's JSON, [`Publication::new`]'s encoding, made once).
//! - `rpchub:{CH}:key:K`: `"EPOCH OFFSET"` of the publication made with idempotency key `K`.
//! - `rpchub:{CH}:pub`: the pub/sub channel of its fan-out. A message is
//!   `EPOCH OFFSET TS DATA_AT JSON`: receivers need no read to deliver it.
//!
//! # The scripts
//!
//! A publish is one Lua script (`publish.lua`, run with `EVALSHA`, loaded again on `NOSCRIPT`):
//! it reads the meta (none: a new epoch from the random one the caller passes, offset 0, and
//! whatever stream was left is deleted), checks the idempotency key (a hit counts only while its
//! publication is in history: same epoch, not trimmed by size), increments the offset, takes the
//! time from Redis (`TIME`, so every node's publications share one clock), appends to the stream
//! with `MAXLEN ~ history_size`, sets the key, gives every key it wrote `PEXPIRE history_ttl`,
//! and publishes the fan-out message from the script (`PUBLISH` on one Redis, `SPUBLISH` on a
//! cluster: the pub/sub channel shares the keys' hash slot, so a script may). All of it is one
//! atomic step: a publication is in history
//! before any node can receive it, and messages are published in offset order.
//!
//! History reads are a script too (`history.lua`), so a page and the position it reports are of
//! one moment: it reads nothing beyond the newest `history_size`, skips publications older than
//! `history_ttl`, and creates nothing (a channel without meta answers an empty page in
//! [`NO_EPOCH`]). Interest (`interest.lua`) creates the meta when missing (a subscriber's stream
//! has an epoch from the start, as with the memory broker) and keeps it for another ttl.
//!
//! # Fan-out and what it guarantees
//!
//! A node subscribes to the channels it has local interest in, and only to those: on one Redis
//! with `SUBSCRIBE` on one pub/sub connection; on a cluster with `SSUBSCRIBE` on a RESP3 cluster
//! connection, which holds one connection per shard, so fan-out spreads over the shards.
//! [`Broker::subscribe`] resolves once Redis confirmed the subscription. Redis
//! pub/sub is at most once, so the hub checks every delivery's offset (a jump is filled from
//! history, an epoch change ends the channel's subscriptions with `closed`
//! `insufficient_state`). When the pub/sub connection drops and comes back, every channel of
//! local interest is subscribed again (on a cluster by the client, which resubscribes each
//! shard) and [`Listener::lagged`] is called for each; and every
//! [`REDIS_POSITION_CHECK_PERIOD`] the position of every such channel is read (which also keeps
//! its meta alive): when pub/sub has not delivered up to the position the previous check read
//! (or delivered another epoch), [`Listener::lagged`] is called, which catches a message lost
//! on a quiet channel within two periods.
//!
//! Every command is bounded by [`REDIS_COMMAND_TIMEOUT`]. A command that fails on the connection
//! marks Redis down: [`Broker::state`] says [`BrokerState::Down`] and publishes, history reads
//! and subscribes fail at once with [`BrokerError::Unavailable`] until a ping (every
//! [`REDIS_PING_PERIOD`]) gets through again; [`Broker::latency`] is the last ping's round trip.
//!
//! # Epochs and Redis persistence
//!
//! The epoch changes exactly when the meta is lost: expired (a channel unused for its
//! `history_ttl`), evicted (use `maxmemory-policy noeviction` or a `volatile-*` policy with room
//! to spare), flushed, or gone with a Redis restarted without persistence. A Redis restarted with
//! AOF (`appendonly yes`, `appendfsync everysec`) keeps epochs and offsets up to its last fsync;
//! publications acknowledged after it are lost with the offsets they took, and the next publish
//! reuses those offsets in the same epoch: with RDB snapshots only, a restart can do the same
//! over minutes. Run Redis with AOF `appendfsync always`, or accept that window (or run it
//! without persistence, when a restart then simply starts every channel in a new epoch, which
//! every client is told of as `recovered: false`).
//!
//! Not in this version: TLS (`rediss://`, `rediss+cluster://`), refused at start with a message
//! saying so.

use super::*;
use crate::constants::{REDIS_COMMAND_TIMEOUT, REDIS_PING_PERIOD, REDIS_POSITION_CHECK_PERIOD};
use ::redis::aio::{ConnectionLike, MultiplexedConnection, PubSubSink};
use ::redis::cluster::{ClusterClient, ClusterClientBuilder};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{AsyncConnectionConfig, Cmd, Pipeline, PushKind, RedisError, RedisFuture, Script, Value};
use futures_util::StreamExt;
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{OnceLock, Weak};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const PUBLISH: &str = include_str!("publish.lua");
const HISTORY: &str = include_str!("history.lua");
const INTEREST: &str = include_str!("interest.lua");

/// Position reads of one check in flight at a time.
const POSITION_CHECKS_IN_FLIGHT: usize = 256;

/// The prefix of every key and pub/sub channel.
const PREFIX: &str = "rpchub:{";

/// The broker on Redis.
pub struct RedisBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("url", &redacted(&self.inner.url))
            .field("up", &self.inner.up.load(Ordering::Relaxed))
            .finish()
    }
}

struct Inner {
    /// As configured (never shown: [`redacted`]).
    url: String,
    target: Target,
    /// The command connection (multiplexed: concurrent commands are pipelined on it); `None`
    /// while Redis is down.
    conn: RwLock<Option<Conn>>,
    up: AtomicBool,
    /// Microseconds of the last ping; `u64::MAX` before the first.
    latency_us: AtomicU64,
    /// Wakes the supervisor (a command failed on the connection).
    wake: tokio::sync::Notify,
    listener: OnceLock<Weak<dyn Listener>>,
    /// Channels with local interest.
    interest: Mutex<HashMap<Box<str>, Interest>>,
    /// The pub/sub connection's sink and what it is subscribed to; the lock orders subscribe
    /// and unsubscribe commands.
    subs: tokio::sync::Mutex<Subs>,
    publish: Script,
    history: Script,
    interest_script: Script,
    stop: CancellationToken,
    runtime: tokio::runtime::Handle,
}

/// One channel with local interest.
struct Interest {
    count: usize,
    retention: Retention,
    /// The newest position pub/sub delivered (or the stream's, when interest was taken).
    seen: Option<(Arc<str>, u64)>,
    /// The position the last check read.
    checked: Option<(String, u64)>,
}

#[derive(Default)]
struct Subs {
    sink: Option<Sink>,
    subscribed: HashSet<Box<str>>,
}

/// What the broker talks to.
enum Target {
    /// One Redis.
    One(Box<(::redis::Client, AsyncConnectionConfig)>),
    /// A Redis Cluster, from its seed nodes' URLs.
    Cluster(Vec<String>),
}

impl Target {
    fn cluster(
        &self,
        resp3: Option<tokio::sync::mpsc::UnboundedSender<::redis::PushInfo>>,
    ) -> RedisResultOf<ClusterClient> {
        let Target::Cluster(nodes) = self else { unreachable!("only called for a cluster; qed") };
        let mut b = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
            .connection_timeout(REDIS_COMMAND_TIMEOUT)
            .response_timeout(REDIS_COMMAND_TIMEOUT);
        if let Some(tx) = resp3 {
            b = b.use_protocol(::redis::ProtocolVersion::RESP3).push_sender(tx);
        }
        b.build()
    }

    async fn connect(&self) -> Result<Conn, RedisError> {
        match self {
            Target::One(one) => {
                let (client, config) = &**one;
                client.get_multiplexed_async_connection_with_config(config).await.map(Conn::One)
            }
            Target::Cluster(_) => self.cluster(None)?.get_async_connection().await.map(Conn::Cluster),
        }
    }
}

type RedisResultOf<T> = Result<T, RedisError>;

/// A command connection to one Redis or to a cluster.
#[derive(Clone)]
enum Conn {
    One(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::One(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::One(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::One(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where subscriptions are made: a pub/sub connection to one Redis (`SUBSCRIBE`), or a RESP3
/// cluster connection (`SSUBSCRIBE`, on the shard of each channel).
enum Sink {
    One(PubSubSink),
    Cluster(ClusterConnection),
}

impl Sink {
    async fn subscribe(&mut self, names: Vec<String>) -> Result<(), RedisError> {
        match self {
            Sink::One(s) => s.subscribe(names).await,
            // One command per channel: a cluster routes each to its own shard.
            Sink::Cluster(c) => {
                for name in names {
                    c.ssubscribe(name).await?;
                }
                Ok(())
            }
        }
    }

    async fn unsubscribe(&mut self, name: String) -> Result<(), RedisError> {
        match self {
            Sink::One(s) => s.unsubscribe(name).await,
            Sink::Cluster(c) => c.sunsubscribe(name).await,
        }
    }
}

impl RedisBroker {
    /// Connects to the Redis `url` names (`redis://[user:password@]HOST:PORT[/DB]`, or
    /// `redis+cluster://[user:password@]HOST:PORT[,HOST:PORT...]`) and starts the broker's tasks
    /// on the current tokio runtime (they stop when it is dropped). Fails when the URL is not one
    /// this version serves or Redis cannot be reached now.
    pub async fn connect(url: &str) -> Result<Arc<RedisBroker>, BrokerError> {
        check_url(url).map_err(BrokerError::Unsupported)?;
        let unsupported = |e: RedisError| BrokerError::Unsupported(format!("broker {}: {e}", redacted(url)));
        let target = match cluster_nodes(url) {
            Some(nodes) => {
                let target = Target::Cluster(nodes);
                target.cluster(None).map_err(unsupported)?;
                target
            }
            None => {
                let client = ::redis::Client::open(url).map_err(unsupported)?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(REDIS_COMMAND_TIMEOUT))
                    .set_response_timeout(Some(REDIS_COMMAND_TIMEOUT));
                Target::One(Box::new((client, config)))
            }
        };
        let conn = match tokio::time::timeout(REDIS_COMMAND_TIMEOUT, target.connect()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(BrokerError::Unavailable(format!("redis at {}: {e}", redacted(url)))),
            Err(_) => return Err(BrokerError::Unavailable(format!("redis at {}: no answer", redacted(url)))),
        };
        let inner = Arc::new(Inner {
            url: url.to_string(),
            target,
            conn: RwLock::new(Some(conn)),
            up: AtomicBool::new(true),
            latency_us: AtomicU64::new(u64::MAX),
            wake: tokio::sync::Notify::new(),
            listener: OnceLock::new(),
            interest: Mutex::new(HashMap::new()),
            subs: tokio::sync::Mutex::new(Subs::default()),
            publish: Script::new(PUBLISH),
            history: Script::new(HISTORY),
            interest_script: Script::new(INTEREST),
            stop: CancellationToken::new(),
            runtime: tokio::runtime::Handle::current(),
        });
        let (ready, connected) = tokio::sync::oneshot::channel();
        tokio::spawn(inner.clone().supervise());
        match inner.target {
            Target::One(..) => tokio::spawn(inner.clone().fan_in(ready)),
            Target::Cluster(_) => tokio::spawn(inner.clone().fan_in_cluster(ready)),
        };
        // The first pub/sub connection, so that the first subscribe finds it.
        let _ = tokio::time::timeout(REDIS_COMMAND_TIMEOUT, connected).await;
        Ok(Arc::new(RedisBroker { inner }))
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.inner.stop.cancel();
    }
}

/// Refuses what this version does not serve, with a message that says so.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    if let Some(nodes) = cluster_nodes(url) {
        for node in &nodes {
            ::redis::Client::open(node.as_str()).map_err(|e| format!("broker {}: {e}", redacted(url)))?;
        }
        return Ok(());
    }
    if url.starts_with("rediss://") || url.starts_with("rediss+cluster://") {
        return Err(format!(
            "broker {}: TLS to Redis is not built into this version; use redis:// (on a private \
             network, or through a TLS tunnel)",
            redacted(url)
        ));
    }
    if !url.starts_with("redis://") {
        return Err(format!("broker {}: use \"memory\" or \"redis://HOST:PORT\"", redacted(url)));
    }
    ::redis::Client::open(url).map(drop).map_err(|e| format!("broker {}: {e}", redacted(url)))
}

/// The seed nodes of a `redis+cluster://[user:password@]HOST:PORT[,HOST:PORT...]` URL, each as
/// `redis://[user:password@]HOST:PORT`; `None` for any other URL.
fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let rest = url.strip_prefix("redis+cluster://")?;
    let rest = rest.trim_end_matches('/');
    let (user, hosts) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    Some(hosts.split(',').filter(|h| !h.is_empty()).map(|h| format!("redis://{user}{h}")).collect())
}

/// `url` with its user part (user and password) replaced by `***`.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "***".into() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

fn key(channel: &str, what: &str) -> String {
    format!("{PREFIX}{channel}}}:{what}")
}

/// The channel of a pub/sub channel name.
fn channel_of(pubsub: &str) -> Option<&str> {
    pubsub.strip_prefix(PREFIX)?.strip_suffix("}:pub")
}

fn new_epoch() -> String {
    format!("{:012x}", rand::random::<u64>() >> 16)
}

fn ttl_ms(r: Retention) -> u64 {
    (r.ttl.as_millis() as u64).max(1)
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

impl Inner {
    fn listener(&self) -> Option<Arc<dyn Listener>> {
        self.listener.get().and_then(Weak::upgrade)
    }

    /// The command connection, or `Unavailable` at once while Redis is down.
    fn conn(&self) -> Result<Conn, BrokerError> {
        match (self.up.load(Ordering::Acquire), &*self.conn.read()) {
            (true, Some(c)) => Ok(c.clone()),
            _ => Err(BrokerError::Unavailable("redis is unreachable".into())),
        }
    }

    fn down(&self, why: &dyn std::fmt::Display) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(error = %why, "redis is unreachable");
        }
        *self.conn.write() = None;
        self.wake.notify_one();
    }

    /// Runs a command with the timeout; a failure of the connection (not a reply that is an
    /// error) marks Redis down.
    async fn run<T>(&self, f: impl Future<Output = Result<T, RedisError>>) -> Result<T, BrokerError> {
        match tokio::time::timeout(REDIS_COMMAND_TIMEOUT, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_unrecoverable_error()
                {
                    self.down(&e);
                }
                Err(unavailable(format!("redis: {e}")))
            }
            Err(_) => {
                self.down(&"a command timed out");
                Err(unavailable("redis did not answer in time"))
            }
        }
    }

    /// Pings Redis every [`REDIS_PING_PERIOD`] (reconnecting while it is down) and checks the
    /// channels' positions every [`REDIS_POSITION_CHECK_PERIOD`].
    async fn supervise(self: Arc<Self>) {
        let mut ping = tokio::time::interval(REDIS_PING_PERIOD);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut check = tokio::time::interval(REDIS_POSITION_CHECK_PERIOD);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = ping.tick() => self.ping().await,
                _ = self.wake.notified() => self.ping().await,
                _ = check.tick() => self.check_positions().await,
            }
        }
    }

    async fn ping(&self) {
        let current = self.conn.read().clone();
        match current {
            Some(mut c) => {
                let at = Instant::now();
                let pong = tokio::time::timeout(
                    REDIS_COMMAND_TIMEOUT,
                    ::redis::cmd("PING").query_async::<()>(&mut c),
                )
                .await;
                match pong {
                    Ok(Ok(())) => {
                        self.latency_us.store(at.elapsed().as_micros() as u64, Ordering::Relaxed);
                        if !self.up.swap(true, Ordering::AcqRel) {
                            tracing::info!("redis is reachable again");
                        }
                    }
                    Ok(Err(e)) => self.down(&e),
                    Err(_) => self.down(&"a ping timed out"),
                }
            }
            None => {
                let at = Instant::now();
                let conn = tokio::time::timeout(REDIS_COMMAND_TIMEOUT, self.target.connect()).await;
                if let Ok(Ok(c)) = conn {
                    self.latency_us.store(at.elapsed().as_micros() as u64, Ordering::Relaxed);
                    *self.conn.write() = Some(c);
                    self.up.store(true, Ordering::Release);
                    tracing::info!("redis is reachable again");
                }
            }
        }
    }

    /// Reads the position of every channel with local interest (keeping its meta alive) and
    /// calls `lagged` for those ahead of what pub/sub delivered.
    async fn check_positions(&self) {
        let channels: Vec<(Box<str>, Retention)> =
            self.interest.lock().iter().map(|(c, i)| (c.clone(), i.retention)).collect();
        if channels.is_empty() || !self.up.load(Ordering::Acquire) {
            return;
        }
        // Pipelined on the multiplexed connection, a bounded number in flight at a time.
        let reads = channels.into_iter().map(|(c, r)| async move {
            let position = self.take_interest(&c, r).await;
            (c, position)
        });
        let positions: Vec<_> =
            futures_util::stream::iter(reads).buffer_unordered(POSITION_CHECKS_IN_FLIGHT).collect().await;
        let mut behind = Vec::new();
        {
            let mut interest = self.interest.lock();
            for (channel, position) in positions {
                let Ok((epoch, offset)) = position else { continue };
                let Some(i) = interest.get_mut(&*channel) else { continue };
                // Behind what the previous check read: a full period to arrive, so a message in
                // flight is not taken for a lost one.
                let previous = i.checked.replace((epoch, offset));
                let lost = previous.is_some_and(|(epoch, offset)| {
                    i.seen.as_ref().is_none_or(|(e, o)| **e != *epoch || *o < offset)
                });
                if lost {
                    behind.push(channel);
                }
            }
        }
        let Some(listener) = self.listener() else { return };
        for channel in behind {
            listener.lagged(&channel);
        }
    }

    /// Runs `interest.lua`: the channel's position, its meta made when missing and kept.
    async fn take_interest(&self, channel: &str, r: Retention) -> Result<(String, u64), BrokerError> {
        let mut conn = self.conn()?;
        let mut inv = self.interest_script.prepare_invoke();
        inv.key(key(channel, "meta")).key(key(channel, "stream")).arg(new_epoch()).arg(ttl_ms(r));
        self.run(inv.invoke_async::<(String, u64)>(&mut conn)).await
    }

    /// Keeps a pub/sub connection: subscribes it to every channel of local interest, delivers
    /// its messages, and after a reconnection tells the listener every such channel may have
    /// lagged.
    async fn fan_in(self: Arc<Self>, ready: tokio::sync::oneshot::Sender<()>) {
        let mut ready = Some(ready);
        let mut first = true;
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let Target::One(one) = &self.target else { return };
            let client = &one.0;
            let pubsub = tokio::time::timeout(REDIS_COMMAND_TIMEOUT, client.get_async_pubsub()).await;
            let Ok(Ok(pubsub)) = pubsub else {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep(REDIS_PING_PERIOD) => continue,
                }
            };
            let (mut sink, mut stream) = pubsub.split();
            let channels: Vec<Box<str>> = {
                let mut subs = self.subs.lock().await;
                let channels: Vec<Box<str>> = self
                    .interest
                    .lock()
                    .iter()
                    .filter(|(_, i)| i.count > 0)
                    .map(|(c, _)| c.clone())
                    .collect();
                if !channels.is_empty() {
                    let names: Vec<String> = channels.iter().map(|c| key(c, "pub")).collect();
                    match tokio::time::timeout(REDIS_COMMAND_TIMEOUT, sink.subscribe(names)).await {
                        Ok(Ok(())) => {}
                        _ => continue,
                    }
                }
                subs.subscribed = channels.iter().cloned().collect();
                subs.sink = Some(Sink::One(sink.clone()));
                channels
            };
            if let Some(r) = ready.take() {
                let _ = r.send(());
            }
            if !first {
                tracing::info!(channels = channels.len(), "redis pub/sub is back; rechecking its channels");
                if let Some(l) = self.listener() {
                    for c in &channels {
                        l.lagged(c);
                    }
                }
            }
            first = false;
            let mut ping = tokio::time::interval(REDIS_PING_PERIOD);
            ping.tick().await;
            loop {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    msg = stream.next() => match msg {
                        Some(msg) => self.arrived(msg.get_channel_name(), msg.get_payload_bytes()),
                        None => break,
                    },
                    _ = ping.tick() => {
                        let pong = tokio::time::timeout(REDIS_COMMAND_TIMEOUT, sink.ping::<Value>()).await;
                        if !matches!(pong, Ok(Ok(_))) {
                            break;
                        }
                    }
                }
            }
            tracing::warn!("redis pub/sub connection lost; reconnecting");
            let mut subs = self.subs.lock().await;
            subs.sink = None;
            subs.subscribed.clear();
        }
    }

    /// The cluster's pub/sub: one RESP3 cluster connection, whose `SSUBSCRIBE`s go to each
    /// channel's shard and are made again by the client after a reconnection (after which every
    /// channel of local interest is rechecked).
    async fn fan_in_cluster(self: Arc<Self>, ready: tokio::sync::oneshot::Sender<()>) {
        let mut ready = Some(ready);
        let (tx, mut pushes) = tokio::sync::mpsc::unbounded_channel();
        let conn = loop {
            let conn = match self.target.cluster(Some(tx.clone())) {
                Ok(client) => {
                    tokio::time::timeout(REDIS_COMMAND_TIMEOUT, client.get_async_connection()).await
                }
                Err(e) => {
                    tracing::error!(error = %e, "redis cluster pub/sub cannot be set up");
                    return;
                }
            };
            if let Ok(Ok(conn)) = conn {
                break conn;
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(REDIS_PING_PERIOD) => {}
            }
        };
        self.subs.lock().await.sink = Some(Sink::Cluster(conn));
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        let mut disconnected = false;
        loop {
            let push = tokio::select! {
                _ = self.stop.cancelled() => return,
                push = pushes.recv() => match push {
                    Some(push) => push,
                    None => return,
                },
            };
            match push.kind {
                PushKind::SMessage | PushKind::Message => {
                    if let [name, payload] = push.data.as_slice()
                        && let (Some(name), Value::BulkString(payload)) = (text(name), payload)
                    {
                        self.arrived(name, payload);
                    }
                }
                PushKind::Disconnection => disconnected = true,
                PushKind::SSubscribe if disconnected => {
                    disconnected = false;
                    let channels: Vec<Box<str>> = self.interest.lock().keys().cloned().collect();
                    tracing::info!(
                        channels = channels.len(),
                        "redis cluster pub/sub is back; rechecking its channels"
                    );
                    if let Some(l) = self.listener() {
                        for c in &channels {
                            l.lagged(c);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// One fan-out message: `EPOCH OFFSET TS DATA_AT JSON`.
    fn arrived(&self, name: &str, payload: &[u8]) {
        let Some(channel) = channel_of(name) else { return };
        let Some((epoch, offset, ts, data_at, json)) = parse_message(payload) else {
            tracing::warn!(channel, "a fan-out message that does not parse; ignored");
            return;
        };
        let epoch = {
            let mut interest = self.interest.lock();
            let Some(i) = interest.get_mut(channel) else { return };
            let epoch = match &i.seen {
                Some((e, _)) if **e == *epoch => e.clone(),
                _ => Arc::<str>::from(epoch),
            };
            if i.seen.as_ref().is_none_or(|(e, o)| *e != epoch || offset > *o) {
                i.seen = Some((epoch.clone(), offset));
            }
            epoch
        };
        let Some(p) = Publication::from_encoded(offset, ts, json.into(), data_at) else {
            tracing::warn!(channel, "a fan-out message whose publication does not parse; ignored");
            return;
        };
        if let Some(l) = self.listener() {
            l.deliver(channel, &epoch, &Arc::new(p));
        }
    }
}

/// `EPOCH OFFSET TS DATA_AT JSON`.
fn parse_message(payload: &[u8]) -> Option<(&str, u64, u64, u32, &str)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(5, ' ');
    let epoch = parts.next()?;
    let offset = parts.next()?.parse().ok()?;
    let ts = parts.next()?.parse().ok()?;
    let data_at = parts.next()?.parse().ok()?;
    Some((epoch, offset, ts, data_at, parts.next()?))
}

/// A stream entry `{id, {field, value, ...}}` as a publication.
fn entry(v: &Value) -> Option<Publication> {
    let Value::Array(parts) = v else { return None };
    let [Value::BulkString(id), Value::Array(fields)] = parts.as_slice() else { return None };
    let offset = std::str::from_utf8(id).ok()?.split('-').next()?.parse().ok()?;
    let (mut ts, mut data_at, mut json) = (None, None, None);
    for pair in fields.chunks(2) {
        let [Value::BulkString(f), Value::BulkString(v)] = pair else { continue };
        let v = std::str::from_utf8(v).ok()?;
        match f.as_slice() {
            b"t" => ts = v.parse().ok(),
            b"a" => data_at = v.parse().ok(),
            b"j" => json = Some(v),
            _ => {}
        }
    }
    Publication::from_encoded(offset, ts?, json?.into(), data_at?)
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// Reads `history.lua`'s answer.
fn page(v: &Value) -> Option<HistoryPage> {
    let Value::Array(parts) = v else { return None };
    if parts.is_empty() {
        return Some(HistoryPage { epoch: NO_EPOCH.into(), offset: 0, publications: Vec::new() });
    }
    let [epoch, offset, Value::Array(entries)] = parts.as_slice() else { return None };
    let offset = match offset {
        Value::Int(n) => u64::try_from(*n).ok()?,
        other => text(other)?.parse().ok()?,
    };
    let publications = entries.iter().map(|e| entry(e).map(Arc::new)).collect::<Option<Vec<_>>>()?;
    Some(HistoryPage { epoch: text(epoch)?.into(), offset, publications })
}

/// Undoes a counted interest unless disarmed (a subscribe that failed or was dropped midway).
struct Undo<'a>(Option<(&'a RedisBroker, &'a str)>);

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if let Some((b, c)) = self.0.take() {
            b.unsubscribe(c);
        }
    }
}

impl Broker for RedisBroker {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn set_listener(&self, listener: Weak<dyn Listener>) {
        let _ = self.inner.listener.set(listener);
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        p: NewPublication,
        retention: Retention,
    ) -> BoxFuture<'a, Result<Published, BrokerError>> {
        Box::pin(async move {
            let inner = &*self.inner;
            let mut conn = inner.conn()?;
            let event = match &p.event {
                Some(e) => {
                    format!(r#","event":{}"#, serde_json::to_string(e).expect("a str serializes; qed"))
                }
                None => String::new(),
            };
            let mut inv = inner.publish.prepare_invoke();
            inv.key(key(channel, "meta")).key(key(channel, "stream"));
            match &p.idempotency_key {
                Some(k) => inv.key(key(channel, &format!("key:{k}"))),
                None => inv.key(key(channel, "meta")),
            };
            inv.arg(new_epoch())
                .arg(retention.size)
                .arg(ttl_ms(retention))
                .arg(event)
                .arg(p.data.get())
                .arg(if p.idempotency_key.is_some() { "1" } else { "0" })
                .arg(key(channel, "pub"))
                .arg(if matches!(inner.target, Target::Cluster(_)) { "SPUBLISH" } else { "PUBLISH" });
            let (epoch, offset, duplicate) =
                inner.run(inv.invoke_async::<(String, u64, u8)>(&mut conn)).await?;
            Ok(Published { position: StreamPosition { epoch, offset }, duplicate: duplicate == 1 })
        })
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        range: HistoryRange,
        retention: Retention,
    ) -> BoxFuture<'a, Result<HistoryPage, BrokerError>> {
        Box::pin(async move {
            let inner = &*self.inner;
            let mut conn = inner.conn()?;
            let (how, offset, limit) = match range {
                HistoryRange::Newest(limit) => ("n", 0, limit),
                HistoryRange::After(offset, limit) => ("a", offset, limit),
            };
            let limit = limit.map_or(-1, |l| l.min(i64::MAX as usize) as i64);
            let mut inv = inner.history.prepare_invoke();
            inv.key(key(channel, "meta"))
                .key(key(channel, "stream"))
                .arg(how)
                .arg(offset)
                .arg(limit)
                .arg(retention.size)
                .arg(ttl_ms(retention));
            let v = inner.run(inv.invoke_async::<Value>(&mut conn)).await?;
            page(&v).ok_or_else(|| unavailable("redis: a history read that does not parse"))
        })
    }

    fn subscribe<'a>(
        &'a self,
        channel: &'a str,
        retention: Retention,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let inner = &*self.inner;
            inner.conn()?;
            {
                let mut interest = inner.interest.lock();
                let i = interest.entry(channel.into()).or_insert(Interest {
                    count: 0,
                    retention,
                    seen: None,
                    checked: None,
                });
                i.count += 1;
                i.retention = retention;
            }
            let mut undo = Undo(Some((self, channel)));
            let (epoch, offset) = inner.take_interest(channel, retention).await?;
            {
                let mut interest = inner.interest.lock();
                if let Some(i) = interest.get_mut(channel)
                    && i.seen.is_none()
                {
                    i.seen = Some((epoch.into(), offset));
                }
            }
            let mut subs = inner.subs.lock().await;
            if !subs.subscribed.contains(channel) {
                let sink = subs.sink.as_mut().ok_or_else(|| unavailable("redis pub/sub is unreachable"))?;
                match tokio::time::timeout(REDIS_COMMAND_TIMEOUT, sink.subscribe(vec![key(channel, "pub")]))
                    .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(unavailable(format!("redis: {e}"))),
                    Err(_) => return Err(unavailable("redis did not confirm a subscription in time")),
                }
                subs.subscribed.insert(channel.into());
            }
            undo.0 = None;
            Ok(())
        })
    }

    fn unsubscribe(&self, channel: &str) {
        let gone = {
            let mut interest = self.inner.interest.lock();
            match interest.get_mut(channel) {
                Some(i) if i.count > 1 => {
                    i.count -= 1;
                    false
                }
                Some(_) => {
                    interest.remove(channel);
                    true
                }
                None => false,
            }
        };
        if !gone {
            return;
        }
        let inner = self.inner.clone();
        let channel: Box<str> = channel.into();
        self.inner.runtime.spawn(async move {
            let mut subs = inner.subs.lock().await;
            // Interest taken again meanwhile: the subscription stays.
            if inner.interest.lock().contains_key(&channel) || !subs.subscribed.remove(&channel) {
                return;
            }
            if let Some(sink) = subs.sink.as_mut() {
                let _ =
                    tokio::time::timeout(REDIS_COMMAND_TIMEOUT, sink.unsubscribe(key(&channel, "pub"))).await;
            }
        });
    }

    fn release(&self, _channel: &str) {}

    fn held(&self) -> Option<usize> {
        None
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    fn state(&self) -> BrokerState {
        if self.inner.up.load(Ordering::Acquire) { BrokerState::Up } else { BrokerState::Down }
    }

    fn latency(&self) -> Option<Duration> {
        match self.inner.latency_us.load(Ordering::Relaxed) {
            u64::MAX => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_passwords_never_shown() {
        assert_eq!(redacted("redis://user:s3cret@host:6379/2"), "redis://***@host:6379/2");
        assert_eq!(redacted("redis://:s3cret@host:6379"), "redis://***@host:6379");
        assert_eq!(redacted("redis://host:6379"), "redis://host:6379");
        assert!(check_url("redis://127.0.0.1:6379").is_ok());
        assert!(check_url("redis://u:p@127.0.0.1:6379/3").is_ok());
        for refused in ["rediss://u:s3cret@h:1", "rediss+cluster://u:s3cret@h:1,h:2", "http://u:s3cret@h"] {
            let e = check_url(refused).unwrap_err();
            assert!(!e.contains("s3cret"), "{e}");
        }
        assert!(check_url("redis+cluster://h:1,h:2").is_ok());
        assert_eq!(
            cluster_nodes("redis+cluster://u:p@a:1,b:2"),
            Some(vec!["redis://u:p@a:1".to_string(), "redis://u:p@b:2".to_string()])
        );
        assert_eq!(redacted("redis+cluster://u:p@a:1,b:2"), "redis+cluster://***@a:1,b:2");
        assert!(check_url("rediss://h:1").unwrap_err().contains("TLS"));
    }

    #[test]
    fn keys_share_the_channel_hash_tag() {
        assert_eq!(key("a:b", "meta"), "rpchub:{a:b}:meta");
        assert_eq!(channel_of(&key("a:b", "pub")), Some("a:b"));
        assert_eq!(channel_of("other"), None);
    }

    #[test]
    fn fan_out_messages_parse() {
        let m = br#"0123456789ab 7 1700000000000 38 {"offset":7,"ts":1700000000000,"data":{"x":"a b"}}"#;
        let (epoch, offset, ts, data_at, json) = parse_message(m).unwrap();
        assert_eq!((epoch, offset, ts, data_at), ("0123456789ab", 7, 1_700_000_000_000, 38));
        let p = Publication::from_encoded(offset, ts, json.into(), data_at).unwrap();
        assert_eq!(p.data(), r#"{"x":"a b"}"#);
        assert!(parse_message(b"e 1 2").is_none());
        assert!(Publication::from_encoded(1, 2, "{}".into(), 9).is_none());
    }
}
