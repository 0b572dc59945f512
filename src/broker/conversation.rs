//! What brokers keep for conversations: each channel's presence (who is subscribed, on every
//! node) and each user's read cursors, with the signals they send when those change (a join or
//! a leave to the nodes with interest in the channel; a cursor's move to every node). The types
//! are shared by every broker; [`Presences`] and [`Cursors`] are the memory broker's stores.
//!
//! # The contract
//!
//! - **Presence** entries are `{client, user}` with an expiry: [`super::Broker::presence_update`]
//!   adds (or keeps alive) entries until `ttl` from now and removes others, and every call
//!   first removes the entries that expired (a node that died without saying goodbye stops
//!   refreshing its own). With `signal`, every entry added that was not there and every entry
//!   removed (asked for, or expired) is signalled once, by whichever call made the change, to
//!   the nodes with interest in the channel ([`super::Listener::signalled`]): so across nodes
//!   a client joins once and leaves once, however many nodes sweep.
//! - **Cursors** are per user and channel, monotonic: [`super::Broker::cursor_set`] keeps the
//!   higher of the stored and the given offset, and when it changed tells every node
//!   ([`super::Listener::cursor_moved`]), naming the client that set it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// One client in a channel's presence.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct PresenceClient {
    /// The client's id (`NODE-SESSION`), unique across nodes.
    pub client: String,
    /// Its principal's subject (`""` for an anonymous client).
    pub user: String,
}

/// A join or a leave of a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceSignal {
    /// True for a join, false for a leave.
    pub join: bool,
    /// Who.
    pub client: PresenceClient,
}

/// A presence read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PresencePage {
    /// At most the number asked for, in no particular order.
    pub clients: Vec<PresenceClient>,
    /// Clients present.
    pub count: usize,
    /// Distinct users among them.
    pub users: usize,
}

/// A cursor that moved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorMove {
    /// Whose.
    pub user: String,
    /// Of which channel.
    pub channel: String,
    /// Its new value.
    pub offset: u64,
    /// The client that set it (it is not told).
    pub origin: String,
}

/// The memory broker's presence: per channel, client -> (user, expiry in Unix ms).
#[derive(Debug, Default)]
pub struct Presences(HashMap<Box<str>, HashMap<String, (String, u64)>>);

impl Presences {
    /// Applies one [`super::Broker::presence_update`] at `now`: returns the changes to signal
    /// (every one, whether or not the caller signals).
    pub fn update(
        &mut self,
        channel: &str,
        join: &[PresenceClient],
        leave: &[String],
        ttl_ms: u64,
        now: u64,
    ) -> Vec<PresenceSignal> {
        let mut changes = self.expire(channel, now);
        let entries = self.0.entry(channel.into()).or_default();
        for client in leave {
            if let Some((user, _)) = entries.remove(client) {
                changes.push(PresenceSignal {
                    join: false,
                    client: PresenceClient { client: client.clone(), user },
                });
            }
        }
        for c in join {
            let expiry = now.saturating_add(ttl_ms);
            match entries.get_mut(&c.client) {
                Some(e) => e.1 = expiry,
                None => {
                    entries.insert(c.client.clone(), (c.user.clone(), expiry));
                    changes.push(PresenceSignal { join: true, client: c.clone() });
                }
            }
        }
        if entries.is_empty() {
            self.0.remove(channel);
        }
        changes
    }

    /// Removes `channel`'s expired entries, returning their leaves.
    pub fn expire(&mut self, channel: &str, now: u64) -> Vec<PresenceSignal> {
        let Some(entries) = self.0.get_mut(channel) else { return Vec::new() };
        let mut gone = Vec::new();
        entries.retain(|client, (user, expiry)| {
            let keep = *expiry > now;
            if !keep {
                gone.push(PresenceSignal {
                    join: false,
                    client: PresenceClient { client: client.clone(), user: user.clone() },
                });
            }
            keep
        });
        if entries.is_empty() {
            self.0.remove(channel);
        }
        gone
    }

