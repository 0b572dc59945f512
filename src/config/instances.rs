//! `[instances.NAME]`: the event sources of `GET /ws/{instance}`.

use super::Secret;
use serde::{Deserialize, Serialize};

/// One instance: a named event source with its own token. Its clients receive the publications
/// of channel `instance:{NAME}` whose `event` the `events` filter admits.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// The token its clients connect with (header `token`, `Authorization: Bearer`, `?token=`).
    pub token: Secret,
    /// A disabled instance refuses upgrades with 400, and its connected clients receive nothing.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Event names delivered; empty: every publication.
    #[serde(default)]
    pub events: Vec<String>,
    /// Kept and answered for clients written for servers that send media as base64; rpchub
    /// forwards `data` as published either way.
    #[serde(default, alias = "mediaBase64")]
    pub media_base64: bool,
}

fn yes() -> bool {
    true
}

impl InstanceConfig {
    /// True when a publication with `event` (or none) passes the filter.
    pub fn admits(&self, event: Option<&str>) -> bool {
        self.enabled && (self.events.is_empty() || event.is_some_and(|e| self.events.iter().any(|x| x == e)))
    }
}

/// True for a usable instance name: 1 to 64 of `A-Za-z0-9_-`, and not `rpc` (`/ws/rpc`).
pub fn valid_instance_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && name != "rpc"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_filters() {
        assert!(valid_instance_name("shop-1_a"));
        for bad in ["", "rpc", "a b", "a:b", "é", &"x".repeat(65)] {
            assert!(!valid_instance_name(bad), "{bad}");
        }
        let mut i =
            InstanceConfig { token: Secret("t".into()), enabled: true, events: vec![], media_base64: false };
        assert!(i.admits(None) && i.admits(Some("x")));
        i.events = vec!["order".into()];
        assert!(i.admits(Some("order")) && !i.admits(Some("x")) && !i.admits(None));
        i.enabled = false;
        assert!(!i.admits(Some("order")));
    }
}
