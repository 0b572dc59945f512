//! The Redis broker: channels' offsets, epochs, history and idempotency keys live in Redis
//! (>= 7), shared by every node that names the same Redis, and publications reach the other
//! nodes through Redis pub/sub.
//!
//! `broker = "redis://[user:password@]HOST:PORT[/DB]"` for one Redis, or
//! `"redis+cluster://[user:password@]HOST:PORT[,HOST:PORT...]"` (seed nodes) for a Redis Cluster;
//! `rediss://` and `rediss+cluster://` for TLS (rustls), verified against the system's roots or
//! `[broker_tls] ca_file`, with a client certificate (`cert_file`, `key_file`) for a Redis that
//! authenticates its clients. The password is never logged or echoed (errors show the URL with
//! its user part replaced by `***`).
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
//! atomic step: a publication is in history before any node can receive it, and messages are
//! published in offset order.
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
//! history, or announced as a `gap` when history no longer holds it; an epoch change ends the
//! channel's subscriptions with `closed` `insufficient_state`). When the pub/sub connection drops and comes back, every channel of
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
//! [`REDIS_PING_PERIOD`]) gets through again, when every channel of local interest is told it
//! may have lagged (so that a gap whose history read failed meanwhile is read now) and the
//! pub/sub connection is retried at once (until it is back, subscribes fail with
//! [`BrokerError::Unavailable`]); [`Broker::latency`] is the last ping's round trip.
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

use super::*;
use crate::config::BrokerTls;
use crate::constants::{
    REDIS_COMMAND_TIMEOUT, REDIS_PING_PERIOD, REDIS_POSITION_CHECK_PERIOD, REDIS_RELIST_PERIOD,
};
use ::redis::aio::{ConnectionLike, MultiplexedConnection, PubSubSink};
use ::redis::cluster::{ClusterClient, ClusterClientBuilder};
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use ::redis::{
    AsyncConnectionConfig, ClientTlsConfig, Cmd, FromRedisValue, Pipeline, PushKind, RedisError, RedisFuture,
    Script, TlsCertificates, ToRedisArgs, Value,
};
use futures_util::StreamExt;
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{OnceLock, Weak};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod decode;
mod link;
mod watch;

use decode::*;
pub(crate) use link::check_url;
pub use link::redacted;
use link::*;

const PUBLISH: &str = include_str!("publish.lua");
const HISTORY: &str = include_str!("history.lua");
const INTEREST: &str = include_str!("interest.lua");
const STATE: &str = include_str!("state.lua");
const PRESENCE: &str = include_str!("presence.lua");
const CURSOR: &str = include_str!("cursor.lua");

/// The pub/sub channel of read cursor moves, which every node subscribes to.
const CURSORS: &str = "rpchub:cursors";

/// Position reads of one check in flight at a time.
const POSITION_CHECKS_IN_FLIGHT: usize = 256;

/// The prefix of every key and pub/sub channel.
const PREFIX: &str = "rpchub:{";

/// The prefix of a namespace's creation notice channel (`rpchub:created:NS`).
const NOTICE: &str = "rpchub:created:";

/// The most channels one listing of a watched prefix tells of after notices may have been lost
/// (the highest `max_pattern_channels` a namespace may have).
const RELIST_MAX: usize = 100_000;

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
    /// Wakes the pub/sub reader waiting to reconnect (the command connection is back).
    pubsub_wake: tokio::sync::Notify,
    listener: OnceLock<Weak<dyn Listener>>,
    /// Channels with local interest.
    interest: Mutex<HashMap<Box<str>, Interest>>,
    /// The pub/sub connection's sink and what it is subscribed to; the lock orders subscribe
    /// and unsubscribe commands.
    subs: tokio::sync::Mutex<Subs>,
    publish: Script,
    history: Script,
    interest_script: Script,
    state: Script,
    presence: Script,
    cursor: Script,
    /// Prefixes watched for pattern subscriptions ([`Broker::watch`]), with their counts.
    watched: Mutex<HashMap<Box<str>, usize>>,
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
    /// Namespaces whose creation notices it is subscribed to.
    notices: HashSet<Box<str>>,
}

