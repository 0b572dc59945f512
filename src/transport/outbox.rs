//! A connection's outgoing messages: one queue, filled by any thread (the hub's fan-out, the
//! connection's own reader answering calls) and emptied by the connection's writer task, which
//! takes everything queued in one swap and writes it with as few syscalls as the socket allows.
//!
//! A publication's notification reaches thousands of queues, and each one is the same frame but
//! for the subscription id. The queue therefore holds it by reference, as the shared frame plus
//! the id ([`Outbox::push_shared`]), and the writer gathers a batch's frames into a per-thread
//! buffer just before its write. A delivery is then a reference count and 32 bytes written into
//! the queue, where copying the frame into each queue would write, and the kernel later read,
//! hundreds of bytes of cold memory per subscriber: a fan-out's cost is mostly that memory
//! traffic. Answers, snapshots
//! and control frames are copied into the queue; nothing is allocated per delivery once the
//! queue has grown to its working size.
//!
//! The outbox also enforces the slow-consumer rule: a connection is aborted when its client stops
//! taking data, that is when `max_messages` messages are queued while its socket is full (the
//! kernel's buffers hold all they will and the writer waits for room), or when `max_bytes` are
//! queued at all (shared frames count in full). Its queue is dropped and the writer fails the
//! connection (close code 1008 if the socket still takes it, else the TCP connection is reset).
//! Producers never wait on it.
//!
//! Counting messages only while the socket is full is what makes the rule about the *client*:
//! a writer that has simply not been scheduled yet on a busy machine (a publisher's burst lands
//! in thousands of outboxes within a millisecond) does not get a reading client dropped; the
//! byte bound still caps what any connection can hold.

use super::frame;
use crate::hub::encode::{SharedFrame, SubId};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// What happened to a pushed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Push {
    /// Queued for the writer.
    Queued,
    /// This push went over the slow-consumer bound: the connection is now aborted. Exactly one
    /// push sees this, so the caller can count the drop once.
    Overflow,
    /// The connection is closing or gone; nothing was queued.
    Closed,
}

