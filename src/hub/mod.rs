//! The hub: this node's channels, their local subscribers, and the fan-out of publications.
//! It knows channels, offsets and subscribers; it writes no JSON-RPC and no WebSocket framing
//! (front doors do, through their [`Encoding`]).
//!
//! # Snapshot, then live, with no gap and no duplicate: two phases
//!
//! [`Hub::prepare`] registers the subscriber as *pending* on the channel (publications delivered
//! meanwhile are buffered for it), asks the broker for interest and reads history; it may wait
//! for the broker, and holds nothing of any other subscription while it does. It returns a
//! [`Pending`] subscription that knows its id. [`Pending::go_live`] then, under the channel's
//! lock, queues the caller's answer (the frame that tells the client the id), the snapshot
//! (reaching offset N) and the buffered publications above N, and turns the subscriber live. The
//! broker's contract (each publication visible in history before it is delivered) and the
//! channel's own checks ([`channel`]) make the buffered ones start at N + 1: every publication
//! reaches the subscriber once, in order, after the answer, whatever publishers do meanwhile. A
//! `Pending` dropped instead (the call failed, the connection went) undoes the registration.
//!
//! A [`Subscription`] unsubscribes when dropped; a connection's subscriptions therefore end with
//! it, whichever way it ends.
//!
//! # Lock order
//!
//! Taken in this order, never the other way: the broker's stream lock (the memory broker calls
//! [`Listener::deliver`] under it) -> the hub's channel map -> a channel's state -> an outbox's
//! state. Nothing that holds a channel's state calls into the broker; history reads for a gap
//! run in a task of their own and take the channel's lock after the read.

mod channel;
mod conflate;
mod event;
mod id;
pub mod presence;
mod state;
mod subscription;
#[cfg(test)]
mod tests;

pub use conflate::SLOW_INTERVAL;
pub use event::{Deflated, Encoding, Encodings, Event, Filter, Sink, frame_of, reason};
pub use id::{SUB_ID_LEN, SubId, SubIdGen};
pub use subscription::{Pending, Subscription};

use crate::broker::{
    Broker, BrokerError, BrokerState, HistoryPage, HistoryRange, Listener, NO_EPOCH, NewPublication,
    PresenceClient, PresencePage, PresenceSignal, Publication, Published, Retention, StreamPosition,
};
use crate::config::Config;
use crate::metrics::{BrokerOp, BrokerReading, Metrics, SlotRefusal};
use channel::{Arrival, ChannelState, PendingSub};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::{Arc, Weak};

/// Hub failures, mapped to each front door's errors at its edge.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A malformed channel name.
    #[error("invalid channel: {0}")]
    InvalidChannel(String),
    /// The node holds `limits.max_channels` channels with subscribers.
    #[error("this node already holds its maximum of {0} channels (limits.max_channels)")]
    TooManyChannels(usize),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The subscriber's connection fell behind or closed while subscribing.
    #[error("the connection closed while subscribing")]
    ConnectionClosed,
    /// Publications kept arriving faster than the snapshot could be taken.
    #[error("the channel is too busy to take a snapshot; retry")]
    Busy,
}

/// What a history read returns.
#[derive(Debug)]
pub struct History {
    /// The stream's position when read.
    pub position: StreamPosition,
    /// Oldest first.
    pub publications: Vec<Arc<Publication>>,
}

/// A channel's entry in `channels`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct ChannelInfo {
    /// Channel name.
    pub channel: String,
    /// Subscribers on this node.
    pub subscribers: usize,
    /// Newest offset this node has delivered.
    pub offset: u64,
}

#[derive(Debug)]
struct HubChannel {
    name: Arc<str>,
    /// Its namespace's `heartbeat`.
    heartbeat: Option<std::time::Duration>,
    /// Its namespace is `mode = "state"`.
    keyed: bool,
    state: Mutex<ChannelState>,
}

/// Snapshot reads tried before a subscribe gives up on a channel that is too busy.
const SNAPSHOT_ATTEMPTS: usize = 5;
/// History reads tried to fill one gap before the channel gives up on its stream.
const FILL_ATTEMPTS: usize = 3;
/// Deliveries held while a gap is filled; more means the channel cannot keep up and gives up.
const FILL_HOLD_MAX: usize = 100_000;

