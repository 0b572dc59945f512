//! Every open WebSocket connection of the node: counted against `limits.max_connections`,
//! pinged and checked for silence by one sweeper task (not a timer per connection, which would
//! cost memory on every idle connection), and closed with 1001 on shutdown.

use crate::rpc::Session;
use crate::transport::frame::{self, OP_PING};
use crate::transport::outbox::Ending;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// A connection's entry.
struct Entry {
    session: Arc<Session>,
    last_ping_ms: u64,
}

/// The open connections.
pub struct Registry {
    shards: Vec<Mutex<HashMap<u64, Entry>>>,
    /// Connections open or being upgraded (slots taken by [`Registry::reserve`]).
    slots: AtomicUsize,
    max: usize,
    epoch: Instant,
}

/// A connection slot taken before the upgrade; released on drop.
#[must_use = "dropping the slot releases it at once"]
pub struct Slot(Arc<Registry>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Registry {
    /// A registry admitting at most `max` connections.
    pub fn new(max: usize) -> Arc<Registry> {
        Arc::new(Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            slots: AtomicUsize::new(0),
            max,
            epoch: Instant::now(),
        })
    }

    /// Milliseconds since the registry started: the clock of `last_seen` stamps.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Takes a connection slot, or `None` when the node is full.
    pub fn reserve(self: &Arc<Self>) -> Option<Slot> {
        let taken = self.slots.fetch_add(1, Ordering::AcqRel);
        if taken >= self.max {
            self.slots.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(self.clone()))
    }

    /// Connections open or being upgraded.
    pub fn len(&self) -> usize {
        self.slots.load(Ordering::Acquire)
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, id: u64) -> &Mutex<HashMap<u64, Entry>> {
        &self.shards[(id as usize) % SHARDS]
    }

    /// Adds an upgraded connection.
    pub fn insert(&self, session: &Arc<Session>) {
        session.touch(self.now_ms());
        let entry = Entry { last_ping_ms: self.now_ms(), session: session.clone() };
        self.shard(session.id).lock().insert(session.id, entry);
    }

    /// Removes a connection that ended.
    pub fn remove(&self, id: u64) {
        self.shard(id).lock().remove(&id);
    }

    /// Pings connections due for one and ends those silent for longer than `pong_timeout`.
    /// Returns how many were ended.
    pub fn sweep(&self, ping_interval: Duration, pong_timeout: Duration) -> usize {
        let now = self.now_ms();
        let (interval, timeout) = (ping_interval.as_millis() as u64, pong_timeout.as_millis() as u64);
        let mut ended = 0;
        for shard in &self.shards {
            for e in shard.lock().values_mut() {
                let Some(out) = e.session.outbox() else { continue };
                if now.saturating_sub(e.session.last_seen()) > timeout {
                    if !out.is_ending() {
                        out.end(Ending::Close(frame::code::POLICY, "ping timeout"));
                        ended += 1;
                    }
                } else if now.saturating_sub(e.last_ping_ms) >= interval {
                    e.last_ping_ms = now;
                    out.push_control(OP_PING, b"");
                }
            }
        }
        ended
    }

    /// Starts closing every connection with `code` (the shutdown path).
    pub fn close_all(&self, code: u16, reason: &'static str) {
        for shard in &self.shards {
            for e in shard.lock().values() {
                if let Some(out) = e.session.outbox() {
                    out.end(Ending::Close(code, reason));
                }
            }
        }
    }

    /// Calls `f` for every open session (one shard locked at a time).
    pub fn for_each(&self, mut f: impl FnMut(&Arc<Session>)) {
        for shard in &self.shards {
            for e in shard.lock().values() {
                f(&e.session);
            }
        }
    }
}
