//! `[limits]`: the hard limits that keep one client from hurting others (see docs/protocol.md,
//! "Limits"); each default is a constant in `crate::constants`.

use crate::constants::*;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Limits; see PROTOCOL.md "Limits".
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest client message in bytes; a bigger one closes the connection with code 1009.
    pub max_message_bytes: usize,
    /// Largest body of `POST /api/publish` in bytes, one publication or a batch of them (413
    /// beyond it). Backends hold tokens; a batch of 1,000 needs more than a client message.
    pub max_publish_body_bytes: usize,
    /// Messages queued for one client connection while its socket is full before it is dropped
    /// as a slow consumer.
    pub outbound_queue_messages: usize,
    /// Bytes queued for one client connection before it is dropped as a slow consumer. Answers
    /// to the client's own calls do not count: the connection's further calls wait unread while
    /// more than a share of this of them waits (`ANSWER_SHARE_OF_OUTBOUND_QUEUE`).
    pub outbound_queue_bytes: usize,
    /// Interval between server pings.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A client silent for this long (no pong, no message) is disconnected; so is one whose
    /// socket took no bytes for this long while data waited for it (`write_stalled`).
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// WebSocket upgrades per minute per client IP.
    pub upgrades_per_minute: u32,
    /// Concurrent WebSocket connections (with `max_http_connections`, kept below the process's
    /// descriptor limit at start).
    pub max_connections: usize,
    /// Concurrent TCP connections that are not WebSockets (yet): HTTP requests, keep-alive
    /// connections, upgrades in progress.
    pub max_http_connections: usize,
    /// Connections from one client address (IPv6: its /64) that are not WebSockets (yet):
    /// HTTP requests, keep-alive connections, upgrades in progress.
    pub http_connections_per_address: usize,
    /// Time a client has to send a request's head, and then again its body (extended by the
    /// body's size at `request_min_rate`).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Bytes a second a request body must arrive at, beyond `request_timeout`'s allowance.
    pub request_min_rate: u32,
    /// An HTTP answer whose socket takes no byte for this long is dropped.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Largest answer to one message (a call, or a batch as a whole), in bytes.
    pub max_response_bytes: usize,
    /// Subscriptions per connection.
    pub max_subscriptions: usize,
    /// Calls per second per connection (a static key's `rate` overrides it; admin: unlimited).
    pub calls_per_second: u32,
    /// Calls of one connection handled at the same time: slow calls (a history read from a
    /// shared broker, later a proxied call) do not hold up fast ones, and what unanswered calls
    /// hold stays bounded.
    pub calls_in_flight: usize,
    /// Channels the node keeps state for.
    pub max_channels: usize,
    /// The share of `max_channels` (above 0, at most 1) that anonymous clients of one address
    /// (IPv6 by its /64) may hold with their subscriptions, counted in distinct channels: a
    /// subscription to a channel the address already holds costs nothing more. Clients with a
    /// token are not counted.
    pub anonymous_channel_share: f64,
    /// Shortest conflation interval a subscription or a namespace may ask for, in ms.
    pub min_conflate_ms: u64,
    /// Longest conflation interval a subscription or a namespace may ask for, in ms.
    pub max_conflate_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_publish_body_bytes: DEFAULT_MAX_PUBLISH_BODY_BYTES,
            outbound_queue_messages: DEFAULT_OUTBOUND_QUEUE_MESSAGES,
            outbound_queue_bytes: DEFAULT_OUTBOUND_QUEUE_BYTES,
            ping_interval: DEFAULT_PING_INTERVAL,
            pong_timeout: DEFAULT_PONG_TIMEOUT,
            upgrades_per_minute: DEFAULT_UPGRADES_PER_MINUTE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_http_connections: DEFAULT_MAX_HTTP_CONNECTIONS,
            http_connections_per_address: DEFAULT_HTTP_CONNECTIONS_PER_ADDRESS,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            request_min_rate: DEFAULT_REQUEST_MIN_RATE,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            calls_per_second: DEFAULT_CALLS_PER_SECOND,
            calls_in_flight: DEFAULT_CALLS_IN_FLIGHT,
            max_channels: DEFAULT_MAX_CHANNELS,
            anonymous_channel_share: DEFAULT_ANONYMOUS_CHANNEL_SHARE,
            min_conflate_ms: DEFAULT_MIN_CONFLATE_MS,
            max_conflate_ms: DEFAULT_MAX_CONFLATE_MS,
        }
    }
}
