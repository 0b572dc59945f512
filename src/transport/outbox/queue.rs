//! The queue behind an [`Outbox`](super::Outbox) and the batch its writer takes from it: copied
//! messages and shared frames in order, and the gathering of a batch into one write.

use crate::transport::shared::{SharedFrame, Splice};
use std::sync::Arc;
use tokio::net::TcpStream;

/// Queued messages in order: runs of copied bytes, and shared frames held by reference.
#[derive(Default, Debug)]
#[repr(C)]
pub(super) struct Queue {
    pub(super) items: Vec<Item>,
    /// Bytes queued in all, shared frames included.
    pub(super) len: usize,
    /// Messages queued (reset when the writer takes them).
    pub(super) messages: usize,
    /// Of `len`, the bytes of answers to the client's own calls, and of what an inline write
    /// left and gave back: bytes the slow-consumer rule does not count (the reader's pause
    /// bounds them instead).
    pub(super) answer_bytes: usize,
    /// Of `messages`, the answers.
    pub(super) answer_messages: usize,
    /// The copied messages, in order: each [`Item::Bytes`] takes the next so many of them.
    pub(super) bytes: Vec<u8>,
}

#[derive(Debug)]
pub(super) enum Item {
    /// The next `n` bytes of [`Queue::bytes`] (one or more whole messages).
    Bytes(usize),
    /// A shared frame with this connection's splice.
    Shared(Arc<SharedFrame>, Splice),
}

/// A queue item is a frame reference and a splice, or a length: 32 bytes, half a cache line.
const _: () = assert!(std::mem::size_of::<Item>() <= 32);

impl Queue {
    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(super) fn push_bytes(&mut self, parts: &[&[u8]]) {
        // One allocation for the message, also into a queue that holds none.
        self.bytes.reserve(parts.iter().map(|p| p.len()).sum());
        let mut n = 0;
        for p in parts {
            self.bytes.extend_from_slice(p);
            n += p.len();
        }
        match self.items.last_mut() {
            Some(Item::Bytes(m)) => *m += n,
            _ => self.items.push(Item::Bytes(n)),
        }
        self.len += n;
        self.messages += 1;
    }

    /// Like [`Queue::push_bytes`], for an answer to the client's own call.
    pub(super) fn push_answer(&mut self, parts: &[&[u8]]) {
        let before = self.len;
        self.push_bytes(parts);
        self.answer_bytes += self.len - before;
        self.answer_messages += 1;
    }

    /// Bytes queued that the slow-consumer rule counts: all but the answers.
    pub(super) fn counted_bytes(&self) -> usize {
        self.len - self.answer_bytes
    }

    /// Messages queued that the slow-consumer rule counts: all but the answers.
    pub(super) fn counted_messages(&self) -> usize {
        self.messages - self.answer_messages
    }

    pub(super) fn push_shared(&mut self, frame: &Arc<SharedFrame>, splice: Splice) {
        self.items.push(Item::Shared(frame.clone(), splice));
        self.len += frame.frame_len();
        self.messages += 1;
    }

    /// Moves everything in `other` to the end of this queue; `other` keeps its capacity.
    pub(super) fn append(&mut self, other: &mut Queue) {
        self.bytes.extend_from_slice(&other.bytes);
        self.items.append(&mut other.items);
        self.len += other.len;
        self.messages += other.messages;
        self.answer_bytes += other.answer_bytes;
        self.answer_messages += other.answer_messages;
        other.clear();
    }

    pub(super) fn clear(&mut self) {
        self.items.clear();
        self.bytes.clear();
        self.len = 0;
        self.messages = 0;
        self.answer_bytes = 0;
        self.answer_messages = 0;
    }

    /// The bytes of item `i`, whose copied bytes (if any) start at `at` in `bytes`, as up to three
    /// parts.
    pub(super) fn parts(&self, i: usize, at: usize) -> [&[u8]; 3] {
        match &self.items[i] {
            Item::Bytes(n) => [&self.bytes[at..at + n], &[], &[]],
            Item::Shared(frame, splice) => frame.parts(splice),
        }
    }

    pub(super) fn item_len(&self, i: usize) -> usize {
        match &self.items[i] {
            Item::Bytes(n) => *n,
            Item::Shared(frame, _) => frame.frame_len(),
        }
    }
}

/// Where a write of a [`Batch`] has got to.
#[derive(Default, Clone, Copy, Debug)]
pub(super) struct Cursor {
    /// The item being written.
    item: usize,
    /// Its bytes already written.
    within: usize,
    /// Where its copied bytes start in [`Queue::bytes`].
    at: usize,
}

/// Most bytes gathered for one write. Big enough that a batch is one syscall, small enough to
/// stay in cache.
const GATHER_BYTES: usize = 64 << 10;

