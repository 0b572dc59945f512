//! What the receiving side of a run counts, shared by fanout, market and storm --since: each
//! subscription's offsets ([`Offsets`]), each thread's counts ([`Received`]), their sums and the
//! figures they make ([`Totals`]), and the publishing side's pacing ([`pace`]) and figures
//! ([`Publishing`]), and the options both kinds of run take ([`LoadArgs`]).

use super::measure::{Errors, histogram, latency_json, round};
use super::publisher::Payload;
use super::report;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The options of a run that publishes and counts deliveries (fanout, market).
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Publications per second (over all publishers); 0: as fast as --window and --max-lag allow.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Size of each publication's `data` JSON in bytes (at least 55).
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// What fills the data: `pad` (one repeated byte) or `book` (order-book levels, which
    /// compress as market data does).
    #[arg(long, value_enum, default_value_t = Payload::Pad)]
    pub payload: Payload,
    /// Offer permessage-deflate on the subscriber connections (and inflate what comes
    /// compressed); the report then says the bytes on the wire per delivery.
    #[arg(long)]
    pub compress: bool,
    /// Publish calls in flight per publisher (sent, not yet answered).
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Pause publishing while subscriber connections are on average this many messages behind,
    /// over all their subscriptions (0: never).
    #[arg(long, default_value_t = 64)]
    pub max_lag: u64,
    /// Upper bound on publications in one run, over all publishers.
    #[arg(long, default_value_t = 2_000_000)]
    pub max_messages: u64,
    /// Seconds allowed, after publishing stops, for the server to answer every publish call.
    #[arg(long, default_value_t = 15.0)]
    pub answer_seconds: f64,
    /// Seconds allowed after the last answer for deliveries to arrive.
    #[arg(long, default_value_t = 5.0)]
    pub drain_seconds: f64,
    /// Fully check every Nth publication received (and each subscription's first); 0: every one.
    #[arg(long, default_value_t = 1000)]
    pub validate_every: u64,
    /// Read buffer per subscriber connection, bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    pub read_buffer: usize,
}

impl LoadArgs {
    /// The options as the figures report them.
    pub(crate) fn json(&self) -> Value {
        json!({
            "rate": self.rate,
            "payload_bytes": super::publisher::data_of(self.payload, self.payload_bytes, 0, 0).len(),
            "payload": format!("{:?}", self.payload).to_lowercase(),
            "compress": self.compress,
            "window": self.window,
            "max_lag": self.max_lag,
            "validated_every": self.validate_every,
        })
    }
}

/// One subscription's offsets: the one expected next, and what came, skipped or came twice.
#[derive(Default, Clone, Copy, Debug, PartialEq)]
pub(crate) struct Offsets {
    pub(crate) next: u64,
    pub(crate) received: u64,
    pub(crate) gaps: u64,
    pub(crate) dups: u64,
}

impl Offsets {
    /// A subscription whose snapshot reached offset `snap`.
    pub(crate) fn after(snap: u64) -> Offsets {
        Offsets { next: snap + 1, ..Offsets::default() }
    }

    /// Counts publication `offset`: a duplicate if it is behind (false), a gap if it skips some.
    pub(crate) fn see(&mut self, offset: u64) -> bool {
        if offset < self.next {
            self.dups += 1;
            return false;
        }
        if offset > self.next {
            self.gaps += 1;
        }
        self.next = offset + 1;
        self.received += 1;
        true
    }
}

/// What one receiving thread counted besides its subscriptions' offsets.
#[derive(Default)]
pub(crate) struct Received {
    /// Publish-to-receive latency, µs.
    pub(crate) hist: Option<Histogram<u64>>,
    /// Publications received.
    pub(crate) delivered: u64,
    pub(crate) last_delivery_us: u64,
    /// Messages received after subscribing, of any kind.
    pub(crate) seen: u64,
    /// Bytes read from the sockets after subscribing (WebSocket frames, compressed or not).
    pub(crate) wire_bytes: u64,
    pub(crate) invalid: Errors,
    pub(crate) other: Errors,
    pub(crate) setup_errors: Errors,
    /// Connections that ended during the run, by reason.
    pub(crate) gone: BTreeMap<String, u64>,
    pub(crate) cpu_pct: f64,
}

impl Received {
    /// Counts before the first message.
    pub(crate) fn new() -> Received {
        Received { hist: Some(histogram()), ..Received::default() }
    }
}

/// What the publishers did, as the figures need it.
pub(crate) struct Publishing<'a> {
    /// Publish calls answered with a result, and those without an answer in time.
    pub(crate) acked: u64,
    pub(crate) unanswered: u64,
    pub(crate) errors: &'a Errors,
    /// When the first publication was sent (µs on the bench clock).
    pub(crate) start_us: u64,
    pub(crate) publish_s: f64,
    /// Time spent waiting for subscribers to catch up (`--max-lag`).
    pub(crate) lag_wait_s: f64,
    /// How far the publishers fell behind their `--rate` schedule at worst.
    pub(crate) behind_max_s: f64,
    pub(crate) max_messages_reached: bool,
}

