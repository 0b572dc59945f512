//! One channel on this node: its live and pending subscribers, where its stream stands, and the
//! delivery rules that keep every subscriber's stream free of gaps and duplicates whatever the
//! broker does.
//!
//! # What a delivery may be, and what the channel does
//!
//! The broker promises deliveries at most once per node, in offset order as sent; a shared
//! broker may lose some (a dropped connection, a pub/sub message lost) or, after a failure, hand
//! a publication over twice. The channel tracks the last offset it delivered in order, with its
//! epoch, and takes each delivery as one of:
//! - the next offset: fanned out;
//! - at or below it: a repeat, skipped;
//! - beyond the next: a gap. Deliveries are held while the missing stretch is read from history
//!   ([`Hub`](super::Hub) spawns the read); if history covers it, the stretch and the held ones go
//!   out in order; if history no longer holds it (read again a few times), every subscriber is
//!   told `{"type":"gap","from","to","reason":"broker_lost"}` and the stream goes on after it;
//! - another epoch: the stream was lost and started again, so nothing before can be trusted:
//!   every subscriber gets `closed` `insufficient_state` and resubscribes with `since`.
//!
//! # Fan-out
//!
//! Each live subscriber's frame is the shared frame of its encoding ([`Frames`]), queued by
//! reference with its splice ([`crate::transport::Outbox::push_shared`]): no task, no
//! allocation, no copy of the frame and no await per subscriber. A subscriber whose outbox
//! overflows leaves the channel there and then (its connection is already being failed by the
//! outbox). A fan-out to thousands of subscribers is bound by memory, not instructions: each
//! outbox was last touched by its writer on another core, so the loop prefetches the outboxes a
//! few subscribers ahead, overlapping those cache misses.
//!
//! The loop is where per-subscriber delivery modes go as they are added (conflation keeps the
//! latest instead of pushing, heartbeats look at the channel's last delivery time, pattern
//! subscriptions are sinks of several channels); each is a field of [`LiveSub`] and a branch
//! here, never a frame per subscriber.

use super::conflate::{Conflation, FlushQueue, Offer};
use super::event::{Encoding, Event, Sink, reason};
use super::id::SubId;
use crate::broker::Publication;
use crate::metrics::Latency;
use crate::transport::{Outbox, Push, SharedFrame, Splice};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// How many subscribers ahead of the one being served a fan-out prefetches (see
/// [`crate::transport::Outbox::prefetch`]): far enough to cover a cache miss, near enough that
/// the lines are still in cache when used. Measured with `fanout --subscribers 10000 --rate 200`
/// (BENCHMARKS.md).
const PREFETCH_AHEAD: usize = 8;

/// A live subscriber: what every delivery reads, kept small so that a fan-out over thousands
/// streams through as few cache lines as it can; the rest is behind a box.
#[derive(Debug)]
pub(super) struct LiveSub {
    outbox: Arc<Outbox>,
    /// Its encoding's address: the key of the frame built for it ([`Frames`]).
    encoding_key: usize,
    /// Publications at or below this offset reached it in its snapshot already.
    after: u64,
    shared: Arc<SubShared>,
    splice: Splice,
    /// [`FILTERED`] and [`CONFLATED`]: what its deliveries must look at in `shared`.
    mode: u8,
}

/// [`LiveSub::mode`]: it has a filter.
const FILTERED: u8 = 1;
/// [`LiveSub::mode`]: it is conflated, always or when behind.
const CONFLATED: u8 = 2;
/// [`LiveSub::mode`]: it gets a state checksum with every publication.
const CHECKSUM: u8 = 4;

/// What a delivery does not read, shared with the subscription's handle
/// ([`super::Subscription`]).
#[derive(Debug)]
pub(super) struct SubShared {
    pub(super) id: SubId,
    encoding: Arc<dyn Encoding>,
    filter: Option<super::Filter>,
    /// Cleared when the subscription ends, by the hub (slow consumer, lost track) or its owner.
    pub(super) alive: AtomicBool,
    /// For a conflated subscriber.
    pub(super) conflation: Option<Conflation>,
    /// On a state channel: it gets the state's checksum with every publication.
    pub(super) checksum: bool,
}

impl SubShared {
    /// The parts of `sink` that a delivery does not read, for subscription `id`, with its
    /// conflation if it has one.
    pub(super) fn new(
        id: SubId,
        sink: &Sink,
        conflation: Option<Conflation>,
        checksum: bool,
    ) -> Arc<SubShared> {
        Arc::new(SubShared {
            id,
            encoding: sink.encoding.clone(),
            filter: sink.filter.clone(),
            alive: AtomicBool::new(true),
            conflation,
            checksum,
        })
    }
}