thread_local! {
    /// Where a batch's frames are gathered for a write: one buffer per thread, reused by every
    /// connection written from it, so it stays in cache.
    static GATHER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The messages a writer took from an outbox, and how far writing them has got.
#[derive(Default, Debug)]
pub struct Batch {
    pub(super) q: Queue,
    pub(super) cursor: Cursor,
}

impl Batch {
    /// True when there is nothing (left) to write.
    pub fn is_done(&self) -> bool {
        self.cursor.item >= self.q.items.len()
    }

    /// One non-blocking write of what is left (up to [`GATHER_BYTES`] of it); returns the bytes
    /// the socket took.
    ///
    /// The frames are gathered into this thread's buffer first. Handing the kernel the pieces
    /// (`writev`, three per shared frame) costs more: it copies small pieces slowly, and this
    /// copy reads frames shared by every subscriber and writes a buffer that stays in cache.
    pub fn write_to(&mut self, socket: &TcpStream) -> std::io::Result<usize> {
        self.write_with(|bytes| socket.try_write(bytes))
    }

    /// Like [`Batch::write_to`], past the reactor: a write to the socket itself even while tokio
    /// holds it not writable (it does so until a third of the send buffer is free), to see
    /// whether a full socket takes anything at all.
    pub fn write_unready(&mut self, socket: &TcpStream) -> std::io::Result<usize> {
        use std::io::Write as _;
        self.write_with(|bytes| (&*socket2::SockRef::from(socket)).write(bytes))
    }

    fn write_with(&mut self, write: impl FnOnce(&[u8]) -> std::io::Result<usize>) -> std::io::Result<usize> {
        let Cursor { item: mut i, mut within, mut at } = self.cursor;
        // Copied bytes go out from where they are when nothing follows them (answers to calls)
        // or when they are many (a big snapshot).
        if let Some(Item::Bytes(n)) = self.q.items.get(i)
            && (i + 1 == self.q.items.len() || n - within >= GATHER_BYTES / 2)
        {
            let written = write(&self.q.bytes[at + within..at + n])?;
            self.advance(written);
            return Ok(written);
        }
        let written = GATHER.with_borrow_mut(|buf| {
            buf.clear();
            buf.reserve(GATHER_BYTES);
            'items: while i < self.q.items.len() {
                for part in self.q.parts(i, at) {
                    if within >= part.len() {
                        within -= part.len();
                        continue;
                    }
                    let room = GATHER_BYTES - buf.len();
                    let part = &part[within..];
                    within = 0;
                    buf.extend_from_slice(&part[..part.len().min(room)]);
                    if part.len() >= room {
                        break 'items;
                    }
                }
                if let Item::Bytes(len) = self.q.items[i] {
                    at += len;
                }
                i += 1;
            }
            write(buf)
        })?;
        self.advance(written);
        Ok(written)
    }

    /// Moves the cursor past `n` written bytes; each shared frame written to its end is
    /// timed ([`SharedFrame::written`]), with one clock read per write.
    pub(super) fn advance(&mut self, mut n: usize) {
        let c = &mut self.cursor;
        let mut now = None;
        while n > 0 {
            let left = self.q.item_len(c.item) - c.within;
            if n < left {
                c.within += n;
                return;
            }
            n -= left;
            match &self.q.items[c.item] {
                Item::Bytes(len) => c.at += len,
                Item::Shared(frame, _) => frame.written(|| *now.get_or_insert_with(std::time::Instant::now)),
            }
            c.item += 1;
            c.within = 0;
        }
    }

    /// Empties the batch for reuse, releasing buffers grown beyond `keep` bytes.
    pub fn clear(&mut self, keep: usize) {
        self.q.clear();
        self.cursor = Cursor::default();
        if self.q.bytes.capacity() > keep {
            self.q.bytes = Vec::new();
        }
        if self.q.items.capacity() * std::mem::size_of::<Item>() > keep {
            self.q.items = Vec::new();
        }
    }

    /// What is left to write, as a queue of its own (the partly written item copied).
    pub(super) fn rest(&mut self) -> Queue {
        let mut rest = Queue::default();
        let Cursor { item, within, mut at } = self.cursor;
        for i in item..self.q.items.len() {
            let skip = if i == item { within } else { 0 };
            match &self.q.items[i] {
                Item::Shared(frame, splice) if skip == 0 => rest.push_shared(frame, *splice),
                _ => {
                    let whole = self.q.parts(i, at).concat();
                    rest.push_bytes(&[&whole[skip..]]);
                }
            }
            if let Item::Bytes(len) = self.q.items[i] {
                at += len;
            }
        }
        // Counted once, when queued: what a write left is not counted again by either rule.
        rest.messages = 0;
        rest.answer_bytes = rest.len;
        self.clear(0);
        rest
    }

    /// Adds `bytes` (a whole message) at the end of the batch.
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        self.q.push_bytes(&[bytes]);
    }

    /// Every byte of the batch, in order (for tests and benchmarks).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.q.len);
        let mut at = 0;
        for i in 0..self.q.items.len() {
            for part in self.q.parts(i, at) {
                v.extend_from_slice(part);
            }
            if let Item::Bytes(len) = self.q.items[i] {
                at += len;
            }
        }
        v
    }

    /// Bytes in the batch.
    pub fn len(&self) -> usize {
        self.q.len
    }

    /// True when the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
}
