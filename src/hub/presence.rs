//! This node's part of channels' presence: which of its clients are subscribed to each channel
//! of a namespace with `presence` or `join_leave`, kept in the broker ([`Broker::presence_update`])
//! so that every node reads the same presence and every subscriber is told of each join and
//! leave once.
//!
//! A client is present in a channel while it holds at least one live subscription to it
//! ([`Presence::enter`] returns a guard per subscription; counted, so a second subscription of
//! the same client to the same channel joins nothing). Entering and leaving only mark the
//! change: one task of the node sends them to the broker, each channel's changes in one call,
//! at most once per [`FLUSH_EVERY`], so a client that subscribes and goes within that window
//! (a reconnect loop) costs the broker nothing and its channel's subscribers hear nothing: joins
//! and leaves are coalesced, and their cost is bounded by the node's subscriptions. A presence
//! read ([`super::Hub::presence`]) first sends its channel's pending changes, so a client that
//! subscribed reads itself. The same task refreshes every local entry every third of
//! `presence_ttl`: a node that dies without saying goodbye stops refreshing, its entries expire
//! after `presence_ttl`, and the next refresh or read by any node removes them (and, with
//! `join_leave`, signals their leaves): so a dead node's clients leave within `presence_ttl`
//! and a third.

use crate::broker::{Broker, PresenceClient};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// The shortest time between two sends of the node's presence changes.
pub const FLUSH_EVERY: Duration = crate::constants::PRESENCE_COALESCE;

#[derive(Debug)]
struct Member {
    user: String,
    /// Live subscriptions of the client to the channel.
    subs: usize,
    /// The broker holds its entry (or a call adding it is on its way).
    joined: bool,
}

/// One channel's changes to send: its name, joins, leaves, and whether they are signalled.
type Changes = (Arc<str>, Vec<PresenceClient>, Vec<String>, bool);

#[derive(Debug, Default)]
struct Local {
    members: HashMap<String, Member>,
    /// Clients gone whose entry the broker still holds.
    leaving: Vec<String>,
    /// With `join_leave`: changes are signalled.
    signal: bool,
}

impl Local {
    fn dirty(&self) -> bool {
        !self.leaving.is_empty() || self.members.values().any(|m| !m.joined)
    }

    /// The changes of channel `name` to send: joins (marked sent) and leaves (taken).
    fn take(&mut self, name: Arc<str>) -> Changes {
        let joins = self
            .members
            .iter_mut()
            .filter(|(_, m)| !m.joined)
            .map(|(client, m)| {
                m.joined = true;
                PresenceClient { client: client.clone(), user: m.user.clone() }
            })
            .collect();
        (name, joins, std::mem::take(&mut self.leaving), self.signal)
    }
}

/// The node's local presence, by channel.
pub struct Presence {
    broker: Arc<dyn Broker>,
    ttl: Duration,
    channels: Mutex<HashMap<Arc<str>, Local>>,
    wake: tokio::sync::Notify,
    started: std::sync::Once,
    me: Weak<Presence>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence").field("channels", &self.channels.lock().len()).finish_non_exhaustive()
    }
}

/// A client's presence in a channel through one subscription; dropping it leaves (when it was
/// the client's last subscription there).
#[derive(Debug)]
pub struct PresenceGuard {
    presence: Arc<Presence>,
    channel: Arc<str>,
    client: String,
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        self.presence.leave(&self.channel, &self.client);
    }
}

impl Presence {
    /// The node's presence, kept in `broker` with entries living `ttl` past their last refresh.
    pub fn new(broker: Arc<dyn Broker>, ttl: Duration) -> Arc<Presence> {
        Arc::new_cyclic(|me| Presence {
            broker,
            ttl,
            channels: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            started: std::sync::Once::new(),
            me: me.clone(),
        })
    }

