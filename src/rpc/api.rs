//! The JSON-RPC methods, one `#[rpc]` trait per concern. The doc comments here are the methods'
//! documentation for users; the types are their params and results.
//!
//! Each trait is wrapped in `described!`, which also makes the descriptors the OpenRPC document
//! is generated from (`super::describe`): what is written here is the one definition of each
//! method.
//!
//! Every method accepts params by name or by position (in the order declared). Rust names that
//! differ from the method names (`subscribe_channel`) avoid clashing with jsonrpsee's client
//! traits; the wire names are the `name = ...` ones.

use super::describe::described;
use crate::broker::StreamPosition;
use crate::hub::ChannelInfo;
use jsonrpsee::core::RpcResult;
use jsonrpsee::proc_macros::rpc;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

described! {
CHANNEL_METHODS;
/// Channels: subscribe, publish, read history.
#[rpc(server, client)]
pub trait ChannelApi {
    /// Subscribes to `channel`. Returns the subscription id; notifications follow with method
    /// `subscription`, the first one the snapshot: with `since` in the same epoch and still in
    /// history, every publication after it (`recovered: true`); otherwise the newest `limit`
    /// retained publications (all by default). Live publications continue at the snapshot's
    /// `offset + 1` with no gap and no duplicate. With `conflate_ms` (or its namespace's), at
    /// most one publication event per that many ms, the latest, with `skipped: K` when K
    /// publications were folded into it. On a namespace with `patterns = true`, `channel` may
    /// be a glob (`trades:*`): every matching channel, existing and created later, is followed
    /// under the one subscription id, each starting with its own snapshot; `since` is then a
    /// map of channel to position. On a state channel (`mode = "state"`) the snapshot is the
    /// latest publication of each key with the state's `checksum`, and `checksum: true` adds the
    /// state's checksum to every publication event.
    #[method(name = "subscribe")]
    async fn subscribe_channel(
        &self,
        channel: String,
        since: Option<Since>,
        limit: Option<usize>,
        conflate_ms: Option<u64>,
        checksum: Option<bool>,
    ) -> RpcResult<String>;

    /// Subscribes to several channels in one call, each item as `subscribe` takes it. The
    /// answer has one result per item, in order: the subscription id, or that item's error (one
    /// bad item fails only itself); then `limits`: the subscriptions this connection may still
    /// make and its call rate. Each subscription then gets its own snapshot, in the order of the
    /// items. A channel named twice fails its second item; an item over the connection's
    /// subscriptions limit fails with -32002. More items than the limit in one call is -32602.
    #[method(name = "subscribe_many")]
    async fn subscribe_many(&self, subscriptions: Vec<SubscribeItem>) -> RpcResult<SubscribeManyResult>;

    /// Ends a subscription of this connection. `true` if it was active, else `false`.
    #[method(name = "unsubscribe")]
    fn unsubscribe_channel(&self, subscription: String) -> RpcResult<bool>;

    /// Publishes `data` (any JSON) to `channel`, with an optional `event` name. A repeated
    /// `idempotency_key` within the channel's history returns the first publication's position
    /// and publishes nothing. On a state channel (`mode = "state"`), `key` names the key it sets
    /// (absent: the whole value) and `data: null` deletes it. Returns the publication's
    /// `{epoch, offset}`.
    #[method(name = "publish")]
    async fn publish(
        &self,
        channel: String,
        data: JsonData,
        event: Option<String>,
        idempotency_key: Option<String>,
        key: Option<String>,
    ) -> RpcResult<StreamPosition>;

    /// Reads a channel's history, oldest first: with `since`, the first `limit` publications
    /// after it; without, the newest `limit`. A channel that does not exist reads as an empty
    /// page in the empty epoch `""` at offset 0, and the read creates nothing.
    #[method(name = "history")]
    async fn history(
        &self,
        channel: String,
        since: Option<StreamPosition>,
        limit: Option<usize>,
    ) -> RpcResult<HistoryResult>;

    /// Channels with subscribers on this node, optionally only those starting with `prefix`
    /// (callers with a token only).
    #[method(name = "channels")]
    fn channels(&self, prefix: Option<String>) -> RpcResult<Vec<ChannelInfo>>;
}
}

