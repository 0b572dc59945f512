//! fanout's receiving side: the subscriber connections, spread over the client threads, and
//! what each thread counts.
//!
//! Everything per message stays thread-local (a `RefCell` per thread); other threads see only
//! what they must: each subscriber's state and highest offset (the main thread's drain wait),
//! and each thread's delivery count (the publisher's lag bound).

use super::CommonArgs;
use super::counts::{Offsets, Received};
use super::fanout::Run;
use super::measure::{CpuWindow, thread_cpu_pct_until, wait_until};
use super::publisher::{SEND_TIME_FIELD, T_BASE};
use super::report::Progress;
use super::socket::Socket;
use memchr::memmem::Finder;
use serde_json::Value;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};

/// Where a fanout or market run is; subscriber threads and the publishers follow it.
#[derive(Clone, Copy, PartialEq, PartialOrd, Debug)]
pub(crate) enum Phase {
    /// Connections are being opened and subscribed.
    Setup,
    /// The publisher publishes.
    Go,
    /// Publishing is over and answered; subscribers receive what is left.
    Drain,
    /// The measurement is over: threads hand in their tallies.
    Stop,
}

/// A subscriber's state as other threads see it.
pub(crate) const READY: u8 = 1;
pub(crate) const FAILED: u8 = 2;
pub(crate) const GONE: u8 = 3;

/// A per-thread counter on its own cache line, so threads do not slow each other down.
#[repr(align(64))]
pub(crate) struct Counter(pub(crate) AtomicU64);

/// What the threads of a fanout run share.
pub(crate) struct Shared {
    /// Subscribers that subscribed (id and snapshot), and those that could not.
    pub(crate) ready: AtomicUsize,
    pub(crate) failed: AtomicUsize,
    /// Per subscriber: 0 (setting up), [`READY`], FAILED or GONE.
    pub(crate) state: Vec<AtomicU8>,
    /// Per subscriber: the highest offset received (the snapshot's until then).
    pub(crate) max_seen: Vec<AtomicU64>,
    /// Per thread: publications received.
    delivered: Vec<Counter>,
    /// Subscribers ready when publishing started, and those whose connection ended since.
    pub(crate) live_at_go: AtomicUsize,
    gone: AtomicUsize,
}

impl Shared {
    /// State for `n` subscribers on `threads` threads.
    pub(crate) fn new(n: usize, threads: usize) -> Shared {
        Shared {
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            state: (0..n).map(|_| AtomicU8::new(0)).collect(),
            max_seen: (0..n).map(|_| AtomicU64::new(0)).collect(),
            delivered: (0..threads).map(|_| Counter(AtomicU64::new(0))).collect(),
            live_at_go: AtomicUsize::new(1),
            gone: AtomicUsize::new(0),
        }
    }

    /// Publications a live subscriber is behind on average, once `sent` have been sent.
    pub(crate) fn average_lag(&self, sent: u64) -> f64 {
        let live = self.live_at_go.load(Relaxed).saturating_sub(self.gone.load(Relaxed)).max(1);
        let delivered: u64 = self.delivered.iter().map(|d| d.0.load(Relaxed)).sum();
        sent as f64 - delivered as f64 / live as f64
    }

    /// The highest offset any subscriber received.
    pub(crate) fn highest_seen(&self) -> u64 {
        self.max_seen.iter().map(|m| m.load(Relaxed)).max().unwrap_or(0)
    }

    /// True when every subscriber still connected has received `last`.
    pub(crate) fn all_reached(&self, last: u64) -> bool {
        self.state
            .iter()
            .zip(&self.max_seen)
            .all(|(s, m)| s.load(Relaxed) != READY || m.load(Relaxed) >= last)
    }
}

/// One subscriber's offset accounting.
#[derive(Default)]
pub(crate) struct Sub {
    id: Value,
    /// The snapshot's offset: publications after it are expected.
    pub(crate) snap: u64,
    pub(crate) offsets: Offsets,
    pub(crate) ready: bool,
}

/// What one thread counted: per subscriber, and the rest.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) subs: Vec<Sub>,
    pub(crate) r: Received,
}

/// The two fields read from every publication, found without parsing the whole message.
pub(crate) struct Scan {
    pub(crate) offset: Finder<'static>,
    pub(crate) sent: Finder<'static>,
}

impl Scan {
    /// Finders for `"offset":` and the send time's key.
    pub(crate) fn new() -> Scan {
        let sent = format!("\"{SEND_TIME_FIELD}\":");
        Scan {
            offset: Finder::new(b"\"offset\":").into_owned(),
            sent: Finder::new(sent.as_bytes()).into_owned(),
        }
    }
}