    /// `who` is subscribed to `channel` once more; `signal` when its namespace has `join_leave`.
    /// Called from within the runtime (the first call starts the node's presence task).
    pub fn enter(&self, channel: &str, who: &PresenceClient, signal: bool) -> PresenceGuard {
        let me = self.me.upgrade().expect("a presence in use is alive; qed");
        self.started.call_once(|| {
            tokio::spawn(run(self.me.clone()));
        });
        let mut map = self.channels.lock();
        let name: Arc<str> = map.get_key_value(channel).map_or_else(|| channel.into(), |(k, _)| k.clone());
        let local = map.entry(name.clone()).or_default();
        local.signal = signal;
        let m = local.members.entry(who.client.clone()).or_insert_with(|| Member {
            user: who.user.clone(),
            subs: 0,
            joined: false,
        });
        m.subs += 1;
        if m.subs == 1 && !m.joined {
            // Back before its leave was sent: the broker still holds it, and the leave is undone.
            if let Some(at) = local.leaving.iter().position(|c| *c == who.client) {
                local.leaving.swap_remove(at);
                m.joined = true;
            } else {
                self.wake.notify_one();
            }
        }
        PresenceGuard { presence: me, channel: name, client: who.client.clone() }
    }

    fn leave(&self, channel: &str, client: &str) {
        let mut map = self.channels.lock();
        let Some(local) = map.get_mut(channel) else { return };
        let Some(m) = local.members.get_mut(client) else { return };
        m.subs -= 1;
        if m.subs > 0 {
            return;
        }
        let joined = local.members.remove(client).is_some_and(|m| m.joined);
        if joined {
            local.leaving.push(client.to_string());
            self.wake.notify_one();
        } else if local.members.is_empty() && local.leaving.is_empty() {
            // Came and went unseen: nothing to tell anyone.
            map.remove(channel);
        }
    }

    /// Sends `channel`'s pending changes now (before a read of it).
    pub async fn flush_channel(&self, channel: &str) {
        let batch = {
            let mut map = self.channels.lock();
            match map.get_mut(channel) {
                Some(l) if l.dirty() => vec![l.take(channel.into())],
                _ => Vec::new(),
            }
        };
        self.send(batch).await;
    }

    /// Sends every channel's pending changes.
    async fn flush(&self) {
        let batch: Vec<_> = {
            let mut map = self.channels.lock();
            map.iter_mut().filter(|(_, l)| l.dirty()).map(|(k, l)| l.take(k.clone())).collect()
        };
        self.send(batch).await;
    }

    async fn send(&self, batch: Vec<Changes>) {
        for (channel, joins, leaves, signal) in batch {
            if let Err(e) = self.broker.presence_update(&channel, &joins, &leaves, self.ttl, signal).await {
                tracing::info!(%channel, "presence changes wait for the broker: {e}");
                self.restore(&channel, &joins, leaves);
            }
            self.forget_if_empty(&channel);
        }
    }

    /// A failed send: its joins are pending again (those still here) and its leaves too.
    fn restore(&self, channel: &str, joins: &[PresenceClient], leaves: Vec<String>) {
        let mut map = self.channels.lock();
        let local = map.entry(channel.into()).or_default();
        for j in joins {
            if let Some(m) = local.members.get_mut(&j.client) {
                m.joined = false;
            } else {
                // It went meanwhile: its entry may or may not be in the broker; a leave is safe.
                local.leaving.push(j.client.clone());
            }
        }
        local.leaving.extend(leaves);
    }

    fn forget_if_empty(&self, channel: &str) {
        let mut map = self.channels.lock();
        if map.get(channel).is_some_and(|l| l.members.is_empty() && l.leaving.is_empty()) {
            map.remove(channel);
        }
    }

    /// Keeps every local entry alive, and sweeps the entries of other nodes that expired.
    async fn refresh(&self) {
        let all: Vec<_> = {
            let map = self.channels.lock();
            map.iter()
                .filter(|(_, l)| !l.members.is_empty())
                .map(|(k, l)| {
                    let here = l
                        .members
                        .iter()
                        .filter(|(_, m)| m.joined)
                        .map(|(c, m)| PresenceClient { client: c.clone(), user: m.user.clone() })
                        .collect::<Vec<_>>();
                    (k.clone(), here, l.signal)
                })
                .collect()
        };
        for (channel, here, signal) in all {
            if let Err(e) = self.broker.presence_update(&channel, &here, &[], self.ttl, signal).await {
                tracing::debug!(%channel, "presence refresh failed: {e}");
            }
        }
    }