described! {
NODE_METHODS;
/// The node itself: liveness, identity, authentication.
#[rpc(server, client)]
pub trait NodeApi {
    /// Answers `"pong"`.
    #[method(name = "ping")]
    fn ping(&self) -> RpcResult<String>;

    /// The node's name, version, id, uptime, open connections and broker.
    #[method(name = "info")]
    fn info(&self) -> RpcResult<NodeInfo>;

    /// Authenticates the connection with a token (a static key or a JWT), replacing its rights.
    /// A failed `auth` leaves the connection's rights as they were.
    #[method(name = "auth")]
    fn auth(&self, token: String) -> RpcResult<AuthResult>;
}
}

described! {
STREAM_METHODS;
/// Streamed replies of the methods the application's backend serves (`backend.methods`): such
/// a call answers `{"stream":ID}` and its lines follow as notifications with method `stream`.
#[rpc(server, client)]
pub trait StreamApi {
    /// Cancels streamed reply `stream` of this connection: the backend's request is dropped and
    /// no more of it is sent. `true` if it was running, else `false`.
    #[method(name = "stream_cancel")]
    fn stream_cancel(&self, stream: String) -> RpcResult<bool>;
}
}

described! {
CONVERSATION_METHODS;
/// Conversations: who is in a channel, and how far each user has read.
#[rpc(server, client)]
pub trait ConversationApi {
    /// The clients subscribed to `channel` on every node, at most 1,000 listed, with their
    /// count. Only on a namespace with `presence = true` (else -32005); permission as for
    /// `history`. A client is listed from its subscription until it unsubscribes or
    /// disconnects; one whose node died without saying goodbye is listed until the node's
    /// entries expire (`presence_ttl` and a third of it).
    #[method(name = "presence")]
    async fn presence(&self, channel: String) -> RpcResult<PresenceResult>;

    /// How many clients, and how many distinct users among them, are subscribed to `channel`
    /// (as `presence` counts them).
    #[method(name = "presence_stats")]
    async fn presence_stats(&self, channel: String) -> RpcResult<PresenceStats>;

    /// Sets the caller's read cursor of `channel` to `offset`: the stored value is the highest
    /// ever set (a lower one changes nothing), and is returned. An offset beyond the channel's
    /// newest is -32005. The user's other connections are told of a change with a `cursor`
    /// notification. Needs a token and read rights on the channel.
    #[method(name = "cursor_set")]
    async fn cursor_set(&self, channel: String, offset: u64) -> RpcResult<CursorResult>;

    /// The caller's read cursors of `channels` (at most 1,000), as `{channel: offset}`; a cursor
    /// never set reads 0.
    #[method(name = "cursor_get")]
    async fn cursor_get(&self, channels: Vec<String>) -> RpcResult<std::collections::BTreeMap<String, u64>>;

    /// For each of `channels` (at most 1,000), the publications after the caller's read cursor:
    /// `{channel: {count, capped}}`, the count capped at what history holds (`capped: true`
    /// when some are no longer kept).
    #[method(name = "unread")]
    async fn unread(&self, channels: Vec<String>) -> RpcResult<std::collections::BTreeMap<String, Unread>>;
}
}

/// The result of `presence`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PresenceResult {
    /// Subscribed clients, at most 1,000, in no particular order.
    pub clients: Vec<crate::broker::PresenceClient>,
    /// How many clients are subscribed.
    pub count: usize,
}

/// The result of `presence_stats`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PresenceStats {
    /// Subscribed clients.
    pub clients: usize,
    /// Distinct users among them (anonymous clients count as one user, `""`).
    pub users: usize,
}

