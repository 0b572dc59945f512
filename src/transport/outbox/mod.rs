//! A connection's outgoing messages: one queue, filled by any thread (the hub's fan-out, the
//! connection's own reader answering calls) and emptied by the connection's writer task, which
//! takes everything queued in one swap and writes it with as few syscalls as the socket allows.
//!
//! A publication's notification reaches thousands of queues, and each one is the same frame but
//! for the subscription id. The queue therefore holds it by reference, as the shared frame plus
//! the connection's splice ([`Outbox::push_shared`]), and the writer gathers a batch's frames into a per-thread
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
//!
//! Answers to the client's own calls ([`Outbox::push_answer`]: answers, and the snapshots and
//! events a call queues) are not counted by that rule: a client that asked for a big answer
//! and reads it is never dropped for its size. The connection's reader bounds them instead: it
//! stops reading further calls while the answers waiting exceed its bound
//! ([`Outbox::backlogged`]), so they hold at most that bound plus the calls in flight, in the
//! queue and again in the writer's batch. A client that stops reading altogether is ended by the
//! write-progress rule: the outbox says when its socket is full ([`Outbox::stall`], one number
//! per stretch of time in which the socket took nothing), and the registry's sweeper closes a
//! connection whose socket stayed full for `limits.pong_timeout`, whatever pings it answers.

//!
//! Files: this one is the outbox and its signals; [`queue`] the queue and the writer's batch;
//! `prefetch` the cache hint of the fan-out loop.

mod prefetch;
mod queue;
#[cfg(test)]
mod tests;

pub use queue::Batch;

use super::shared::{SharedFrame, Splice};
use super::{deflate, frame};
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use queue::{Cursor, Item, Queue};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;

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
    /// Nothing was queued: the client is falling behind (its queue holds half of what the
    /// slow-consumer rule allows), and the caller asked to be told instead
    /// ([`Outbox::push_shared_unless_behind`]).
    Behind,
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

    /// How a connection ended, as logs and hooks tell it: the close code the server sent (none
    /// when the client closed or left first: `None`, [`Ending::Gone`], or the echo of its own
    /// close frame) and why: `client`, the server's [`Ending::label`], or `server` for any other.
    pub fn described(ending: Option<Ending>) -> (Option<u16>, &'static str) {
        match ending {
            None | Some(Ending::Gone) | Some(Ending::Close(_, "")) => (None, "client"),
            Some(e @ (Ending::Close(code, _) | Ending::Abort(code, _))) => {
                (Some(code), e.label().unwrap_or("server"))
            }
        }
    }

    /// Every label [`Ending::label`] gives.
    pub const LABELS: [&'static str; 8] = [
        "slow_consumer",
        "write_stalled",
        "ping_timeout",
        "flood",
        "shutdown",
        "message_too_big",
        "protocol_error",
        "binary_message",
    ];

    /// The metrics label of an ending the server or the protocol made (`slow_consumer`,
    /// `write_stalled`, `ping_timeout`, `flood`, `shutdown`, ...); `None` for a client that
    /// closed or left.
    pub fn label(&self) -> Option<&'static str> {
        use frame::code;
        Some(match *self {
            Ending::Abort(_, "slow consumer") => "slow_consumer",
            Ending::Abort(_, "write stalled") => "write_stalled",
            Ending::Close(_, "ping timeout") => "ping_timeout",
            Ending::Close(_, "rate limit exceeded") => "flood",
            Ending::Close(code::GOING_AWAY, _) => "shutdown",
            Ending::Close(code::TOO_BIG, _) => "message_too_big",
            Ending::Close(code::PROTOCOL_ERROR | code::INVALID_PAYLOAD, _) => "protocol_error",
            Ending::Close(code::UNSUPPORTED_DATA, _) => "binary_message",
            _ => return None,
        })
    }
}

/// What the writer found.
#[derive(Debug)]
pub enum Take {
    /// Messages were moved into the caller's batch.
    Data,
    /// Nothing queued, or the reader is writing inline; wait on [`Outbox::writer_wait`].
    Idle,
    /// Everything is written and the connection is ending this way.
    End(Ending),
}

/// What the lock guards. `repr(C)`, with what every push and take touch first.
#[repr(C)]
#[derive(Debug)]
struct State {
    /// The connection is ending (how: [`Outbox::ending`]).
    ended: bool,
    /// The writer found the socket full and waits for room.
    socket_full: bool,
    /// The reader waits for the queue to drain before reading more calls.
    reader_waits_for_drain: bool,
    /// Who is writing a taken batch to the socket, if anyone: bytes reach the socket in queue
    /// order because only one party writes at a time.
    writing: Writing,
    queue: Queue,
}