    /// Clients this node holds present, for `info`-style counts and tests.
    pub fn local_clients(&self, channel: &str) -> usize {
        self.channels.lock().get(channel).map_or(0, |l| l.members.len())
    }
}

/// The node's presence task: sends changes as they come (at most once per [`FLUSH_EVERY`]) and
/// refreshes every third of the TTL; ends with the node.
async fn run(presence: Weak<Presence>) {
    let Some(p) = presence.upgrade() else { return };
    let every = p.ttl / 3;
    drop(p);
    let mut next_refresh = tokio::time::Instant::now() + every;
    loop {
        let Some(p) = presence.upgrade() else { return };
        // At least once a second the task looks whether the node is still there.
        let until = next_refresh.min(tokio::time::Instant::now() + Duration::from_secs(1));
        tokio::select! {
            _ = p.wake.notified() => {}
            _ = tokio::time::sleep_until(until) => {}
        }
        p.flush().await;
        if tokio::time::Instant::now() >= next_refresh {
            p.refresh().await;
            next_refresh = tokio::time::Instant::now() + every;
        }
        drop(p);
        tokio::time::sleep(FLUSH_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::MemoryBroker;
    use crate::broker::{Listener, PresenceSignal, Publication};

    #[derive(Default)]
    struct Heard(Mutex<Vec<(bool, String)>>);

    impl Listener for Heard {
        fn deliver(&self, _: &str, _: &Arc<str>, _: &Arc<Publication>) {}
        fn lagged(&self, _: &str) {}
        fn signalled(&self, _: &str, s: &PresenceSignal) {
            self.0.lock().push((s.join, s.client.client.clone()));
        }
    }

    #[tokio::test]
    async fn joins_and_leaves_are_counted_per_client_and_coalesced() {
        let broker = MemoryBroker::start(100);
        let heard = Arc::new(Heard::default());
        let listener: Arc<dyn Listener> = heard.clone();
        broker.set_listener(Arc::downgrade(&listener));
        let p = Presence::new(broker.clone(), Duration::from_secs(30));
        let who = PresenceClient { client: "n-1".into(), user: "u".into() };
        // Subscribed and gone again within the window, ten times: the broker hears nothing.
        for _ in 0..10 {
            drop(p.enter("ch", &who, true));
        }
        tokio::time::sleep(FLUSH_EVERY * 4).await;
        assert!(heard.0.lock().is_empty(), "{:?}", heard.0.lock());
        assert_eq!(p.local_clients("ch"), 0, "nothing is kept of it");
        // Two subscriptions of one client: one join; the leave comes after the last.
        let (a, b) = (p.enter("ch", &who, true), p.enter("ch", &who, true));
        p.flush_channel("ch").await;
        assert_eq!(*heard.0.lock(), [(true, "n-1".to_string())]);
        assert_eq!(broker.presence("ch", 10, true).await.unwrap().count, 1);
        drop(a);
        tokio::time::sleep(FLUSH_EVERY * 4).await;
        assert_eq!(heard.0.lock().len(), 1, "still subscribed once");
        drop(b);
        tokio::time::sleep(FLUSH_EVERY * 4).await;
        assert_eq!(*heard.0.lock(), [(true, "n-1".to_string()), (false, "n-1".to_string())]);
        assert_eq!(broker.presence("ch", 10, true).await.unwrap().count, 0);
        // Gone and back before the leave was sent: neither is sent.
        let c = p.enter("ch", &who, true);
        p.flush_channel("ch").await;
        drop(c);
        let d = p.enter("ch", &who, true);
        tokio::time::sleep(FLUSH_EVERY * 4).await;
        assert_eq!(heard.0.lock().len(), 3, "{:?}", heard.0.lock());
        assert_eq!(broker.presence("ch", 10, true).await.unwrap().count, 1);
        drop(d);
    }
}