/// The sums over a run's subscriptions and receiving threads.
pub(crate) struct Totals {
    hist: Histogram<u64>,
    received: u64,
    expected: u64,
    lost: u64,
    beyond: u64,
    gaps: u64,
    dups: u64,
    invalid: Errors,
    other: Errors,
    setup_errors: Errors,
    gone: BTreeMap<String, u64>,
    last_delivery_us: u64,
    seen: u64,
    wire: u64,
    thread_cpu: Vec<f64>,
}

impl Totals {
    /// Nothing counted yet; the publishing thread's CPU is the first of the threads'.
    pub(crate) fn new(publisher_cpu_pct: f64) -> Totals {
        Totals {
            hist: histogram(),
            received: 0,
            expected: 0,
            lost: 0,
            beyond: 0,
            gaps: 0,
            dups: 0,
            invalid: Errors::default(),
            other: Errors::default(),
            setup_errors: Errors::default(),
            gone: BTreeMap::new(),
            last_delivery_us: 0,
            seen: 0,
            wire: 0,
            thread_cpu: vec![round(publisher_cpu_pct, 1)],
        }
    }

    /// A subscription that should have received `expected` publications.
    pub(crate) fn subscription(&mut self, expected: u64, o: &Offsets) {
        self.expected += expected;
        self.received += o.received;
        self.lost += expected.saturating_sub(o.received);
        self.beyond += o.received.saturating_sub(expected);
        self.gaps += o.gaps;
        self.dups += o.dups;
    }

    /// A receiving thread's counts.
    pub(crate) fn thread(&mut self, r: Received) {
        if let Some(h) = &r.hist {
            self.hist.add(h).expect("histograms of equal bounds add; qed");
        }
        self.invalid.merge(r.invalid);
        self.other.merge(r.other);
        self.setup_errors.merge(r.setup_errors);
        for (k, v) in r.gone {
            *self.gone.entry(k).or_default() += v;
        }
        self.last_delivery_us = self.last_delivery_us.max(r.last_delivery_us);
        self.seen += r.seen;
        self.wire += r.wire_bytes;
        self.thread_cpu.push(round(r.cpu_pct, 1));
    }

    /// The figures, with the publishers' `p`.
    pub(crate) fn json(&self, p: &Publishing) -> Value {
        let span_s = self.last_delivery_us.saturating_sub(p.start_us) as f64 / 1e6;
        json!({
            "setup_errors": self.setup_errors.samples,
            "published": p.acked,
            "unanswered_publishes": p.unanswered,
            "publish_errors": p.errors.count,
            "publish_error_samples": p.errors.samples,
            "publish_rate": round(p.acked as f64 / p.publish_s.max(1e-9), 1),
            "publish_s": round(p.publish_s, 3),
            "lag_wait_s": round(p.lag_wait_s, 3),
            "publisher_behind_max_ms": round(p.behind_max_s * 1e3, 1),
            "expected": self.expected,
            "received": self.received,
            "deliveries_per_s": round(self.received as f64 / span_s.max(1e-9), 0),
            "wire_bytes_per_delivery": round(self.wire as f64 / self.received.max(1) as f64, 1),
            "delivery_span_s": round(span_s, 3),
            "lost": self.lost,
            "gaps": self.gaps,
            "dups": self.dups,
            "unexpected": self.beyond,
            "invalid": self.invalid.count,
            "invalid_samples": self.invalid.samples,
            "other_messages": self.other.count,
            "other_samples": self.other.samples,
            "disconnected": self.gone.values().sum::<u64>(),
            "disconnect_reasons": self.gone,
            "messages_seen": self.seen,
            "bench_thread_cpu_pct": self.thread_cpu,
            "latency_us": latency_json(&self.hist),
            "max_messages_reached": p.max_messages_reached,
        })
    }
}

/// The table rows of [`Totals::json`]'s figures: publications, deliveries, latency, losses.
pub(crate) fn rows(v: &Value) -> Vec<(&'static str, String)> {
    vec![
        ("published", format!("{} ({}/s)", report::int(v, "published"), report::dec(v, "publish_rate", 1))),
        ("deliveries/s", report::int(v, "deliveries_per_s")),
        ("latency µs", report::latency(v)),
        ("lost/gaps/dups", format!("{} / {} / {}", v["lost"], v["gaps"], v["dups"])),
        ("disconnects", report::by_reason(v, "disconnected", "disconnect_reasons")),
    ]
}