/// [`Outbox::prefetch`] brings in the lock and the state, two cache lines at most.
const _: () = assert!(std::mem::size_of::<Mutex<State>>() <= 2 * prefetch::CACHE_LINE);

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
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    /// Where the next push will write to (the end of the queue's items), kept for
    /// [`Outbox::prefetch_tail`]. Only a hint: it may be stale, and it is never dereferenced.
    tail: AtomicUsize,
    /// Wakes the writer: data queued into an empty queue, or the connection is ending.
    writer: Signal,
    /// Wakes the reader: the connection is ending, or the queue drained.
    reader: Signal,
    /// How the connection ends; set once (under the state lock), readable without it.
    ending: OnceLock<Ending>,
    /// Odd while the writer finds the socket full, even while it takes data: each stretch in
    /// which the socket took nothing has its own odd number, for the sweeper's write-progress
    /// rule ([`Outbox::stall`]). Written under the state lock, when the writer's view of the
    /// socket changes, never per message.
    stall: AtomicU64,
    /// Bytes the socket took.
    written: AtomicU64,
    max_messages: usize,
    max_bytes: usize,
    /// With permessage-deflate: text frames queued whole of at least this many payload bytes
    /// are compressed here ([`Outbox::push`], [`Outbox::push_answer`]); `usize::MAX` without.
    deflate_min: usize,
}

/// A wake-up for the one task that waits on it (the writer, or the reader), kept as a permit
/// when nobody waits yet, as `Notify::notify_one` does. Unlike `Notify`, the waiting future
/// holds no waiter node of its own (the waker is kept here): every idle connection's reader
/// and writer wait on one, so their futures stay small.
#[derive(Debug, Default)]
struct Signal {
    set: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    /// Wakes the waiting task, or the next one to wait.
    fn notify(&self) {
        self.set.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Resolves once notified since the last wait resolved. One task at a time may wait.
    async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.set.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A notify between the check and the registration found no waker to wake.
            match self.set.swap(false, Ordering::AcqRel) {
                true => Poll::Ready(()),
                false => Poll::Pending,
            }
        })
        .await
    }
}