/// Told of publications on channels whose name starts with its prefix (a pattern
/// subscription), whether or not they have subscribers on this node ([`Hub::watch`]). Called
/// under the broker's stream lock: it must not call into the broker or the hub's channels.
pub trait ChannelWatch: Send + Sync + 'static {
    /// The literal start of the channels it wants.
    fn prefix(&self) -> &str;
    /// A publication was made on `channel`.
    fn published(&self, channel: &str);
}

/// What the hub calls for each cursor move the broker tells of ([`Hub::on_cursor_moved`]).
pub type CursorHook = Box<dyn Fn(&crate::broker::CursorMove) + Send + Sync>;

/// This node's channels and subscribers.
pub struct Hub {
    config: Arc<Config>,
    broker: Arc<dyn Broker>,
    channels: RwLock<HashMap<Arc<str>, Arc<HubChannel>>>,
    ids: SubIdGen,
    metrics: Arc<Metrics>,
    /// Conflated subscribers holding a publication, and the task that sends them.
    flush: Arc<conflate::FlushQueue>,
    /// Pattern subscriptions, told of publications under their prefix.
    watches: RwLock<Vec<Arc<dyn ChannelWatch>>>,
    /// This node's clients in the presence of channels that keep it.
    presence: Arc<presence::Presence>,
    /// Told of every user's cursor move (the session layer's feeds).
    cursor_hook: RwLock<Option<CursorHook>>,
    /// For the tasks that fill gaps.
    me: Weak<Hub>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("broker", &self.broker.name()).finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub over `broker`, registered as its listener.
    pub fn new(config: Arc<Config>, broker: Arc<dyn Broker>, metrics: Arc<Metrics>) -> Arc<Hub> {
        let hub = Arc::new_cyclic(|me| Hub {
            presence: presence::Presence::new(broker.clone(), config.presence_ttl),
            config,
            broker,
            channels: RwLock::default(),
            ids: SubIdGen::default(),
            flush: conflate::FlushQueue::new(metrics.clone()),
            watches: RwLock::default(),
            cursor_hook: RwLock::default(),
            metrics,
            me: me.clone(),
        });
        let weak: Weak<Hub> = Arc::downgrade(&hub);
        hub.metrics.label_namespaces(hub.config.namespaces.keys().map(String::as_str));
        hub.broker.set_listener(weak.clone());
        let counted = weak.clone();
        hub.metrics.count_channels_with(move || counted.upgrade().map_or(0, |h| h.held_channels()));
        hub.metrics.read_broker_with(hub.broker.name(), move || match weak.upgrade() {
            Some(h) => BrokerReading { up: h.broker.state() == BrokerState::Up, latency: h.broker.latency() },
            None => BrokerReading { up: false, latency: None },
        });
        hub
    }

    /// Channels the node holds state for: the streams of a broker that keeps them in this
    /// process (the embedded one makes a stream for every channel with subscribers, so those are
    /// among them, but for the moment between a subscriber's arrival and its stream's), else
    /// the channels with local subscribers. What `rpchub_channels` says.
    pub fn held_channels(&self) -> usize {
        let local = self.channels.read().len();
        self.broker.held().map_or(local, |streams| streams.max(local))
    }

    /// `e`, counted when it is a refusal of one more channel.
    fn broker_error(&self, e: BrokerError) -> HubError {
        if matches!(e, BrokerError::Full(_)) {
            self.metrics.slot_refused(SlotRefusal::MaxChannels);
        }
        HubError::Broker(e)
    }

    /// `Err` at once when the broker says it is down ([`Broker::state`]): publishes, subscribes
    /// and history reads fail fast then, without waiting on a broker that cannot answer. The
    /// subscribers the node holds stay: the broker tells the hub when it is back
    /// ([`Listener::lagged`]), and their channels catch up from history.
    pub fn check_broker(&self) -> Result<(), HubError> {
        match self.broker.state() {
            BrokerState::Up => Ok(()),
            BrokerState::Down => Err(HubError::Broker(BrokerError::Unavailable(format!(
                "the {} broker cannot be reached; retry once it is back (GET /health answers 200 again)",
                self.broker.name()
            )))),
        }
    }

