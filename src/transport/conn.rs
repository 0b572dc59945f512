//! One WebSocket connection after the upgrade, whichever front door it serves: a reader (the
//! task that upgraded it) and a writer task, sharing the connection's [`Outbox`].
//!
//! The reader parses client frames from a buffer that exists only while there are bytes to
//! parse (an idle connection holds none), answers pings, and hands each text message to the
//! front door's [`Conn::on_text`]. A message the front door cannot finish at once (a call that
//! waits for the broker or a backend) comes back as a future, run here beside later messages in
//! one of at most `calls_in_flight` slots: slow calls do not hold up fast ones, and what they
//! hold is bounded. The reader stops reading while every slot is taken or while the outbox
//! holds many unsent messages or many bytes of unsent answers, so a client that sends without
//! reading is slowed down by TCP instead of growing server memory, and a big answer is never a
//! reason to drop a client that reads it. While it so waits on the client, the client's silence
//! is not timed out (the server is not reading it); a client that reads nothing is ended by the
//! write-progress rule instead (see the outbox). The writer takes everything queued and writes it with as
//! few syscalls as the socket allows; it never waits on anything but the socket and the outbox.
//!
//! Endings: the client's close frame is answered with the same code; a protocol violation is
//! answered with the RFC's code; the server's own endings (shutdown 1001, flood / slow consumer /
//! ping timeout 1008) go through [`Outbox::end`]. A graceful close waits at most
//! [`CLOSE_HANDSHAKE_TIMEOUT`] for the client; an abort resets the TCP connection.

use super::frame::{self, Event, Failure, OP_PING, OP_PONG, Reassembly};
use super::link::Link;
use super::outbox::{Batch, Ending, Outbox, Take};
use super::registry::{Registry, Slot};
use crate::constants::CLOSE_HANDSHAKE_TIMEOUT;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::io::ErrorKind;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Smallest read: enough for a typical call and several frames.
const READ_CHUNK: usize = 4096;
/// A reader that keeps finding more to read yields at least this often (see `read_loop`).
const YIELD_AFTER: std::time::Duration = std::time::Duration::from_millis(1);
/// A writer's batch buffers above this size are released after use instead of kept.
const KEEP_BATCH_CAPACITY: usize = 256 << 10;

/// What a front door did with a text message.
#[must_use]
pub enum Handled {
    /// Finished; its answer, if any, is queued.
    Done,
    /// Work that goes on beside later messages and queues its own answer; dropping it (the
    /// connection ended) cancels it.
    Later(BoxFuture<'static, ()>),
    /// The connection must close with this code and reason (a flood, say).
    Close(u16, &'static str),
}

impl std::fmt::Debug for Handled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handled::Done => f.write_str("Done"),
            Handled::Later(_) => f.write_str("Later(..)"),
            Handled::Close(code, reason) => write!(f, "Close({code}, {reason:?})"),
        }
    }
}

/// One connection as a front door sees it: the seam between the socket and a protocol.
pub trait Conn: Send + Sync + 'static {
    /// The connection's transport state.
    fn link(&self) -> &Link;

    /// One text message from the client, in arrival order.
    fn on_text(&self, text: &str) -> Handled;

    /// A keepalive is due. The default queues a WebSocket ping; a front door whose clients
    /// expect a text keepalive (`{"type":"ping"}`) queues that instead or as well.
    fn keepalive(&self) {
        self.link().outbox.push_control(OP_PING, b"");
    }

    /// Called about once a second by the registry's sweeper (token expiry and the like).
    fn tick(&self) {}

    /// The connection ended (how, when the server or the protocol ended it); called once, after
    /// the writer stopped.
    fn on_end(&self, ending: Option<Ending>) {
        let _ = ending;
    }
}

/// The bounds of a connection's reader.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Largest client message.
    pub max_message: usize,
    /// The reader pauses while this many messages wait in the outbox.
    pub pause_reading_at: usize,
    /// The reader pauses while this many bytes of answers wait in the outbox.
    pub pause_reading_bytes: usize,
    /// Messages handled at the same time (see [`Handled::Later`]).
    pub calls_in_flight: usize,
}