/// The closing rows: server and bench CPU, error samples, and the notes on the run (`who`: the
/// subscribers, or the subscriptions).
pub(crate) fn closing_rows<'a>(v: &'a Value, who: &str, rows: &mut Vec<(&'a str, String)>) {
    rows.extend(report::cpu_rows(v, "delivery"));
    let notes = [
        ("setup errors", report::samples(v, "setup_errors")),
        ("publish errors", report::samples(v, "publish_error_samples")),
        ("invalid", report::samples(v, "invalid_samples")),
        ("other messages", report::samples(v, "other_samples")),
    ];
    rows.extend(notes.into_iter().filter_map(|(k, s)| Some((k, s?))));
    if v["publisher_behind_max_ms"].as_f64().unwrap_or(0.0) > 50.0 {
        rows.push(("note", "publishing fell behind its rate: latency includes queueing".into()));
    }
    if v["drained"] == false {
        rows.push(("note", format!("not every one of the {who} received its last publication in time")));
    }
}

/// A publisher's pacing before its `j`-th publication (publications due at `j / rate` from
/// `started`, or as fast as allowed with rate 0): a free place in its `window` of unanswered
/// calls, then, with `max_lag`, until `lag()` is back under it, then until the publication is
/// due. False when publishing should stop instead (`end` came, or the schedule passed it).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn pace(
    window: &Semaphore,
    end: Instant,
    started: Instant,
    j: u64,
    rate: f64,
    max_lag: u64,
    lag: impl Fn() -> f64,
    lag_wait: &mut Duration,
    behind: &mut Duration,
) -> bool {
    match tokio::time::timeout_at(end.into(), window.acquire()).await {
        Ok(Ok(permit)) => permit.forget(),
        _ => return false,
    }
    if max_lag > 0 && lag() > max_lag as f64 {
        let waiting = Instant::now();
        while lag() > max_lag as f64 {
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        *lag_wait += waiting.elapsed();
    }
    let now = Instant::now();
    if rate > 0.0 {
        let due = started + Duration::from_secs_f64(j as f64 / rate);
        if due >= end {
            return false;
        }
        if due > now {
            tokio::time::sleep_until(due.into()).await;
        } else {
            *behind = (*behind).max(now - due);
        }
    } else if now >= end {
        return false;
    }
    true
}

/// Reads a publisher's answers until its connection ends: each text answer, as JSON and as
/// it came, to `on_answer`, and one place of `window` given back per answer.
pub(crate) async fn read_answers(
    mut stream: impl futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
    window: &Semaphore,
    mut on_answer: impl FnMut(&Value, &str),
) {
    use futures_util::StreamExt;
    while let Some(msg) = stream.next().await {
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
        on_answer(&v, text.as_str());
        window.add_permits(1);
    }
}

/// What is wrong with an answer that was not taken: the server's error, or the text.
pub(crate) fn answer_error(v: &Value, text: &str) -> String {
    match v.get("error") {
        Some(e) if v["result"]["offset"].is_null() => format!("publish error: {e}"),
        _ => format!("unexpected answer: {}", &text[..text.len().min(120)]),
    }
}

/// Checks `done` every millisecond until it holds or `deadline` comes; whether it held.
pub(crate) async fn wait_until_async(deadline: Instant, done: impl Fn() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_count_gaps_and_duplicates() {
        let mut o = Offsets::after(10);
        assert!(o.see(11) && o.see(12));
        assert!(o.see(15), "a gap is still a publication");
        assert!(!o.see(14) && !o.see(15), "behind: duplicates");
        assert_eq!(o, Offsets { next: 16, received: 3, gaps: 1, dups: 2 });
        let mut t = Totals::new(0.0);
        t.subscription(5, &o);
        let errors = Errors::default();
        let p = Publishing {
            acked: 5,
            unanswered: 0,
            errors: &errors,
            start_us: 0,
            publish_s: 1.0,
            lag_wait_s: 0.0,
            behind_max_s: 0.0,
            max_messages_reached: false,
        };
        let v = t.json(&p);
        assert_eq!(
            (v["expected"].as_u64(), v["received"].as_u64(), v["lost"].as_u64()),
            (Some(5), Some(3), Some(2))
        );
        assert_eq!((v["gaps"].as_u64(), v["dups"].as_u64()), (Some(1), Some(2)));
    }

    #[tokio::test]
    async fn pacing_stops_at_the_end_and_keeps_to_the_rate() {
        let window = Semaphore::new(2);
        let started = Instant::now();
        let end = started + Duration::from_millis(300);
        let (mut lag_wait, mut behind) = (Duration::ZERO, Duration::ZERO);
        // Publication 2 at 10/s is due at 200 ms: it waits for it.
        assert!(pace(&window, end, started, 2, 10.0, 0, || 0.0, &mut lag_wait, &mut behind).await);
        assert!(started.elapsed() >= Duration::from_millis(200));
        // Publication 3 is due at 300 ms, which is the end: stop.
        assert!(!pace(&window, end, started, 3, 10.0, 0, || 0.0, &mut lag_wait, &mut behind).await);
        // The window is used up (two acquired, none answered): stop at the end.
        assert!(!pace(&window, end, started, 0, 0.0, 0, || 0.0, &mut lag_wait, &mut behind).await);
    }
}
