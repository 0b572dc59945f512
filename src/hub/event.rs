//! What the hub sends to subscribers, and how each front door turns it into frames.
//!
//! The hub emits channel [`Event`]s; it writes no wire format itself. Each live subscriber has a
//! [`Sink`]: the connection's outbox, the front door's [`Encoding`] and the subscriber's
//! [`Splice`] (a JSON-RPC subscription id, or nothing for a dialect whose frames name the
//! channel instead), and optionally a [`Filter`]. A live publication is encoded once per
//! encoding in use on its channel, never per subscriber.

use crate::broker::{HistoryPage, PresenceClient, Publication, StreamPosition};
use crate::transport::{FrameWriter, Outbox, Splice};
use std::sync::Arc;

/// Why the server ended a subscription, as the `closed` event names it.
pub mod reason {
    /// The node lost track of the channel's stream (its broker lost a stretch it cannot fill, or
    /// the stream's epoch changed): resubscribe with `since`.
    pub const INSUFFICIENT_STATE: &str = "insufficient_state";
    /// The connection's token expired and the channel needs one.
    pub const TOKEN_EXPIRED: &str = "token_expired";
    /// An operator or the application ended it.
    pub const UNSUBSCRIBED_BY_SERVER: &str = "unsubscribed_by_server";
    /// The node is shutting down.
    pub const SHUTDOWN: &str = "shutdown";
    /// The broker lost a stretch of the channel's stream that history no longer holds
    /// (`gap`): the subscription goes on after it.
    pub const BROKER_LOST: &str = "broker_lost";
    /// A pattern subscription matched more channels than its namespace's `max_pattern_channels`
    /// (or than the node grants it): it ended.
    pub const PATTERN_TOO_BROAD: &str = "pattern_too_broad";
}

/// One thing a subscriber is told about its channel.
#[derive(Debug)]
pub enum Event<'a> {
    /// The first event of every subscription: where it starts, and what it starts with.
    Snapshot {
        /// The channel.
        channel: &'a str,
        /// The history read (its `offset` is where live events continue after).
        page: &'a HistoryPage,
        /// True when `since` was honoured exactly.
        recovered: bool,
        /// After a `since` that could not be honoured: the oldest position still in history
        /// (the oldest retained publication's, or the channel's offset + 1 when none is).
        earliest: Option<&'a StreamPosition>,
        /// On a state channel: the checksum of the state the snapshot holds.
        checksum: Option<u32>,
    },
    /// A live publication.
    Publication {
        /// The channel.
        channel: &'a str,
        /// The publication.
        publication: &'a Publication,
        /// Publications folded into this one by conflation (0: none, and no `skipped` field).
        skipped: u64,
        /// On a state channel, for a subscriber that asked: the state's checksum after it.
        checksum: Option<u32>,
    },
    /// The channel had no publication for its namespace's `heartbeat` interval: it is alive,
    /// and this is where it stands.
    Heartbeat {
        /// The channel.
        channel: &'a str,
        /// Its newest offset (0 when never published to).
        offset: u64,
    },
    /// Publications `from..=to` are lost for this subscriber (the broker lost them and history
    /// no longer holds them): announced, and the subscription goes on at `to + 1`.
    Gap {
        /// The channel.
        channel: &'a str,
        /// The first offset lost.
        from: u64,
        /// The last offset lost.
        to: u64,
        /// One of [`reason`] (`broker_lost`).
        reason: &'a str,
    },
    /// A client joined or left the channel (namespace option `join_leave`):
    /// `{"type":"join"|"leave","channel","info":{"client","user"}}`.
    Presence {
        /// The channel.
        channel: &'a str,
        /// True for a join, false for a leave.
        join: bool,
        /// Who.
        who: &'a PresenceClient,
    },
    /// The server ended the subscription; nothing follows.
    Closed {
        /// The channel.
        channel: &'a str,
        /// One of [`reason`].
        reason: &'a str,
    },
}

/// How a front door writes hub events as frames. Implementations live with their front door.
pub trait Encoding: Send + Sync + 'static {
    /// Length of every subscriber's [`Splice`] in frames of this encoding (0 to
    /// [`crate::transport::SPLICE_MAX`]).
    fn splice_len(&self) -> usize;

    /// Writes `event` as one text frame's payload, marking where the splice goes.
    fn encode(&self, event: &Event<'_>, out: &mut FrameWriter<'_>);

    /// The payload of a `cursor` notification (a user's read cursor of `channel` moved to
    /// `offset` on another connection), or `None` for a door that sends none.
    fn cursor_json(&self, _channel: &str, _offset: u64) -> Option<String> {
        None
    }

    /// False for a door that sends no snapshot frame (its connection queues what it wants sent
    /// first as the subscription's answer, from [`crate::session::PendingSubscription::page`]).
    fn sends_snapshot(&self) -> bool {
        true
    }

    /// For an encoding whose frames are compressed (permessage-deflate, see [`Deflated`]): the
    /// payload bytes from which a frame is compressed.
    fn deflate_min(&self) -> Option<usize> {
        None
    }

    /// Bytes `encode` is likely to write, to size the buffer once.
    fn size_hint(&self, event: &Event<'_>) -> usize {
        match event {
            Event::Publication { channel, publication, .. } => 128 + channel.len() + publication.json().len(),
            Event::Snapshot { page, .. } => {
                192 + page.publications.iter().map(|p| p.json().len() + 1).sum::<usize>()
            }
            Event::Presence { who, .. } => 160 + who.client.len() + who.user.len(),
            Event::Closed { .. } | Event::Heartbeat { .. } | Event::Gap { .. } => 128,
        }
    }
}