/// The result of `cursor_set`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct CursorResult {
    /// The stored cursor: the highest offset ever set.
    pub offset: u64,
}

/// One channel's entry in the result of `unread`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct Unread {
    /// Publications after the cursor that history holds.
    pub count: u64,
    /// True when publications between the cursor and the oldest retained one are no longer
    /// kept (the true number is higher).
    pub capped: bool,
}

/// Where a subscription resumes: the last position the client has of the channel, or, for a
/// pattern, of each channel it names.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum Since {
    /// One channel's position.
    Position(StreamPosition),
    /// For a pattern: a position per channel (each must match the pattern).
    Channels(std::collections::BTreeMap<String, StreamPosition>),
}

/// One item of `subscribe_many`: what `subscribe` takes.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubscribeItem {
    /// The channel.
    pub channel: String,
    /// Where the client's stream stopped, to recover from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<StreamPosition>,
    /// At most this many publications in the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// At most one publication event per this many ms, the latest, with `skipped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflate_ms: Option<u64>,
    /// On a state channel: the state's checksum with every publication event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<bool>,
}

/// The result of `subscribe_many`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct SubscribeManyResult {
    /// One per item, in the order of the items.
    pub results: Vec<SubscribeOutcome>,
    /// The connection's limits after this call.
    pub limits: ConnectionLimits,
}

/// What became of one item of `subscribe_many`: `subscription` or `error`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct SubscribeOutcome {
    /// The item's channel.
    pub channel: String,
    /// The subscription id, when it was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
    /// Why it was not, as a JSON-RPC error object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ItemError>,
}

/// A JSON-RPC error object, for one item of a call that answers per item.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct ItemError {
    /// The error code, as a whole call's error would have.
    pub code: i32,
    /// What is wrong.
    pub message: String,
    /// `{"code": NAME}` for rpchub's own codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// What a connection may still do, so that clients need not guess.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct ConnectionLimits {
    /// Subscriptions this connection may still make (`limits.max_subscriptions` less those it
    /// holds).
    pub subscriptions_left: usize,
    /// Calls a second this connection may make; `null`: no limit (the admin token).
    pub calls_per_s: Option<u32>,
}

/// Any JSON value, taken as it was written (published data is never re-encoded).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JsonData(pub Box<RawValue>);

impl JsonData {
    /// `v` as JSON.
    pub fn of<T: Serialize + ?Sized>(v: &T) -> serde_json::Result<JsonData> {
        serde_json::value::to_raw_value(v).map(JsonData)
    }
}

impl JsonSchema for JsonData {
    fn schema_name() -> Cow<'static, str> {
        "JsonData".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"description": "Any JSON value."})
    }
}

/// The result of `history`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct HistoryResult {
    /// The channel's epoch; `""` for a channel that does not exist (a `since` in it is never
    /// recovered).
    pub epoch: String,
    /// The channel's newest offset.
    pub offset: u64,
    /// Publications, oldest first.
    pub publications: Vec<PublicationJson>,
}

/// A publication as it is on the wire: `{"offset","ts","event"?,"data"}`, passed through
/// without re-encoding.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PublicationJson(pub Box<RawValue>);

/// A publication: `{"offset","ts","event"?,"data"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Publication {
    /// Offset in the channel.
    pub offset: u64,
    /// When the broker accepted it, Unix milliseconds.
    pub ts: u64,
    /// Event name, if the publisher gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// What was published.
    pub data: serde_json::Value,
}

impl JsonSchema for PublicationJson {
    fn schema_name() -> Cow<'static, str> {
        "Publication".into()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        Publication::json_schema(g)
    }
}