/// How the reader stopped.
enum ReadEnd {
    /// The client closed TCP or the socket failed.
    Gone,
    /// The client sent a close frame (already answered).
    ClientClosed,
    /// The client broke the protocol.
    Failed(Failure),
    /// The connection was ended through the outbox (by the server, or the close handshake ran
    /// out of time).
    Ended,
}

/// Runs a connection until it ends, then lets go of everything it held.
pub async fn run(
    conn: Arc<dyn Conn>,
    registry: Arc<Registry>,
    limits: ConnLimits,
    stream: Arc<TcpStream>,
    mut leftover: Vec<u8>,
    slot: Slot,
) {
    // Every idle connection holds this future: what it keeps is used in place, not moved into
    // locals of its own (an async fn keeps room for its arguments as well as for such locals).
    let out = &conn.link().outbox;
    registry.insert(conn.clone());
    // Both tasks use the socket through shared references: the reader reads (and writes its own
    // answers when nobody else is writing), the writer writes; the outbox decides who writes.
    let mut writer = tokio::spawn(write_loop(out.clone(), stream.clone()));

    let end = read_loop(&*conn, &registry, &limits, &stream, &mut leftover, out).await;
    match end {
        ReadEnd::Gone => out.end(Ending::Gone),
        ReadEnd::Failed(f) => out.end(Ending::Close(f.code, f.reason)),
        ReadEnd::ClientClosed | ReadEnd::Ended => {}
    }
    if tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, &mut writer).await.is_err() {
        writer.abort();
        let _ = stream.set_zero_linger();
    }
    registry.remove(conn.link().id);
    conn.on_end(out.ending());
    drop(slot);
}

/// The messages being handled. The set exists only while it holds some: an idle connection
/// (most of them) keeps no allocation for it.
#[derive(Default)]
struct Slots(Option<FuturesUnordered<BoxFuture<'static, ()>>>);

impl Slots {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesUnordered::len)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, work: BoxFuture<'static, ()>) {
        self.0.get_or_insert_with(FuturesUnordered::new).push(work);
    }

    /// Runs every message as far as it goes now, without waiting.
    async fn run_ready(&mut self) {
        if let Some(set) = &mut self.0 {
            std::future::poll_fn(|cx| {
                while let Poll::Ready(Some(())) = set.poll_next_unpin(cx) {}
                Poll::Ready(())
            })
            .await;
        }
        self.release_if_empty();
    }

    /// Resolves when one message is done (never, when none is in flight).
    async fn next(&mut self) {
        match &mut self.0 {
            Some(set) if !set.is_empty() => {
                set.next().await;
                self.release_if_empty();
            }
            _ => std::future::pending().await,
        }
    }

    fn release_if_empty(&mut self) {
        if self.0.as_ref().is_some_and(FuturesUnordered::is_empty) {
            self.0 = None;
        }
    }
}

