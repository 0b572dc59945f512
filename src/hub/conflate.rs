//! Conflation: at most one event per interval for a subscriber, the latest, with `skipped: K`
//! when K publications were folded into it, so that every offset it does not see is accounted
//! for.
//!
//! A subscription is conflated when it asked for it (`conflate_ms`), when its namespace says so
//! (`conflate_ms` there), or, on a namespace with `on_slow = "conflate"`, while its client falls
//! behind: instead of being dropped as a slow consumer it is sent the latest publication every
//! [`SLOW_INTERVAL`] until its queue has drained, and then everything again. The drop stays the
//! last resort: a conflated client that still cannot keep up overflows as any other.
//!
//! The fan-out offers each publication to a conflated subscriber's [`Conflation`]: one that is
//! due goes out at once (the shared frame, as to everyone else); one that is not is held,
//! replacing (and counting) the one held before, and the subscriber is put on the hub's
//! [`FlushQueue`], whose task sends what is held once it is due. Offers and flushes of one
//! subscriber take its lock, so what it is sent stays in offset order.
//!
//! Lock order: a channel's state -> a conflation -> an outbox. The flush task takes a
//! conflation's lock without the channel's.

use super::event::{Encoding, Event};
use crate::broker::Publication;
use crate::metrics::Metrics;
use crate::transport::{Outbox, Push, SharedFrame, Splice};
use parking_lot::Mutex;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// The interval of a subscriber conflated because it fell behind (`on_slow = "conflate"`).
pub const SLOW_INTERVAL: Duration = Duration::from_millis(100);

/// How long the flush task sleeps between rounds while something is held: the lateness a held
/// publication may have beyond its interval.
const FLUSH_TICK: Duration = Duration::from_millis(5);

/// What became of an offered publication.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Offer {
    /// Queued for the client now.
    Sent,
    /// Held for a later flush (it or a newer one will be sent).
    Held,
    /// The connection is closing or was dropped: the subscriber leaves.
    Gone,
}

/// A conflated subscriber's state.
#[derive(Debug)]
pub(super) struct Conflation {
    channel: Arc<str>,
    outbox: Arc<Outbox>,
    encoding: Arc<dyn Encoding>,
    splice: Splice,
    /// Conflated only while behind (`on_slow`), not always.
    only_when_slow: bool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The interval in force: the subscription's own, or [`SLOW_INTERVAL`] while behind, or
    /// none (everything is sent) for an `on_slow` subscriber that keeps up.
    every: Option<Duration>,
    /// When the next event may go out.
    next_due: Instant,
    held: Option<Arc<Publication>>,
    /// Publications folded into `held`.
    skipped: u64,
    /// On the flush queue.
    queued: bool,
    /// The subscription ended: nothing more is sent.
    stopped: bool,
}

impl Conflation {
    /// Conflation of a subscriber of `channel` writing to `outbox`: every `every` always, or (with
    /// `None`) only while it falls behind.
    pub(super) fn new(
        channel: Arc<str>,
        outbox: Arc<Outbox>,
        encoding: Arc<dyn Encoding>,
        splice: Splice,
        every: Option<Duration>,
    ) -> Conflation {
        Conflation {
            channel,
            outbox,
            encoding,
            splice,
            only_when_slow: every.is_none(),
            state: Mutex::new(State {
                every,
                next_due: Instant::now(),
                held: None,
                skipped: 0,
                queued: false,
                stopped: false,
            }),
        }
    }

    /// Offers `p` (admitted, in order) at `now`; `frame` is its shared frame for this
    /// subscriber's encoding. `me` is what the flush queue holds when `p` is kept.
    pub(super) fn offer(
        &self,
        p: &Arc<Publication>,
        frame: &Arc<SharedFrame>,
        now: Instant,
        me: &Arc<super::channel::SubShared>,
        queue: &Arc<FlushQueue>,
    ) -> Offer {
        let mut st = self.state.lock();
        if st.stopped {
            return Offer::Gone;
        }
        let Some(every) = st.every else {
            // Keeping up so far: sent as to everyone, unless the client is falling behind.
            return match self.outbox.push_shared_unless_behind(frame, self.splice) {
                Push::Queued => Offer::Sent,
                Push::Behind => {
                    st.every = Some(SLOW_INTERVAL);
                    st.next_due = now + SLOW_INTERVAL;
                    queue.metrics.slow_conflations.inc();
                    self.hold(&mut st, p, me, queue);
                    Offer::Held
                }
                Push::Overflow | Push::Closed => Offer::Gone,
            };
        };
        if st.held.is_none() && now >= st.next_due {
            if self.only_when_slow && self.outbox.caught_up() {
                st.every = None;
            }
            st.next_due = now + every;
            return match self.outbox.push_shared(frame, self.splice) {
                Push::Queued => Offer::Sent,
                _ => Offer::Gone,
            };
        }
        self.hold(&mut st, p, me, queue);
        Offer::Held
    }

