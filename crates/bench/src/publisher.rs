//! fanout's sending side: one connection publishing for `--seconds`, at `--rate` per second or,
//! with rate 0, as fast as two bounds allow: at most `--window` publish calls unanswered, and
//! subscribers at most `--max-lag` publications behind on average. Without the second bound a
//! server that answers `publish` before delivering would queue without limit, and the run would
//! measure the depth of its buffers instead of its rate.
//!
//! Each publication's data is `{"bench_t":T,"bench_n":N,"pad":"x.."}`, exactly
//! `--payload-bytes` long: T is the send time on the bench's clock (plus [`T_BASE`], so every
//! publication of a run has the same size), N its sequence number (plus [`N_BASE`]). With
//! `--payload book` the padding is an order book's levels instead (`{"px","sz","n"}` objects,
//! their digits drawn per publication), which compresses as market data does.

/// What fills a publication's data up to `--payload-bytes`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Payload {
    /// `"pad":"xxx..."`: one repeated byte.
    #[default]
    Pad,
    /// `"levels":[{"px":"67012.5","sz":"1.2345","n":3},...]`: an order book's side.
    Book,
}

use super::counts::{answer_error, pace, read_answers, wait_until_async};
use super::fanout::Run;
use super::measure::{Errors, now_us, thread_cpu_pct_until};
use super::subscriber::Phase;
use futures_util::{SinkExt, StreamExt};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;

/// Added to the send time (µs) so it always has 13 digits.
pub(crate) const T_BASE: u64 = 1_000_000_000_000;
/// Added to the sequence number so it always has 10 digits.
const N_BASE: u64 = 1_000_000_000;
/// The data's key for the send time; receivers look for it.
pub(crate) const SEND_TIME_FIELD: &str = "bench_t";