    /// The broker underneath.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn retention(&self, channel: &str) -> Retention {
        let ns = self.config.namespace_of(channel);
        Retention { size: ns.history_size, ttl: ns.history_ttl, state: ns.mode == crate::config::Mode::State }
    }

    fn channel(&self, name: &str) -> Result<Arc<HubChannel>, HubError> {
        if let Some(c) = self.channels.read().get(name) {
            return Ok(c.clone());
        }
        let mut map = self.channels.write();
        if let Some(c) = map.get(name) {
            return Ok(c.clone());
        }
        let max = self.config.limits.max_channels;
        if map.len() >= max {
            self.metrics.slot_refused(SlotRefusal::MaxChannels);
            return Err(HubError::TooManyChannels(max));
        }
        let ns = self.config.namespace_of(name);
        let (heartbeat, keyed) = (ns.heartbeat, ns.mode == crate::config::Mode::State);
        let c = Arc::new(HubChannel { name: name.into(), heartbeat, keyed, state: Mutex::default() });
        map.insert(c.name.clone(), c.clone());
        Ok(c)
    }

    /// Takes `channel` out of the map if nobody is subscribed or subscribing, and tells the
    /// broker, which frees the stream's slot too when it retains nothing ([`Broker::release`]).
    /// The broker is called after both locks are let go (the lock order); a subscriber that
    /// comes meanwhile finds a new channel in the map, and takes interest in the stream before
    /// or after the release: either way the broker holds the stream it reads.
    fn remove_if_unused(&self, channel: &Arc<HubChannel>) {
        let removed = {
            let mut map = self.channels.write();
            let mut st = channel.state.lock();
            let unused = st.live.is_empty() && st.pending.is_empty() && !st.removed;
            if unused {
                st.removed = true;
                map.remove(&channel.name);
            }
            unused
        };
        if removed {
            self.broker.release(&channel.name);
        }
    }

    /// Phase one of a subscribe: registers interest in `channel` and reads the snapshot (with
    /// recovery from `since` when the history still covers it, else the newest `limit` retained
    /// publications). Publications that arrive meanwhile are kept for [`Pending::go_live`].
    pub async fn prepare(
        &self,
        channel: &str,
        since: Option<StreamPosition>,
        limit: Option<usize>,
    ) -> Result<Pending, HubError> {
        self.prepare_as(channel, since, limit, self.ids.next()).await
    }

    /// A fresh subscription id.
    pub fn next_id(&self) -> SubId {
        self.ids.next()
    }

    /// [`Hub::prepare`] with the id `id` (a pattern's, shared by its channels' subscriptions;
    /// one per channel).
    pub async fn prepare_as(
        &self,
        channel: &str,
        since: Option<StreamPosition>,
        limit: Option<usize>,
        id: SubId,
    ) -> Result<Pending, HubError> {
        self.config.check_channel(channel).map_err(HubError::InvalidChannel)?;
        self.check_broker()?;
        let hub = self.me.upgrade().expect("a hub in use is alive; qed");
        let ch = loop {
            let ch = self.channel(channel)?;
            let mut st = ch.state.lock();
            if st.removed {
                continue;
            }
            st.pending.push(PendingSub { id, buffered: Vec::new(), stale: false });
            drop(st);
            break ch;
        };
        // From here on, a failure (or this future being dropped) undoes the registration.
        let mut pending = Pending {
            hub,
            channel: ch,
            id,
            page: HistoryPage { epoch: "".into(), offset: 0, publications: Vec::new() },
            recovered: false,
            earliest: None,
            conflate: self.config.namespace_of(channel).conflate_ms.map(std::time::Duration::from_millis),
            on_slow: self.config.namespace_of(channel).on_slow == crate::config::OnSlow::Conflate,
            checksum: false,
            interest: false,
            done: false,
        };
        let retention = self.retention(channel);
        self.timed(BrokerOp::Subscribe, self.broker.subscribe(channel, retention))
            .await
            .map_err(|e| self.broker_error(e))?;
        pending.interest = true;
        // The buffer of publications delivered while history is read is bounded; if a busy
        // channel overflows it (or the channel lost track meanwhile), the read is done again.
        for _ in 0..SNAPSHOT_ATTEMPTS {
            let (page, recovered, earliest) =
                self.snapshot_page(channel, since.clone(), limit, retention).await?;
            let mut st = pending.channel.state.lock();
            let at = st
                .pending
                .iter()
                .position(|p| p.id == id)
                .expect("only its owner removes a pending entry; qed");
            if fits(&st, &st.pending[at], &page) {
                drop(st);
                pending.page = page;
                pending.recovered = recovered;
                pending.earliest = earliest;
                return Ok(pending);
            }
            st.pending[at].stale = false;
            st.pending[at].buffered.clear();
        }
        Err(HubError::Busy)
    }

    async fn snapshot_page(
        &self,
        channel: &str,
        since: Option<StreamPosition>,
        limit: Option<usize>,
        retention: Retention,
    ) -> Result<(HistoryPage, bool, Option<StreamPosition>), HubError> {
        if retention.state {
            // The whole state, always: `recovered` says whether it is of since's stream.
            let page = self.timed(BrokerOp::History, self.broker.keyed_state(channel, retention)).await?;
            let same = since.is_some_and(|s| *s.epoch == *page.epoch && *page.epoch != *NO_EPOCH);
            return Ok((page, same, None));
        }
        let Some(since) = since else {
            return Ok((
                self.read_history(channel, HistoryRange::Newest(limit), retention).await?,
                false,
                None,
            ));
        };
        let page = self.read_history(channel, HistoryRange::After(since.offset, None), retention).await?;
        let covered = *page.epoch == since.epoch
            && since.offset <= page.offset
            && (since.offset == page.offset
                || page.publications.first().map(|p| p.offset) == Some(since.offset + 1));
        if covered {
            return Ok((page, true, None));
        }
        let newest = self.read_history(channel, HistoryRange::Newest(limit), retention).await?;
        // The oldest retained: the newest page's first when it holds all of history, else one
        // more read of the single oldest.
        let oldest = match limit {
            None => newest.publications.first().map(|p| p.offset),
            Some(_) => {
                let first = self.read_history(channel, HistoryRange::After(0, Some(1)), retention).await?;
                first.publications.first().filter(|_| first.epoch == newest.epoch).map(|p| p.offset)
            }
        };
        let earliest =
            StreamPosition { epoch: newest.epoch.to_string(), offset: oldest.unwrap_or(newest.offset + 1) };
        Ok((newest, false, Some(earliest)))
    }

    /// A subscription left `channel`: one broker interest less, the channel forgotten when
    /// nobody is subscribed or subscribing. Returns whether it was still live.
    fn leave(&self, channel: &Arc<HubChannel>, id: SubId, closed: Option<&str>) -> bool {
        let mut st = channel.state.lock();
        let at = st.live.iter().position(|s| s.id() == id);
        if let Some(i) = at {
            let s = st.live.swap_remove(i);
            s.end();
            if let Some(why) = closed {
                s.sink().push_own(&Event::Closed { channel: &channel.name, reason: why });
            }
        }
        let unused = st.live.is_empty() && st.pending.is_empty();
        drop(st);
        self.metrics.subscriptions.dec();
        self.broker.unsubscribe(&channel.name);
        if unused {
            self.remove_if_unused(channel);
        }
        at.is_some()
    }

    /// The node is shutting down: every live subscription is told `closed` `shutdown` as its last
    /// event (the connections are closed with 1001 right after). Returns how many were told.
    pub fn close_for_shutdown(&self) -> usize {
        let channels: Vec<Arc<HubChannel>> = self.channels.read().values().cloned().collect();
        let mut told = 0;
        for ch in channels {
            let mut st = ch.state.lock();
            for s in st.live.iter_mut() {
                s.close_last(&ch.name, reason::SHUTDOWN);
                told += 1;
            }
        }
        told
    }

    /// Sends `heartbeat` events on the channels of namespaces with a `heartbeat` that had no
    /// publication (nor heartbeat) for that long, as of `now`. Returns how many subscribers
    /// were told. Called every [`Hub::heartbeat_tick`].
    pub fn send_heartbeats(&self, now: std::time::Instant) -> u64 {
        let due: Vec<Arc<HubChannel>> =
            self.channels.read().values().filter(|c| c.heartbeat.is_some()).cloned().collect();
        let mut told = 0;
        for ch in due {
            let every = ch.heartbeat.expect("filtered above; qed");
            let mut st = ch.state.lock();
            match st.quiet_since {
                Some(t) if now.saturating_duration_since(t) >= every => told += st.heartbeat(&ch.name, now),
                Some(_) => {}
                None => st.quiet_since = Some(now),
            }
        }
        told
    }

    /// How often [`Hub::send_heartbeats`] should run: a quarter of the shortest namespace
    /// `heartbeat` (so a heartbeat is at most a quarter late), between 20 ms and 1 s; `None`
    /// when no namespace has one.
    pub fn heartbeat_tick(&self) -> Option<std::time::Duration> {
        let c = &self.config;
        let shortest =
            c.namespaces.values().chain([&c.default_namespace]).filter_map(|n| n.heartbeat).min()?;
        Some((shortest / 4).clamp(std::time::Duration::from_millis(20), std::time::Duration::from_secs(1)))
    }

    /// Tells `w` of every publication on a channel under its prefix from now on, until
    /// [`Hub::unwatch`]. Fails when the broker cannot ([`crate::broker::PATTERNS_UNSUPPORTED`]).
    pub async fn watch(&self, w: Arc<dyn ChannelWatch>) -> Result<(), HubError> {
        /// Takes `w` off the list unless disarmed: the broker refused, or the call was dropped
        /// midway (the broker undoes its own part then).
        struct Unlist<'a>(&'a Hub, Option<usize>);
        impl Drop for Unlist<'_> {
            fn drop(&mut self) {
                if let Some(at) = self.1 {
                    self.0.watches.write().retain(|x| Arc::as_ptr(x) as *const () as usize != at);
                }
            }
        }
        // Listed before the broker is asked: what it tells as soon as it watches reaches `w`.
        self.watches.write().push(w.clone());
        let mut unlist = Unlist(self, Some(Arc::as_ptr(&w) as *const () as usize));
        self.broker.watch(w.prefix()).await.map_err(HubError::Broker)?;
        unlist.1 = None;
        Ok(())
    }

    /// Stops telling `w`; nothing if it was not watching.
    pub fn unwatch(&self, w: &dyn ChannelWatch) {
        let at = w as *const dyn ChannelWatch as *const ();
        let mut ws = self.watches.write();
        if let Some(i) = ws.iter().position(|x| Arc::as_ptr(x) as *const () == at) {
            let gone = ws.swap_remove(i);
            drop(ws);
            self.broker.unwatch(gone.prefix());
        }
    }

    /// The channels with a stream whose name starts with `prefix`, sorted, at most `max + 1`.
    pub async fn streams(&self, prefix: &str, max: usize) -> Result<Vec<String>, HubError> {
        let mut names = self.broker.streams(prefix, max).await.map_err(HubError::Broker)?;
        names.sort();
        Ok(names)
    }

    /// A broker operation, timed for `rpchub_broker_duration_seconds`.
    async fn timed<T>(&self, op: BrokerOp, f: impl Future<Output = T>) -> T {
        let at = std::time::Instant::now();
        let out = f.await;
        self.metrics.broker_op(op, at.elapsed());
        out
    }

    /// Reads `channel`'s history from the broker, timed.
    async fn read_history(
        &self,
        channel: &str,
        range: HistoryRange,
        retention: Retention,
    ) -> Result<HistoryPage, BrokerError> {
        self.timed(BrokerOp::History, self.broker.history(channel, range, retention)).await
    }

    /// Publishes to `channel`.
    pub async fn publish(&self, channel: &str, p: NewPublication) -> Result<Published, HubError> {
        self.config.check_channel(channel).map_err(HubError::InvalidChannel)?;
        self.check_broker()?;
        let published = self
            .timed(BrokerOp::Publish, self.broker.publish(channel, p, self.retention(channel)))
            .await
            .map_err(|e| self.broker_error(e))?;
        if !published.duplicate {
            self.metrics.publications.inc();
            self.metrics.namespace(channel).publications.inc();
        }
        Ok(published)
    }

    /// Reads history: with `since`, the first `limit` publications after it (from the oldest
    /// retained when `since` is from another epoch); without, the newest `limit`. A channel
    /// that has no stream reads as an empty page in [`NO_EPOCH`] at offset 0, and takes no slot:
    /// nothing is created for it, here or in the broker.
    pub async fn history(
        &self,
        channel: &str,
        since: Option<StreamPosition>,
        limit: Option<usize>,
    ) -> Result<History, HubError> {
        self.config.check_channel(channel).map_err(HubError::InvalidChannel)?;
        self.check_broker()?;
        let retention = self.retention(channel);
        let range = match &since {
            Some(s) => HistoryRange::After(s.offset, limit),
            None => HistoryRange::Newest(limit),
        };
        let mut page = self.read_history(channel, range, retention).await?;
        if *page.epoch != *NO_EPOCH && since.is_some_and(|s| *s.epoch != *page.epoch) {
            page = self.read_history(channel, HistoryRange::After(0, limit), retention).await?;
        }
        Ok(History {
            position: StreamPosition { epoch: page.epoch.to_string(), offset: page.offset },
            publications: page.publications,
        })
    }

    /// `who`'s presence in `channel` through one more subscription, when its namespace keeps
    /// presence (`presence` or `join_leave`); dropping the guard undoes it ([`presence`]).
    /// `who` is asked only then.
    pub fn enter_presence(
        &self,
        channel: &str,
        who: impl FnOnce() -> PresenceClient,
    ) -> Option<presence::PresenceGuard> {
        let ns = self.config.namespace_of(channel);
        (ns.presence || ns.join_leave).then(|| self.presence.enter(channel, &who(), ns.join_leave))
    }

    /// `channel`'s presence on every node, at most `max` clients listed: this node's pending
    /// changes of it are sent first, so a client that subscribed finds itself.
    pub async fn presence(&self, channel: &str, max: usize) -> Result<PresencePage, HubError> {
        self.config.check_channel(channel).map_err(HubError::InvalidChannel)?;
        self.check_broker()?;
        self.presence.flush_channel(channel).await;
        let signal = self.config.namespace_of(channel).join_leave;
        Ok(self.broker.presence(channel, max, signal).await?)
    }

    /// Calls `hook` for every user's cursor move from now on (one hook; a second replaces it).
    /// Called under the broker's lock: it must not call into the broker or the hub.
    pub fn on_cursor_moved(&self, hook: CursorHook) {
        *self.cursor_hook.write() = Some(hook);
    }

    /// Raises `user`'s read cursor of `channel` to `offset` (never beyond the channel's offset:
    /// `Err` with that offset then) and returns the stored value; `origin` (the client that
    /// set it) is not told of the move.
    pub async fn cursor_set(
        &self,
        user: &str,
        channel: &str,
        offset: u64,
        origin: &str,
    ) -> Result<Result<u64, u64>, HubError> {
        self.config.check_channel(channel).map_err(HubError::InvalidChannel)?;
        self.check_broker()?;
        let at = self.position(channel).await?;
        if offset > at {
            return Ok(Err(at));
        }
        Ok(Ok(self.broker.cursor_set(user, channel, offset, origin).await?))
    }

    /// `user`'s read cursors of `channels`, in order (0: never set).
    pub async fn cursor_get(&self, user: &str, channels: &[String]) -> Result<Vec<u64>, HubError> {
        for c in channels {
            self.config.check_channel(c).map_err(HubError::InvalidChannel)?;
        }
        self.check_broker()?;
        Ok(self.broker.cursor_get(user, channels).await?)
    }

    /// Publications of `channel` after `cursor`: `(count, capped)`, the count capped at what
    /// history holds (`capped` true when publications between the cursor and the oldest
    /// retained one are no longer kept).
    pub async fn unread(&self, channel: &str, cursor: u64) -> Result<(u64, bool), HubError> {
        let retention = self.retention(channel);
        let newest = self.read_history(channel, HistoryRange::Newest(Some(0)), retention).await?;
        if cursor >= newest.offset {
            return Ok((0, false));
        }
        let oldest = self.read_history(channel, HistoryRange::After(cursor, Some(1)), retention).await?;
        let first = oldest.publications.first().filter(|_| oldest.epoch == newest.epoch).map(|p| p.offset);
        Ok(match first {
            Some(o) if o == cursor + 1 => (newest.offset - cursor, false),
            Some(o) => (newest.offset - o + 1, true),
            None => (0, true),
        })
    }

    /// `channel`'s newest offset (0 when it has no stream).
    async fn position(&self, channel: &str) -> Result<u64, HubError> {
        let page = self.read_history(channel, HistoryRange::Newest(Some(0)), self.retention(channel)).await?;
        Ok(page.offset)
    }

    /// Channels with subscribers on this node whose name starts with `prefix`, sorted by name.
    pub fn channels(&self, prefix: &str) -> Vec<ChannelInfo> {
        let map = self.channels.read();
        let mut v: Vec<ChannelInfo> = map
            .values()
            .filter(|c| c.name.starts_with(prefix))
            .map(|c| {
                let st = c.state.lock();
                ChannelInfo { channel: c.name.to_string(), subscribers: st.live.len(), offset: st.offset }
            })
            .filter(|c| c.subscribers > 0)
            .collect();
        v.sort_by(|a, b| a.channel.cmp(&b.channel));
        v
    }

    /// Fills a gap in `ch`'s deliveries from history, then delivers what was held. A stretch
    /// history no longer holds is announced (`gap`, `broker_lost`) and the stream goes on after
    /// it; a new epoch meanwhile gives up on the stream (every subscriber told
    /// `insufficient_state`).
    async fn fill(self: Arc<Self>, ch: Arc<HubChannel>) {
        let retention = self.retention(&ch.name);
        let mut holes = 0;
        loop {
            let from = ch.state.lock().offset;
            let page = self.read_history(&ch.name, HistoryRange::After(from, None), retention).await;
            let mut st = ch.state.lock();
            let Some(held) = st.filling.take() else { return };
            let page = match page {
                Ok(page) if st.epoch.as_deref() == Some(&*page.epoch) && st.offset == from => page,
                Err(BrokerError::Unavailable(e)) => {
                    // The broker went away: the subscribers stay where they are, and what was
                    // held is dropped. Nothing is skipped: the channel's position did not move,
                    // so the next delivery past it opens the gap again, and the broker, back,
                    // says the channel may have lagged, which reads from that position.
                    st.recheck = false;
                    drop(st);
                    tracing::info!(channel = %ch.name, "a gap waits for the broker to be back: {e}");
                    return;
                }
                _ => break,
            };
            let mut all: Vec<Arc<Publication>> = page.publications.into_iter().chain(held).collect();
            all.sort_by_key(|p| p.offset);
            let pending_max = self.config.limits.outbound_queue_messages;
            let mut delivered = 0;
            let mut rest = Vec::new();
            for (i, p) in all.iter().enumerate() {
                if p.offset <= st.offset {
                    continue;
                }
                if p.offset != st.offset + 1 {
                    rest = all[i..].to_vec();
                    break;
                }
                delivered +=
                    st.deliver(&ch.name, p, pending_max, &self.metrics.publish_to_write, &self.flush);
            }
            self.metrics.deliveries.inc_by(delivered);
            self.metrics.namespace(&ch.name).deliveries.inc_by(delivered);
            if rest.is_empty() {
                if st.recheck {
                    // Asked to check again meanwhile: one more read, from where it stands now.
                    st.recheck = false;
                    st.filling = Some(Vec::new());
                    continue;
                }
                self.metrics.gaps_filled.inc();
                return;
            }
            // Still a hole: history had not caught up, or lost it. Read again a few times; then
            // it is lost for good (every publication is in history before it is delivered, so
            // history that does not hold it now never will): announced, and the stream goes on.
            holes += 1;
            if holes >= FILL_ATTEMPTS && ch.keyed {
                // A state channel cannot go on past a lost stretch: its state is not known.
                break;
            }
            if holes >= FILL_ATTEMPTS {
                let (from, to) = (st.offset + 1, rest[0].offset - 1);
                let told = st.announce_gap(&ch.name, from, to, reason::BROKER_LOST);
                self.metrics.gaps_announced.inc();
                tracing::warn!(channel = %ch.name, from, to, told, "a stretch of a channel's stream is lost; its subscribers were told (gap)");
                holes = 0;
            }
            st.filling = Some(rest);
        }
        let mut st = ch.state.lock();
        let closed = st.lose_track(&ch.name);
        drop(st);
        self.metrics.streams_lost.inc();
        tracing::warn!(channel = %ch.name, closed, "lost track of a channel's stream; its subscribers were told to resubscribe");
    }

    fn spawn_fill(&self, ch: Arc<HubChannel>) {
        if let Some(hub) = self.me.upgrade() {
            tokio::spawn(hub.fill(ch));
        }
    }
}

