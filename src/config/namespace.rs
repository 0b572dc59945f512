//! Per-namespace settings (`[default_namespace]`, `[namespaces.NAME]`): retention and who may
//! subscribe and publish.

use crate::constants::*;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Who may do something on a namespace.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Anyone, with or without a token.
    Public,
    /// Any holder of a valid token.
    Authenticated,
    /// A token whose `channels` (subscribe, history) or `publish` globs match the channel.
    Claims,
}

/// Settings of one namespace.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Publications kept for snapshots and recovery (0: none).
    pub history_size: usize,
    /// How long a publication stays in history.
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// Who may subscribe and read history.
    pub subscribe: Access,
    /// Who may publish.
    pub publish: Access,
    /// Ask the backend (`{backend.url}/subscribe`) before every subscribe and history read.
    pub subscribe_proxy: bool,
    /// Ask the backend (`{backend.url}/publish`) before every client's publish; it may replace
    /// the data.
    pub publish_proxy: bool,
    /// Send subscribers `{"type":"heartbeat","channel","offset"}` when their channel had no
    /// publication (and no heartbeat) for this long; `None`: never.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<Duration>,
    /// Conflate every subscription of the namespace to one event per this many ms (a
    /// subscription's own `conflate_ms` wins); `None`: not conflated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflate_ms: Option<u64>,
    /// What happens to a subscriber that falls behind.
    pub on_slow: OnSlow,
    /// `subscribe` may name a glob (`trades:*`) that follows every matching channel.
    pub patterns: bool,
    /// The most channels one pattern subscription may follow.
    pub max_pattern_channels: usize,
    /// `stream` (a tail of history) or `state` (keyed state: the snapshot is the latest value
    /// of each key, with its checksum).
    pub mode: Mode,
    /// Conversations: `presence` and `presence_stats` answer who is subscribed, on every node.
    pub presence: bool,
    /// Conversations: subscribers receive `{"type":"join"|"leave","channel","info":{"client","user"}}`.
    pub join_leave: bool,
    /// Conversations: a channel whose name ends in `#USER` (`notifications:#alice`) is USER's
    /// own: only a connection whose principal is USER may subscribe to it or read it.
    pub user_channels: bool,
    /// With `user_channels`: every connection with a token is subscribed to `NAMESPACE:#USER` at
    /// connect (and after an `auth`), without asking.
    pub auto_subscribe: bool,
}

/// What a namespace's channels are (`mode`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A stream of publications: the snapshot is a tail of history.
    #[default]
    Stream,
    /// Keyed state (books, tickers): each publication sets a key (`key`, absent: the whole
    /// value) or deletes it (`data: null`); the snapshot is the latest value of each key, with
    /// the CRC-32 `checksum` of the state.
    State,
}

/// What happens to a subscriber that falls behind (`on_slow`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnSlow {
    /// Its connection is dropped as a slow consumer.
    #[default]
    Drop,
    /// It is sent the latest publication every 100 ms (with `skipped`) until it catches up; the
    /// drop stays the last resort.
    Conflate,
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        NamespaceConfig {
            history_size: DEFAULT_HISTORY_SIZE,
            history_ttl: DEFAULT_HISTORY_TTL,
            subscribe: Access::Public,
            publish: Access::Claims,
            subscribe_proxy: false,
            publish_proxy: false,
            heartbeat: None,
            conflate_ms: None,
            on_slow: OnSlow::Drop,
            patterns: false,
            max_pattern_channels: DEFAULT_MAX_PATTERN_CHANNELS,
            mode: Mode::Stream,
            presence: false,
            join_leave: false,
            user_channels: false,
            auto_subscribe: false,
        }
    }
}