async fn read_loop(
    conn: &dyn Conn,
    registry: &Registry,
    limits: &ConnLimits,
    rd: &TcpStream,
    buf: &mut Vec<u8>,
    out: &Outbox,
) -> ReadEnd {
    let mut asm = Reassembly::default();
    let mut close_deadline = Deadline::default();
    let mut in_flight = Slots::default();
    // The last read took all it asked for: the client may well have sent more.
    let mut socket_had_more = false;
    let mut last_yield = Instant::now();
    loop {
        // Parse and handle every complete frame in the buffer, while a slot is free.
        let mut at = 0;
        let mut need = 0;
        let mut handled = 0;
        while at < buf.len() {
            if in_flight.len() >= limits.calls_in_flight {
                // Most calls finish at once: only those still waiting hold a slot.
                in_flight.run_ready().await;
                if in_flight.len() >= limits.calls_in_flight {
                    break;
                }
            }
            let allowance = limits.max_message.saturating_sub(asm.pending());
            let h = match frame::parse_header(&buf[at..], allowance, out.deflates()) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(f) => return ReadEnd::Failed(f),
            };
            let total = h.header_len + h.len;
            if buf.len() - at < total {
                need = total - (buf.len() - at);
                break;
            }
            let payload = &mut buf[at + h.header_len..at + total];
            at += total;
            frame::unmask(payload, h.mask);
            let event = match asm.frame(&h, payload, limits.max_message) {
                Ok(e) => e,
                Err(f) => return ReadEnd::Failed(f),
            };
            match event {
                Event::Text(text) if !close_deadline.is_set() && !out.is_ending() => {
                    handled += 1;
                    match conn.on_text(text) {
                        Handled::Done => {}
                        Handled::Later(work) => in_flight.push(work),
                        Handled::Close(code, reason) => out.end(Ending::Close(code, reason)),
                    }
                }
                Event::Text(_) | Event::Partial | Event::Pong => {}
                Event::Ping(p) => out.push_control(OP_PONG, p),
                Event::Close(code) => {
                    // Answers the client's close, or completes the server's.
                    out.end(Ending::Close(code, ""));
                    return ReadEnd::ClientClosed;
                }
            }
            asm.finish();
        }
        // Frames left in the buffer because every slot was taken are parsed as soon as one
        // frees, without waiting for the socket.
        let unparsed = at < buf.len() && in_flight.len() >= limits.calls_in_flight;
        buf.drain(..at);
        if buf.is_empty() {
            *buf = Vec::new();
        }
        // Messages handed over as work start now, in arrival order; most finish at once.
        if !in_flight.is_empty() {
            in_flight.run_ready().await;
        }
        if handled > 1 || (handled > 0 && socket_had_more && last_yield.elapsed() >= YIELD_AFTER) {
            // A publisher's calls wake the writers of every subscriber; let them run before
            // reading more, so their queues drain as fast as they fill (a task this one woke may
            // wait for it to yield). A call that emptied the socket needs no yield: the reader
            // waits for the socket next anyway. One big call per read (a socket that always has
            // more) yields once per YIELD_AFTER: often enough for the writers, rarely enough
            // that they still write in batches.
            tokio::task::yield_now().await;
            last_yield = Instant::now();
        }

        // The answers just queued go out from here if nobody else is writing: no task switch.
        flush_inline(out, rd);

        // Ending? Aborts stop at once; a close waits a while for the client's close frame.
        if out.is_ending() {
            match out.ending() {
                Some(e) if e.is_abrupt() => return ReadEnd::Ended,
                _ => {
                    close_deadline.set_once(CLOSE_HANDSHAKE_TIMEOUT);
                }
            }
        } else if out.backlogged(limits.pause_reading_at, limits.pause_reading_bytes) {
            // The client is not reading its answers as fast as it asks: stop reading its calls
            // until it does. Meanwhile its silence is ours, not a dead client's.
            conn.link().hold_silence();
            tokio::select! {
                _ = out.drained() => {}
                () = in_flight.next(), if !in_flight.is_empty() => {}
                () = close_deadline.wait() => return ReadEnd::Ended,
            }
            conn.link().touch(registry.now_ms());
            continue;
        }

        // With every slot taken, only a finished call makes room for reading more.
        let may_read = in_flight.len() < limits.calls_in_flight;
        if unparsed && may_read {
            continue;
        }
        tokio::select! {
            biased;
            _ = out.reader_wait() => continue,
            () = close_deadline.wait() => return ReadEnd::Ended,
            () = in_flight.next(), if !in_flight.is_empty() => continue,
            // The reader is the socket's only reader, so it may hold the read-readiness waker
            // itself: no waiter of its own to keep in every idle connection's future.
            r = std::future::poll_fn(|cx| rd.poll_read_ready(cx)), if may_read => {
                if r.is_err() {
                    return ReadEnd::Gone;
                }
            }
        }
        let want = need.max(READ_CHUNK);
        match read_some(rd, buf, want) {
            Ok(0) => return ReadEnd::Gone,
            Ok(got) => {
                socket_had_more = got == want;
                conn.link().count_read(got);
                conn.link().touch(registry.now_ms());
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => return ReadEnd::Gone,
        }
    }
}