/// Why and how a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// A close frame with this code and reason is queued behind everything else; the writer
    /// sends it and then half-closes the socket.
    Close(u16, &'static str),
    /// Queued data was dropped; the writer stops at once and fails the connection with this code
    /// and reason if it can, else resets it.
    Abort(u16, &'static str),
    /// The client is gone (end of stream, socket error): queued data is dropped and the
    /// connection reset, with nothing sent.
    Gone,
}

impl Ending {
    /// True for the endings that drop queued data and stop the writer at once.
    pub fn is_abrupt(&self) -> bool {
        matches!(self, Ending::Abort(..) | Ending::Gone)
    }
}

/// What the writer found.
pub enum Take {
    /// Messages were moved into the caller's batch.
    Data,
    /// Nothing queued, or the reader is writing inline; wait on [`Outbox::writer_wait`].
    Idle,
    /// Everything is written and the connection is ending this way.
    End(Ending),
}

/// Queued messages in order: runs of copied bytes, and shared frames held by reference.
#[derive(Default)]
#[repr(C)]
struct Queue {
    items: Vec<Item>,
    /// Bytes queued in all, shared frames included.
    len: usize,
    messages: usize,
    /// The copied messages, in order: each [`Item::Bytes`] takes the next so many of them.
    bytes: Vec<u8>,
}

enum Item {
    /// The next `n` bytes of [`Queue::bytes`] (one or more whole messages).
    Bytes(usize),
    /// A shared frame with this subscriber's id spliced in.
    Shared(Arc<SharedFrame>, SubId),
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn push_bytes(&mut self, parts: &[&[u8]]) {
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

    fn push_shared(&mut self, frame: &Arc<SharedFrame>, id: SubId) {
        self.items.push(Item::Shared(frame.clone(), id));
        self.len += frame.frame_len();
        self.messages += 1;
    }

    /// Moves everything in `other` to the end of this queue; `other` keeps its capacity.
    fn append(&mut self, other: &mut Queue) {
        self.bytes.extend_from_slice(&other.bytes);
        self.items.append(&mut other.items);
        self.len += other.len;
        self.messages += other.messages;
        other.clear();
    }

    fn clear(&mut self) {
        self.items.clear();
        self.bytes.clear();
        self.len = 0;
        self.messages = 0;
    }

    /// The bytes of item `i`, whose copied bytes (if any) start at `at` in `bytes`, as up to three
    /// parts.
    fn parts(&self, i: usize, at: usize) -> [&[u8]; 3] {
        match &self.items[i] {
            Item::Bytes(n) => [&self.bytes[at..at + n], &[], &[]],
            Item::Shared(frame, id) => frame.parts(id),
        }
    }

    fn item_len(&self, i: usize) -> usize {
        match &self.items[i] {
            Item::Bytes(n) => *n,
            Item::Shared(frame, _) => frame.frame_len(),
        }
    }
}

/// Where a write of a [`Batch`] has got to.
#[derive(Default, Clone, Copy)]
struct Cursor {
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
#[derive(Default)]
pub struct Batch {
    q: Queue,
    cursor: Cursor,
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
        let Cursor { item: mut i, mut within, mut at } = self.cursor;
        // Copied bytes go out from where they are when nothing follows them (answers to calls)
        // or when they are many (a big snapshot).
        if let Some(Item::Bytes(n)) = self.q.items.get(i)
            && (i + 1 == self.q.items.len() || n - within >= GATHER_BYTES / 2)
        {
            let written = socket.try_write(&self.q.bytes[at + within..at + n])?;
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
            socket.try_write(buf)
        })?;
        self.advance(written);
        Ok(written)
    }

    fn advance(&mut self, mut n: usize) {
        let c = &mut self.cursor;
        while n > 0 {
            let left = self.q.item_len(c.item) - c.within;
            if n < left {
                c.within += n;
                return;
            }
            n -= left;
            if let Item::Bytes(len) = self.q.items[c.item] {
                c.at += len;
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
    fn rest(&mut self) -> Queue {
        let mut rest = Queue::default();
        let Cursor { item, within, mut at } = self.cursor;
        for i in item..self.q.items.len() {
            let skip = if i == item { within } else { 0 };
            match &self.q.items[i] {
                Item::Shared(frame, id) if skip == 0 => rest.push_shared(frame, *id),
                _ => {
                    let whole = self.q.parts(i, at).concat();
                    rest.push_bytes(&[&whole[skip..]]);
                }
            }
            if let Item::Bytes(len) = self.q.items[i] {
                at += len;
            }
        }
        rest.messages = 0;
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

/// What the lock guards. `repr(C)`, with what every push and take touch first.
#[repr(C)]
struct State {
    /// The connection is ending (how: [`Outbox::ending`]).
    ended: bool,
    holding: bool,
    /// The writer found the socket full and waits for room.
    socket_full: bool,
    /// The reader waits for the queue to drain before reading more calls.
    reader_waits_for_drain: bool,
    /// Who is writing a taken batch to the socket, if anyone: bytes reach the socket in queue
    /// order because only one party writes at a time.
    writing: Writing,
    queue: Queue,
    /// Messages held back while a subscribe call runs, so that the call's answer goes out
    /// before them (see [`Outbox::hold`]); allocated only while something is held.
    held: Option<Box<Queue>>,
}

impl State {
    fn held_bytes(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.len)
    }

    fn held_messages(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.messages)
    }
}

/// Who writes to the socket right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Writing {
    /// Nobody: the queue may be taken.
    Nobody,
    /// The writer task holds a batch.
    Task,
    /// The reader writes its own answers inline (see [`Outbox::take_inline`]).
    Inline,
}

/// The shared half of a WebSocket connection: its outgoing queue and the signals between its
/// reader task, its writer task and everyone else who sends to it. (Aligning it to a cache line
/// cost 144 bytes per idle connection and bought nothing measurable, so it is not.)
#[repr(C)]
pub struct Outbox {
    state: Mutex<State>,
    /// Where the next push will write to (the end of the queue's items), kept for
    /// [`Outbox::prefetch_tail`]. Only a hint: it may be stale, and it is never dereferenced.
    tail: AtomicUsize,
    /// Wakes the writer: data queued into an empty queue, or the connection is ending.
    writer: Notify,
    /// Wakes the reader: the connection is ending, or the queue drained.
    reader: Notify,
    /// How the connection ends; set once (under the state lock), readable without it.
    ending: OnceLock<Ending>,
    max_messages: usize,
    max_bytes: usize,
}

impl Outbox {
    /// An empty outbox with the slow-consumer bounds.
    pub fn new(max_messages: usize, max_bytes: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State {
                ended: false,
                holding: false,
                socket_full: false,
                reader_waits_for_drain: false,
                writing: Writing::Nobody,
                queue: Queue::default(),
                held: None,
            }),
            tail: AtomicUsize::new(0),
            writer: Notify::new(),
            reader: Notify::new(),
            ending: OnceLock::new(),
            max_messages,
            max_bytes,
        }
    }

    /// Asks the CPU to bring this outbox's lock and queue state into cache, for writing, ahead of
    /// a push. A fan-out touches thousands of outboxes once each, last used by writer tasks on
    /// other cores, so each push would otherwise stall on these cache lines; issuing this a few
    /// subscribers ahead overlaps the stalls. A hint only: it changes no state.
    #[inline]
    pub fn prefetch(&self) {
        let at = std::ptr::from_ref(&self.state).addr();
        let last = at + std::mem::size_of::<Mutex<State>>() - 1;
        let mut line = at & !(CACHE_LINE - 1);
        while line <= last {
            prefetch_for_write(line);
            line += CACHE_LINE;
        }
    }

    /// Like [`Outbox::prefetch`], for the memory the next push will write into the queue. Call it
    /// after [`Outbox::prefetch`] had time to bring in the line that says where that is.
    #[inline]
    pub fn prefetch_tail(&self) {
        let at = self.tail.load(Ordering::Relaxed);
        if at != 0 {
            prefetch_for_write(at);
        }
    }

    /// Records where the queue's items end now, for [`Outbox::prefetch_tail`].
    #[inline]
    fn note_tail(&self, st: &State) {
        let items = &st.queue.items;
        self.tail.store(items.as_ptr().addr() + items.len() * std::mem::size_of::<Item>(), Ordering::Relaxed);
    }

    /// Queues one data message made of `parts` (a complete frame: header and payload), copied.
    /// Held back while a subscribe call is in progress.
    pub fn push(&self, parts: &[&[u8]]) -> Push {
        let len = parts.iter().map(|p| p.len()).sum();
        self.push_with(len, true, true, |q| q.push_bytes(parts))
    }

    /// Queues `frame` with `id` spliced in, by reference. Held back while a subscribe call is in
    /// progress.
    pub fn push_shared(&self, frame: &Arc<SharedFrame>, id: SubId) -> Push {
        self.push_with(frame.frame_len(), true, true, |q| q.push_shared(frame, id))
    }

    /// Queues an answer to a call: never held back, and without waking the writer task. Only
    /// the connection's reader queues answers, and it writes the queue itself next
    /// ([`Outbox::take_inline`]), waking the writer for whatever the socket does not take; a
    /// wake-up here would make the writer task run for nothing on every call.
    pub fn push_answer(&self, parts: &[&[u8]]) -> Push {
        let len = parts.iter().map(|p| p.len()).sum();
        self.push_with(len, false, false, |q| q.push_bytes(parts))
    }

    fn push_with(&self, len: usize, may_hold: bool, wake: bool, put: impl FnOnce(&mut Queue)) -> Push {
        let mut st = self.state.lock();
        if st.ended {
            return Push::Closed;
        }
        let queued_bytes = st.queue.len + st.held_bytes();
        let queued_messages = st.queue.messages + st.held_messages();
        if (st.socket_full && queued_messages >= self.max_messages) || queued_bytes + len > self.max_bytes {
            drop(st);
            self.end(Ending::Abort(frame::code::POLICY, "slow consumer"));
            return Push::Overflow;
        }
        if may_hold && st.holding {
            put(st.held.get_or_insert_with(Box::default));
            return Push::Queued;
        }
        let was_empty = st.queue.is_empty();
        put(&mut st.queue);
        self.note_tail(&st);
        drop(st);
        if was_empty && wake {
            self.writer.notify_one();
        }
        Push::Queued
    }

    /// Queues a control frame (ping, pong), never held back. It counts like a message, so a
    /// client that sends pings without reading pongs meets the same bounds as any other.
    pub fn push_control(&self, opcode: u8, payload: &[u8]) {
        let (h, n) = frame::header_bytes(opcode, payload.len());
        let _ = self.push_with(n + payload.len(), false, true, |q| q.push_bytes(&[&h[..n], payload]));
    }

    /// From now until [`Outbox::release`], messages pushed with [`Outbox::push`] and
    /// [`Outbox::push_shared`] wait behind the answer of the call in progress. Only the
    /// connection's reader calls this, one call at a time.
    pub fn hold(&self) {
        self.state.lock().holding = true;
    }

    /// Ends a [`Outbox::hold`]: the held messages follow whatever was queued meanwhile.
    pub fn release(&self) {
        let mut st = self.state.lock();
        st.holding = false;
        let Some(mut held) = st.held.take() else { return };
        let was_empty = st.queue.is_empty();
        st.queue.append(&mut held);
        self.note_tail(&st);
        drop(st);
        if was_empty {
            self.writer.notify_one();
        }
    }

    /// Ends the connection (the first ending wins). `Close` lets queued data go first; `Abort`
    /// drops it.
    pub fn end(&self, how: Ending) {
        let mut st = self.state.lock();
        if st.ended {
            return;
        }
        st.ended = true;
        let _ = self.ending.set(how);
        let dropped = if how.is_abrupt() {
            st.held = None;
            Some(std::mem::take(&mut st.queue))
        } else {
            if let Some(mut held) = st.held.take() {
                st.queue.append(&mut held);
            }
            None
        };
        drop(st);
        // Shared frames are released outside the lock.
        drop(dropped);
        self.writer.notify_one();
        self.reader.notify_one();
    }

    /// True once the connection is ending (closing or aborted).
    pub fn is_ending(&self) -> bool {
        self.ending.get().is_some()
    }

    /// How the connection is ending, if it is.
    pub fn ending(&self) -> Option<Ending> {
        self.ending.get().copied()
    }

    /// Messages queued and not yet taken by the writer.
    pub fn queued_messages(&self) -> usize {
        let st = self.state.lock();
        st.queue.messages + st.held_messages()
    }

    /// Writer: swaps the queued messages into `into` (which must be empty), keeping buffers'
    /// capacity so that a busy connection allocates nothing.
    pub fn take(&self, into: &mut Batch) -> Take {
        debug_assert!(into.is_empty());
        let mut st = self.state.lock();
        if let Some(e) = self.ending().filter(Ending::is_abrupt) {
            return Take::End(e);
        }
        if st.writing == Writing::Inline {
            // The reader is writing; it wakes the writer when it is done if more is queued.
            return Take::Idle;
        }
        if st.queue.is_empty() {
            st.writing = Writing::Nobody;
            if st.reader_waits_for_drain {
                st.reader_waits_for_drain = false;
                self.reader.notify_one();
            }
            return match self.ending() {
                Some(e) => Take::End(e),
                None => Take::Idle,
            };
        }
        std::mem::swap(&mut st.queue, &mut into.q);
        into.cursor = Cursor::default();
        st.queue.messages = 0;
        st.writing = Writing::Task;
        self.note_tail(&st);
        Take::Data
    }

    /// Reader: takes the queue to write it inline (one non-blocking write, no task switch) when
    /// nobody else is writing and the connection is not ending. Call [`Outbox::finish_inline`]
    /// after the write, whatever happened.
    pub fn take_inline(&self, into: &mut Batch) -> bool {
        debug_assert!(into.is_empty());
        let mut st = self.state.lock();
        if st.writing != Writing::Nobody || st.queue.is_empty() || st.ended {
            return false;
        }
        std::mem::swap(&mut st.queue, &mut into.q);
        into.cursor = Cursor::default();
        st.queue.messages = 0;
        st.writing = Writing::Inline;
        self.note_tail(&st);
        true
    }

    /// Reader: ends an inline write. What the socket did not take goes back to the front of the
    /// queue for the writer task; `batch` is left empty and, when the queue is empty, its
    /// buffers are swapped back in so their capacity is reused.
    pub fn finish_inline(&self, batch: &mut Batch) {
        let rest = if batch.is_done() {
            batch.clear(usize::MAX);
            None
        } else {
            Some(batch.rest())
        };
        let mut st = self.state.lock();
        st.writing = Writing::Nobody;
        if let Some(mut rest) = rest {
            if !st.ended {
                rest.append(&mut st.queue);
                st.queue = rest;
            }
        } else if st.queue.is_empty() {
            std::mem::swap(&mut st.queue, &mut batch.q);
        }
        let wake = !st.queue.is_empty() || st.ended;
        self.note_tail(&st);
        drop(st);
        if wake {
            self.writer.notify_one();
        }
    }

    /// Writer: the socket is full (`true`) or took data again (`false`).
    pub fn set_socket_full(&self, full: bool) {
        let mut st = self.state.lock();
        st.socket_full = full;
        // Messages that piled up while the client was not reading count from now on.
        if full && st.queue.messages + st.held_messages() > self.max_messages {
            drop(st);
            self.end(Ending::Abort(frame::code::POLICY, "slow consumer"));
        }
    }

    /// Writer: waits until something is queued or the connection ends.
    pub async fn writer_wait(&self) {
        self.writer.notified().await
    }

    /// Reader: waits for the writer to drain the queue (or for the connection to end), so that
    /// a client that sends calls without reading answers stops being read instead of growing
    /// the queue.
    pub async fn drained(&self) {
        {
            let mut st = self.state.lock();
            if st.queue.is_empty() || st.ended {
                return;
            }
            st.reader_waits_for_drain = true;
        }
        self.reader.notified().await
    }

    /// Reader: resolves when the connection starts ending or the queue drains (a wake-up; check
    /// [`Outbox::is_ending`]).
    pub async fn reader_wait(&self) {
        self.reader.notified().await
    }
}

const CACHE_LINE: usize = 64;

/// Hints the CPU to fetch the cache line holding address `at` in a state ready for writing.
#[inline(always)]
fn prefetch_for_write(at: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address, and changes nothing but the cache.
    unsafe {
        std::arch::asm!("prefetchw [{}]", in(reg) at, options(nostack, preserves_flags, readonly));
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_count_only_while_the_socket_is_full() {
        let o = Outbox::new(3, 1 << 20);
        for _ in 0..10 {
            assert_eq!(o.push(&[b"abc"]), Push::Queued, "the writer has not run yet: no verdict");
        }
        o.set_socket_full(true);
        assert!(o.is_ending(), "ten queued while the socket is full: slow");
        let o = Outbox::new(3, 1 << 20);
        o.set_socket_full(true);
        o.set_socket_full(false);
        for _ in 0..10 {
            assert_eq!(o.push(&[b"abc"]), Push::Queued);
        }
    }

    #[test]
    fn overflow_is_reported_once_and_drops_the_queue() {
        let o = Outbox::new(3, 1 << 20);
        o.set_socket_full(true);
        for _ in 0..3 {
            assert_eq!(o.push(&[b"abc"]), Push::Queued);
        }
        assert_eq!(o.push(&[b"abc"]), Push::Overflow);
        assert_eq!(o.push(&[b"abc"]), Push::Closed);
        assert!(o.is_ending());
        let mut b = Batch::default();
        assert!(matches!(o.take(&mut b), Take::End(Ending::Abort(1008, _))));
        assert!(b.is_empty());
    }

    #[test]
    fn inline_writes_keep_order_and_exclude_the_writer_task() {
        let o = Outbox::new(100, 1 << 20);
        assert_eq!(o.push(&[b"a,"]), Push::Queued);
        let mut inline = Batch::default();
        assert!(o.take_inline(&mut inline));
        assert_eq!(inline.to_vec(), b"a,");
        // A delivery meanwhile waits; the writer task does not take it while the reader writes.
        assert_eq!(o.push(&[b"b,"]), Push::Queued);
        let mut task = Batch::default();
        assert!(matches!(o.take(&mut task), Take::Idle));
        // The socket took one byte only: the rest goes back in front of "b,".
        inline.advance(1);
        o.finish_inline(&mut inline);
        assert!(inline.is_empty());
        assert!(matches!(o.take(&mut task), Take::Data));
        assert_eq!(task.to_vec(), b",b,");
        // While the task holds a batch, the reader does not write inline.
        assert_eq!(o.push(&[b"c,"]), Push::Queued);
        assert!(!o.take_inline(&mut inline));
        task.clear(0);
        assert!(matches!(o.take(&mut task), Take::Data));
        task.clear(0);
        assert!(matches!(o.take(&mut task), Take::Idle));
        assert_eq!(o.push(&[b"d"]), Push::Queued);
        assert!(o.take_inline(&mut inline));
        inline.advance(1);
        o.finish_inline(&mut inline);
        assert!(inline.is_empty());
        assert!(matches!(o.take(&mut task), Take::Idle));
    }

    fn shared(event: &str) -> Arc<SharedFrame> {
        let mut f = SharedFrame::with_capacity(event.len());
        f.build(|b| b.extend_from_slice(event.as_bytes()));
        Arc::new(f)
    }

    fn whole(f: &SharedFrame, id: &SubId) -> Vec<u8> {
        f.parts(id).concat()
    }

    #[test]
    fn shared_and_copied_messages_keep_their_order_through_partial_writes() {
        let ids = crate::hub::SubIdGen::default();
        let (a, b) = (ids.next(), ids.next());
        let f1 = shared("1");
        let f2 = shared("[2,2]");
        let o = Outbox::new(100, 1 << 20);
        assert_eq!(o.push_answer(&[b"answer,"]), Push::Queued);
        assert_eq!(o.push_shared(&f1, a), Push::Queued);
        assert_eq!(o.push(&[b"snap", b"shot,"]), Push::Queued);
        assert_eq!(o.push_shared(&f2, a), Push::Queued);
        assert_eq!(o.queued_messages(), 4);
        let expected = [b"answer,".to_vec(), whole(&f1, &a), b"snapshot,".to_vec(), whole(&f2, &a)].concat();
        // Every split point: written up to there inline, the rest taken by the writer task, with
        // a message queued in between.
        for cut in 0..=expected.len() {
            let o2 = Outbox::new(100, 1 << 20);
            assert_eq!(o2.push_answer(&[b"answer,"]), Push::Queued);
            assert_eq!(o2.push_shared(&f1, a), Push::Queued);
            assert_eq!(o2.push(&[b"snap", b"shot,"]), Push::Queued);
            assert_eq!(o2.push_shared(&f2, a), Push::Queued);
            let mut inline = Batch::default();
            assert!(o2.take_inline(&mut inline));
            assert_eq!(inline.to_vec(), expected);
            inline.advance(cut);
            assert_eq!(o2.push_shared(&f1, b), Push::Queued);
            o2.finish_inline(&mut inline);
            let mut task = Batch::default();
            let rest = match o2.take(&mut task) {
                Take::Data => task.to_vec(),
                _ => Vec::new(),
            };
            assert_eq!(rest, [&expected[cut..], &whole(&f1, &b)].concat(), "cut at {cut}");
        }
        // Each shared frame was dropped with the queues that held it.
        drop(o);
        assert_eq!(Arc::strong_count(&f1), 1);
        assert_eq!(Arc::strong_count(&f2), 1);
    }

    #[test]
    fn held_shared_frames_follow_the_answer_and_count_in_full() {
        let id = crate::hub::SubIdGen::default().next();
        let f = shared("\"0123456789\"");
        let o = Outbox::new(100, 1 << 20);
        o.hold();
        assert_eq!(o.push_shared(&f, id), Push::Queued);
        assert_eq!(o.push_answer(&[b"answer,"]), Push::Queued);
        o.release();
        let mut b = Batch::default();
        assert!(matches!(o.take(&mut b), Take::Data));
        assert_eq!(b.to_vec(), [b"answer,".to_vec(), whole(&f, &id)].concat());
        // The byte bound counts a shared frame's whole length, held or not.
        let o = Outbox::new(100, 2 * f.frame_len() + 1);
        o.hold();
        assert_eq!(o.push_shared(&f, id), Push::Queued);
        assert_eq!(o.push_shared(&f, id), Push::Queued);
        assert_eq!(o.push_answer(&[b"ok"]), Push::Overflow);
        assert!(o.is_ending());
        assert_eq!(Arc::strong_count(&f), 2, "the first outbox's frame is in the batch taken");
        drop(b);
        assert_eq!(Arc::strong_count(&f), 1, "an aborted outbox lets go of its frames");
    }

    #[tokio::test]
    async fn a_batch_of_many_frames_reaches_the_socket_whole_and_in_order() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (mut client, server) = (client.unwrap(), accepted.unwrap().0);
        let ids = crate::hub::SubIdGen::default();
        let o = Outbox::new(1 << 20, 1 << 30);
        let mut expected = Vec::new();
        // More pieces than one writev takes, and more bytes than the socket buffers hold.
        for i in 0..3000 {
            let id = ids.next();
            // Two frames larger than a write gathers, one shared and one copied.
            let pad = if i == 1000 { 150_000 } else { i % 300 };
            let f = shared(&format!("[{i},\"{}\"]", "x".repeat(pad)));
            assert_eq!(o.push_shared(&f, id), Push::Queued);
            expected.extend_from_slice(&whole(&f, &id));
            if i % 7 == 0 || i == 2000 {
                let copied = format!("copied {i}{};", "y".repeat(if i == 2000 { 100_000 } else { 0 }));
                assert_eq!(o.push(&[copied.as_bytes()]), Push::Queued);
                expected.extend_from_slice(copied.as_bytes());
            }
        }
        let mut batch = Batch::default();
        assert!(matches!(o.take(&mut batch), Take::Data));
        assert_eq!(batch.len(), expected.len());
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < expected.len() {
                let mut chunk = vec![0; 1 << 16];
                let n = client.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the stream ended early");
                got.extend_from_slice(&chunk[..n]);
            }
            assert_eq!(got, expected);
        });
        while !batch.is_done() {
            match batch.write_to(&server) {
                Ok(n) => assert!(n > 0),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => server.writable().await.unwrap(),
                Err(e) => panic!("{e}"),
            }
        }
        reader.await.unwrap();
    }

    #[test]
    fn byte_bound_counts_too() {
        let o = Outbox::new(100, 10);
        assert_eq!(o.push(&[b"12345", b"678"]), Push::Queued);
        assert_eq!(o.push(&[b"123"]), Push::Overflow);
    }

    #[test]
    fn taking_resets_the_count() {
        let o = Outbox::new(2, 1 << 20);
        o.set_socket_full(true);
        let mut b = Batch::default();
        for round in 0..5 {
            assert_eq!(o.push(&[b"a"]), Push::Queued, "round {round}");
            assert_eq!(o.push(&[b"b"]), Push::Queued);
            assert!(matches!(o.take(&mut b), Take::Data));
            assert_eq!(b.to_vec(), b"ab");
            b.clear(0);
        }
    }

    #[test]
    fn held_messages_follow_the_answer() {
        let o = Outbox::new(10, 1 << 20);
        o.hold();
        assert_eq!(o.push(&[b"snapshot,"]), Push::Queued);
        assert_eq!(o.push(&[b"live,"]), Push::Queued);
        assert_eq!(o.push_answer(&[b"answer,"]), Push::Queued);
        o.release();
        let mut b = Batch::default();
        assert!(matches!(o.take(&mut b), Take::Data));
        assert_eq!(b.to_vec(), b"answer,snapshot,live,");
    }

    #[test]
    fn close_lets_queued_data_go_first() {
        let o = Outbox::new(10, 1 << 20);
        assert_eq!(o.push(&[b"x"]), Push::Queued);
        o.end(Ending::Close(1001, "server shutting down"));
        o.end(Ending::Abort(1008, "ignored: the first ending wins"));
        assert_eq!(o.push(&[b"y"]), Push::Closed);
        let mut b = Batch::default();
        assert!(matches!(o.take(&mut b), Take::Data));
        assert_eq!(b.to_vec(), b"x");
        b.clear(0);
        assert!(matches!(o.take(&mut b), Take::End(Ending::Close(1001, _))));
    }
}