/// The fan-out reads a subscriber's entry whole; keep it within one cache line.
const _: () = assert!(std::mem::size_of::<LiveSub>() <= 64);

impl LiveSub {
    pub(super) fn new(sink: Sink, after: u64, shared: Arc<SubShared>) -> LiveSub {
        LiveSub {
            encoding_key: key_of(&sink.encoding),
            mode: if sink.filter.is_some() { FILTERED } else { 0 }
                | if shared.conflation.is_some() { CONFLATED } else { 0 }
                | if shared.checksum { CHECKSUM } else { 0 },
            outbox: sink.outbox,
            splice: sink.splice,
            after,
            shared,
        }
    }

    pub(super) fn id(&self) -> SubId {
        self.shared.id
    }

    /// Its sink without the filter (for the events no filter applies to).
    pub(super) fn sink(&self) -> Sink {
        Sink::new(self.outbox.clone(), self.shared.encoding.clone(), self.splice)
    }

    /// Queues `closed` `reason` as its last event: nothing is delivered to it after (it stays
    /// listed until its owner lets go, as the connection ends).
    pub(super) fn close_last(&mut self, channel: &str, reason: &str) {
        self.after = u64::MAX;
        self.stop_conflation();
        self.sink().push_own(&Event::Closed { channel, reason });
    }

    /// Marks it ended.
    pub(super) fn end(&self) {
        self.stop_conflation();
        self.shared.alive.store(false, Ordering::Release);
    }

    /// Drops what its conflation holds, before its `closed` is queued.
    fn stop_conflation(&self) {
        if let Some(c) = &self.shared.conflation {
            c.stop();
        }
    }

    fn admits(&self, p: &Publication) -> bool {
        p.offset > self.after
            && (self.mode & FILTERED == 0 || self.shared.filter.as_ref().is_none_or(|f| f.admits(p)))
    }
}

/// Tells each live subscriber something: `tell` says `None` to pass one by, or whether what it
/// queued was queued; one whose outbox refused leaves the channel. Returns how many were told.
fn tell_each(live: &mut Vec<LiveSub>, mut tell: impl FnMut(&LiveSub) -> Option<bool>) -> u64 {
    let mut told = 0;
    let mut i = 0;
    while i < live.len() {
        match tell(&live[i]) {
            None => i += 1,
            Some(true) => {
                told += 1;
                i += 1;
            }
            Some(false) => live.swap_remove(i).end(),
        }
    }
    told
}

fn key_of(encoding: &Arc<dyn Encoding>) -> usize {
    Arc::as_ptr(encoding).cast::<()>().addr()
}

/// A subscriber between its history read and going live: what was delivered meanwhile.
#[derive(Debug)]
pub(super) struct PendingSub {
    pub(super) id: SubId,
    pub(super) buffered: Vec<Arc<Publication>>,
    /// The buffer filled up or the channel lost track: the history read must be done again.
    pub(super) stale: bool,
}

/// What the channel makes of a delivery.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Arrival {
    /// The next offset (or the first seen): deliver.
    Next,
    /// Already delivered: skip.
    Repeat,
    /// A gap is being filled: held until it is.
    Held,
    /// A gap opened: hold it and fill from history.
    Gap,
    /// Another epoch: the channel lost track.
    NewEpoch,
}

/// The lock-guarded part of a channel.
#[derive(Debug, Default)]
pub(super) struct ChannelState {
    pub(super) live: Vec<LiveSub>,
    pub(super) pending: Vec<PendingSub>,
    /// The epoch of the deliveries taken in order; `None` until the first delivery or the first
    /// subscriber's history read says.
    pub(super) epoch: Option<Arc<str>>,
    /// Newest offset delivered in order.
    pub(super) offset: u64,
    /// While a gap is filled from history: deliveries held meanwhile.
    pub(super) filling: Option<Vec<Arc<Publication>>>,
    /// The broker said deliveries may have been lost while a fill was under way: check history
    /// once more when it ends (the fill's read may have started before the lost one).
    pub(super) recheck: bool,
    /// Set when the channel was taken out of the hub's map; a subscriber that finds it set looks
    /// the channel up again.
    pub(super) removed: bool,
    /// When its last publication or heartbeat went out (`None` until its first subscriber).
    pub(super) quiet_since: Option<Instant>,
    /// A state channel's state as delivered, from its first subscriber's snapshot on (for the
    /// checksums of subscribers that ask for them).
    pub(super) keyed: Option<super::state::KeyedState>,
}

