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
    /// Concurrent WebSocket connections.
    pub max_connections: usize,
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            outbound_queue_messages: DEFAULT_OUTBOUND_QUEUE_MESSAGES,
            outbound_queue_bytes: DEFAULT_OUTBOUND_QUEUE_BYTES,
            ping_interval: DEFAULT_PING_INTERVAL,
            pong_timeout: DEFAULT_PONG_TIMEOUT,
            upgrades_per_minute: DEFAULT_UPGRADES_PER_MINUTE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            calls_per_second: DEFAULT_CALLS_PER_SECOND,
            calls_in_flight: DEFAULT_CALLS_IN_FLIGHT,
            max_channels: DEFAULT_MAX_CHANNELS,
        }
    }
}