impl RedisBroker {
    /// Connects to the Redis `url` names (`redis://[user:password@]HOST:PORT[/DB]`, or
    /// `redis+cluster://[user:password@]HOST:PORT[,HOST:PORT...]`, or their TLS forms) and starts
    /// the broker's tasks on the current tokio runtime (they stop when it is dropped). Fails when
    /// the URL is not one this version serves or Redis cannot be reached now.
    pub async fn connect(url: &str) -> Result<Arc<RedisBroker>, BrokerError> {
        RedisBroker::connect_with(url, &BrokerTls::default()).await
    }

    /// [`RedisBroker::connect`], with the certificates of `tls` for a `rediss://` URL.
    pub async fn connect_with(url: &str, tls: &BrokerTls) -> Result<Arc<RedisBroker>, BrokerError> {
        check_url(url).map_err(BrokerError::Unsupported)?;
        let unsupported = |e: RedisError| BrokerError::Unsupported(format!("broker {}: {e}", redacted(url)));
        let certs = certificates(tls).map_err(BrokerError::Unsupported)?;
        let target = match cluster_nodes(url) {
            Some(nodes) => {
                let target = Target::Cluster(nodes, certs);
                target.cluster(None).map_err(unsupported)?;
                target
            }
            None => {
                let client = match certs {
                    Some(certs) => ::redis::Client::build_with_tls(url, certs),
                    None => ::redis::Client::open(url),
                }
                .map_err(unsupported)?;
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
            pubsub_wake: tokio::sync::Notify::new(),
            listener: OnceLock::new(),
            interest: Mutex::new(HashMap::new()),
            subs: tokio::sync::Mutex::new(Subs::default()),
            publish: Script::new(PUBLISH),
            history: Script::new(HISTORY),
            interest_script: Script::new(INTEREST),
            state: Script::new(STATE),
            presence: Script::new(PRESENCE),
            cursor: Script::new(CURSOR),
            watched: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
            runtime: tokio::runtime::Handle::current(),
        });
        let (ready, connected) = tokio::sync::oneshot::channel();
        tokio::spawn(inner.clone().supervise());
        match inner.target {
            Target::One(..) => tokio::spawn(inner.clone().fan_in(ready)),
            Target::Cluster(..) => tokio::spawn(inner.clone().fan_in_cluster(ready)),
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

/// Undoes a counted interest unless disarmed (a subscribe that failed or was dropped midway).
struct Undo<'a>(Option<(&'a RedisBroker, &'a str)>);

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if let Some((b, c)) = self.0.take() {
            b.unsubscribe(c);
        }
    }
}

/// Undoes a counted watch unless disarmed (a watch that failed or was dropped midway).
struct Unwatch<'a>(Option<(&'a RedisBroker, &'a str)>);

impl Drop for Unwatch<'_> {
    fn drop(&mut self) {
        if let Some((b, p)) = self.0.take() {
            b.unwatch(p);
        }
    }
}

