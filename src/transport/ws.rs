//! One WebSocket connection after the upgrade: a reader (the task that upgraded it) and a
//! writer task, sharing the session's [`Outbox`].
//!
//! The reader parses client frames from a buffer that exists only while there are bytes to
//! parse (an idle connection holds none), answers pings, dispatches each text message to
//! JSON-RPC in order, and stops reading while the outbox holds many unsent messages, so a
//! client that sends without reading is slowed down by TCP instead of growing server memory.
//! The writer takes everything queued and writes it with as few syscalls as the socket allows;
//! it never waits on anything but the socket and the outbox.
//!
//! Endings: the client's close frame is answered with the same code; a protocol violation is
//! answered with the RFC's code; the server's own endings (shutdown 1001, flood / slow consumer /
//! ping timeout 1008) go through [`Outbox::end`]. A graceful close waits at most
//! [`CLOSE_HANDSHAKE_TIMEOUT`] for the client; an abort resets the TCP connection.

use super::frame::{self, Event, Failure, OP_PONG, Reassembly};
use super::outbox::{Batch, Ending, Outbox, Take};
use super::registry::{Registry, Slot};
use crate::constants::CLOSE_HANDSHAKE_TIMEOUT;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::rpc::{Dispatcher, Session};
use std::io::ErrorKind;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Smallest read: enough for a typical call and several frames.
const READ_CHUNK: usize = 4096;
/// A writer's batch buffers above this size are released after use instead of kept.
const KEEP_BATCH_CAPACITY: usize = 256 << 10;

/// What every connection needs from the node.
pub struct Context {
    /// JSON-RPC dispatch.
    pub dispatcher: Dispatcher,
    /// For ending subscriptions when the connection ends.
    pub hub: Arc<Hub>,
    /// Open connections.
    pub registry: Arc<Registry>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Largest client message.
    pub max_message: usize,
    /// The reader pauses while this many messages wait in the outbox.
    pub pause_reading_at: usize,
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

/// Runs a connection until it ends, then releases everything it held.
pub async fn run(ctx: Arc<Context>, stream: TcpStream, leftover: Vec<u8>, session: Arc<Session>, slot: Slot) {
    let out = session.outbox().cloned().expect("a WebSocket session has an outbox; qed");
    ctx.registry.insert(&session);
    ctx.metrics.connections.inc();
    ctx.metrics.connections_total.inc();
    // Both tasks use the socket through shared references: the reader reads (and writes its own
    // answers when nobody else is writing), the writer writes; the outbox decides who writes.
    let stream = Arc::new(stream);
    let mut writer = tokio::spawn(write_loop(out.clone(), stream.clone()));

    let end = read_loop(&ctx, &stream, leftover, &session, &out).await;
    match end {
        ReadEnd::Gone => out.end(Ending::Gone),
        ReadEnd::Failed(f) => out.end(Ending::Close(f.code, f.reason)),
        ReadEnd::ClientClosed | ReadEnd::Ended => {}
    }
    if tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, &mut writer).await.is_err() {
        writer.abort();
        let _ = stream.set_zero_linger();
    }
    count_ending(&ctx.metrics, out.ending());

    let subs = std::mem::take(&mut *session.subscriptions.lock());
    for sub in &subs {
        ctx.hub.unsubscribe(sub);
    }
    ctx.registry.remove(session.id);
    ctx.metrics.connections.dec();
    drop(slot);
}

fn count_ending(m: &Metrics, ending: Option<Ending>) {
    let reason = match ending {
        Some(Ending::Abort(_, "slow consumer")) => {
            m.slow_consumers.inc();
            "slow_consumer"
        }
        Some(Ending::Close(_, "ping timeout")) => "ping_timeout",
        Some(Ending::Close(_, "rate limit exceeded")) => "flood",
        Some(Ending::Close(frame::code::GOING_AWAY, _)) => "shutdown",
        Some(Ending::Close(frame::code::TOO_BIG, _)) => "message_too_big",
        Some(Ending::Close(frame::code::PROTOCOL_ERROR | frame::code::INVALID_PAYLOAD, _)) => {
            "protocol_error"
        }
        Some(Ending::Close(frame::code::UNSUPPORTED_DATA, _)) => "binary_message",
        _ => return,
    };
    m.closed(reason);
}

