//! The broker: where channels' offsets, epochs and history live, and how publications reach
//! every node's hub.
//!
//! # The contract every implementation keeps
//!
//! - **Offsets.** Each channel has an offset that starts at 0 and grows by exactly 1 per
//!   publication: the first publication has offset 1. Offsets are assigned by the broker, never
//!   by a node, so concurrent publishers on any nodes get distinct, gap-free offsets.
//! - **Epochs.** Each channel's stream has an epoch, an opaque string. It changes exactly when
//!   the stream's history and offset are lost (the memory broker restarted; the stream expired or
//!   was evicted), and then the offset starts again at 0. A position `{epoch, offset}` from one
//!   epoch says nothing about another.
//! - **Delivery.** [`Listener::deliver`] is called for the publications of a channel that has
//!   local interest ([`Broker::subscribe`]), with their epoch, in offset order as published, *at
//!   most once* per node, and only after the publication is visible to [`Broker::history`]. A
//!   shared broker may lose deliveries (a pub/sub message dropped, a connection lost); it need
//!   not repeat them, but when it knows it may have lost some for a channel (its connection
//!   dropped and came back) it calls [`Listener::lagged`]. The hub checks every delivery against
//!   the channel's position: a repeat is skipped, a jump is filled from history before anything
//!   after it is delivered (or, when history no longer covers it, announced to the subscribers as
//!   a `gap` with its bounds, after which their stream goes on), an epoch change ends the
//!   channel's subscriptions with `closed` `insufficient_state`. So a history read started after interest was registered, merged with the deliveries
//!   that arrive after the registration, yields every publication once, with no gap: that is
//!   what snapshot-then-live rests on (`crate::hub`), and what `tests/it/broker_contract.rs`
//!   checks for every broker, including one that drops, repeats and reorders on purpose.
//! - **Timing of interest.** When the future of [`Broker::subscribe`] resolves, every
//!   publication that becomes visible in history afterwards is delivered (or its loss signalled
//!   as above). After [`Broker::unsubscribe`] deliveries may still arrive for a while; the hub
//!   ignores those of channels it no longer holds.
//! - **History.** The newest `history_size` publications no older than `history_ttl` are kept
//!   (per the channel's namespace). A read returns them oldest first. A read of a channel that
//!   has no stream creates none: it answers an empty page in [`NO_EPOCH`] at offset 0, so that
//!   reads of channels nobody uses (anyone may send them) leave nothing behind.
//! - **Slots.** A stream that keeps no publication and that no local subscriber needs is
//!   forgotten once the hub lets go of its channel ([`Broker::release`]), not after its TTL: its
//!   next use starts a new epoch, which recovering clients are told of like any other.
//! - **Idempotency.** A publish whose `idempotency_key` equals that of a publication still in the
//!   channel's history returns that publication's position and publishes nothing.
//! - **Loss.** If the broker cannot keep a promise (a stream was lost, a connection to a shared
//!   broker dropped), it starts a new epoch rather than reuse offsets, so recovering clients see
//!   `recovered: false` instead of silently missing publications.
//!
//! Implementations: [`memory::MemoryBroker`] (one process); [`redis::RedisBroker`] (shared by
//! every node on one Redis); [`testing::FaultyBroker`] wraps
//! one and breaks the delivery promises on purpose, for tests. [`connect`] builds the broker a
//! configuration names.

pub mod conversation;
pub mod memory;
pub mod redis;
pub mod testing;

pub use conversation::{CursorMove, PresenceClient, PresencePage, PresenceSignal};

use futures_util::future::BoxFuture;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;

/// The epoch of a channel that has no stream: the empty string, which no stream's epoch ever is.
/// A position in it vouches for nothing, so a `since` in it is never recovered: the subscriber
/// gets the retained tail with `recovered: false`, and a history read after it reads from the
/// oldest retained publication of the stream's epoch.
pub const NO_EPOCH: &str = "";

/// A place in a channel's stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StreamPosition {
    /// The stream's epoch: changes when its history is lost.
    pub epoch: String,
    /// Offset of a publication (0: before the first).
    pub offset: u64,
}

