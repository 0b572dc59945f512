//! The hub: this node's channels, their local subscribers, and the fan-out of publications.
//!
//! # Snapshot, then live, with no gap and no duplicate
//!
//! A subscribe registers the subscriber as *pending* on the channel (publications delivered
//! meanwhile are buffered for it), asks the broker for interest and reads history, then, under
//! the channel's lock, queues the snapshot (reaching offset N), the buffered publications above
//! N, and turns the subscriber *live*. The broker's contract (deliveries in offset order, each
//! visible in history before it is delivered) makes the buffered ones start at N + 1: every
//! publication reaches the subscriber exactly once, whatever publishers do meanwhile.
//!
//! # Fan-out
//!
//! The broker calls [`Hub`]'s [`Listener::deliver`] once per publication. The hub encodes the
//! notification once ([`encode::SharedFrame`]) and queues it, by reference and with each
//! subscriber's id, in each live subscriber's [`Outbox`] ([`Outbox::push_shared`]): no task, no
//! allocation, no copy of the frame and no await per subscriber. A subscriber whose outbox
//! overflows is dropped from the channel there and then (its connection is already being failed
//! by the outbox).
//!
//! A fan-out to thousands of subscribers is bound by memory, not by instructions: each outbox
//! was last touched by its writer on another core, so each push waits for its cache lines. The
//! loop therefore prefetches the outboxes a few subscribers ahead ([`Outbox::prefetch`]), which
//! overlaps those waits instead of taking them one after another.
//!
//! The hub knows nothing of JSON-RPC requests or sockets beyond the outbox it writes to.

pub mod encode;
mod name;

pub use encode::{SubId, SubIdGen};
pub use name::{MAX_CHANNEL_LEN, is_channel_byte, namespace, validate_channel};

use crate::broker::{
    Broker, BrokerError, HistoryPage, HistoryRange, Listener, NewPublication, Publication, Published,
    Retention, StreamPosition,
};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::transport::outbox::{Outbox, Push};
use encode::SharedFrame;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;

/// Hub failures, mapped to JSON-RPC errors at the edge.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A malformed channel name.
    #[error("invalid channel: {0}")]
    InvalidChannel(String),
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

/// A live subscription, owned by its connection. Dropping it does not unsubscribe: call
/// [`Hub::unsubscribe`] (connections do, for each, when they end).
#[derive(Clone)]
pub struct Subscription {
    /// The id the client knows it by.
    pub id: SubId,
    channel: Arc<HubChannel>,
}

impl Subscription {
    /// The channel's name.
    pub fn channel(&self) -> &str {
        &self.channel.name
    }
}

/// What a history read returns.
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
    /// Newest offset this node has seen.
    pub offset: u64,
}

struct LiveSub {
    id: SubId,
    out: Arc<Outbox>,
}

struct PendingSub {
    id: SubId,
    buffered: Vec<Arc<Publication>>,
    overflow: bool,
}

struct ChannelState {
    live: Vec<LiveSub>,
    pending: Vec<PendingSub>,
    /// Newest offset delivered here (deliveries at or below it are repeats and are skipped).
    last_offset: u64,
    /// Set when the channel was taken out of the hub's map; a subscriber that finds it set
    /// looks the channel up again.
    removed: bool,
}

struct HubChannel {
    name: Arc<str>,
    state: Mutex<ChannelState>,
}

/// How many subscribers ahead of the one being served a fan-out prefetches (see
/// [`Outbox::prefetch`]): far enough to cover a cache miss, near enough that the lines are still
/// in cache when used. Measured with `fanout --subscribers 10000 --rate 200` (BENCHMARKS.md).
const PREFETCH_AHEAD: usize = 8;

/// Snapshot reads tried before a subscribe gives up on a channel that is too busy.
const SNAPSHOT_ATTEMPTS: usize = 5;

/// This node's channels and subscribers.
pub struct Hub {
    config: Arc<Config>,
    broker: Arc<dyn Broker>,
    channels: RwLock<HashMap<Arc<str>, Arc<HubChannel>>>,
    ids: SubIdGen,
    metrics: Arc<Metrics>,
}

impl Hub {
    /// A hub over `broker`, registered as its listener.
    pub fn new(config: Arc<Config>, broker: Arc<dyn Broker>, metrics: Arc<Metrics>) -> Arc<Hub> {
        let hub =
            Arc::new(Hub { config, broker, channels: RwLock::default(), ids: SubIdGen::default(), metrics });
        let weak: std::sync::Weak<Hub> = Arc::downgrade(&hub);
        hub.broker.set_listener(weak);
        hub
    }