    fn hold(
        &self,
        st: &mut State,
        p: &Arc<Publication>,
        me: &Arc<super::channel::SubShared>,
        queue: &Arc<FlushQueue>,
    ) {
        if st.held.replace(p.clone()).is_some() {
            st.skipped += 1;
            queue.metrics.conflated.inc();
        }
        if !st.queued {
            st.queued = true;
            queue.add(me);
        }
    }

    /// A gap follows what it was offered: what it holds goes out now, ahead of the gap's
    /// announcement, which the caller queues next (so the held publication's `skipped` counts
    /// only what came before it).
    pub(super) fn before_gap(&self) {
        let mut st = self.state.lock();
        let Some(held) = st.held.take().filter(|_| !st.stopped) else { return };
        let _ = self.send(&held, st.skipped);
        st.skipped = 0;
    }

    /// Queues `held` with its `skipped` count, built for this subscriber alone. Counted by the
    /// slow-consumer rule as any publication: the drop stays the last resort.
    fn send(&self, held: &Publication, skipped: u64) -> Push {
        let event = Event::Publication { channel: &self.channel, publication: held, skipped, checksum: None };
        let f = super::event::frame_of(&*self.encoding, &event);
        self.outbox.push(&f.parts(&self.splice))
    }

    /// True while a publication is held (a heartbeat then would name an offset the client has
    /// not been sent yet).
    pub(super) fn holds(&self) -> bool {
        self.state.lock().held.is_some()
    }

    /// The subscription ended: what is held is dropped, and nothing more is sent.
    pub(super) fn stop(&self) {
        let mut st = self.state.lock();
        st.stopped = true;
        st.held = None;
    }

    /// Sends what is held once it is due, as of `now`. Returns `Some(due)` while it must wait,
    /// `None` when done (sent, or nothing held); the bool says whether a delivery was queued.
    fn flush(&self, now: Instant) -> (Option<Instant>, bool) {
        let mut st = self.state.lock();
        let held = match &st.held {
            Some(h) if !st.stopped => h.clone(),
            _ => {
                st.queued = false;
                return (None, false);
            }
        };
        if now < st.next_due {
            return (Some(st.next_due), false);
        }
        let queued = self.send(&held, st.skipped) == Push::Queued;
        st.held = None;
        st.skipped = 0;
        st.queued = false;
        st.next_due = now + st.every.unwrap_or(SLOW_INTERVAL);
        if self.only_when_slow && self.outbox.caught_up() {
            st.every = None;
        }
        (None, queued)
    }
}

/// The conflated subscribers holding a publication, and the task that sends each once it is
/// due. The task starts with the first subscriber put on it and ends with the hub.
#[derive(Debug)]
pub(super) struct FlushQueue {
    waiting: Mutex<Vec<Arc<super::channel::SubShared>>>,
    wake: tokio::sync::Notify,
    started: std::sync::Once,
    metrics: Arc<Metrics>,
}

impl FlushQueue {
    pub(super) fn new(metrics: Arc<Metrics>) -> Arc<FlushQueue> {
        Arc::new(FlushQueue {
            waiting: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            started: std::sync::Once::new(),
            metrics,
        })
    }

    fn add(self: &Arc<Self>, sub: &Arc<super::channel::SubShared>) {
        let was_empty = {
            let mut w = self.waiting.lock();
            w.push(sub.clone());
            w.len() == 1
        };
        self.started.call_once(|| match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(flush_task(Arc::downgrade(self)));
            }
            Err(_) => tracing::error!("conflation needs a tokio runtime; held publications wait"),
        });
        if was_empty {
            self.wake.notify_one();
        }
    }

    /// One round at `now`: what is due is sent, the rest stays.
    fn round(&self, now: Instant) {
        let mut waiting = std::mem::take(&mut *self.waiting.lock());
        waiting.retain(|sub| {
            let Some(c) = sub.conflation.as_ref() else { return false };
            let (wait, sent) = c.flush(now);
            if sent {
                self.metrics.deliveries.inc();
                self.metrics.namespace(&c.channel).deliveries.inc();
            }
            wait.is_some()
        });
        let mut w = self.waiting.lock();
        // Those added meanwhile stay behind the ones that waited already.
        waiting.append(&mut w);
        *w = waiting;
    }
}

async fn flush_task(queue: Weak<FlushQueue>) {
    loop {
        let Some(q) = queue.upgrade() else { return };
        if q.waiting.lock().is_empty() {
            // Woken by the next hold, or now and then to see whether the hub is gone.
            let _ = tokio::time::timeout(Duration::from_secs(1), q.wake.notified()).await;
            continue;
        }
        drop(q);
        tokio::time::sleep(FLUSH_TICK).await;
        let Some(q) = queue.upgrade() else { return };
        q.round(Instant::now());
    }
}