async fn read_loop(
    ctx: &Context,
    rd: &TcpStream,
    mut buf: Vec<u8>,
    session: &Arc<Session>,
    out: &Outbox,
) -> ReadEnd {
    let mut asm = Reassembly::default();
    let mut close_deadline: Option<Instant> = None;
    loop {
        // Parse and handle every complete frame in the buffer.
        let mut at = 0;
        let mut need = 0;
        let mut handled = 0;
        while at < buf.len() {
            let allowance = ctx.max_message.saturating_sub(asm.pending());
            let h = match frame::parse_header(&buf[at..], allowance) {
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
            let event = match asm.frame(&h, payload, ctx.max_message) {
                Ok(e) => e,
                Err(f) => return ReadEnd::Failed(f),
            };
            match event {
                Event::Text(text) if close_deadline.is_none() && !out.is_ending() => {
                    handled += 1;
                    if ctx.dispatcher.handle_ws(session, text).await {
                        out.end(Ending::Close(frame::code::POLICY, "rate limit exceeded"));
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
        buf.drain(..at);
        if buf.is_empty() {
            buf = Vec::new();
        }
        if handled > 1 {
            // A publisher's batch of calls wakes the writers of every subscriber; let them run
            // before reading more, so their queues drain as fast as they fill. (A single call
            // needs no yield: the reader waits for the socket next anyway.)
            tokio::task::yield_now().await;
        }

        // The answers just queued go out from here if nobody else is writing: no task switch.
        flush_inline(out, rd);

        // Ending? Aborts stop at once; a close waits a while for the client's close frame.
        if out.is_ending() {
            match out.ending() {
                Some(e) if e.is_abrupt() => return ReadEnd::Ended,
                _ => {
                    close_deadline.get_or_insert_with(|| Instant::now() + CLOSE_HANDSHAKE_TIMEOUT);
                }
            }
        } else if out.queued_messages() >= ctx.pause_reading_at {
            // The client is not reading its answers: stop reading its calls until it does.
            tokio::select! {
                _ = out.drained() => {}
                _ = sleep_until(close_deadline) => return ReadEnd::Ended,
            }
            continue;
        }

        tokio::select! {
            biased;
            _ = out.reader_wait() => continue,
            _ = sleep_until(close_deadline) => return ReadEnd::Ended,
            r = rd.readable() => if r.is_err() { return ReadEnd::Gone },
        }
        match read_some(rd, &mut buf, need.max(READ_CHUNK)) {
            Ok(0) => return ReadEnd::Gone,
            Ok(_) => session.touch(ctx.registry.now_ms()),
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
    let _ = batch.write_to(stream);
    out.finish_inline(&mut batch);
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn write_loop(out: Arc<Outbox>, wr: Arc<TcpStream>) {
    let mut batch = Batch::default();
    loop {
        match out.take(&mut batch) {
            Take::Data => {
                if write_all(&out, &wr, &mut batch).await.is_err() {
                    out.end(Ending::Gone);
                    let _ = wr.set_zero_linger();
                    return;
                }
                batch.clear(KEEP_BATCH_CAPACITY);
            }
            Take::Idle => out.writer_wait().await,
            Take::End(Ending::Close(code, reason)) => {
                let mut f = Vec::new();
                frame::put_close(&mut f, code, reason);
                batch.push_bytes(&f);
                if write_all(&out, &wr, &mut batch).await.is_ok() {
                    // Half-close: the client sees the end of the stream after the close frame.
                    let _ = socket_shutdown(&wr, libc::SHUT_WR);
                }
                return;
            }
            Take::End(ending) => {
                // Nothing is half-written here, so an abort's close frame goes out if the socket
                // has room; either way the connection is reset, dropping what the kernel holds.
                if let Ending::Abort(code, reason) = ending {
                    let mut f = Vec::new();
                    frame::put_close(&mut f, code, reason);
                    let _ = wr.try_write(&f);
                }
                let _ = wr.set_zero_linger();
                let _ = socket_shutdown(&wr, libc::SHUT_RD);
                return;
            }
        }
    }
}

/// Writes all of `batch`, unless the connection is aborted meanwhile (then the connection is
/// reset, as a frame may be half-written).
async fn write_all(out: &Outbox, wr: &TcpStream, batch: &mut Batch) -> Result<(), ()> {
    let mut full = false;
    while !batch.is_done() {
        match batch.write_to(wr) {
            Ok(_) => {
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
                            let _ = socket_shutdown(wr, libc::SHUT_RD);
                            return Err(());
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

/// `shutdown(2)` on the connection's socket: the write side after a close frame, the read side
/// to wake the reader when the writer resets the connection.
fn socket_shutdown(wr: &TcpStream, how: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor belongs to a socket both halves keep open while `wr` lives;
    // shutdown(2) neither closes nor invalidates it.
    let rc = unsafe { libc::shutdown(wr.as_raw_fd(), how) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}