thread_local! {
    /// The compressed frame ([`Outbox::push`]).
    static COMPRESSED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Outbox {
    /// An empty outbox with the slow-consumer bounds.
    pub fn new(max_messages: usize, max_bytes: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State {
                ended: false,
                socket_full: false,
                reader_waits_for_drain: false,
                writing: Writing::Nobody,
                queue: Queue::default(),
            }),
            tail: AtomicUsize::new(0),
            writer: Signal::default(),
            reader: Signal::default(),
            ending: OnceLock::new(),
            stall: AtomicU64::new(0),
            written: AtomicU64::new(0),
            max_messages,
            max_bytes,
            deflate_min: usize::MAX,
        }
    }

    /// The same, for a connection that negotiated permessage-deflate: text messages of at
    /// least `min_bytes` payload bytes are compressed.
    pub fn deflating(mut self, min_bytes: usize) -> Outbox {
        self.deflate_min = min_bytes.min(usize::MAX - 1);
        self
    }

    /// True when the connection negotiated permessage-deflate.
    pub fn deflates(&self) -> bool {
        self.deflate_min != usize::MAX
    }

    /// With permessage-deflate, the payload bytes from which a text message is compressed.
    pub fn deflate_min(&self) -> Option<usize> {
        self.deflates().then_some(self.deflate_min)
    }

    /// Counts `n` bytes the socket took.
    pub fn count_written(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Bytes the socket took so far.
    pub fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Asks the CPU to bring this outbox's lock and queue state into cache, for writing, ahead of
    /// a push. A fan-out touches thousands of outboxes once each, last used by writer tasks on
    /// other cores, so each push would otherwise stall on these cache lines; issuing this a few
    /// subscribers ahead overlaps the stalls. A hint only: it changes no state.
    #[inline]
    pub fn prefetch(&self) {
        let at = std::ptr::from_ref(&self.state).addr();
        let last = at + std::mem::size_of::<Mutex<State>>() - 1;
        let mut line = at & !(prefetch::CACHE_LINE - 1);
        while line <= last {
            prefetch::for_write(line);
            line += prefetch::CACHE_LINE;
        }
    }

    /// Like [`Outbox::prefetch`], for the memory the next push will write into the queue. Call it
    /// after [`Outbox::prefetch`] had time to bring in the line that says where that is.
    #[inline]
    pub fn prefetch_tail(&self) {
        let at = self.tail.load(Ordering::Relaxed);
        if at != 0 {
            prefetch::for_write(at);
        }
    }

    /// Records where the queue's items end now, for [`Outbox::prefetch_tail`].
    #[inline]
    fn note_tail(&self, st: &State) {
        let items = &st.queue.items;
        self.tail.store(items.as_ptr().addr() + items.len() * std::mem::size_of::<Item>(), Ordering::Relaxed);
    }

    /// Queues one data message made of `parts` (a complete frame: header and payload), copied.
    /// On a connection with permessage-deflate an uncompressed text frame of at least
    /// its `min_bytes` is compressed first; a frame built compressed goes as it is.
    pub fn push(&self, parts: &[&[u8]]) -> Push {
        if let Some((z, at)) = self.compressed(parts) {
            return z.with_borrow(|z| self.push_with(z.len() - at, true, |q| q.push_bytes(&[&z[at..]])));
        }
        let len = parts.iter().map(|p| p.len()).sum();
        self.push_with(len, true, |q| q.push_bytes(parts))
    }

    /// `parts`, a whole uncompressed text frame, compressed into this thread's buffer when this
    /// connection deflates and the frame is worth it: the buffer, and where in it the frame
    /// starts; `None` otherwise. The payload is compressed straight from `parts`.
    fn compressed(
        &self,
        parts: &[&[u8]],
    ) -> Option<(&'static std::thread::LocalKey<RefCell<Vec<u8>>>, usize)> {
        if !self.deflates() || parts.first().is_none_or(|h| h.len() < 2 || h[0] != 0x80 | frame::OP_TEXT) {
            return None;
        }
        let h = parts[0];
        let (header, stated) = match h[1] {
            126 if h.len() >= 4 => (4, u16::from_be_bytes([h[2], h[3]]) as usize),
            127 if h.len() >= 10 => {
                (10, u64::from_be_bytes(h[2..10].try_into().expect("8 bytes; qed")) as usize)
            }
            126 | 127 => return None,
            n => (2, n as usize),
        };
        let len: usize = parts.iter().map(|p| p.len()).sum::<usize>() - header;
        // One frame only (several queued as one go as they are), and one worth compressing.
        if len != stated || len < self.deflate_min {
            return None;
        }
        // The payload's pieces: the first part after the header, then the others (a frame comes
        // in a few parts; one of more is queued uncompressed).
        let mut payload: [&[u8]; 8] = [&[]; 8];
        let n = parts.len();
        if n > payload.len() {
            return None;
        }
        payload[0] = &h[header..];
        payload[1..n].copy_from_slice(&parts[1..n]);
        let at = COMPRESSED.with_borrow_mut(|z| {
            if z.capacity() > 1 << 20 {
                *z = Vec::new();
            }
            z.clear();
            deflate::append_compressed_frame(z, frame::OP_TEXT, &payload[..n])
        });
        Some((&COMPRESSED, at))
    }

    /// Queues `frame` with `splice` spliced in, by reference.
    pub fn push_shared(&self, frame: &Arc<SharedFrame>, splice: Splice) -> Push {
        self.push_with(frame.frame_len(), true, |q| q.push_shared(frame, splice))
    }

    /// Like [`Outbox::push_shared`], but when the client is falling behind (half of either
    /// slow-consumer bound reached) queues nothing and says [`Push::Behind`], so that the caller
    /// can send it less (conflation) instead of getting it dropped.
    pub fn push_shared_unless_behind(&self, frame: &Arc<SharedFrame>, splice: Splice) -> Push {
        let st = self.state.lock();
        if st.ended {
            return Push::Closed;
        }
        let q = &st.queue;
        if (st.socket_full && q.counted_messages() >= self.max_messages / 2)
            || q.counted_bytes() + frame.frame_len() > self.max_bytes / 2
        {
            return Push::Behind;
        }
        drop(st);
        self.push_shared(frame, splice)
    }

    /// True when the client has caught up: its socket takes data and its queue holds less than
    /// a quarter of the slow-consumer rule's byte bound.
    pub fn caught_up(&self) -> bool {
        let st = self.state.lock();
        !st.socket_full && st.queue.counted_bytes() < self.max_bytes / 4
    }

    /// Queues an answer to a call (copied) without waking the writer task. Answers are queued
    /// from the connection's reader task, which writes the queue itself next
    /// ([`Outbox::take_inline`]), waking the writer for whatever the socket does not take; a
    /// wake-up here would make the writer task run for nothing on every call.
    ///
    /// The slow-consumer rule does not count answers, whatever their size: the reader bounds
    /// them by not reading more calls while they wait ([`Outbox::backlogged`]). Never
    /// [`Push::Overflow`].
    pub fn push_answer(&self, parts: &[&[u8]]) -> Push {
        if let Some((z, at)) = self.compressed(parts) {
            return z.with_borrow(|z| self.push_answer_frame(&[&z[at..]]));
        }
        self.push_answer_frame(parts)
    }

    fn push_answer_frame(&self, parts: &[&[u8]]) -> Push {
        let mut st = self.state.lock();
        if st.ended {
            return Push::Closed;
        }
        st.queue.push_answer(parts);
        self.note_tail(&st);
        Push::Queued
    }

    fn push_with(&self, len: usize, wake: bool, put: impl FnOnce(&mut Queue)) -> Push {
        let mut st = self.state.lock();
        if st.ended {
            return Push::Closed;
        }
        let q = &st.queue;
        if (st.socket_full && q.counted_messages() >= self.max_messages)
            || q.counted_bytes() + len > self.max_bytes
        {
            drop(st);
            self.end(Ending::Abort(frame::code::POLICY, "slow consumer"));
            return Push::Overflow;
        }
        let was_empty = st.queue.is_empty();
        put(&mut st.queue);
        self.note_tail(&st);
        drop(st);
        if was_empty && wake {
            self.writer.notify();
        }
        Push::Queued
    }

    /// Queues a control frame (ping, pong). It counts like a message, so a client that sends
    /// pings without reading pongs meets the same bounds as any other.
    pub fn push_control(&self, opcode: u8, payload: &[u8]) {
        let (h, n) = frame::header_bytes(opcode, payload.len());
        let _ = self.push_with(n + payload.len(), true, |q| q.push_bytes(&[&h[..n], payload]));
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
        let dropped = how.is_abrupt().then(|| std::mem::take(&mut st.queue));
        drop(st);
        // Shared frames are released outside the lock.
        drop(dropped);
        self.writer.notify();
        self.reader.notify();
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
        self.state.lock().queue.messages
    }

    /// Reader: true while at least `messages` messages, or `answer_bytes` bytes of answers, wait
    /// to be taken by the writer; then the reader reads no more calls until they drain.
    pub fn backlogged(&self, messages: usize, answer_bytes: usize) -> bool {
        let st = self.state.lock();
        st.queue.messages >= messages || st.queue.answer_bytes >= answer_bytes
    }

    /// While the writer finds the socket full, the number of this stretch of no progress (odd,
    /// unique to it); `None` while the socket takes data. The same number on two looks means the
    /// socket took nothing in between.
    pub fn stall(&self) -> Option<u64> {
        let s = self.stall.load(Ordering::Acquire);
        (s % 2 == 1).then_some(s)
    }

    /// Wakes the writer of a full socket to try it again. The reactor reports a full socket
    /// writable only once a third of its send buffer is free, which a client that reads slowly
    /// may take long to free; the sweeper's nudge once a second sees progress that small too.
    pub fn nudge_writer(&self) {
        self.writer.notify();
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
                self.reader.notify();
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
    /// queue for the writer task; `batch` is left empty. A batch written whole is freed, not
    /// handed back: a connection answered inline is most often one that then sits idle (a
    /// subscriber after its answer and snapshot), and an idle connection should hold no queue
    /// buffers; a connection making calls allocates its answer's buffer once per answer.
    pub fn finish_inline(&self, batch: &mut Batch) {
        let rest = if batch.is_done() {
            batch.clear(0);
            None
        } else {
            Some(batch.rest())
        };
        let mut st = self.state.lock();
        st.writing = Writing::Nobody;
        if let Some(mut rest) = rest
            && !st.ended
        {
            rest.append(&mut st.queue);
            st.queue = rest;
        }
        let wake = !st.queue.is_empty() || st.ended;
        self.note_tail(&st);
        drop(st);
        if wake {
            self.writer.notify();
        }
    }

    /// Writer: the socket is full (`true`) or took data again (`false`).
    pub fn set_socket_full(&self, full: bool) {
        let mut st = self.state.lock();
        st.socket_full = full;
        let stall = self.stall.load(Ordering::Relaxed);
        if stall % 2 == u64::from(!full) {
            // A new stretch of no progress begins (odd), or the one going on ends (even).
            self.stall.store(stall + 1, Ordering::Release);
        }
        // Messages that piled up while the client was not reading count from now on.
        if full && st.queue.counted_messages() > self.max_messages {
            drop(st);
            self.end(Ending::Abort(frame::code::POLICY, "slow consumer"));
        }
    }

    /// Writer: waits until something is queued or the connection ends.
    pub async fn writer_wait(&self) {
        self.writer.wait().await
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
        self.reader.wait().await
    }

    /// Reader: resolves when the connection starts ending or the queue drains (a wake-up; check
    /// [`Outbox::is_ending`]).
    pub async fn reader_wait(&self) {
        self.reader.wait().await
    }
}
