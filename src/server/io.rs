//! The TCP stream hyper serves HTTP on, with a write timeout: an answer whose socket accepts no
//! byte for `limits.write_timeout` fails its connection, so a client that sends requests and
//! never reads the answers cannot pin their memory (nginx's `send_timeout`: the time between
//! two writes that make progress, not the time of the whole answer).
//!
//! Written here rather than taken from a crate: the upgrade must get the bare [`TcpStream`]
//! back for the WebSocket transport, and the timeout crates keep their timer inline, which
//! makes the stream `!Unpin` and so impossible to take out of hyper's `Pin<Box<_>>` again.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// A [`TcpStream`] whose writes time out when they make no progress.
#[derive(Debug)]
pub(super) struct TimedStream {
    stream: TcpStream,
    timeout: Duration,
    /// Armed while a write waits on a full socket.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl TimedStream {
    /// `stream`, whose writes fail after `timeout` without progress.
    pub(super) fn new(stream: TcpStream, timeout: Duration) -> TimedStream {
        TimedStream { stream, timeout, stalled: None }
    }

    /// The bare stream.
    pub(super) fn into_inner(self) -> TcpStream {
        self.stream
    }

    /// What a write's poll becomes: progress disarms the timer, waiting arms it (once) and
    /// fails when it runs out.
    fn watch<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(timer.as_mut().poll(cx));
                self.stalled = None;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the client took no bytes for {timeout:?} (limits.write_timeout)"),
                )))
            }
        }
    }
}

impl AsyncRead for TimedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_write_nobody_reads_times_out_and_one_that_is_read_does_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut timed = TimedStream::new(server, Duration::from_millis(200));
        // Small writes the socket takes at once never arm the timer.
        timed.write_all(b"hello").await.unwrap();
        // A peer that never reads: the socket fills and the write fails instead of waiting.
        let big = vec![0u8; 64 << 20];
        let err = timed.write_all(&big).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        drop(client);
    }
}
