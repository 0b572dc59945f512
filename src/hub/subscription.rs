//! The two handles of a subscription: [`Pending`] between its history read and going live,
//! [`Subscription`] once live. Both undo themselves when dropped.

use super::channel::{LiveSub, SubShared};
use super::conflate::Conflation;
use super::event::{Event, Sink, reason};
use super::{Hub, HubChannel, HubError, SubId, fits};
use crate::broker::HistoryPage;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// A subscription between its history read and going live ([`Hub::prepare`]). Dropping it
/// undoes the registration.
#[must_use = "a prepared subscription is undone when dropped: call go_live"]
pub struct Pending {
    pub(super) hub: Arc<Hub>,
    pub(super) channel: Arc<HubChannel>,
    pub(super) id: SubId,
    pub(super) page: HistoryPage,
    pub(super) recovered: bool,
    /// After a `since` not honoured: the oldest position still in history.
    pub(super) earliest: Option<crate::broker::StreamPosition>,
    /// Its conflation interval (the namespace's, or the subscriber's own).
    pub(super) conflate: Option<std::time::Duration>,
    /// Its namespace conflates subscribers that fall behind.
    pub(super) on_slow: bool,
    /// On a state channel: the state's checksum with every publication event.
    pub(super) checksum: bool,
    /// The broker interest was taken (and is to be given back unless handed on).
    pub(super) interest: bool,
    pub(super) done: bool,
}

impl Pending {
    /// The snapshot read: the history page, and whether `since` was honoured exactly.
    pub fn page(&self) -> (&HistoryPage, bool) {
        (&self.page, self.recovered)
    }

    /// Conflates it to one event per `every` (overriding its namespace's `conflate_ms`).
    pub fn set_conflate(&mut self, every: std::time::Duration) {
        self.conflate = Some(every);
    }

    /// On a state channel: sends the state's checksum with every publication event.
    pub fn set_checksum(&mut self) {
        self.checksum = true;
    }

    /// Its channel is a state channel (`mode = "state"`).
    pub fn is_keyed(&self) -> bool {
        self.channel.keyed
    }

    /// After a `since` that could not be honoured: the oldest position still in history.
    pub fn earliest(&self) -> Option<&crate::broker::StreamPosition> {
        self.earliest.as_ref()
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("channel", &self.channel.name).field("id", &self.id).finish()
    }
}

impl Pending {
    /// The subscription's id, known before it is live (so that the answer can carry it).
    pub fn id(&self) -> SubId {
        self.id
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel.name
    }

    /// Phase two: queues `answer` (copied, as is), the snapshot and the publications delivered
    /// since the history read into `sink`'s outbox, in that order, and makes the subscriber
    /// live, all under the channel's lock. All of it is the answer to the subscriber's own call
    /// ([`crate::transport::Outbox::push_answer`]): its size is no reason to drop a client that
    /// reads it. Call it from the connection's reader, which writes or hands on the answers. Fails only when the connection is closing. If the
    /// channel lost track of its stream in between, or its position moved past the snapshot with
    /// nothing buffered to bridge them, the snapshot is followed by `closed`
    /// `insufficient_state` at once, never by a gap.
    pub fn go_live(mut self, sink: Sink, answer: &[&[u8]]) -> Result<Subscription, HubError> {
        let ch = self.channel.clone();
        let mut st = ch.state.lock();
        let at = st
            .pending
            .iter()
            .position(|p| p.id == self.id)
            .expect("only its owner removes a pending entry; qed");
        let joins = fits(&st, &st.pending[at], &self.page);
        let pend = st.pending.swap_remove(at);
        let out = &sink.outbox;
        let closed = || HubError::ConnectionClosed;
        if !answer.is_empty() && out.push_answer(answer) != crate::transport::Push::Queued {
            return Err(closed());
        }
        // A state channel's state, built once: for the snapshot's checksum, then the checksums of
        // what was buffered, then (for the channel's first subscriber) the channel's own.
        let mut state = ch.keyed.then(|| super::state::KeyedState::from_page(&self.page));
        let snapshot = Event::Snapshot {
            channel: &ch.name,
            page: &self.page,
            recovered: self.recovered,
            earliest: self.earliest.as_ref(),
            checksum: state.as_ref().map(|s| s.checksum()),
        };
        if sink.encoding.sends_snapshot() && !sink.push_answer(&snapshot) {
            return Err(closed());
        }
        let conflation = (self.conflate.is_some() || self.on_slow).then(|| {
            Conflation::new(
                ch.name.clone(),
                sink.outbox.clone(),
                sink.encoding.clone(),
                sink.splice,
                self.conflate,
            )
        });
        let shared = SubShared::new(self.id, &sink, conflation, self.checksum && ch.keyed);
        let sub =
            Subscription { hub: self.hub.clone(), channel: ch.clone(), shared: shared.clone(), ended: false };
        self.done = true;
        self.hub.metrics.subscriptions.inc();
        if !joins {
            // What was delivered meanwhile does not join the snapshot: say so instead.
            shared.alive.store(false, Ordering::Release);
            sink.push_answer(&Event::Closed { channel: &ch.name, reason: reason::INSUFFICIENT_STATE });
            return Ok(sub);
        }
        let mut after = self.page.offset;
        for p in pend.buffered.iter().filter(|p| p.offset > self.page.offset) {
            let checksum = state.as_mut().and_then(|s| {
                s.apply(p);
                self.checksum.then(|| s.checksum())
            });
            if sink.filter.as_ref().is_none_or(|f| f.admits(p)) {
                let event = Event::Publication { channel: &ch.name, publication: p, skipped: 0, checksum };
                if !sink.push_answer(&event) {
                    return Err(closed());
                }
            }
            after = p.offset;
        }
        if st.epoch.is_none() {
            st.epoch = Some(self.page.epoch.clone());
            st.offset = after;
            // The channel's state from here on (a state channel's), applied as it is delivered.
            st.keyed = state;
        }
        if st.quiet_since.is_none() {
            st.quiet_since = Some(std::time::Instant::now());
        }
        st.live.push(LiveSub::new(sink, after, shared));
        Ok(sub)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.done {
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
            self.hub.remove_if_unused(&self.channel);
        }
    }
}

/// A live subscription, owned by its connection; dropping it unsubscribes.
#[must_use = "dropping a subscription ends it"]
pub struct Subscription {
    hub: Arc<Hub>,
    channel: Arc<HubChannel>,
    shared: Arc<SubShared>,
    ended: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel.name)
            .field("id", &self.shared.id)
            .finish()
    }
}

impl Subscription {
    /// The id the client knows it by.
    pub fn id(&self) -> SubId {
        self.shared.id
    }

    /// The channel's name.
    pub fn channel(&self) -> &str {
        &self.channel.name
    }

    /// False once the hub ended it (its connection fell behind, or the channel lost track of its
    /// stream and told the subscriber so).
    pub fn is_active(&self) -> bool {
        self.shared.alive.load(Ordering::Acquire)
    }

    /// Ends it at the client's request; false if it had already ended.
    pub fn unsubscribe(mut self) -> bool {
        self.ended = true;
        self.hub.leave(&self.channel, self.shared.id, None)
    }

    /// Ends it from the server's side: its last event is `closed` with `reason`, queued after
    /// every publication it was sent. False if it had already ended.
    pub fn close(mut self, reason: &str) -> bool {
        self.ended = true;
        self.hub.leave(&self.channel, self.shared.id, Some(reason))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.ended {
            self.hub.leave(&self.channel, self.shared.id, None);
        }
    }
}