/// The unsigned number right after the first occurrence of `key` in `msg`.
pub(crate) fn number_after(msg: &[u8], key: &Finder) -> Option<u64> {
    let mut i = key.find(msg)? + key.needle().len();
    while msg.get(i) == Some(&b' ') {
        i += 1;
    }
    let start = i;
    let mut n: u64 = 0;
    while let Some(d) = msg.get(i).filter(|d| d.is_ascii_digit()) {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        i += 1;
    }
    (i > start).then_some(n)
}

/// The full check of a sampled publication notification against the protocol.
pub(crate) fn validate(msg: &[u8], id: &Value, channel: &str, offset: u64, sent: u64) -> Result<(), String> {
    let v: Value = serde_json::from_slice(msg).map_err(|e| format!("not JSON: {e}"))?;
    let r = &v["params"]["result"];
    let checks = [
        (v["jsonrpc"] == "2.0", "jsonrpc is not \"2.0\""),
        (v["method"] == "subscription", "method is not \"subscription\""),
        (&v["params"]["subscription"] == id, "params.subscription is not the subscription id"),
        (r["type"] == "publication", "result.type is not \"publication\""),
        (r["channel"] == channel, "result.channel is not the channel"),
        (r["offset"].as_u64() == Some(offset), "result.offset is not the scanned offset"),
        (r["ts"].is_u64(), "result.ts is not an integer"),
        (r["data"][SEND_TIME_FIELD].as_u64() == Some(sent), "result.data is not the published data"),
    ];
    checks.iter().find(|(ok, _)| !ok).map_or(Ok(()), |(_, why)| Err(why.to_string()))
}

/// Thread `t`: opens and serves its share of the subscribers (every `threads`-th) until the
/// run stops, then hands in its tally.
pub(crate) async fn thread(t: usize, run: Arc<Run>, mut phase: watch::Receiver<Phase>) -> Tally {
    let mine: Vec<usize> = (t..run.args.subscribers).step_by(run.threads).collect();
    let subs = mine.iter().map(|_| Sub::default()).collect();
    let tally = Rc::new(RefCell::new(Tally { subs, r: Received::new() }));
    let permits = Rc::new(Semaphore::new(run.permits));
    for (k, &i) in mine.iter().enumerate() {
        let (run, tally, permits, phase) = (run.clone(), tally.clone(), permits.clone(), phase.clone());
        tokio::task::spawn_local(subscriber(t, k, i, run, tally, permits, phase));
    }
    let cpu_pct = cpu_from_go_to_stop(&mut phase).await;
    let mut tally = std::mem::take(&mut *tally.borrow_mut());
    tally.r.cpu_pct = cpu_pct;
    tally
}

/// Waits for [`Phase::Go`], then returns this thread's CPU (% of a core) from then until
/// [`Phase::Stop`].
pub(crate) async fn cpu_from_go_to_stop(phase: &mut watch::Receiver<Phase>) -> f64 {
    let _ = phase.wait_for(|p| *p >= Phase::Go).await;
    thread_cpu_pct_until(async {
        let _ = phase.wait_for(|p| *p >= Phase::Stop).await;
    })
    .await
}

/// Opens the CPU window and starts publishing (with nobody `ready` there is nothing to measure:
/// publishing is skipped), waits at most `limit` for the publishing thread, and moves the run on
/// to draining. The publishers' result and the open window.
pub(crate) fn publish_phase<T>(
    c: &CommonArgs,
    phase: &watch::Sender<Phase>,
    ready: usize,
    seconds: f64,
    limit: Duration,
    progress: &Progress,
    publisher: std::thread::JoinHandle<T>,
) -> (T, CpuWindow) {
    let cpu = CpuWindow::start(c);
    let _ = phase.send(if ready > 0 { Phase::Go } else { Phase::Stop });
    progress.phase("publishing", seconds.ceil() as u64);
    let go = Instant::now();
    wait_until(go + limit, || {
        progress.seconds_since(go);
        publisher.is_finished()
    });
    let p = publisher.join().expect("the publisher thread does not panic; qed");
    let _ = phase.send(if ready > 0 { Phase::Drain } else { Phase::Stop });
    (p, cpu)
}