/// Builds `event`'s frame in `encoding`: compressed when the encoding deflates.
pub fn frame_of(encoding: &dyn Encoding, event: &Event<'_>) -> crate::transport::SharedFrame {
    let mut f = crate::transport::SharedFrame::with_capacity(encoding.size_hint(event));
    if let Some(min) = encoding.deflate_min() {
        f.build_deflated(encoding.splice_len(), min, |w| encoding.encode(event, w));
    } else {
        f.build(encoding.splice_len(), |w| encoding.encode(event, w));
    }
    f
}

/// A front door's encoding for the connections that negotiated permessage-deflate: the same
/// payloads, compressed once per event for all of them (one `Deflated` per door encoding, so
/// that its subscribers share frames as plain ones do), those under `min_bytes` as they are.
#[derive(Debug)]
pub struct Deflated {
    /// The encoding whose payloads are compressed.
    pub inner: Arc<dyn Encoding>,
    /// Shorter payloads go uncompressed.
    pub min_bytes: usize,
}

impl Encoding for Deflated {
    fn splice_len(&self) -> usize {
        self.inner.splice_len()
    }
    fn encode(&self, event: &Event<'_>, out: &mut FrameWriter<'_>) {
        self.inner.encode(event, out)
    }
    fn cursor_json(&self, channel: &str, offset: u64) -> Option<String> {
        self.inner.cursor_json(channel, offset)
    }
    fn sends_snapshot(&self) -> bool {
        self.inner.sends_snapshot()
    }
    fn deflate_min(&self) -> Option<usize> {
        Some(self.min_bytes)
    }
    fn size_hint(&self, event: &Event<'_>) -> usize {
        // The compressed frame is smaller; the hint sizes it as if it were not.
        self.inner.size_hint(event)
    }
}

/// A front door's encoding, plain and deflated: each connection uses the one its handshake
/// chose.
#[derive(Clone, Debug)]
pub struct Encodings {
    plain: Arc<dyn Encoding>,
    deflated: Arc<dyn Encoding>,
}

impl Encodings {
    /// Both variants of `plain`, the compressed one for payloads of at least `min_bytes`.
    pub fn new(plain: Arc<dyn Encoding>, min_bytes: usize) -> Encodings {
        Encodings { deflated: Arc::new(Deflated { inner: plain.clone(), min_bytes }), plain }
    }

    /// The one for a connection's outbox.
    pub fn of(&self, outbox: &Outbox) -> &Arc<dyn Encoding> {
        if outbox.deflates() { &self.deflated } else { &self.plain }
    }
}

impl std::fmt::Debug for dyn Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Encoding")
    }
}

/// Which live publications a subscriber takes (the snapshot is never filtered).
#[derive(Clone)]
pub struct Filter(Arc<dyn Fn(&Publication) -> bool + Send + Sync>);

impl Filter {
    /// A filter admitting the publications for which `f` is true.
    pub fn new(f: impl Fn(&Publication) -> bool + Send + Sync + 'static) -> Filter {
        Filter(Arc::new(f))
    }

    /// True when `p` is to be delivered.
    pub fn admits(&self, p: &Publication) -> bool {
        (self.0)(p)
    }
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Filter(..)")
    }
}

/// Where a subscriber's events go and how they are written.
#[derive(Clone)]
pub struct Sink {
    /// The subscriber's connection.
    pub outbox: Arc<Outbox>,
    /// Its front door's encoding.
    pub encoding: Arc<dyn Encoding>,
    /// Its own bytes in every frame (`encoding.splice_len()` long).
    pub splice: Splice,
    /// Which publications it takes; `None`: all.
    pub filter: Option<Filter>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("splice", &self.splice).field("filter", &self.filter).finish()
    }
}

impl Sink {
    /// A sink taking every publication.
    pub fn new(outbox: Arc<Outbox>, encoding: Arc<dyn Encoding>, splice: Splice) -> Sink {
        debug_assert_eq!(splice.len(), encoding.splice_len(), "a splice fits its encoding");
        Sink { outbox, encoding, splice, filter: None }
    }

    /// The same, with a filter.
    pub fn with_filter(mut self, filter: Filter) -> Sink {
        self.filter = Some(filter);
        self
    }

    /// Encodes `event` for this subscriber alone and copies it into its outbox (snapshots,
    /// `closed`): true if queued.
    pub(super) fn push_own(&self, event: &Event<'_>) -> bool {
        let frame = frame_of(&*self.encoding, event);
        self.outbox.push(&frame.parts(&self.splice)) == crate::transport::Push::Queued
    }

    /// Queues `{"type":"closed","channel","reason"}` for this subscriber (as an answer: a
    /// subscriber is told why it ended whatever its queue holds); true if queued. The caller
    /// wakes the writer.
    pub fn push_closed(&self, channel: &str, reason: &str) -> bool {
        self.push_answer(&Event::Closed { channel, reason })
    }

    /// Like [`Sink::push_own`], for what a call of the subscriber's own queues (a subscribe's
    /// snapshot and what follows it at once): queued as an answer, which the slow-consumer rule
    /// does not count ([`crate::transport::Outbox::push_answer`]).
    pub(super) fn push_answer(&self, event: &Event<'_>) -> bool {
        let frame = frame_of(&*self.encoding, event);
        self.outbox.push_answer(&frame.parts(&self.splice)) == crate::transport::Push::Queued
    }
}
