//! Every open WebSocket connection of the node, whichever front door it serves: counted
//! against `limits.max_connections`, kept alive and checked for silence and for write progress
//! by one sweeper task (not a timer per connection, which would cost memory on every idle
//! connection), given a periodic [`Conn::tick`], and closed with 1001 on shutdown.

use super::conn::Conn;
use super::frame;
use super::outbox::Ending;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// A connection's entry.
struct Entry {
    conn: Arc<dyn Conn>,
    last_ping_ms: u64,
    /// The outbox's stall number the last sweep saw ([`crate::transport::Outbox::stall`]; 0:
    /// none), and when a sweep first saw it.
    stall: u64,
    stall_seen_ms: u64,
}

/// The open connections.
#[derive(Debug)]
pub struct Registry {
    shards: Vec<Mutex<HashMap<u64, Entry>>>,
    /// Bytes read from and written to the connections of each shard that ended, added under
    /// that shard's lock when one is removed (so a shard's live and ended bytes are read
    /// together, and their sum never goes back).
    ended_bytes: Vec<[AtomicU64; 2]>,
    /// Connections open or being upgraded (slots taken by [`Registry::reserve`]).
    slots: AtomicUsize,
    max: usize,
    epoch: Instant,
}

/// A connection slot taken before the upgrade; released on drop.
#[must_use = "dropping the slot releases it at once"]
#[derive(Debug)]
pub struct Slot(Arc<Registry>);

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("id", &self.conn.link().id).finish()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The shard of connection `id`.
fn shard_of(id: u64) -> usize {
    (id as usize) % SHARDS
}

impl Registry {
    /// A registry admitting at most `max` connections.
    pub fn new(max: usize) -> Arc<Registry> {
        Arc::new(Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            ended_bytes: (0..SHARDS).map(|_| [AtomicU64::new(0), AtomicU64::new(0)]).collect(),
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
        &self.shards[shard_of(id)]
    }

    /// Adds an upgraded connection.
    pub fn insert(&self, conn: Arc<dyn Conn>) {
        let id = conn.link().id;
        conn.link().touch(self.now_ms());
        let entry = Entry { last_ping_ms: self.now_ms(), conn, stall: 0, stall_seen_ms: 0 };
        self.shard(id).lock().insert(id, entry);
    }

    /// Removes a connection that ended.
    pub fn remove(&self, id: u64) {
        let mut shard = self.shard(id).lock();
        if let Some(e) = shard.remove(&id) {
            let (read, written) = e.conn.link().bytes();
            let ended = &self.ended_bytes[shard_of(id)];
            ended[0].fetch_add(read, Ordering::Relaxed);
            ended[1].fetch_add(written, Ordering::Relaxed);
        }
    }

    /// Bytes read from and written to WebSocket clients since start, the open connections'
    /// and the ended ones'; never less than an earlier reading.
    pub fn bytes(&self) -> (u64, u64) {
        let (mut read, mut written) = (0, 0);
        for (shard, ended) in self.shards.iter().zip(&self.ended_bytes) {
            let shard = shard.lock();
            read += ended[0].load(Ordering::Relaxed);
            written += ended[1].load(Ordering::Relaxed);
            for e in shard.values() {
                let (r, w) = e.conn.link().bytes();
                read += r;
                written += w;
            }
        }
        (read, written)
    }

    /// Sends a keepalive to connections due for one ([`Conn::keepalive`]), ends those silent for
    /// longer than `pong_timeout` and those whose socket took nothing for longer than
    /// `pong_timeout` while data waited (the write-progress rule: a client that stops reading
    /// is ended whatever pings it answers), and gives every connection its [`Conn::tick`].
    /// Returns how many were ended.
    pub fn sweep(&self, ping_interval: Duration, pong_timeout: Duration) -> usize {
        let now = self.now_ms();
        let (interval, timeout) = (ping_interval.as_millis() as u64, pong_timeout.as_millis() as u64);
        let mut ended = 0;
        let mut conns = Vec::new();
        for shard in &self.shards {
            for e in shard.lock().values_mut() {
                let link = e.conn.link();
                let stall = link.outbox.stall().unwrap_or(0);
                if stall != e.stall {
                    e.stall = stall;
                    e.stall_seen_ms = now;
                }
                if stall != 0 {
                    // Our own data waits for the client: our pings (and its pongs to them) wait
                    // behind it. Its silence is not judged now; its reading is, just below.
                    link.excuse_silence(now);
                }
                if now.saturating_sub(link.last_seen()) > timeout {
                    if !link.outbox.is_ending() {
                        link.outbox.end(Ending::Close(frame::code::POLICY, "ping timeout"));
                        ended += 1;
                    }
                } else if stall != 0 && now.saturating_sub(e.stall_seen_ms) > timeout {
                    // Aborted as a slow consumer is: the close frame goes out if the socket
                    // has room, else the connection is reset.
                    if !link.outbox.is_ending() {
                        link.outbox.end(Ending::Abort(frame::code::POLICY, "write stalled"));
                        ended += 1;
                    }
                } else {
                    if stall != 0 {
                        link.outbox.nudge_writer();
                    }
                    if now.saturating_sub(e.last_ping_ms) >= interval {
                        e.last_ping_ms = now;
                        e.conn.keepalive();
                    }
                }
                conns.push(e.conn.clone());
            }
            // Ticks run outside the shard lock: they may take other locks (the hub's).
            for c in conns.drain(..) {
                c.tick();
            }
        }
        ended
    }

    /// Starts closing every connection with `code` (the shutdown path).
    pub fn close_all(&self, code: u16, reason: &'static str) {
        for shard in &self.shards {
            for e in shard.lock().values() {
                e.conn.link().outbox.end(Ending::Close(code, reason));
            }
        }
    }
}