/// Subscriber `i` (the `k`-th of thread `t`).
async fn subscriber(
    t: usize,
    k: usize,
    i: usize,
    run: Arc<Run>,
    tally: Rc<RefCell<Tally>>,
    permits: Rc<Semaphore>,
    phase: watch::Receiver<Phase>,
) {
    let permit = permits.acquire().await;
    let setup = async {
        let mut s =
            Socket::open(&run.target, run.ips.for_conn(i), run.args.load.read_buffer, run.args.load.compress)
                .await?;
        let sub = s.subscribe(&run.args.channel).await?;
        Ok::<_, String>((s, sub))
    };
    let (mut socket, sub) = match tokio::time::timeout(run.setup, setup).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return setup_failed(&tally, &run, i, e),
        Err(_) => return setup_failed(&tally, &run, i, "timed out".into()),
    };
    drop(permit);
    tally.borrow_mut().subs[k] =
        Sub { id: sub.id, snap: sub.offset, offsets: Offsets::after(sub.offset), ready: true };
    run.shared.max_seen[i].store(sub.offset, Relaxed);
    run.shared.state[i].store(READY, Relaxed);
    run.shared.ready.fetch_add(1, Relaxed);
    socket.take_wire();
    let reason = socket
        .receive(
            |m, now| on_message(&mut tally.borrow_mut(), &run, t, k, i, m, now),
            |n| tally.borrow_mut().r.wire_bytes += n,
        )
        .await;
    if *phase.borrow() != Phase::Stop {
        run.shared.state[i].store(GONE, Relaxed);
        run.shared.gone.fetch_add(1, Relaxed);
        *tally.borrow_mut().r.gone.entry(reason).or_default() += 1;
    }
}

fn setup_failed(tally: &RefCell<Tally>, run: &Run, i: usize, e: String) {
    tally.borrow_mut().r.setup_errors.add(e);
    run.shared.state[i].store(FAILED, Relaxed);
    run.shared.failed.fetch_add(1, Relaxed);
}

/// Counts one message of subscriber `i`; always asks for the next one.
fn on_message(tally: &mut Tally, run: &Run, t: usize, k: usize, i: usize, msg: &[u8], now: u64) -> bool {
    let r = &mut tally.r;
    r.seen += 1;
    let (Some(offset), Some(sent)) = (number_after(msg, &run.scan.offset), number_after(msg, &run.scan.sent))
    else {
        r.other.add(String::from_utf8_lossy(&msg[..msg.len().min(160)]).into_owned());
        return true;
    };
    let s = &mut tally.subs[k];
    if !s.offsets.see(offset) {
        return true;
    }
    let first = s.offsets.received == 1;
    run.shared.max_seen[i].store(offset, Relaxed);
    if let Some(h) = r.hist.as_mut() {
        h.saturating_record(now.saturating_sub(sent.saturating_sub(T_BASE)).max(1));
    }
    r.delivered += 1;
    r.last_delivery_us = now;
    run.shared.delivered[t].0.store(r.delivered, Relaxed);
    let every = run.args.load.validate_every;
    let sampled = first || every == 0 || r.delivered.is_multiple_of(every);
    if let Some(Err(e)) = sampled.then(|| validate(msg, &s.id, &run.args.channel, offset, sent)) {
        r.invalid.add(e);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOTE: &[u8] = br#"{"jsonrpc":"2.0","method":"subscription","params":{"subscription":"ab","result":{"type":"publication","channel":"c:1","offset":42,"ts":1700000000000,"data":{"bench_t":1000000000123,"bench_n":1000000007,"pad":"x"}}}}"#;

    #[test]
    fn scans_offset_and_send_time() {
        let scan = Scan::new();
        assert_eq!(number_after(NOTE, &scan.offset), Some(42));
        assert_eq!(number_after(NOTE, &scan.sent), Some(1_000_000_000_123));
        assert_eq!(number_after(br#"{"offset": 7}"#, &scan.offset), Some(7));
        assert_eq!(number_after(br#"{"offset":"7"}"#, &scan.offset), None);
    }

    #[test]
    fn validates_the_whole_notification() {
        let (id, t) = (json!("ab"), 1_000_000_000_123);
        assert_eq!(validate(NOTE, &id, "c:1", 42, t), Ok(()));
        assert!(validate(NOTE, &json!("zz"), "c:1", 42, t).is_err());
        assert!(validate(NOTE, &id, "c:2", 42, t).is_err());
        assert!(validate(NOTE, &id, "c:1", 43, t).is_err());
        let no_ts = String::from_utf8_lossy(NOTE).replace(r#""ts":1700000000000,"#, "");
        assert!(validate(no_ts.as_bytes(), &id, "c:1", 42, t).is_err());
    }
}