/// The namespace of a watched prefix (`NS:...`): creation notices are per namespace.
fn namespace_of(prefix: &str) -> Option<&str> {
    prefix.split_once(':').map(|(ns, _)| ns).filter(|ns| !ns.is_empty())
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
            let json = |s: &str| serde_json::to_string(s).expect("a str serializes; qed");
            // What `Publication::keyed` writes between `ts` and `data`: the state key, the event.
            let mut fields = String::new();
            if let Some(k) = p.key.as_deref().filter(|k| retention.state && !k.is_empty()) {
                fields.push_str(r#","key":"#);
                fields.push_str(&json(k));
            }
            if let Some(e) = &p.event {
                fields.push_str(r#","event":"#);
                fields.push_str(&json(e));
            }
            let state = match retention.state {
                false => "",
                true if p.data.get().trim() == "null" => "d",
                true => "s",
            };
            // The command's size: six names made of the channel's, the data, the fields, the
            // keys, and the fixed arguments with the protocol's framing (under 256 bytes).
            let given = [p.idempotency_key.as_deref(), p.key.as_deref()].map(|k| k.map_or(0, str::len));
            let bytes =
                6 * channel.len() + p.data.get().len() + fields.len() + given.iter().sum::<usize>() + 256;
            let mut call = Eval::new(&inner.publish, 4, bytes);
            call.key(channel, &["meta"]).key(channel, &["stream"]);
            match &p.idempotency_key {
                Some(k) => call.key(channel, &["key:", k]),
                None => call.key(channel, &["meta"]),
            };
            call.key(channel, &["state"]);
            call.new_epoch()
                .arg(retention.size)
                .arg(ttl_ms(retention))
                .arg(fields.as_str())
                .arg(p.data.get())
                .arg(if p.idempotency_key.is_some() { "1" } else { "0" })
                .key(channel, &["pub"])
                .arg(if matches!(inner.target, Target::Cluster(..)) { "SPUBLISH" } else { "PUBLISH" })
                .joined(&[NOTICE, namespace(channel)])
                .arg(channel)
                .arg(state)
                .arg(p.key.as_deref().unwrap_or(""));
            let (epoch, offset, duplicate) = inner.run(call.invoke::<(String, u64, u8)>(&mut conn)).await?;
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
            page(&v, retention.state).ok_or_else(|| unavailable("redis: a history read that does not parse"))
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

    fn keyed_state<'a>(
        &'a self,
        channel: &'a str,
        retention: Retention,
    ) -> BoxFuture<'a, Result<HistoryPage, BrokerError>> {
        Box::pin(async move {
            let inner = &*self.inner;
            let mut conn = inner.conn()?;
            let mut inv = inner.state.prepare_invoke();
            inv.key(key(channel, "meta")).key(key(channel, "state")).arg(ttl_ms(retention));
            let v = inner.run(inv.invoke_async::<Value>(&mut conn)).await?;
            state_page(&v).ok_or_else(|| unavailable("redis: a state read that does not parse"))
        })
    }

    fn streams<'a>(&'a self, prefix: &'a str, max: usize) -> BoxFuture<'a, Result<Vec<String>, BrokerError>> {
        Box::pin(self.inner.streams(prefix, max))
    }

    fn watch<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let inner = &*self.inner;
            let Some(ns) = namespace_of(prefix) else {
                return Err(BrokerError::Unsupported(format!(
                    "the redis broker watches prefixes within one namespace (NAMESPACE:...), not {prefix}"
                )));
            };
            inner.conn()?;
            *inner.watched.lock().entry(prefix.into()).or_default() += 1;
            let mut undo = Unwatch(Some((self, prefix)));
            let mut subs = inner.subs.lock().await;
            if !subs.notices.contains(ns) {
                let sink = subs.sink.as_mut().ok_or_else(|| unavailable("redis pub/sub is unreachable"))?;
                match tokio::time::timeout(REDIS_COMMAND_TIMEOUT, sink.subscribe_notices(vec![notice_of(ns)]))
                    .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(unavailable(format!("redis: {e}"))),
                    Err(_) => return Err(unavailable("redis did not confirm a subscription in time")),
                }
                subs.notices.insert(ns.into());
            }
            undo.0 = None;
            Ok(())
        })
    }

    fn presence_update<'a>(
        &'a self,
        channel: &'a str,
        join: &'a [PresenceClient],
        leave: &'a [String],
        ttl: Duration,
        signal: bool,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let inner = &*self.inner;
            let mut conn = inner.conn()?;
            let mut inv = inner.presence.prepare_invoke();
            inv.key(key(channel, "presence")).key(key(channel, "presence_at"));
            inv.arg("u").arg((ttl.as_millis() as u64).max(1));
            inner.signal_args(&mut inv, channel, signal);
            inv.arg(join.len());
            for c in join {
                inv.arg(&c.client).arg(&c.user);
            }
            for c in leave {
                inv.arg(c);
            }
            inner.run(inv.invoke_async::<Value>(&mut conn)).await.map(drop)
        })
    }

    fn presence<'a>(
        &'a self,
        channel: &'a str,
        max: usize,
        signal: bool,
    ) -> BoxFuture<'a, Result<PresencePage, BrokerError>> {
        Box::pin(async move {
            let inner = &*self.inner;
            let mut conn = inner.conn()?;
            let mut inv = inner.presence.prepare_invoke();
            inv.key(key(channel, "presence")).key(key(channel, "presence_at"));
            inv.arg("r").arg(max);
            inner.signal_args(&mut inv, channel, signal);
            let (count, users, listed) =
                inner.run(inv.invoke_async::<(usize, usize, Vec<String>)>(&mut conn)).await?;
            let clients = listed
                .chunks_exact(2)
                .map(|p| PresenceClient { client: p[0].clone(), user: p[1].clone() })
                .collect();
            Ok(PresencePage { clients, count, users })
        })
    }

    fn cursor_set<'a>(
        &'a self,
        user: &'a str,
        channel: &'a str,
        offset: u64,
        origin: &'a str,
    ) -> BoxFuture<'a, Result<u64, BrokerError>> {
        Box::pin(async move {
            let inner = &*self.inner;
            let mut conn = inner.conn()?;
            let moved =
                CursorMove { user: user.into(), channel: channel.into(), offset, origin: origin.into() };
            let message = serde_json::to_string(&moved).expect("a cursor move serializes; qed");
            let mut inv = inner.cursor.prepare_invoke();
            inv.key(cursors_key(user))
                .arg(channel)
                .arg(offset)
                .arg(crate::constants::MAX_CURSORS_PER_USER)
                .arg(message)
                .arg(CURSORS);
            match inner.run(inv.invoke_async::<i64>(&mut conn)).await? {
                -1 => Err(BrokerError::Full(crate::constants::MAX_CURSORS_PER_USER)),
                stored => Ok(stored.max(0) as u64),
            }
        })
    }

    fn cursor_get<'a>(
        &'a self,
        user: &'a str,
        channels: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<u64>, BrokerError>> {
        Box::pin(async move {
            if channels.is_empty() {
                return Ok(Vec::new());
            }
            let inner = &*self.inner;
            let mut conn = inner.conn()?;
            let mut cmd = ::redis::cmd("HMGET");
            cmd.arg(cursors_key(user)).arg(channels);
            let got = inner.run(cmd.query_async::<Vec<Option<u64>>>(&mut conn)).await?;
            Ok(got.into_iter().map(|o| o.unwrap_or(0)).collect())
        })
    }

    fn unwatch(&self, prefix: &str) {
        let ns = {
            let mut watched = self.inner.watched.lock();
            match watched.get_mut(prefix) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    return;
                }
                Some(_) => {
                    watched.remove(prefix);
                }
                None => return,
            }
            match namespace_of(prefix) {
                Some(ns) if !watched.keys().any(|p| namespace_of(p) == Some(ns)) => Box::<str>::from(ns),
                _ => return,
            }
        };
        let inner = self.inner.clone();
        self.inner.runtime.spawn(async move {
            let mut subs = inner.subs.lock().await;
            // Watched again meanwhile: the subscription stays.
            let again = inner.watched.lock().keys().any(|p| namespace_of(p) == Some(&*ns));
            if again || !subs.notices.remove(&ns) {
                return;
            }
            if let Some(sink) = subs.sink.as_mut() {
                let _ = tokio::time::timeout(REDIS_COMMAND_TIMEOUT, sink.unsubscribe_notices(notice_of(&ns)))
                    .await;
            }
        });
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
        for refused in ["http://u:s3cret@h", "redis+cluster://u:s3cret@h:1,h:x"] {
            let e = check_url(refused).unwrap_err();
            assert!(!e.contains("s3cret"), "{e}");
        }
        assert!(check_url("rediss://u:p@h:1").is_ok() && check_url("rediss+cluster://h:1,h:2").is_ok());
        assert_eq!(
            cluster_nodes("rediss+cluster://a:1,b:2"),
            Some(vec!["rediss://a:1".into(), "rediss://b:2".into()])
        );
        assert!(check_url("redis+cluster://h:1,h:2").is_ok());
        assert_eq!(
            cluster_nodes("redis+cluster://u:p@a:1,b:2"),
            Some(vec!["redis://u:p@a:1".to_string(), "redis://u:p@b:2".to_string()])
        );
        assert_eq!(redacted("redis+cluster://u:p@a:1,b:2"), "redis+cluster://***@a:1,b:2");
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
