//! A connection's outgoing bytes: one buffer of ready-made frames, filled by any thread (the
//! hub's fan-out, the connection's own reader answering calls) and emptied by the connection's
//! writer task, which takes everything queued in one swap and writes it with as few syscalls as
//! the socket allows. A delivery is therefore a memcpy under a short, uncontended-in-practice
//! lock; nothing is allocated per delivery once the buffer has grown to its working size.
//!
//! The outbox also enforces the slow-consumer rule: a connection is aborted when its client stops
//! taking data, that is when `max_messages` messages are queued while its socket is full (the
//! kernel's buffers hold all they will and the writer waits for room), or when `max_bytes` are
//! queued at all. Its queue is dropped and the writer fails the connection (close code 1008 if
//! the socket still takes it, else the TCP connection is reset). Producers never wait on it.
//!
//! Counting messages only while the socket is full is what makes the rule about the *client*:
//! a writer that has simply not been scheduled yet on a busy machine (a publisher's burst lands
//! in thousands of outboxes within a millisecond) does not get a reading client dropped; the
//! byte bound still caps what any connection can hold.

use super::frame;
use parking_lot::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// Bytes were moved into the caller's buffer.
    Data,
    /// Nothing queued, or the reader is writing inline; wait on [`Outbox::writer_wait`].
    Idle,
    /// Everything is written and the connection is ending this way.
    End(Ending),
}

/// What the lock guards. `repr(C)` with the fields every push and take touch first, and
/// nothing large: with the lock, it fits one cache line, which is what a fan-out to thousands of
/// connections spends its time moving between cores.
#[repr(C)]
struct State {
    buf: Vec<u8>,
    messages: usize,
    /// Messages held back while a subscribe call runs, so that the call's answer goes out
    /// before them (see [`Outbox::hold`]); allocated only while something is held.
    held: Option<Box<Held>>,
    holding: bool,
    /// The connection is ending (how: [`Outbox::ending`]).
    ended: bool,
    /// The writer found the socket full and waits for room.
    socket_full: bool,
    /// The reader waits for the queue to drain before reading more calls.
    reader_waits_for_drain: bool,
    /// Who is writing a taken batch to the socket, if anyone: bytes reach the socket in queue
    /// order because only one party writes at a time.
    writing: Writing,
}

/// Messages held back during a subscribe call.
#[derive(Default)]
struct Held {
    bytes: Vec<u8>,
    messages: usize,
}

impl State {
    fn held_bytes(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.bytes.len())
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
    /// Where the next push will copy to (the queue's end), kept for [`Outbox::prefetch_tail`].
    /// Only a hint: it may be stale, and it is never dereferenced.
    tail: AtomicUsize,
    /// Wakes the writer: data queued into an empty buffer, or the connection is ending.
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
                buf: Vec::new(),
                messages: 0,
                held: None,
                holding: false,
                ended: false,
                socket_full: false,
                reader_waits_for_drain: false,
                writing: Writing::Nobody,
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
    /// a [`Outbox::push`]. A fan-out touches thousands of outboxes once each, last used by writer
    /// tasks on other cores, so each push would otherwise stall on these cache lines; issuing
    /// this a few subscribers ahead overlaps the stalls. A hint only: it changes no state.
    #[inline]
    pub fn prefetch(&self) {
        let at = std::ptr::from_ref(self).addr();
        prefetch_for_write(at);
        prefetch_for_write(at + std::mem::size_of::<Mutex<State>>() - 1);
    }

    /// Like [`Outbox::prefetch`], for the `len` bytes the next push will copy into the queue.
    /// Call it after [`Outbox::prefetch`] had time to bring in the line that says where that is.
    #[inline]
    pub fn prefetch_tail(&self, len: usize) {
        let at = self.tail.load(Ordering::Relaxed);
        if at == 0 {
            return;
        }
        let mut line = at & !(CACHE_LINE - 1);
        while line < at + len.min(4 * CACHE_LINE) {
            prefetch_for_write(line);
            line += CACHE_LINE;
        }
    }