    /// `channel`'s presence, at most `max` listed (expired entries are removed first, their
    /// leaves returned).
    pub fn read(&mut self, channel: &str, max: usize, now: u64) -> (PresencePage, Vec<PresenceSignal>) {
        let gone = self.expire(channel, now);
        let Some(entries) = self.0.get(channel) else { return (PresencePage::default(), gone) };
        let users: std::collections::HashSet<&str> = entries.values().map(|(u, _)| u.as_str()).collect();
        let clients = entries
            .iter()
            .take(max)
            .map(|(client, (user, _))| PresenceClient { client: client.clone(), user: user.clone() })
            .collect();
        (PresencePage { clients, count: entries.len(), users: users.len() }, gone)
    }

    /// Channels with entries (for the sweep).
    pub fn channels(&self) -> Vec<Box<str>> {
        self.0.keys().cloned().collect()
    }
}

/// The memory broker's cursors: user -> channel -> offset, at most `per_user` channels a user.
#[derive(Debug, Default)]
pub struct Cursors(HashMap<String, HashMap<String, u64>>);

impl Cursors {
    /// Keeps the higher of the stored value and `offset`: `Ok((stored, changed))`, or `Err` with
    /// the cap when the user holds `per_user` cursors already and this is a new one.
    pub fn set(
        &mut self,
        user: &str,
        channel: &str,
        offset: u64,
        per_user: usize,
    ) -> Result<(u64, bool), usize> {
        let of_user = self.0.entry(user.to_string()).or_default();
        let held = of_user.len();
        match of_user.get_mut(channel) {
            Some(stored) if *stored >= offset => Ok((*stored, false)),
            Some(stored) => {
                *stored = offset;
                Ok((offset, true))
            }
            None if offset == 0 => Ok((0, false)),
            None if held >= per_user => Err(per_user),
            None => {
                of_user.insert(channel.to_string(), offset);
                Ok((offset, true))
            }
        }
    }

    /// The user's cursors of `channels` (0: unset).
    pub fn get(&self, user: &str, channels: &[String]) -> Vec<u64> {
        let of_user = self.0.get(user);
        channels.iter().map(|c| of_user.and_then(|m| m.get(c)).copied().unwrap_or(0)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, user: &str) -> PresenceClient {
        PresenceClient { client: id.into(), user: user.into() }
    }

    #[test]
    fn presence_joins_once_leaves_once_and_expires() {
        let mut p = Presences::default();
        let joined = p.update("ch", &[c("a", "alice"), c("b", "bob")], &[], 1000, 0);
        assert_eq!(joined.iter().filter(|s| s.join).count(), 2);
        assert!(p.update("ch", &[c("a", "alice")], &[], 1000, 500).is_empty(), "a refresh says nothing");
        let (page, _) = p.read("ch", 10, 600);
        assert_eq!((page.count, page.users), (2, 2));
        // b was not refreshed: it expires at 1000, a at 1500.
        let gone = p.update("ch", &[], &["a".into()], 1000, 1200);
        assert_eq!(
            gone,
            [
                PresenceSignal { join: false, client: c("b", "bob") },
                PresenceSignal { join: false, client: c("a", "alice") }
            ]
        );
        assert!(p.update("ch", &[], &["a".into()], 1000, 1300).is_empty(), "a second leave says nothing");
        assert!(p.channels().is_empty(), "an empty channel keeps nothing");
    }

    #[test]
    fn cursors_only_grow_and_are_capped_per_user() {
        let mut k = Cursors::default();
        assert_eq!(k.set("u", "a", 5, 2), Ok((5, true)));
        assert_eq!(k.set("u", "a", 3, 2), Ok((5, false)));
        assert_eq!(k.set("u", "b", 1, 2), Ok((1, true)));
        assert_eq!(k.set("u", "c", 1, 2), Err(2));
        assert_eq!(k.get("u", &["a".into(), "c".into()]), [5, 0]);
        assert_eq!(k.get("v", &["a".into()]), [0]);
    }
}