    /// The broker underneath.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    fn retention(&self, channel: &str) -> Retention {
        let ns = self.config.namespace_of(channel);
        Retention { size: ns.history_size, ttl: ns.history_ttl }
    }

    fn channel(&self, name: &str) -> Arc<HubChannel> {
        if let Some(c) = self.channels.read().get(name) {
            return c.clone();
        }
        let mut map = self.channels.write();
        let c = map.entry(name.into()).or_insert_with(|| {
            self.metrics.channels.inc();
            Arc::new(HubChannel {
                name: name.into(),
                state: Mutex::new(ChannelState {
                    live: Vec::new(),
                    pending: Vec::new(),
                    last_offset: 0,
                    removed: false,
                }),
            })
        });
        c.clone()
    }

    /// Takes `channel` out of the map if nobody is subscribed or subscribing.
    fn remove_if_unused(&self, channel: &Arc<HubChannel>) {
        let mut map = self.channels.write();
        let mut st = channel.state.lock();
        if st.live.is_empty() && st.pending.is_empty() && !st.removed {
            st.removed = true;
            map.remove(&channel.name);
            self.metrics.channels.dec();
        }
    }

    /// Subscribes `out` to `channel`: queues the snapshot (with recovery from `since` when the
    /// history still covers it, else the newest `limit` retained publications), then live
    /// publications. Returns the subscription once the snapshot is queued.
    pub async fn subscribe(
        &self,
        out: &Arc<Outbox>,
        channel: &str,
        since: Option<StreamPosition>,
        limit: Option<usize>,
    ) -> Result<Subscription, HubError> {
        validate_channel(channel).map_err(HubError::InvalidChannel)?;
        let id = self.ids.next();
        let ch = loop {
            let ch = self.channel(channel);
            let mut st = ch.state.lock();
            if st.removed {
                continue;
            }
            st.pending.push(PendingSub { id, buffered: Vec::new(), overflow: false });
            drop(st);
            break ch;
        };
        // From here on, a failure (or this future being dropped) must undo the registration.
        let mut guard = PendingGuard { hub: self, channel: &ch, id, interest: false, armed: true };
        let retention = self.retention(channel);
        self.broker.subscribe(channel, retention).await?;
        guard.interest = true;
        // The buffer of publications delivered while history is read is bounded; if a busy
        // channel overflows it, the read is simply done again (everything buffered so far is in
        // history by then).
        let mut attempts = 0;
        let (page, recovered, pending, mut st) = loop {
            let (page, recovered) = self.snapshot_page(channel, since.clone(), limit, retention).await?;
            let mut st = ch.state.lock();
            let at = st
                .pending
                .iter()
                .position(|p| p.id == id)
                .expect("only its owner removes a pending entry; qed");
            if !st.pending[at].overflow {
                let pending = st.pending.swap_remove(at);
                break (page, recovered, pending, st);
            }
            attempts += 1;
            if attempts >= SNAPSHOT_ATTEMPTS {
                return Err(HubError::Busy);
            }
            st.pending[at].overflow = false;
            st.pending[at].buffered.clear();
        };
        let mut frame = SharedFrame::default();
        frame.build(|b| encode::snapshot_event(b, channel, &page, recovered));
        if out.push(&frame.parts(&id)) != Push::Queued {
            drop(st);
            return Err(HubError::ConnectionClosed);
        }
        for p in pending.buffered.iter().filter(|p| p.offset > page.offset) {
            frame.build(|b| encode::publication_event(b, channel, p));
            if out.push(&frame.parts(&id)) != Push::Queued {
                drop(st);
                return Err(HubError::ConnectionClosed);
            }
        }
        st.last_offset = st.last_offset.max(page.offset);
        st.live.push(LiveSub { id, out: out.clone() });
        drop(st);
        guard.armed = false;
        drop(guard);
        self.metrics.subscriptions.inc();
        Ok(Subscription { id, channel: ch })
    }

    async fn snapshot_page(
        &self,
        channel: &str,
        since: Option<StreamPosition>,
        limit: Option<usize>,
        retention: Retention,
    ) -> Result<(HistoryPage, bool), HubError> {
        if let Some(since) = since {
            let page =
                self.broker.history(channel, HistoryRange::After(since.offset, None), retention).await?;
            let covered = *page.epoch == since.epoch
                && since.offset <= page.offset
                && (since.offset == page.offset
                    || page.publications.first().map(|p| p.offset) == Some(since.offset + 1));
            if covered {
                return Ok((page, true));
            }
        }
        Ok((self.broker.history(channel, HistoryRange::Newest(limit), retention).await?, false))
    }

    /// Ends a subscription; false if it had already ended (its connection fell behind). Call
    /// it once per subscription returned by [`Hub::subscribe`] that was not [`Hub::close`]d.
    pub fn unsubscribe(&self, sub: &Subscription) -> bool {
        let mut st = sub.channel.state.lock();
        let at = st.live.iter().position(|s| s.id == sub.id);
        if let Some(i) = at {
            st.live.swap_remove(i);
        }
        let unused = st.live.is_empty() && st.pending.is_empty();
        drop(st);
        self.subscription_gone(&sub.channel, unused);
        at.is_some()
    }

    /// Accounts for a subscription that left `channel`: one broker interest less, and the
    /// channel forgotten when `unused` (nobody subscribed or subscribing).
    fn subscription_gone(&self, channel: &Arc<HubChannel>, unused: bool) {
        self.metrics.subscriptions.dec();
        self.broker.unsubscribe(&channel.name);
        if unused {
            self.remove_if_unused(channel);
        }
    }

    /// Ends a subscription from the server's side: its last notification is
    /// `{"type":"closed","reason":REASON}`, queued after every publication it was sent. False if
    /// it had already ended.
    pub fn close(&self, sub: &Subscription, reason: &str) -> bool {
        let mut st = sub.channel.state.lock();
        let Some(at) = st.live.iter().position(|s| s.id == sub.id) else { return false };
        let live = st.live.swap_remove(at);
        let mut frame = SharedFrame::default();
        frame.build(|b| encode::closed_event(b, reason));
        let _ = live.out.push(&frame.parts(&sub.id));
        let unused = st.live.is_empty() && st.pending.is_empty();
        drop(st);
        self.subscription_gone(&sub.channel, unused);
        true
    }

    /// Publishes to `channel`.
    pub async fn publish(&self, channel: &str, p: NewPublication) -> Result<Published, HubError> {
        validate_channel(channel).map_err(HubError::InvalidChannel)?;
        let published = self.broker.publish(channel, p, self.retention(channel)).await?;
        if !published.duplicate {
            self.metrics.publications.inc();
        }
        Ok(published)
    }

    /// Reads history: with `since`, the first `limit` publications after it (from the oldest
    /// retained when `since` is from another epoch); without, the newest `limit`.
    pub async fn history(
        &self,
        channel: &str,
        since: Option<StreamPosition>,
        limit: Option<usize>,
    ) -> Result<History, HubError> {
        validate_channel(channel).map_err(HubError::InvalidChannel)?;
        let retention = self.retention(channel);
        let range = match &since {
            Some(s) => HistoryRange::After(s.offset, limit),
            None => HistoryRange::Newest(limit),
        };
        let mut page = self.broker.history(channel, range, retention).await?;
        if let Some(s) = since.filter(|s| *s.epoch != *page.epoch) {
            let _ = s;
            page = self.broker.history(channel, HistoryRange::After(0, limit), retention).await?;
        }
        Ok(History {
            position: StreamPosition { epoch: page.epoch.to_string(), offset: page.offset },
            publications: page.publications,
        })
    }

    /// Channels with subscribers on this node whose name starts with `prefix`, sorted by name.
    pub fn channels(&self, prefix: &str) -> Vec<ChannelInfo> {
        let map = self.channels.read();
        let mut v: Vec<ChannelInfo> = map
            .values()
            .filter(|c| c.name.starts_with(prefix))
            .map(|c| {
                let st = c.state.lock();
                ChannelInfo {
                    channel: c.name.to_string(),
                    subscribers: st.live.len(),
                    offset: st.last_offset,
                }
            })
            .filter(|c| c.subscribers > 0)
            .collect();
        v.sort_by(|a, b| a.channel.cmp(&b.channel));
        v
    }
}

