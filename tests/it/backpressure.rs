//! Big answers and clients that read slowly or not at all: answers to a client's own calls are
//! bounded by not reading its next calls, never by dropping it, and a client whose socket takes
//! nothing while data waits is closed whatever pings it answers.

use crate::support::raw;
use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Publications per channel (the default history size) and the bytes of each one's data.
const PUBLICATIONS: usize = 100;
const PAYLOAD: usize = 3_000;
/// `history` calls per batch: one batch's answer is about 3.7 MB.
const PER_BATCH: usize = 12;

/// Fills a channel's history: 100 publications of 3,000 bytes.
async fn full_channel(addr: std::net::SocketAddr) -> String {
    let ch = channel("feed");
    let mut publisher = ws(addr, Some(ADMIN)).await;
    let payload = "x".repeat(PAYLOAD);
    for i in 0..PUBLICATIONS {
        send(
            &mut publisher,
            json!({"jsonrpc": "2.0", "id": i, "method": "publish", "params": [ch, payload]}),
        )
        .await;
    }
    for _ in 0..PUBLICATIONS {
        let v = recv(&mut publisher).await;
        assert!(v["result"]["offset"].is_u64(), "{v}");
    }
    ch
}

/// A batch of `history` calls of `ch`, ids from `first`.
fn history_batch(ch: &str, first: usize) -> Vec<u8> {
    let calls: Vec<Value> = (first..first + PER_BATCH)
        .map(|id| json!({"jsonrpc": "2.0", "id": id, "method": "history", "params": [ch]}))
        .collect();
    raw::text(&Value::Array(calls).to_string())
}

/// A client that reads at most `chunk` bytes at a time with `pause` between reads: slowly, but
/// steadily. It answers the server's pings.
struct SlowReader {
    s: TcpStream,
    buf: Vec<u8>,
    chunk: usize,
    pause: Duration,
}

impl SlowReader {
    /// The next server frame: (opcode, payload); `None` at the end of the stream.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((op, len, at)) = parse(&self.buf)
                && self.buf.len() >= at + len
            {
                let payload = self.buf[at..at + len].to_vec();
                self.buf.drain(..at + len);
                return Some((op, payload));
            }
            tokio::time::sleep(self.pause).await;
            let mut tmp = vec![0; self.chunk];
            let n = tokio::time::timeout(WAIT, self.s.read(&mut tmp))
                .await
                .expect("data within the wait")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// The next text message as JSON; a close frame or the end of the stream fails the test.
    async fn text(&mut self) -> Value {
        loop {
            match self.frame().await.expect("the connection stays open") {
                (0x1, p) => return serde_json::from_slice(&p).expect("JSON"),
                (0x9, p) => self.s.write_all(&raw::frame(0x8A, &p)).await.unwrap(),
                (0x8, p) => panic!("the server closed the connection: {p:?}"),
                _ => {}
            }
        }
    }
}