/// One publication, as kept in history and delivered to subscribers. Its JSON form is encoded
/// once, when it is created, and copied (never re-serialized) into every snapshot and
/// notification.
#[derive(Debug)]
pub struct Publication {
    /// Offset in its channel.
    pub offset: u64,
    /// Unix time in milliseconds when the broker accepted it.
    pub ts: u64,
    /// `{"offset":..,"ts":..,"event":..,"data":..}` (`event` only when set).
    json: Box<str>,
    /// Where `data` starts in `json`.
    data_at: u32,
    /// Idempotency key it was published with.
    pub(crate) key: Option<Box<str>>,
    /// On a state channel: the key whose value it sets (`""`: the whole value); `None` on other
    /// channels.
    pub(crate) state_key: Option<Box<str>>,
}

impl Publication {
    /// Encodes a publication.
    pub fn new(
        offset: u64,
        ts: u64,
        event: Option<&str>,
        data: &RawValue,
        key: Option<Box<str>>,
    ) -> Publication {
        Publication::keyed(offset, ts, None, event, data, key)
    }

    /// Encodes a publication of a state channel's key `state_key` (`Some("")`: the whole value,
    /// written without `key`); `None` for other channels, as [`Publication::new`].
    pub fn keyed(
        offset: u64,
        ts: u64,
        state_key: Option<&str>,
        event: Option<&str>,
        data: &RawValue,
        key: Option<Box<str>>,
    ) -> Publication {
        use std::fmt::Write;
        let extra = event.map_or(0, |e| e.len() + 12) + state_key.map_or(0, |k| k.len() + 12);
        let mut json = String::with_capacity(48 + data.get().len() + extra);
        write!(json, r#"{{"offset":{offset},"ts":{ts}"#).expect("writing to a String; qed");
        // Before `event`: `event_json` finds the event as the last field before `data`.
        if let Some(k) = state_key.filter(|k| !k.is_empty()) {
            json.push_str(r#","key":"#);
            json.push_str(&serde_json::to_string(k).expect("a str serializes; qed"));
        }
        if let Some(e) = event {
            json.push_str(r#","event":"#);
            json.push_str(&serde_json::to_string(e).expect("a str serializes; qed"));
        }
        json.push_str(r#","data":"#);
        let data_at = json.len() as u32;
        json.push_str(data.get());
        json.push('}');
        Publication {
            offset,
            ts,
            json: json.into_boxed_str(),
            data_at,
            key,
            state_key: state_key.map(Into::into),
        }
    }

    /// On a state channel, the key it sets (`""`: the whole value).
    pub fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    /// True when its data is `null`: on a state channel, it deletes its key.
    pub fn is_deletion(&self) -> bool {
        self.data().trim() == "null"
    }

    /// A publication from its encoding as [`Publication::new`] made it (kept by a shared broker):
    /// `None` when `json` is not of that shape with `data` at `data_at`.
    pub(crate) fn from_encoded(offset: u64, ts: u64, json: Box<str>, data_at: u32) -> Option<Publication> {
        let at = data_at as usize;
        let fits = json.len() > at
            && json.is_char_boundary(at)
            && json.starts_with(r#"{"offset":"#)
            && json[..at].ends_with(r#","data":"#)
            && json.ends_with('}');
        fits.then_some(Publication { offset, ts, json, data_at, key: None, state_key: None })
    }

    /// The same publication as one of a state channel (`in_state`): its state key read from
    /// its encoding (`""` when it has none), as a shared broker that keeps only the encoding
    /// gives it back. Unchanged when not `in_state`.
    pub(crate) fn in_state(mut self, in_state: bool) -> Publication {
        if in_state {
            self.state_key = Some(self.encoded_state_key().unwrap_or_default().into());
        }
        self
    }

    /// The `key` written after `ts` by [`Publication::keyed`], if any.
    fn encoded_state_key(&self) -> Option<String> {
        const KEY: &str = r#","key":"#;
        let after_ts = self.json.find(r#","ts":"#)? + 6;
        let rest = &self.json[after_ts..];
        let at = rest.find(|c: char| !c.is_ascii_digit())?;
        let rest = rest[at..].strip_prefix(KEY)?;
        serde_json::Deserializer::from_str(rest).into_iter::<String>().next()?.ok()
    }

    /// The publication as a JSON object.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The JSON of its `data`.
    pub fn data(&self) -> &str {
        &self.json[self.data_at as usize..self.json.len() - 1]
    }

    /// The event name as a JSON string literal (quotes and escapes included), if it has one.
    pub fn event_json(&self) -> Option<&str> {
        const EVENT: &str = r#","event":"#;
        const DATA: &str = r#","data":"#;
        let head = &self.json[..self.data_at as usize - DATA.len()];
        head.find(EVENT).map(|at| &head[at + EVENT.len()..])
    }

    /// The fields after the opening brace: `"offset":..,...}`, for building event objects that
    /// add fields in front.
    pub fn fields_and_close(&self) -> &str {
        &self.json[1..]
    }
}

/// What a publisher sends.
#[derive(Debug)]
pub struct NewPublication {
    /// Any JSON value.
    pub data: Box<RawValue>,
    /// Optional event name.
    pub event: Option<String>,
    /// Optional key: a repeat within the history window publishes nothing.
    pub idempotency_key: Option<String>,
    /// On a state channel: the key it sets (`None`: the whole value); `None` on other channels.
    pub key: Option<String>,
}

/// The answer to a publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// Where the publication is (or was, for a repeated idempotency key).
    pub position: StreamPosition,
    /// True when the idempotency key was seen before and nothing was published.
    pub duplicate: bool,
}

/// Which part of the history to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryRange {
    /// The newest `limit` publications (all retained when `None`).
    Newest(Option<usize>),
    /// The first `limit` publications with an offset above `offset` (all when `None`).
    After(u64, Option<usize>),
}

/// A history read.
#[derive(Clone, Debug)]
pub struct HistoryPage {
    /// The stream's epoch.
    pub epoch: Arc<str>,
    /// The stream's offset when it was read (the newest publication's offset).
    pub offset: u64,
    /// Oldest first.
    pub publications: Vec<Arc<Publication>>,
}

/// A namespace's retention, passed with each call so that brokers need no configuration of
/// their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Publications kept.
    pub size: usize,
    /// How long each is kept.
    pub ttl: Duration,
    /// A state channel (`mode = "state"`): the broker also keeps the latest publication of each
    /// key ([`Broker::keyed_state`]).
    pub state: bool,
}

/// Receives the publications of channels with local interest.
pub trait Listener: Send + Sync + 'static {
    /// One publication of `channel` (see the module contract). Called with the broker's stream
    /// lock held for the memory broker: it must not call back into the broker.
    fn deliver(&self, channel: &str, epoch: &Arc<str>, publication: &Arc<Publication>);

    /// Deliveries of `channel` may have been lost: the listener checks its position against
    /// history. Same calling rules as [`Listener::deliver`].
    fn lagged(&self, channel: &str);

    /// `channel`, whose name starts with a prefix the listener watches ([`Broker::watch`]), was
    /// published to, whether or not it has local interest: pattern subscriptions learn of
    /// channels this way. The broker tells at least of each channel's first publication in an
    /// epoch; it may tell of more (the memory broker tells of every publication, the Redis
    /// broker of the first and, after its notices may have been lost, of every channel it lists
    /// under the prefix), so a listener treats a repeat as nothing new. Same calling rules as
    /// [`Listener::deliver`].
    fn published(&self, _channel: &str) {}

    /// A client joined or left `channel` ([`Broker::presence_update`] with `signal`), told to
    /// every node with interest in the channel (the memory broker tells its one listener of every
    /// channel). Same calling rules as [`Listener::deliver`].
    fn signalled(&self, _channel: &str, _signal: &PresenceSignal) {}

    /// A user's read cursor moved ([`Broker::cursor_set`]), told to every node. Same calling
    /// rules as [`Listener::deliver`].
    fn cursor_moved(&self, _moved: &CursorMove) {}
}

/// Broker failures.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker's own storage is full (the memory broker holds `limits.max_channels`
    /// streams at most).
    #[error("the broker holds its maximum of {0} channels")]
    Full(usize),
    /// A shared broker cannot be reached.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The configuration names no broker this version has.
    #[error("{0}")]
    Unsupported(String),
}

/// Builds the broker `config.broker` names: `memory`, or `redis://...` (see [`redis`]).
pub async fn connect(config: &crate::config::Config) -> Result<Arc<dyn Broker>, BrokerError> {
    match config.broker.as_str() {
        "memory" => Ok(memory::MemoryBroker::start(config.limits.max_channels)),
        url => Ok(redis::RedisBroker::connect_with(url, &config.broker_tls).await?),
    }
}

/// Whether a broker can be used now, for `/health`, `info` (`broker_state`: `up` or `down`)
/// and `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BrokerState {
    /// Working.
    #[default]
    Up,
    /// A shared broker that cannot be reached: publish, subscribe and history fail fast with
    /// -32008 `broker_unavailable` (`BrokerError::Unavailable`) until it is back.
    Down,
}

/// Where publications go and come from; see the module documentation for the contract.
pub trait Broker: Send + Sync + 'static {
    /// `memory` or `redis`, for `info`.
    fn name(&self) -> &'static str;