impl ChannelState {
    /// Classifies a delivery of `offset` in `epoch`, holding it when a fill is under way.
    pub(super) fn arrival(&mut self, epoch: &Arc<str>, p: &Arc<Publication>, hold_max: usize) -> Arrival {
        match &self.epoch {
            Some(e) if **e != **epoch => return Arrival::NewEpoch,
            Some(_) => {}
            None => {
                self.epoch = Some(epoch.clone());
                self.offset = p.offset.saturating_sub(1);
            }
        }
        if let Some(held) = &mut self.filling {
            if held.len() < hold_max {
                held.push(p.clone());
            }
            return Arrival::Held;
        }
        if p.offset <= self.offset {
            Arrival::Repeat
        } else if p.offset == self.offset + 1 {
            Arrival::Next
        } else {
            self.filling = Some(vec![p.clone()]);
            Arrival::Gap
        }
    }

    /// Delivers `p` (the next offset) to every live subscriber and buffers it for the pending
    /// ones, its frames stamped for `latency` (the publish-to-write histogram). Returns how many
    /// subscribers it was queued for.
    pub(super) fn deliver(
        &mut self,
        channel: &str,
        p: &Arc<Publication>,
        pending_max: usize,
        latency: &Latency,
        flush: &Arc<FlushQueue>,
    ) -> u64 {
        debug_assert_eq!(p.offset, self.offset + 1, "deliveries are in order; qed");
        self.offset = p.offset;
        if let Some(state) = &mut self.keyed {
            state.apply(p);
        }
        let mut delivered = 0;
        if !self.live.is_empty() {
            let now = Instant::now();
            self.quiet_since = Some(now);
            let event = Event::Publication { channel, publication: p, skipped: 0, checksum: None };
            let mut frames = Frames::new(&event);
            frames.stamp = Some((now, latency));
            // For the subscribers that want the state's checksum (on a state channel only): the
            // checksum and its frames are made the first time one of them is served.
            let checked = std::cell::OnceCell::new();
            let mut checked_frames: Option<Frames<'_>> = None;
            let keyed = &self.keyed;
            let live = &mut self.live;
            let mut i = 0;
            while i < live.len() {
                // The outbox PREFETCH_AHEAD subscribers on is asked for its state; the one half as
                // far, whose state has arrived by now, for the memory its push will write.
                if let Some(ahead) = live.get(i + PREFETCH_AHEAD) {
                    ahead.outbox.prefetch();
                }
                if let Some(ahead) = live.get(i + PREFETCH_AHEAD / 2) {
                    ahead.outbox.prefetch_tail();
                }
                let s = &live[i];
                if !s.admits(p) {
                    i += 1;
                    continue;
                }
                let frame = if s.mode & CHECKSUM != 0 {
                    let f = checked_frames.get_or_insert_with(|| {
                        let checksum = keyed.as_ref().map(|k| k.checksum());
                        let mut f = Frames::new(checked.get_or_init(|| Event::Publication {
                            channel,
                            publication: p,
                            skipped: 0,
                            checksum,
                        }));
                        f.stamp = Some((now, latency));
                        f
                    });
                    f.get(s.encoding_key, || &s.shared.encoding)
                } else {
                    frames.get(s.encoding_key, || &s.shared.encoding)
                };
                let offer = match &s.shared.conflation {
                    Some(c) if s.mode & CONFLATED != 0 => c.offer(p, frame, now, &s.shared, flush),
                    _ => match s.outbox.push_shared(frame, s.splice) {
                        Push::Queued => Offer::Sent,
                        _ => Offer::Gone,
                    },
                };
                if offer != Offer::Gone {
                    delivered += u64::from(offer == Offer::Sent);
                    i += 1;
                } else {
                    // Its outbox overflowed or closed: it leaves the channel here; its connection
                    // is already being failed (and counted) by the outbox's owner.
                    live.swap_remove(i).end();
                }
            }
        }
        for pending in &mut self.pending {
            if pending.buffered.len() >= pending_max {
                pending.stale = true;
            } else if !pending.stale {
                pending.buffered.push(p.clone());
            }
        }
        delivered
    }

    /// Tells every live subscriber the channel is quiet at its offset (`heartbeat`), and starts
    /// the next quiet stretch at `now`. Returns how many were told.
    pub(super) fn heartbeat(&mut self, channel: &str, now: Instant) -> u64 {
        self.quiet_since = Some(now);
        let offset = self.offset;
        let event = Event::Heartbeat { channel, offset };
        let mut frames = Frames::new(&event);
        tell_each(&mut self.live, |s| {
            if s.after > offset || s.shared.conflation.as_ref().is_some_and(|c| c.holds()) {
                // Closed already (`after` is the most): nothing follows its `closed`. Or its
                // snapshot is ahead of the channel's deliveries (a hole is being filled), or it
                // is conflated with a publication held: what goes out next says more than a
                // heartbeat at an offset it has passed would.
                return None;
            }
            Some(
                s.outbox.push_shared(frames.get(s.encoding_key, || &s.shared.encoding), s.splice)
                    == Push::Queued,
            )
        })
    }