/// A server frame's header in `buf`: (opcode, payload length, header length), once complete.
fn parse(buf: &[u8]) -> Option<(u8, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (len, at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    Some((buf[0] & 0x0f, len, at))
}

/// Sends `batches` batches of `history` calls of a full channel and reads every answer slowly;
/// asserts that none is lost and that the connection stays open.
async fn read_big_answers_slowly(
    addr: std::net::SocketAddr,
    batches: usize,
    client: TcpStream,
    chunk: usize,
    pause: Duration,
) {
    let ch = full_channel(addr).await;
    let mut r = SlowReader { s: client, buf: Vec::new(), chunk, pause };
    for b in 0..batches {
        r.s.write_all(&history_batch(&ch, b * PER_BATCH)).await.unwrap();
    }
    let mut ids = Vec::new();
    let mut bytes = 0;
    for _ in 0..batches {
        let answer = r.text().await;
        let answers = answer.as_array().unwrap_or_else(|| panic!("a batch answer: {answer}"));
        for a in answers {
            let publications = a["result"]["publications"].as_array().unwrap_or_else(|| panic!("{a}"));
            assert_eq!(publications.len(), PUBLICATIONS, "the whole history");
            bytes += a.to_string().len();
            ids.push(a["id"].as_u64().unwrap());
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..(batches * PER_BATCH) as u64).collect::<Vec<_>>(), "every answer, once");
    assert!(bytes > 8 << 20, "well over 8 MiB of answers: {bytes}");
    // Still open, and still answering.
    r.s.write_all(&raw::text(r#"{"jsonrpc":"2.0","id":"last","method":"ping"}"#)).await.unwrap();
    assert_eq!(r.text().await, json!({"jsonrpc": "2.0", "id": "last", "result": "pong"}));
}

/// The server's closed-connection counts that are not zero, as `/metrics` shows them.
async fn closed_counts(addr: std::net::SocketAddr) -> String {
    let (_, metrics) = http(addr, "GET", "/metrics", &[], "").await;
    metrics
        .lines()
        .filter(|l| l.starts_with("rpchub_connections_closed_total") && !l.ends_with(" 0"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Answers many times the outbound byte bound reach a client that reads them slowly: answers
/// to its own calls are not a reason to drop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_answers_reach_a_client_that_reads_them_slowly() {
    let mut c = config();
    c.limits.outbound_queue_bytes = 256 << 10;
    // One batch's answer (3.7 MB) within the answer size limit, far over the queue's bytes.
    c.limits.max_response_bytes = 4 << 20;
    let server = start(c).await;
    let client = raw::connect(server.addr).await;
    read_big_answers_slowly(server.addr, 3, client, 64 << 10, Duration::from_millis(5)).await;
    assert_eq!(closed_counts(server.addr).await, "", "nobody was closed");
}

/// A client whose socket keeps taking bytes, a little at a time, for longer than the pong
/// timeout is not closed by the write-progress rule.
///
/// The pong timeout must still leave the client time to read what loopback's kernel buffers
/// hold ahead of a ping (several MB: loopback's 64 KB segments grow the send buffer): the ping
/// timeout judges a client from the moment the socket takes the ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_slowly_outlives_the_write_progress_timeout() {
    let mut c = config();
    c.limits.ping_interval = Duration::from_millis(500);
    c.limits.pong_timeout = Duration::from_secs(2);
    c.limits.max_response_bytes = 4 << 20;
    let server = start(c).await;
    let client = raw::connect_small_window(server.addr, 16 << 10).await;
    // About 15 MB at most 3.2 MB/s: more than twice the pong timeout.
    read_big_answers_slowly(server.addr, 4, client, 16 << 10, Duration::from_millis(5)).await;
    assert_eq!(closed_counts(server.addr).await, "", "nobody was closed");
}

/// A client that asks for big answers, stops reading and keeps sending pongs is closed once its
/// socket took nothing for the pong timeout, and counted as `write_stalled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_whatever_pongs_it_sends() {
    let mut c = config();
    c.limits.ping_interval = Duration::from_millis(300);
    c.limits.pong_timeout = Duration::from_secs(1);
    c.limits.max_response_bytes = 4 << 20;
    let server = start(c).await;
    let addr = server.addr;
    let ch = full_channel(addr).await;
    let mut s = raw::connect_small_window(addr, 4 << 10).await;
    // Subscribed to the channel as well, and about 15 MB of answers asked for: more than the
    // kernel's buffers hold.
    s.write_all(&raw::text(
        &json!({"jsonrpc": "2.0", "id": "sub", "method": "subscribe", "params": [ch]}).to_string(),
    ))
    .await
    .unwrap();
    for b in 0..4 {
        s.write_all(&history_batch(&ch, b * PER_BATCH)).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + 3 * WAIT;
    loop {
        // Unsolicited pongs: the client is heard from, all the time.
        let _ = s.write_all(&raw::frame(0x8A, b"")).await;
        let counts = closed_counts(addr).await;
        if counts.contains(r#"reason="write_stalled"} 1"#) {
            assert!(!counts.contains("slow_consumer") && !counts.contains("ping_timeout"), "{counts}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "closed for write stall in time: {counts}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The connection is gone (reset, or shut after what the kernel held).
    let mut sink = vec![0; 1 << 16];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut sink)).await.expect("the connection ends") {
            Ok(0) | Err(_) => break,
            Ok(_) => continue,
        }
    }
}