/// The result of `info`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct NodeInfo {
    /// `rpchub`.
    pub name: String,
    /// The server's version.
    pub version: String,
    /// This node's id.
    pub node_id: String,
    /// Seconds since the node started.
    pub uptime_s: u64,
    /// Open WebSocket connections on this node.
    pub connections: u64,
    /// `memory` or `redis`.
    pub broker: String,
    /// `up`, or `down` while a shared broker cannot be reached (publish, subscribe and history
    /// fail with -32008 `broker_unavailable` then).
    #[serde(default)]
    pub broker_state: crate::broker::BrokerState,
    /// The latency of the shared broker's last round trip, in milliseconds; absent for the
    /// embedded broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_latency_ms: Option<f64>,
}

/// The result of `auth`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct AuthResult {
    /// Who the token says the client is.
    pub sub: String,
    /// When the token expires, Unix seconds (JWTs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// An event of a subscription: `params.result` of a `subscription` notification; its `type`
/// says which.
// Generic over how data and publications are held: as the server has them (raw JSON, the
// default, which the document is made from), or as a client reads them (`Event`: an internally
// tagged enum cannot hold raw JSON when it is deserialized). Doc comments here are the
// document's descriptions.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[schemars(rename = "SubscriptionEvent")]
pub enum SubscriptionEvent<D = JsonData, P = PublicationJson> {
    /// First, exactly once: where the subscription starts.
    Snapshot {
        /// The channel.
        channel: String,
        /// The channel's epoch; live publications of this subscription belong to it.
        epoch: String,
        /// The offset the snapshot reaches; live publications continue at `offset + 1`.
        offset: u64,
        /// True when `publications` are exactly those after the `since` given.
        recovered: bool,
        /// After a `since` that could not be honoured: the oldest position still in history.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        earliest: Option<StreamPosition>,
        /// Publications, oldest first.
        publications: Vec<P>,
    },
    /// A live publication, in offset order, with no gap and no duplicate.
    Publication {
        /// The channel.
        channel: String,
        /// Offset in the channel.
        offset: u64,
        /// On a conflated subscription: publications folded into this one (its offset is the
        /// previous event's plus 1 plus `skipped`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skipped: Option<u64>,
        /// When the broker accepted it, Unix milliseconds.
        ts: u64,
        /// Event name, if the publisher gave one.
        #[serde(skip_serializing_if = "Option::is_none")]
        event: Option<String>,
        /// What was published.
        data: D,
    },
    /// On a namespace with `heartbeat`: the channel had no publication for that long, and this
    /// is its newest offset.
    Heartbeat {
        /// The channel.
        channel: String,
        /// Its newest offset (0: never published to).
        offset: u64,
    },
    /// Publications `from` to `to` (inclusive) are lost for this subscriber: the broker lost
    /// them and history no longer holds them. The subscription goes on at `to + 1`.
    Gap {
        /// The channel.
        channel: String,
        /// The first offset lost.
        from: u64,
        /// The last offset lost.
        to: u64,
        /// Why: `broker_lost`.
        reason: String,
    },
    /// On a namespace with `join_leave`: a client subscribed to the channel (once per client,
    /// however many subscriptions it holds; a subscriber is told of its own join too).
    Join {
        /// The channel.
        channel: String,
        /// Who.
        info: crate::broker::PresenceClient,
    },
    /// On a namespace with `join_leave`: a client that joined is gone (it unsubscribed,
    /// disconnected, was dropped, or its node died and its presence expired).
    Leave {
        /// The channel.
        channel: String,
        /// Who.
        info: crate::broker::PresenceClient,
    },
    /// Last, when the server ends the subscription itself (under a pattern: the end of the one
    /// channel it names, or of the whole pattern when it names the pattern).
    Closed {
        /// The channel (or pattern) it ends.
        #[serde(default)]
        channel: String,
        /// Why: `token_expired`, `insufficient_state`, `pattern_too_broad`, `shutdown`, ...
        reason: String,
    },
    /// An event type this client does not know (a newer server's): to be ignored.
    #[serde(other)]
    #[schemars(skip)]
    Other,
}

/// A subscription's event as a client reads it.
pub type Event = SubscriptionEvent<serde_json::Value, Publication>;
