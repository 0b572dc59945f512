//! What the transport keeps of every connection, whichever front door it serves: its id, its
//! outbox and when its client was last heard from.

use super::outbox::Outbox;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A connection's transport state, shared by its reader, its writer, the registry's sweeper and
/// everyone who queues frames for it.
#[derive(Debug)]
pub struct Link {
    /// Unique per process.
    pub id: u64,
    /// Frames queued for the client.
    pub outbox: Arc<Outbox>,
    /// When the client last sent anything, on the registry's clock (ms).
    last_seen: AtomicU64,
    /// Bytes read from the client.
    read: AtomicU64,
}

impl Link {
    /// A link with an empty outbox of the given bounds.
    pub fn new(id: u64, max_messages: usize, max_bytes: usize) -> Link {
        Link {
            id,
            outbox: Arc::new(Outbox::new(max_messages, max_bytes)),
            last_seen: AtomicU64::new(0),
            read: AtomicU64::new(0),
        }
    }

    /// The same link, for a connection that negotiated permessage-deflate (text messages of at
    /// least `min_bytes` compressed).
    pub fn deflating(self, min_bytes: usize) -> Link {
        let outbox = Arc::try_unwrap(self.outbox).expect("a new link's outbox is its own; qed");
        let outbox = outbox.deflating(min_bytes);
        Link { outbox: Arc::new(outbox), ..self }
    }

    /// Counts `n` bytes read from the client.
    pub fn count_read(&self, n: usize) {
        self.read.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Bytes read from the client and written to it so far.
    pub fn bytes(&self) -> (u64, u64) {
        (self.read.load(Ordering::Relaxed), self.outbox.bytes_written())
    }

    /// Records that the client sent something at `now_ms`.
    pub fn touch(&self, now_ms: u64) {
        self.last_seen.store(now_ms, Ordering::Relaxed);
    }

    /// The server stopped reading the client on purpose (its answers wait to be written): until
    /// the next [`Link::touch`], its silence is not timed out. A client that reads nothing is
    /// ended by the write-progress rule instead.
    pub fn hold_silence(&self) {
        self.last_seen.store(u64::MAX, Ordering::Relaxed);
    }

    /// The client's silence up to `now_ms` is excused (its own data is stuck behind ours): like
    /// [`Link::touch`], but it never undoes a [`Link::hold_silence`].
    pub fn excuse_silence(&self, now_ms: u64) {
        self.last_seen.fetch_max(now_ms, Ordering::Relaxed);
    }

    /// When the client last sent something ([`u64::MAX`] while the server does not read it).
    pub fn last_seen(&self) -> u64 {
        self.last_seen.load(Ordering::Relaxed)
    }
}