/// True when a pending subscriber's history read and the deliveries buffered for it join
/// without a gap: same epoch as the channel's deliveries, and the first buffered publication
/// above the snapshot is the one right after it; with none above it, the snapshot is not behind
/// the channel's position (which another subscriber's newer history read may have set, with
/// deliveries of what lies between still on their way: those then come as repeats, and are not
/// buffered).
fn fits(st: &ChannelState, p: &PendingSub, page: &HistoryPage) -> bool {
    !p.stale
        && st.epoch.as_deref().is_none_or(|e| *e == *page.epoch)
        && match p.buffered.iter().find(|b| b.offset > page.offset) {
            Some(b) => b.offset == page.offset + 1,
            None => page.offset >= st.offset,
        }
}

impl Listener for Hub {
    fn deliver(&self, channel: &str, epoch: &Arc<str>, p: &Arc<Publication>) {
        let Some(ch) = self.channels.read().get(channel).cloned() else { return };
        let mut st = ch.state.lock();
        let mut arrival = st.arrival(epoch, p, FILL_HOLD_MAX);
        if arrival == Arrival::NewEpoch {
            let closed = st.lose_track(channel);
            self.metrics.streams_lost.inc();
            tracing::info!(channel, closed, "a channel's stream started a new epoch");
            arrival = st.arrival(epoch, p, FILL_HOLD_MAX);
        }
        match arrival {
            Arrival::Next => {
                let n = st.deliver(
                    channel,
                    p,
                    self.config.limits.outbound_queue_messages,
                    &self.metrics.publish_to_write,
                    &self.flush,
                );
                self.metrics.deliveries.inc_by(n);
                self.metrics.namespace(channel).deliveries.inc_by(n);
            }
            Arrival::Gap => {
                drop(st);
                self.spawn_fill(ch);
            }
            Arrival::Repeat | Arrival::Held | Arrival::NewEpoch => {}
        }
    }

    fn published(&self, channel: &str) {
        for w in self.watches.read().iter() {
            if channel.starts_with(w.prefix()) {
                w.published(channel);
            }
        }
    }

    fn cursor_moved(&self, moved: &crate::broker::CursorMove) {
        if let Some(hook) = self.cursor_hook.read().as_ref() {
            hook(moved);
        }
    }

    fn signalled(&self, channel: &str, signal: &PresenceSignal) {
        if !self.config.namespace_of(channel).join_leave {
            return;
        }
        let Some(ch) = self.channels.read().get(channel).cloned() else { return };
        let event = Event::Presence { channel, join: signal.join, who: &signal.client };
        ch.state.lock().tell_all(&event);
    }

    fn lagged(&self, channel: &str) {
        let Some(ch) = self.channels.read().get(channel).cloned() else { return };
        let mut st = ch.state.lock();
        if st.epoch.is_none() {
            return;
        }
        if st.filling.is_some() {
            st.recheck = true;
        } else {
            st.filling = Some(Vec::new());
            drop(st);
            self.spawn_fill(ch);
        }
    }
}