/// A publication's data of `len` bytes of the `kind` (or the least possible, if `len` is
/// smaller).
pub(crate) fn data_of(kind: Payload, len: usize, sent_us: u64, seq: u64) -> String {
    if kind == Payload::Pad {
        return data(len, sent_us, seq);
    }
    let mut d =
        format!(r#"{{"{SEND_TIME_FIELD}":{},"bench_n":{},"levels":["#, T_BASE + sent_us, N_BASE + seq);
    // xorshift64, seeded by the sequence number: each publication its own digits.
    let mut x = (seq + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let base = 60_000 + next() % 10_000;
    let tail = r#"],"pad":""}"#;
    for i in 0.. {
        let r = next();
        let level = format!(
            r#"{}{{"px":"{}.{}","sz":"{}.{:04}","n":{}}}"#,
            if i == 0 { "" } else { "," },
            base + i / 2,
            (i % 2) * 5,
            r % 20,
            (r >> 8) % 10_000,
            (r >> 24) % 9 + 1
        );
        if d.len() + level.len() + tail.len() > len {
            break;
        }
        d.push_str(&level);
    }
    d.push_str(r#"],"pad":""#);
    d.extend(std::iter::repeat_n(' ', len.saturating_sub(d.len() + 2)));
    d.push_str("\"}");
    d
}

/// A publication's data of `len` bytes (or the least possible, if `len` is smaller).
pub(crate) fn data(len: usize, sent_us: u64, seq: u64) -> String {
    let mut d = format!(r#"{{"{SEND_TIME_FIELD}":{},"bench_n":{},"pad":""#, T_BASE + sent_us, N_BASE + seq);
    d.extend(std::iter::repeat_n('x', len.saturating_sub(d.len() + 2)));
    d.push_str("\"}");
    d
}

/// What the publisher did.
#[derive(Default)]
pub(crate) struct Published {
    /// Publish calls answered with a result.
    pub(crate) acked: u64,
    pub(crate) errors: Errors,
    /// The highest offset in an answer.
    pub(crate) max_offset: u64,
    /// When the first publication was sent (µs on the bench clock).
    pub(crate) start_us: u64,
    pub(crate) publish_s: f64,
    /// Time spent waiting for subscribers to catch up (`--max-lag`).
    pub(crate) lag_wait_s: f64,
    /// How far the publisher fell behind its `--rate` schedule at worst.
    pub(crate) behind_max_s: f64,
    /// Calls without an answer after `--answer-seconds`.
    pub(crate) unanswered: u64,
    pub(crate) cpu_pct: f64,
    /// The publisher could connect (set before the run starts).
    pub(crate) connected: bool,
}

/// Answers the reader task collected.
#[derive(Default)]
struct Answers {
    acked: u64,
    errors: Errors,
    max_offset: u64,
    closed: bool,
}

/// Connects, reports readiness on `ready`, waits for [`Phase::Go`], publishes, waits for the
/// answers.
pub(crate) async fn publish(
    run: Arc<Run>,
    mut phase: watch::Receiver<Phase>,
    ready: std::sync::mpsc::Sender<bool>,
) -> Published {
    let mut out = Published { start_us: now_us(), ..Published::default() };
    let ws = match run.publish_target.connect(run.publisher_ip, 64 * 1024).await {
        Ok(ws) => ws,
        Err(e) => {
            out.errors.add(format!("publisher: {e}"));
            let _ = ready.send(false);
            return out;
        }
    };
    out.connected = true;
    let _ = ready.send(true);
    let _ = phase.wait_for(|p| *p >= Phase::Go).await;
    if *phase.borrow() == Phase::Stop {
        return out;
    }
    let cpu = thread_cpu_pct_until(send_all(&run, ws, &mut out));
    out.cpu_pct = cpu.await;
    out
}

async fn send_all(run: &Run, ws: super::client::Ws, out: &mut Published) {
    let a = &run.args;
    let (mut sink, stream) = ws.split();
    let answers = Rc::new(RefCell::new(Answers::default()));
    let window = Rc::new(Semaphore::new(a.load.window.max(1)));
    let reader = tokio::task::spawn_local({
        let (answers, window) = (answers.clone(), window.clone());
        async move {
            read_answers(stream, &window, |v, text| {
                let mut ans = answers.borrow_mut();
                match v["result"]["offset"].as_u64() {
                    Some(offset) => {
                        ans.acked += 1;
                        ans.max_offset = ans.max_offset.max(offset);
                    }
                    None => ans.errors.add(answer_error(v, text)),
                }
            })
            .await;
            answers.borrow_mut().closed = true;
        }
    });
    let channel = serde_json::to_string(&a.channel).expect("a string serializes; qed");
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(a.seconds);
    out.start_us = now_us();
    let (mut sent, mut lag_wait, mut behind) = (0u64, Duration::ZERO, Duration::ZERO);
    while sent < a.load.max_messages && !answers.borrow().closed {
        let lag = || run.shared.average_lag(sent);
        if !pace(&window, end, started, sent, a.load.rate, a.load.max_lag, lag, &mut lag_wait, &mut behind)
            .await
        {
            break;
        }
        let data = data_of(a.load.payload, a.load.payload_bytes, now_us(), sent);
        let id = sent + 1;
        let call = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"publish","params":{{"channel":{channel},"data":{data}}}}}"#
        );
        if let Err(e) = sink.send(Message::text(call)).await {
            out.errors.add(format!("publisher send: {e}"));
            break;
        }
        sent += 1;
    }
    out.publish_s = started.elapsed().as_secs_f64();
    out.lag_wait_s = lag_wait.as_secs_f64();
    out.behind_max_s = behind.as_secs_f64();
    let answered = || {
        let ans = answers.borrow();
        ans.acked + ans.errors.count >= sent || ans.closed
    };
    wait_until_async(Instant::now() + Duration::from_secs_f64(a.load.answer_seconds), answered).await;
    reader.abort();
    let ans = std::mem::take(&mut *answers.borrow_mut());
    out.unanswered = sent.saturating_sub(ans.acked + ans.errors.count);
    if out.unanswered > 0 {
        out.errors
            .add(format!("{} publish calls unanswered after {} s", out.unanswered, a.load.answer_seconds));
    }
    out.acked = ans.acked;
    out.max_offset = ans.max_offset;
    out.errors.merge(ans.errors);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn data_has_the_requested_size() {
        for len in [60, 100, 3000] {
            let d = data(len, 5, 0);
            assert_eq!(d.len(), len);
            let v: Value = serde_json::from_str(&d).unwrap();
            assert_eq!(v[SEND_TIME_FIELD], T_BASE + 5);
        }
        assert_eq!(data(0, 5, 0).len(), 55, "the least size, as --payload-bytes says");
    }

    #[test]
    fn a_book_payload_has_the_requested_size_and_levels_of_its_own() {
        for len in [100, 2000, 3000] {
            let (a, b) = (data_of(Payload::Book, len, 5, 0), data_of(Payload::Book, len, 5, 1));
            assert_eq!((a.len(), b.len()), (len, len));
            let v: Value = serde_json::from_str(&a).unwrap();
            assert_eq!(v[SEND_TIME_FIELD], T_BASE + 5);
            assert!(len < 2000 || v["levels"].as_array().unwrap().len() > 40, "{a}");
            assert_ne!(a, b, "each publication its own digits");
        }
    }
}