    /// Registers the node's listener (once, at start).
    fn set_listener(&self, listener: std::sync::Weak<dyn Listener>);

    /// Appends a publication, assigning its offset, and delivers it to every node with interest.
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        publication: NewPublication,
        retention: Retention,
    ) -> BoxFuture<'a, Result<Published, BrokerError>>;

    /// Reads history. A channel with no stream reads as an empty page in [`NO_EPOCH`] at offset
    /// 0, and no stream is created.
    fn history<'a>(
        &'a self,
        channel: &'a str,
        range: HistoryRange,
        retention: Retention,
    ) -> BoxFuture<'a, Result<HistoryPage, BrokerError>>;

    /// One more local subscriber needs the channel's deliveries. Counted: deliveries continue
    /// until as many [`Broker::unsubscribe`] calls.
    fn subscribe<'a>(
        &'a self,
        channel: &'a str,
        retention: Retention,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// One local subscriber fewer.
    fn unsubscribe(&self, channel: &str);

    /// The hub let go of `channel` (nobody on this node is subscribed or subscribing): a stream
    /// this broker holds for the node that keeps no publication and has no interest is forgotten
    /// now, freeing its slot, instead of after its TTL. A broker whose streams live elsewhere
    /// may do nothing.
    fn release(&self, channel: &str);

    /// Streams this broker holds in this process (each counts against `limits.max_channels`),
    /// or `None` when they live elsewhere (a shared broker).
    fn held(&self) -> Option<usize>;

    /// Finishes pending work before the process exits.
    fn flush(&self) -> BoxFuture<'_, ()>;

    /// Whether it can be used now. An embedded broker always can. While it says
    /// [`BrokerState::Down`] the hub fails publishes, subscribes and history reads at once with
    /// [`BrokerError::Unavailable`] and keeps its subscribers; when it is back, the broker calls
    /// [`Listener::lagged`] for every channel with local interest, so that each catches up from
    /// history (or tells its subscribers it cannot).
    fn state(&self) -> BrokerState {
        BrokerState::Up
    }

    /// The latency of its last round trip, for a shared broker (`None` for an embedded one, or
    /// before the first).
    fn latency(&self) -> Option<Duration> {
        None
    }

    /// The channels that have a stream and whose name starts with `prefix`, at most `max + 1`
    /// of them (so that a caller can tell when there are more than `max`), for pattern
    /// subscriptions. A broker that cannot list them answers [`BrokerError::Unsupported`].
    fn streams<'a>(
        &'a self,
        _prefix: &'a str,
        _max: usize,
    ) -> BoxFuture<'a, Result<Vec<String>, BrokerError>> {
        Box::pin(async { Err(BrokerError::Unsupported(PATTERNS_UNSUPPORTED.into())) })
    }

    /// Once its future resolves, calls [`Listener::published`] for the publications of channels
    /// whose name starts with `prefix` (at least each channel's first in an epoch), until every
    /// call of `watch` with that prefix is undone by as many [`Broker::unwatch`] calls. So a
    /// listing by [`Broker::streams`] started after it, and the channels told of afterwards,
    /// miss no channel. A broker that cannot answers [`BrokerError::Unsupported`].
    fn watch<'a>(&'a self, _prefix: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async { Err(BrokerError::Unsupported(PATTERNS_UNSUPPORTED.into())) })
    }

    /// Undoes one [`Broker::watch`] of `prefix`.
    fn unwatch(&self, _prefix: &str) {}

    /// Changes `channel`'s presence ([`conversation`]): entries that expired are removed, those
    /// of `leave` (client ids) are removed, those of `join` are added or kept alive until `ttl`
    /// from now. With `signal`, each change is signalled once to the nodes with interest in the
    /// channel ([`Listener::signalled`]).
    fn presence_update<'a>(
        &'a self,
        channel: &'a str,
        join: &'a [PresenceClient],
        leave: &'a [String],
        ttl: Duration,
        signal: bool,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// `channel`'s presence, at most `max` clients listed, expired entries removed first (and,
    /// with `signal`, their leaves signalled).
    fn presence<'a>(
        &'a self,
        channel: &'a str,
        max: usize,
        signal: bool,
    ) -> BoxFuture<'a, Result<PresencePage, BrokerError>>;

    /// Raises `user`'s read cursor of `channel` to `offset` (a lower value changes nothing) and
    /// returns the stored value; when it changed, every node is told ([`Listener::cursor_moved`])
    /// with `origin`, the client that set it. A user holds at most
    /// [`crate::constants::MAX_CURSORS_PER_USER`] cursors ([`BrokerError::Full`] beyond).
    fn cursor_set<'a>(
        &'a self,
        user: &'a str,
        channel: &'a str,
        offset: u64,
        origin: &'a str,
    ) -> BoxFuture<'a, Result<u64, BrokerError>>;

    /// `user`'s read cursors of `channels`, in order (0: never set).
    fn cursor_get<'a>(
        &'a self,
        user: &'a str,
        channels: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<u64>, BrokerError>>;

    /// A state channel's state: the latest publication of each key no older than the
    /// retention's TTL (a key whose latest publication's data is `null` is deleted), in offset
    /// order, with the stream's epoch and offset. A channel with no stream reads as an empty
    /// page in [`NO_EPOCH`]. A broker that keeps no state answers [`BrokerError::Unsupported`].
    fn keyed_state<'a>(
        &'a self,
        _channel: &'a str,
        _retention: Retention,
    ) -> BoxFuture<'a, Result<HistoryPage, BrokerError>> {
        Box::pin(async { Err(BrokerError::Unsupported(STATE_UNSUPPORTED.into())) })
    }
}