/// One non-blocking read of up to `want` bytes, appended to `buf`; call it once `rd` was
/// reported readable.
///
/// A read that returns less than it asked for has emptied the socket, so it also tells the
/// reactor the socket is no longer readable. That saves the read that would only find nothing,
/// one syscall per call on a connection that sends one call at a time. It is race-free: tokio
/// clears the readiness only if no readiness event arrived since this read began, so data that
/// comes in meanwhile still wakes the reader.
fn read_some(rd: &TcpStream, buf: &mut Vec<u8>, want: usize) -> std::io::Result<usize> {
    use std::io::Read as _;
    let start = buf.len();
    buf.resize(start + want, 0);
    let mut got = 0;
    let result = rd.try_io(tokio::io::Interest::READABLE, || {
        got = (&*socket2::SockRef::from(rd)).read(&mut buf[start..])?;
        if got > 0 && got < want {
            // Drained: answering "would block" is what clears the readiness; `got` still counts.
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(())
    });
    buf.truncate(start + got);
    match result {
        Ok(()) => Ok(got),
        Err(e) if e.kind() == ErrorKind::WouldBlock && got > 0 => Ok(got),
        Err(e) => Err(e),
    }
}

/// Writes what the outbox holds with one non-blocking write from the reader's task, when the
/// writer task is idle; whatever the socket does not take is left to the writer task.
fn flush_inline(out: &Outbox, stream: &TcpStream) {
    let mut batch = Batch::default();
    if !out.take_inline(&mut batch) {
        return;
    }
    if let Ok(n) = batch.write_to(stream) {
        out.count_written(n);
    }
    out.finish_inline(&mut batch);
}

/// A deadline that is mostly not set: its timer exists only once it is (the close handshake's
/// wait), so the reader's future, which every idle connection holds, keeps no room for one.
#[derive(Default)]
struct Deadline(Option<Pin<Box<tokio::time::Sleep>>>);

impl Deadline {
    fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Sets the deadline `after` from now, unless it is set already.
    fn set_once(&mut self, after: std::time::Duration) {
        if self.0.is_none() {
            self.0 = Some(Box::pin(tokio::time::sleep(after)));
        }
    }

    /// Waits for the deadline, or forever when none is set.
    async fn wait(&mut self) {
        match &mut self.0 {
            Some(sleep) => sleep.as_mut().await,
            None => std::future::pending().await,
        }
    }
}

async fn write_loop(out: Arc<Outbox>, wr: Arc<TcpStream>) {
    // The batch (and its buffers) is kept from the writer's first write on: the writer of a
    // connection whose answers all went out inline (an idle subscriber's) holds none.
    let mut kept: Option<Box<Batch>> = None;
    loop {
        let fresh = kept.is_none();
        let mut boxed = kept.take().unwrap_or_default();
        let batch = &mut *boxed;
        match out.take(batch) {
            Take::Data => {
                // Most batches go out at once; only one that finds the socket full waits for
                // it, in a future of its own, so an idle writer's task holds no room for that.
                let wrote = match write_now(&out, &wr, batch) {
                    Ok(true) => Ok(()),
                    Ok(false) => Box::pin(write_all(&out, &wr, batch)).await,
                    Err(()) => Err(()),
                };
                if wrote.is_err() {
                    out.end(Ending::Gone);
                    let _ = wr.set_zero_linger();
                    return;
                }
                batch.clear(KEEP_BATCH_CAPACITY);
                kept = Some(boxed);
            }
            Take::Idle => {
                if !fresh {
                    kept = Some(boxed);
                }
                out.writer_wait().await;
            }
            Take::End(Ending::Close(code, reason)) => {
                let mut f = Vec::new();
                frame::put_close(&mut f, code, reason);
                batch.push_bytes(&f);
                if Box::pin(write_all(&out, &wr, batch)).await.is_ok() {
                    // Half-close: the client sees the end of the stream after the close frame.
                    let _ = socket2::SockRef::from(&*wr).shutdown(Shutdown::Write);
                }
                return;
            }
            Take::End(ending) => {
                // Nothing is half-written here, so an abort's close frame goes out if the socket
                // has room; either way the connection is reset, dropping what the kernel holds.
                if let Ending::Abort(code, reason) = ending {
                    let mut f = Vec::new();
                    frame::put_close(&mut f, code, reason);
                    if let Ok(n) = wr.try_write(&f) {
                        out.count_written(n);
                    }
                }
                let _ = wr.set_zero_linger();
                let _ = socket2::SockRef::from(&*wr).shutdown(Shutdown::Read);
                return;
            }
        }
    }
}

/// Writes what the socket takes of `batch` without waiting: Ok(true) when all of it went,
/// Ok(false) when the socket is full.
fn write_now(out: &Outbox, wr: &TcpStream, batch: &mut Batch) -> Result<bool, ()> {
    while !batch.is_done() {
        match batch.write_to(wr) {
            Ok(n) => out.count_written(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(_) => return Err(()),
        }
    }
    Ok(true)
}

/// Writes all of `batch`, unless the connection is aborted meanwhile (then the connection is
/// reset, as a frame may be half-written).
async fn write_all(out: &Outbox, wr: &TcpStream, batch: &mut Batch) -> Result<(), ()> {
    let mut full = false;
    while !batch.is_done() {
        match batch.write_to(wr) {
            Ok(n) => {
                out.count_written(n);
                if full {
                    full = false;
                    out.set_socket_full(false);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if !full {
                    full = true;
                    out.set_socket_full(true);
                }
                tokio::select! {
                    biased;
                    _ = out.writer_wait() => {
                        if out.ending().is_some_and(|e| e.is_abrupt()) {
                            let _ = wr.set_zero_linger();
                            let _ = socket2::SockRef::from(wr).shutdown(Shutdown::Read);
                            return Err(());
                        }
                        // New data, or the sweeper checking on a full socket: does it take
                        // anything yet, short of what makes the reactor call it writable?
                        match batch.write_unready(wr) {
                            Ok(n) => {
                                out.count_written(n);
                                full = false;
                                out.set_socket_full(false);
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                            Err(_) => return Err(()),
                        }
                    }
                    r = wr.writable() => r.map_err(|_| ())?,
                }
            }
            Err(_) => return Err(()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle connection holds its reader's and its writer's futures (each in a task rounded
    /// up to 128 bytes), so what they keep room for is memory per connection: the writer keeps
    /// its batch boxed and its full-socket wait in a future of its own, the reader its close
    /// timer boxed, no waiter nodes (the outbox's signals hold the wakers), no copies of its
    /// arguments. Measured in this (debug) build; release builds are no larger.
    #[tokio::test]
    async fn an_idle_connection_s_futures_stay_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let out = Arc::new(Outbox::new(10, 1000));
        let w = write_loop(out.clone(), Arc::new(s));
        assert!(std::mem::size_of_val(&w) <= 128, "write_loop: {}", std::mem::size_of_val(&w));
        struct C(Link);
        impl Conn for C {
            fn link(&self) -> &Link {
                &self.0
            }
            fn on_text(&self, _: &str) -> Handled {
                Handled::Done
            }
        }
        let registry = Registry::new(10);
        let slot = registry.reserve().unwrap();
        let limits = ConnLimits {
            max_message: 100,
            pause_reading_at: 10,
            pause_reading_bytes: 100,
            calls_in_flight: 4,
        };
        let s = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let conn: Arc<dyn Conn> = Arc::new(C(Link::new(1, 10, 1000)));
        let r = run(conn, registry, limits, Arc::new(s), Vec::new(), slot);
        assert!(std::mem::size_of_val(&r) <= 600, "run: {}", std::mem::size_of_val(&r));
    }
}