impl Listener for Hub {
    fn deliver(&self, channel: &str, _epoch: &Arc<str>, p: &Arc<Publication>) {
        let Some(ch) = self.channels.read().get(channel).cloned() else { return };
        let mut guard = ch.state.lock();
        let st = &mut *guard;
        if p.offset <= st.last_offset {
            return;
        }
        st.last_offset = p.offset;
        if !st.live.is_empty() {
            let mut frame = SharedFrame::with_capacity(encode::publication_event_len(channel, p));
            frame.build(|b| encode::publication_event(b, channel, p));
            let frame = Arc::new(frame);
            let live = &mut st.live;
            let mut i = 0;
            while i < live.len() {
                // The outbox PREFETCH_AHEAD subscribers on is asked for its state; the one half as
                // far, whose state has arrived by now, for the memory its push will write.
                if let Some(ahead) = live.get(i + PREFETCH_AHEAD) {
                    ahead.out.prefetch();
                }
                if let Some(ahead) = live.get(i + PREFETCH_AHEAD / 2) {
                    ahead.out.prefetch_tail();
                }
                let s = &live[i];
                if s.out.push_shared(&frame, s.id) == Push::Queued {
                    i += 1;
                } else {
                    // Its outbox overflowed or closed: it leaves the channel here; its connection
                    // is already being failed (and counted) by the outbox's owner.
                    live.swap_remove(i);
                }
            }
            self.metrics.deliveries.inc_by(st.live.len() as u64);
        }
        let cap = self.config.limits.outbound_queue_messages;
        for pending in &mut st.pending {
            if pending.buffered.len() >= cap {
                pending.overflow = true;
            } else {
                pending.buffered.push(p.clone());
            }
        }
    }
}

/// Undoes a subscribe that did not finish: removes the pending entry and the broker interest.
struct PendingGuard<'a> {
    hub: &'a Hub,
    channel: &'a Arc<HubChannel>,
    id: SubId,
    interest: bool,
    armed: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut st = self.channel.state.lock();
        st.pending.retain(|p| p.id != self.id);
        let unused = st.live.is_empty() && st.pending.is_empty();
        drop(st);
        if self.interest {
            self.hub.broker.unsubscribe(&self.channel.name);
        }
        if unused {
            self.hub.remove_if_unused(self.channel);
        }
    }
}

#[cfg(test)]
mod tests;