/// Why a broker without [`Broker::keyed_state`] refuses state channels.
pub const STATE_UNSUPPORTED: &str =
    "this broker keeps no state: state channels (mode = \"state\") are refused";

/// Why a broker without [`Broker::streams`] and [`Broker::watch`] refuses pattern subscriptions.
pub const PATTERNS_UNSUPPORTED: &str =
    "this broker cannot list or watch channels: pattern subscriptions are refused";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publication_json_is_encoded_once_with_its_parts_reachable() {
        let data = RawValue::from_string(r#"{"px":"1.5"}"#.into()).unwrap();
        let p = Publication::new(7, 1_700_000_000_000, Some("trade \"x\""), &data, None);
        let v: serde_json::Value = serde_json::from_str(p.json()).unwrap();
        assert_eq!(v["offset"], 7);
        assert_eq!(v["event"], "trade \"x\"");
        assert_eq!(v["data"]["px"], "1.5");
        assert_eq!(p.data(), r#"{"px":"1.5"}"#);
        assert_eq!(p.event_json(), Some(r#""trade \"x\"""#));
        let keyed = Publication::keyed(3, 4, Some("k \"1\""), Some("e"), &data, None);
        let back =
            Publication::from_encoded(3, 4, keyed.json().into(), keyed.data_at).unwrap().in_state(true);
        assert_eq!(
            (back.state_key(), back.data(), back.event_json()),
            (Some("k \"1\""), p.data(), Some(r#""e""#))
        );
        let whole = Publication::keyed(5, 6, Some(""), None, &data, None);
        let back = Publication::from_encoded(5, 6, whole.json().into(), whole.data_at).unwrap();
        assert_eq!(back.state_key(), None, "not in state: no key");
        assert_eq!(back.in_state(true).state_key(), Some(""), "the whole value");
        let no_event = Publication::new(1, 2, None, &data, None);
        assert_eq!(no_event.json(), r#"{"offset":1,"ts":2,"data":{"px":"1.5"}}"#);
        assert_eq!(no_event.fields_and_close(), r#""offset":1,"ts":2,"data":{"px":"1.5"}}"#);
        assert_eq!(no_event.event_json(), None);
    }
}