    /// Tells every live subscriber that is not closed `event` (a join or a leave), built once
    /// per encoding. Returns how many were told.
    pub(super) fn tell_all(&mut self, event: &Event<'_>) -> u64 {
        let mut frames = Frames::new(event);
        tell_each(&mut self.live, |s| {
            if s.after == u64::MAX {
                return None;
            }
            Some(
                s.outbox.push_shared(frames.get(s.encoding_key, || &s.shared.encoding), s.splice)
                    == Push::Queued,
            )
        })
    }

    /// Publications `from..=to` are lost for good (history no longer holds them): every live
    /// subscriber is told `gap` and goes on at `to + 1` (a conflated one is sent what it holds
    /// first); pending ones read history again. Returns how many were told.
    pub(super) fn announce_gap(&mut self, channel: &str, from: u64, to: u64, why: &str) -> u64 {
        debug_assert_eq!(from, self.offset + 1, "a gap starts after the last delivery; qed");
        self.offset = to;
        let event = Event::Gap { channel, from, to, reason: why };
        let mut frames = Frames::new(&event);
        let told = tell_each(&mut self.live, |s| {
            if s.after >= to {
                // Closed already, or its snapshot reaches past the gap.
                return None;
            }
            if let Some(c) = &s.shared.conflation {
                c.before_gap();
            }
            Some(if s.after >= from {
                // Its snapshot reached into the gap (history was ahead of the deliveries when
                // it was read): its own gap starts after it.
                let own = Event::Gap { channel, from: s.after + 1, to, reason: why };
                s.sink().push_own(&own)
            } else {
                s.outbox.push_shared(frames.get(s.encoding_key, || &s.shared.encoding), s.splice)
                    == Push::Queued
            })
        });
        for p in &mut self.pending {
            p.stale = true;
            p.buffered.clear();
        }
        told
    }

    /// The channel can no longer vouch for its stream: every live subscriber is told
    /// `closed` `insufficient_state` and leaves, pending ones read history again, and the position
    /// is forgotten until the next delivery or history read. Returns how many were closed.
    pub(super) fn lose_track(&mut self, channel: &str) -> usize {
        let closed = self.close_all(channel, reason::INSUFFICIENT_STATE);
        for p in &mut self.pending {
            p.stale = true;
            p.buffered.clear();
        }
        self.epoch = None;
        self.offset = 0;
        self.filling = None;
        self.recheck = false;
        self.keyed = None;
        closed
    }

    /// Ends every live subscription with `closed` `reason`.
    pub(super) fn close_all(&mut self, channel: &str, why: &str) -> usize {
        let event = Event::Closed { channel, reason: why };
        let mut frames = Frames::new(&event);
        let n = self.live.len();
        for s in &self.live {
            s.stop_conflation();
        }
        for s in self.live.drain(..) {
            let _ = s.outbox.push_shared(frames.get(s.encoding_key, || &s.shared.encoding), s.splice);
            s.end();
        }
        n
    }
}

/// The frames of one event, built once per encoding the first time a subscriber of that
/// encoding needs it. Channels see one or two encodings, so a short list searched by address is
/// all it takes.
struct Frames<'a> {
    event: &'a Event<'a>,
    built: Vec<(usize, Arc<SharedFrame>)>,
    /// Stamped on each frame built: when the fan-out started, and the histogram its writes
    /// are timed in.
    stamp: Option<(std::time::Instant, &'a Latency)>,
}

impl<'a> Frames<'a> {
    fn new(event: &'a Event<'a>) -> Frames<'a> {
        Frames { event, built: Vec::new(), stamp: None }
    }

    /// The frame of the encoding whose address is `key` (`encoding` gives it, when first needed).
    fn get<'e>(&mut self, key: usize, encoding: impl FnOnce() -> &'e Arc<dyn Encoding>) -> &Arc<SharedFrame> {
        let at = match self.built.iter().position(|(k, _)| *k == key) {
            Some(at) => at,
            None => {
                let mut f = super::event::frame_of(&**encoding(), self.event);
                if let Some((at, latency)) = self.stamp {
                    f.stamp(at, latency.clone());
                }
                self.built.push((key, Arc::new(f)));
                self.built.len() - 1
            }
        };
        &self.built[at].1
    }
}