    /// Records where the queue ends now, for [`Outbox::prefetch_tail`].
    #[inline]
    fn note_tail(&self, st: &State) {
        self.tail.store(st.buf.as_ptr().addr() + st.buf.len(), Ordering::Relaxed);
    }

    /// Queues one data message made of `parts` (a complete frame: header and payload). Held back
    /// while a subscribe call is in progress.
    pub fn push(&self, parts: &[&[u8]]) -> Push {
        self.push_inner(parts, true)
    }

    /// Queues an answer to a call: never held back.
    pub fn push_answer(&self, parts: &[&[u8]]) -> Push {
        self.push_inner(parts, false)
    }

    fn push_inner(&self, parts: &[&[u8]], may_hold: bool) -> Push {
        let mut st = self.state.lock();
        if st.ended {
            return Push::Closed;
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let queued_bytes = st.buf.len() + st.held_bytes();
        let queued_messages = st.messages + st.held_messages();
        if (st.socket_full && queued_messages >= self.max_messages) || queued_bytes + len > self.max_bytes {
            drop(st);
            self.end(Ending::Abort(frame::code::POLICY, "slow consumer"));
            return Push::Overflow;
        }
        let was_empty = st.buf.is_empty();
        if may_hold && st.holding {
            let held = st.held.get_or_insert_with(Box::default);
            for p in parts {
                held.bytes.extend_from_slice(p);
            }
            held.messages += 1;
            return Push::Queued;
        }
        for p in parts {
            st.buf.extend_from_slice(p);
        }
        st.messages += 1;
        self.note_tail(&st);
        drop(st);
        if was_empty {
            self.writer.notify_one();
        }
        Push::Queued
    }

    /// Queues a control frame (ping, pong), never held back. It counts like a message, so a
    /// client that sends pings without reading pongs meets the same bounds as any other.
    pub fn push_control(&self, opcode: u8, payload: &[u8]) {
        let (h, n) = frame::header_bytes(opcode, payload.len());
        let _ = self.push_inner(&[&h[..n], payload], false);
    }

    /// From now until [`Outbox::release`], messages pushed with [`Outbox::push`] wait behind the
    /// answer of the call in progress. Only the connection's reader calls this, one call at a time.
    pub fn hold(&self) {
        self.state.lock().holding = true;
    }

    /// Ends a [`Outbox::hold`]: the held messages follow whatever was queued meanwhile.
    pub fn release(&self) {
        let mut st = self.state.lock();
        st.holding = false;
        let Some(held) = st.held.take() else { return };
        let was_empty = st.buf.is_empty();
        st.buf.extend_from_slice(&held.bytes);
        st.messages += held.messages;
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
        if how.is_abrupt() {
            st.buf = Vec::new();
            st.held = None;
            st.messages = 0;
        } else if let Some(held) = st.held.take() {
            st.buf.extend_from_slice(&held.bytes);
        }
        drop(st);
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
        st.messages + st.held_messages()
    }

    /// Writer: swaps the queued bytes into `into` (which must be empty), keeping buffers' capacity
    /// so that a busy connection allocates nothing.
    pub fn take(&self, into: &mut Vec<u8>) -> Take {
        debug_assert!(into.is_empty());
        let mut st = self.state.lock();
        if let Some(e) = self.ending().filter(Ending::is_abrupt) {
            return Take::End(e);
        }
        if st.writing == Writing::Inline {
            // The reader is writing; it wakes the writer when it is done if more is queued.
            return Take::Idle;
        }
        if st.buf.is_empty() {
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
        std::mem::swap(&mut st.buf, into);
        st.messages = 0;
        st.writing = Writing::Task;
        self.note_tail(&st);
        Take::Data
    }

    /// Reader: takes the queue to write it inline (one non-blocking write, no task switch) when
    /// nobody else is writing and the connection is not ending. Call [`Outbox::finish_inline`]
    /// after the write, whatever happened.
    pub fn take_inline(&self, into: &mut Vec<u8>) -> bool {
        debug_assert!(into.is_empty());
        let mut st = self.state.lock();
        if st.writing != Writing::Nobody || st.buf.is_empty() || st.ended {
            return false;
        }
        std::mem::swap(&mut st.buf, into);
        st.messages = 0;
        st.writing = Writing::Inline;
        self.note_tail(&st);
        true
    }

    /// Reader: ends an inline write. `unwritten` (the tail the socket did not take) goes back to
    /// the front of the queue for the writer task; `batch` is cleared and, when the queue is
    /// empty, swapped back in so its capacity is reused.
    pub fn finish_inline(&self, batch: &mut Vec<u8>, written: usize) {
        let mut st = self.state.lock();
        st.writing = Writing::Nobody;
        if written < batch.len() {
            if !st.ended {
                let mut rest = batch.split_off(written);
                rest.extend_from_slice(&st.buf);
                st.buf = rest;
            }
            batch.clear();
        } else {
            batch.clear();
            if st.buf.is_empty() {
                std::mem::swap(&mut st.buf, batch);
            }
        }
        let wake = !st.buf.is_empty() || st.ended;
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
        if full && st.messages + st.held_messages() > self.max_messages {
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
            if st.buf.is_empty() || st.ended {
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
        let mut b = Vec::new();
        assert!(matches!(o.take(&mut b), Take::End(Ending::Abort(1008, _))));
        assert!(b.is_empty());
    }

    #[test]
    fn inline_writes_keep_order_and_exclude_the_writer_task() {
        let o = Outbox::new(100, 1 << 20);
        assert_eq!(o.push(&[b"a,"]), Push::Queued);
        let mut inline = Vec::new();
        assert!(o.take_inline(&mut inline));
        assert_eq!(inline, b"a,");
        // A delivery meanwhile waits; the writer task does not take it while the reader writes.
        assert_eq!(o.push(&[b"b,"]), Push::Queued);
        let mut task = Vec::new();
        assert!(matches!(o.take(&mut task), Take::Idle));
        // The socket took one byte only: the rest goes back in front of "b,".
        o.finish_inline(&mut inline, 1);
        assert!(matches!(o.take(&mut task), Take::Data));
        assert_eq!(task, b",b,");
        // While the task holds a batch, the reader does not write inline.
        assert_eq!(o.push(&[b"c,"]), Push::Queued);
        assert!(!o.take_inline(&mut inline));
        task.clear();
        assert!(matches!(o.take(&mut task), Take::Data));
        task.clear();
        assert!(matches!(o.take(&mut task), Take::Idle));
        assert_eq!(o.push(&[b"d"]), Push::Queued);
        assert!(o.take_inline(&mut inline));
        o.finish_inline(&mut inline, 1);
        assert!(inline.is_empty());
        assert!(matches!(o.take(&mut task), Take::Idle));
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
        let mut b = Vec::new();
        for round in 0..5 {
            assert_eq!(o.push(&[b"a"]), Push::Queued, "round {round}");
            assert_eq!(o.push(&[b"b"]), Push::Queued);
            assert!(matches!(o.take(&mut b), Take::Data));
            assert_eq!(b, b"ab");
            b.clear();
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
        let mut b = Vec::new();
        assert!(matches!(o.take(&mut b), Take::Data));
        assert_eq!(b, b"answer,snapshot,live,");
    }

    #[test]
    fn close_lets_queued_data_go_first() {
        let o = Outbox::new(10, 1 << 20);
        assert_eq!(o.push(&[b"x"]), Push::Queued);
        o.end(Ending::Close(1001, "server shutting down"));
        o.end(Ending::Abort(1008, "ignored: the first ending wins"));
        assert_eq!(o.push(&[b"y"]), Push::Closed);
        let mut b = Vec::new();
        assert!(matches!(o.take(&mut b), Take::Data));
        assert_eq!(b, b"x");
        b.clear();
        assert!(matches!(o.take(&mut b), Take::End(Ending::Close(1001, _))));
    }
}
