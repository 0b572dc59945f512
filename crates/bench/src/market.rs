//! market: the load of an exchange feed or a chat service. `--channels` C channels,
//! `--connections` N connections each subscribed to `--subs-per-conn` K distinct channels
//! (drawn with a seeded generator: uniformly, or with `--zipf S` channel i weighted 1/(i+1)^S,
//! the popular coins against the small ones), and `--publishers` P connections publishing
//! `--rate` R per second in total (publication j on publisher j mod P, due at j / R) to the
//! channels in turn, or with `--zipf` to channels drawn by the same weights.
//!
//! Each connection sends its K subscribe calls at once (ids 1..K) and is ready when every call
//! has its subscription id and its snapshot (matched by subscription id, the snapshot's channel
//! checked). Notifications are told apart by their subscription id, and each (connection,
//! channel) subscription is accounted as a fanout subscriber: `lost` against its channel's last
//! offset, `gaps`, `dups`, `invalid` (each subscription's first publication and every
//! `--validate-every`-th checked in full, the subscription id and the channel included). With
//! rate 0 each publisher goes as fast as `--window` (its calls unanswered) and `--max-lag`
//! (messages a subscriber connection is behind on average, over all its channels) allow.
//!
//! Figures: as fanout's, plus the subscribers per channel (min, median, max, channel 0), the
//! deliveries per publication, the channels published to and the publishers that connected,
//! and with `--server-pid` the server's memory growth per connection while they subscribed.

use super::client::{SourceIps, Target, block};
use super::counts::{
    self, LoadArgs, Offsets, Publishing, Received, Totals, answer_error, pace, read_answers, wait_until_async,
};
use super::measure::{
    Errors, now_us, pid_rss_kib, round, spawn_runtimes, thread_cpu_pct_until, wait_until, watchdog,
};
use super::publisher::{self, T_BASE};
use super::report::{self, Progress};
use super::socket::Socket;
use super::subscriber::{
    Counter, FAILED, GONE, Phase, READY, Scan, cpu_from_go_to_stop, number_after, publish_phase, validate,
};
use super::{CommonArgs, Error, check_files, extend};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use memchr::memmem::Finder;
use serde_json::{Value, json};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;

/// `rpchub bench market` options.
#[derive(Args, Debug, Clone)]
pub struct MarketArgs {
    /// Channels, named PREFIX{i}:RUN (RUN is the run's id, so two runs never share one).
    #[arg(long, default_value_t = 200)]
    pub channels: usize,
    /// Subscriber connections.
    #[arg(long, default_value_t = 2000)]
    pub connections: usize,
    /// Distinct channels each connection subscribes to.
    #[arg(long, default_value_t = 10)]
    pub subs_per_conn: usize,
    /// Weigh channel i by 1/(i+1)^S, for the subscriptions and the publications (default:
    /// uniform).
    #[arg(long)]
    pub zipf: Option<f64>,
    /// Publisher connections.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Publishing and counting.
    #[command(flatten)]
    pub load: LoadArgs,
    /// The channels' name prefix.
    #[arg(long, default_value = "m")]
    pub channel_prefix: String,
    /// Seed of the channel draws: the same seed, the same subscriptions and publications.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// What the threads of one run share.
struct Run {
    args: MarketArgs,
    target: Arc<Target>,
    ips: SourceIps,
    publisher_ips: SourceIps,
    threads: usize,
    permits: usize,
    setup: Duration,
    scan: Scan,
    /// Channel names, and each connection's channels (indexes).
    names: Vec<String>,
    plan: Vec<Vec<usize>>,
    /// Subscribers of each channel.
    subscribers: Vec<u64>,
    /// Per connection: 0 (setting up), READY, FAILED or GONE.
    state: Vec<AtomicU8>,
    /// Per subscription (connection i's k-th at i * K + k): the highest offset received.
    max_seen: Vec<AtomicU64>,
    ready: AtomicUsize,
    failed: AtomicUsize,
    gone: AtomicUsize,
    live_at_go: AtomicUsize,
    /// Per thread: publications received.
    delivered: Vec<Counter>,
    /// Deliveries the publications sent so far owe (each its channel's subscribers).
    owed: AtomicU64,
}

impl Run {
    /// Messages a live connection is behind on average.
    fn average_lag(&self) -> f64 {
        let live = self.live_at_go.load(Relaxed).saturating_sub(self.gone.load(Relaxed)).max(1);
        let delivered: u64 = self.delivered.iter().map(|d| d.0.load(Relaxed)).sum();
        (self.owed.load(Relaxed) as f64 - delivered as f64) / live as f64
    }

    /// True when every subscription of every live connection has its channel's `last` offset.
    fn all_reached(&self, last: &[u64]) -> bool {
        let k = self.args.subs_per_conn;
        self.plan.iter().enumerate().all(|(i, chans)| {
            self.state[i].load(Relaxed) != READY
                || chans.iter().enumerate().all(|(j, &c)| self.max_seen[i * k + j].load(Relaxed) >= last[c])
        })
    }

    /// Per channel, the highest offset any subscriber received.
    fn highest_seen(&self) -> Vec<u64> {
        let k = self.args.subs_per_conn;
        let mut out = vec![0; self.names.len()];
        for (i, chans) in self.plan.iter().enumerate() {
            for (j, &c) in chans.iter().enumerate() {
                out[c] = out[c].max(self.max_seen[i * k + j].load(Relaxed));
            }
        }
        out
    }
}

/// A seeded xorshift64* generator: the same seed, the same draws.
struct Draws(u64);

impl Draws {
    fn new(seed: u64) -> Draws {
        Draws(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// A number in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A channel index: uniform, or by the cumulative weights `cdf`.
    fn channel(&mut self, n: usize, cdf: Option<&[f64]>) -> usize {
        let u = self.unit();
        match cdf {
            None => ((u * n as f64) as usize).min(n - 1),
            Some(cdf) => cdf.partition_point(|&w| w <= u * cdf[n - 1]).min(n - 1),
        }
    }
}

/// Publication j's channel: the channels in turn, or drawn by the weights `cdf` (the same
/// draw for the same j and seed, whichever publisher sends it).
fn channel_of(j: u64, n: usize, cdf: Option<&[f64]>, seed: u64) -> usize {
    match cdf {
        None => (j % n as u64) as usize,
        Some(_) => Draws::new(seed ^ j.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ 0x5eed).channel(n, cdf),
    }
}

/// Cumulative Zipf weights of `n` channels (channel i: 1/(i+1)^s).
fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let mut acc = 0.0;
    (0..n)
        .map(|i| {
            acc += 1.0 / ((i + 1) as f64).powf(s);
            acc
        })
        .collect()
}

/// Each connection's `k` distinct channels of `n`.
fn assign(n: usize, connections: usize, k: usize, cdf: Option<&[f64]>, seed: u64) -> Vec<Vec<usize>> {
    let mut d = Draws::new(seed);
    (0..connections)
        .map(|_| {
            let mut mine: Vec<usize> = Vec::with_capacity(k);
            while mine.len() < k {
                let c = d.channel(n, cdf);
                if !mine.contains(&c) {
                    mine.push(c);
                }
            }
            mine
        })
        .collect()
}

/// Runs the scenario; the figures as one JSON object (with `error` if nothing was measured).
pub(crate) fn run(
    c: &CommonArgs,
    target: Arc<Target>,
    a: &MarketArgs,
    progress: &Progress,
) -> Result<Value, Error> {
    check_files(a.connections + a.publishers)?;
    if a.channels == 0 || a.subs_per_conn == 0 || a.publishers == 0 {
        return Err(Error::Usage("--channels, --subs-per-conn and --publishers must be at least 1".into()));
    }
    if a.subs_per_conn > a.channels {
        return Err(Error::Usage("--subs-per-conn must not exceed --channels (each is distinct)".into()));
    }
    if a.zipf.is_some_and(|s| !(s.is_finite() && s > 0.0)) {
        return Err(Error::Usage("--zipf must be a positive number".into()));
    }
    if !(a.load.rate >= 0.0 && a.seconds > 0.0 && a.load.answer_seconds >= 0.0 && a.load.drain_seconds >= 0.0)
    {
        return Err(Error::Usage("--rate, --seconds, --answer-seconds, --drain-seconds must be >= 0".into()));
    }
    let limit = c.setup_seconds + a.seconds + a.load.answer_seconds + a.load.drain_seconds + 30.0;
    watchdog("market", Duration::from_secs_f64(limit), c.json);
    let (n, k, threads) = (a.connections, a.subs_per_conn, c.threads());
    let cdf = a.zipf.map(|s| zipf_cdf(a.channels, s));
    let plan = assign(a.channels, n, k, cdf.as_deref(), a.seed);
    let mut subscribers = vec![0u64; a.channels];
    for c in plan.iter().flatten() {
        subscribers[*c] += 1;
    }
    let run_id = format!("{:08x}", rand::random::<u32>());
    let run = Arc::new(Run {
        args: a.clone(),
        ips: SourceIps::new(c, &target, block::SUBSCRIBERS),
        publisher_ips: SourceIps::new(c, &target, block::PUBLISHER),
        target: target.clone(),
        threads,
        permits: c.connect_permits(threads),
        setup: Duration::from_secs_f64(c.setup_seconds),
        scan: Scan::new(),
        names: (0..a.channels).map(|i| format!("{}{i}:{run_id}", a.channel_prefix)).collect(),
        plan,
        subscribers,
        state: (0..n).map(|_| AtomicU8::new(0)).collect(),
        max_seen: (0..n * k).map(|_| AtomicU64::new(0)).collect(),
        ready: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        gone: AtomicUsize::new(0),
        live_at_go: AtomicUsize::new(1),
        delivered: (0..threads).map(|_| Counter(AtomicU64::new(0))).collect(),
        owed: AtomicU64::new(0),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let rss = || c.server_pid.and_then(pid_rss_kib);
    let rss_before = rss();
    let setup_started = Instant::now();
    let subscriber_threads = spawn_runtimes(threads, "bench-sub", {
        let (run, rx) = (run.clone(), phase_rx.clone());
        move |t| thread(t, run.clone(), rx.clone())
    });
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let publisher = spawn_runtimes(1, "bench-pub", {
        let (run, rx, cdf) = (run.clone(), phase_rx.clone(), cdf.clone());
        move |_| publish_all(run.clone(), cdf.clone(), rx.clone(), ready_tx.clone())
    });
    let publisher = publisher.into_iter().next().expect("one thread was started; qed");

    progress.phase("subscribing", n as u64);
    let mut publishers_ready = None;
    wait_until(setup_started + run.setup, || {
        let done = run.ready.load(Relaxed) + run.failed.load(Relaxed);
        progress.set(done as u64);
        publishers_ready = publishers_ready.or_else(|| ready_rx.try_recv().ok());
        done == n && publishers_ready.is_some()
    });
    let setup_s = setup_started.elapsed().as_secs_f64();
    let ready = run.ready.load(Relaxed);
    let rss_ready = rss();
    run.live_at_go.store(ready.max(1), Relaxed);
    let limit_d = Duration::from_secs_f64(limit);
    let (p, cpu) = publish_phase(c, &phase_tx, ready, a.seconds, limit_d, progress, publisher);
    let seen = run.highest_seen();
    let mut last: Vec<u64> = p.max_offset.iter().zip(&seen).map(|(a, s)| *a.max(s)).collect();
    progress.phase("draining", a.load.drain_seconds.ceil() as u64);
    let drain_started = Instant::now();
    let drained = wait_until(drain_started + Duration::from_secs_f64(a.load.drain_seconds), || {
        progress.seconds_since(drain_started);
        run.all_reached(&last)
    });
    let used = cpu.stop();
    let _ = phase_tx.send(Phase::Stop);
    for (l, s) in last.iter_mut().zip(run.highest_seen()) {
        *l = (*l).max(s);
    }
    let tallies: Vec<Tally> = subscriber_threads
        .into_iter()
        .map(|h| h.join().expect("subscriber threads do not panic; qed"))
        .collect();

    let mut out = summary(&run, &p, tallies, &last);
    let mut per = run.subscribers.clone();
    per.sort_unstable();
    let published_to = p.per_channel.iter().filter(|&&x| x > 0).count();
    extend(
        &mut out,
        json!({
            "scenario": "market",
            "url": target.url(),
            "connections": n,
            "subs_per_conn": k,
            "channels": a.channels,
            "zipf": a.zipf,
            "publishers": a.publishers,
            "publishers_ready": p.connected,
            "ready": ready,
            "setup_failed": n - ready,
            "setup_s": round(setup_s, 2),
            "server_rss_before_kib": rss_before,
            "server_rss_ready_kib": rss_ready,
            // The server's memory growth while the connections subscribed, per connection (its
            // RSS, as idle measures it: kernel socket buffers are not in it).
            "server_bytes_per_conn": rss_before.zip(rss_ready).filter(|_| ready > 0)
                .map(|(b, r)| round(r.saturating_sub(b) as f64 * 1024.0 / ready as f64, 0)),
            "source_ips": run.ips.count(n),
            "threads": threads,
            "seconds": a.seconds,
            "drained": drained,
            "subscribers_per_channel": {
                "min": per[0], "median": per[per.len() / 2], "max": per[per.len() - 1],
                "channel_0": run.subscribers[0],
            },
            "deliveries_per_publication":
                round(run.owed.load(Relaxed) as f64 / (p.sent.max(1)) as f64, 1),
            "channels_published": published_to,
        }),
    );
    let received = out["received"].as_u64().unwrap_or(0);
    let thread_cpu = out["bench_thread_cpu_pct"].as_array().into_iter().flatten().filter_map(Value::as_f64);
    let cpu_max = thread_cpu.fold(0.0, f64::max);
    extend(&mut out, a.load.json());
    extend(&mut out, used.json(cpu_max, ("delivery", received)));
    let first = |key: &str| out[key][0].as_str().map(|e| format!(": {e}")).unwrap_or_default();
    if ready == 0 {
        out["error"] = json!(format!("no connection could subscribe{}", first("setup_errors")));
    } else if p.connected == 0 || p.acked == 0 {
        out["error"] = json!(format!("no publication was accepted{}", first("publish_error_samples")));
    }
    Ok(out)
}

/// One subscription's offset accounting.
#[derive(Default)]
struct Sub {
    id: Value,
    /// The id's text, as it appears in notifications.
    key: Vec<u8>,
    channel: usize,
    snap: u64,
    offsets: Offsets,
}

/// What one thread counted: per connection of this thread its subscriptions once ready, and
/// the rest.
#[derive(Default)]
struct Tally {
    conns: Vec<Vec<Sub>>,
    r: Received,
}

/// Thread `t`: opens and serves its share of the connections (every `threads`-th).
async fn thread(t: usize, run: Arc<Run>, mut phase: watch::Receiver<Phase>) -> Tally {
    let mine: Vec<usize> = (t..run.args.connections).step_by(run.threads).collect();
    let conns = mine.iter().map(|_| Vec::new()).collect();
    let tally = Rc::new(RefCell::new(Tally { conns, r: Received::new() }));
    let permits = Rc::new(Semaphore::new(run.permits));
    let id_key = Rc::new(Finder::new(b"\"subscription\":\"").into_owned());
    for (slot, &i) in mine.iter().enumerate() {
        let (run, tally, permits, phase, id_key) =
            (run.clone(), tally.clone(), permits.clone(), phase.clone(), id_key.clone());
        tokio::task::spawn_local(connection(t, slot, i, run, tally, permits, phase, id_key));
    }
    let cpu_pct = cpu_from_go_to_stop(&mut phase).await;
    let mut tally = std::mem::take(&mut *tally.borrow_mut());
    tally.r.cpu_pct = cpu_pct;
    tally
}

/// Sends the K subscribe calls at once and reads until each has its id and its snapshot.
async fn subscribe_all(s: &mut Socket, run: &Run, chans: &[usize]) -> Result<Vec<Sub>, String> {
    let mut calls = Vec::new();
    for (j, &c) in chans.iter().enumerate() {
        let req = json!({"jsonrpc": "2.0", "id": j + 1, "method": "subscribe", "params": [run.names[c]]});
        calls.push(req.to_string());
    }
    for call in &calls {
        s.send_text(call.as_bytes()).await?;
    }
    let mut ids: Vec<Option<String>> = vec![None; chans.len()];
    let mut snaps: HashMap<String, (String, u64)> = HashMap::new();
    loop {
        let mut failure = None;
        s.drain(|m| {
            let v: Value = match serde_json::from_slice(m) {
                Ok(v) => v,
                Err(e) => {
                    failure = Some(format!("bad JSON while subscribing: {e}"));
                    return false;
                }
            };
            if let Some(j) = v["id"].as_u64().filter(|j| (1..=chans.len() as u64).contains(j)) {
                match (v["result"].as_str(), v.get("error")) {
                    (Some(id), _) => ids[j as usize - 1] = Some(id.to_string()),
                    (None, e) => failure = Some(format!("subscribe error: {}", e.unwrap_or(&Value::Null))),
                }
            } else if v["method"] == "subscription" && v["params"]["result"]["type"] == "snapshot" {
                let r = &v["params"]["result"];
                let (id, channel) = (v["params"]["subscription"].as_str(), r["channel"].as_str());
                if let (Some(id), Some(channel), Some(offset)) = (id, channel, r["offset"].as_u64()) {
                    snaps.insert(id.to_string(), (channel.to_string(), offset));
                } else {
                    failure = Some("a snapshot without its subscription, channel or offset".into());
                }
            }
            failure.is_none()
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        if ids.iter().all(|id| id.as_ref().is_some_and(|id| snaps.contains_key(id))) {
            break;
        }
        s.fill().await?;
    }
    let mut subs = Vec::with_capacity(chans.len());
    for (id, &c) in ids.into_iter().zip(chans) {
        let id = id.expect("all answered; qed");
        let (channel, offset) = snaps.remove(&id).expect("all have snapshots; qed");
        if channel != run.names[c] {
            return Err(format!("snapshot of {channel} for the subscription to {}", run.names[c]));
        }
        subs.push(Sub {
            key: id.as_bytes().to_vec(),
            id: Value::String(id),
            channel: c,
            snap: offset,
            offsets: Offsets::after(offset),
        });
    }
    Ok(subs)
}

/// Connection `i` (the `slot`-th of thread `t`).
#[allow(clippy::too_many_arguments)]
async fn connection(
    t: usize,
    slot: usize,
    i: usize,
    run: Arc<Run>,
    tally: Rc<RefCell<Tally>>,
    permits: Rc<Semaphore>,
    phase: watch::Receiver<Phase>,
    id_key: Rc<Finder<'static>>,
) {
    let permit = permits.acquire().await;
    let setup = async {
        let mut s =
            Socket::open(&run.target, run.ips.for_conn(i), run.args.load.read_buffer, run.args.load.compress)
                .await?;
        let subs = subscribe_all(&mut s, &run, &run.plan[i]).await?;
        Ok::<_, String>((s, subs))
    };
    let (mut socket, subs) = match tokio::time::timeout(run.setup, setup).await {
        Ok(Ok(x)) => x,
        outcome => {
            let e = outcome.map_or_else(|_| "timed out".to_string(), |r| r.err().unwrap_or_default());
            tally.borrow_mut().r.setup_errors.add(e);
            run.state[i].store(FAILED, Relaxed);
            run.failed.fetch_add(1, Relaxed);
            return;
        }
    };
    drop(permit);
    let k = run.args.subs_per_conn;
    for (j, s) in subs.iter().enumerate() {
        run.max_seen[i * k + j].store(s.snap, Relaxed);
    }
    tally.borrow_mut().conns[slot] = subs;
    run.state[i].store(READY, Relaxed);
    run.ready.fetch_add(1, Relaxed);
    socket.take_wire();
    let reason = socket
        .receive(
            |m, now| on_message(&mut tally.borrow_mut(), &run, &id_key, t, slot, i, m, now),
            |n| tally.borrow_mut().r.wire_bytes += n,
        )
        .await;
    if *phase.borrow() != Phase::Stop {
        run.state[i].store(GONE, Relaxed);
        run.gone.fetch_add(1, Relaxed);
        *tally.borrow_mut().r.gone.entry(reason).or_default() += 1;
    }
}

/// Counts one message of connection `i`; always asks for the next one.
#[allow(clippy::too_many_arguments)]
fn on_message(
    tally: &mut Tally,
    run: &Run,
    id_key: &Finder,
    t: usize,
    slot: usize,
    i: usize,
    msg: &[u8],
    now: u64,
) -> bool {
    let r = &mut tally.r;
    r.seen += 1;
    let scanned = (number_after(msg, &run.scan.offset), number_after(msg, &run.scan.sent));
    let id = id_key.find(msg).map(|at| &msg[at + id_key.needle().len()..]);
    let subs = &mut tally.conns[slot];
    let j = id.and_then(|rest| {
        subs.iter()
            .position(|s| rest.len() > s.key.len() && rest.starts_with(&s.key) && rest[s.key.len()] == b'"')
    });
    let (Some(offset), Some(sent), Some(j)) = (scanned.0, scanned.1, j) else {
        r.other.add(String::from_utf8_lossy(&msg[..msg.len().min(160)]).into_owned());
        return true;
    };
    let s = &mut subs[j];
    if !s.offsets.see(offset) {
        return true;
    }
    let first = s.offsets.received == 1;
    run.max_seen[i * run.args.subs_per_conn + j].store(offset, Relaxed);
    if let Some(h) = r.hist.as_mut() {
        h.saturating_record(now.saturating_sub(sent.saturating_sub(T_BASE)).max(1));
    }
    r.delivered += 1;
    r.last_delivery_us = now;
    run.delivered[t].0.store(r.delivered, Relaxed);
    let every = run.args.load.validate_every;
    if (first || every == 0 || r.delivered.is_multiple_of(every))
        && let Err(e) = validate(msg, &s.id, &run.names[s.channel], offset, sent)
    {
        r.invalid.add(e);
    }
    true
}

/// What the publishers did.
#[derive(Default)]
struct Published {
    /// Publishers that connected.
    connected: usize,
    sent: u64,
    acked: u64,
    unanswered: u64,
    errors: Errors,
    /// Per channel: the highest offset answered, and the publications answered.
    max_offset: Vec<u64>,
    per_channel: Vec<u64>,
    start_us: u64,
    publish_s: f64,
    lag_wait_s: f64,
    behind_max_s: f64,
    cpu_pct: f64,
}

/// What one publisher's reader collected.
#[derive(Default)]
struct Answers {
    acked: u64,
    errors: Errors,
    closed: bool,
    /// The channel of each call in flight, by id.
    pending: HashMap<u64, usize>,
}

/// The publishers: P connections on this thread; reports readiness on `ready` (the number
/// that connected), publishes from [`Phase::Go`], waits for the answers.
async fn publish_all(
    run: Arc<Run>,
    cdf: Option<Vec<f64>>,
    mut phase: watch::Receiver<Phase>,
    ready: std::sync::mpsc::Sender<usize>,
) -> Published {
    let a = &run.args;
    let mut out = Published {
        max_offset: vec![0; a.channels],
        per_channel: vec![0; a.channels],
        start_us: now_us(),
        ..Published::default()
    };
    let mut conns = Vec::new();
    for p in 0..a.publishers {
        match run.target.connect(run.publisher_ips.for_conn(p), 64 * 1024).await {
            Ok(ws) => conns.push(ws),
            Err(e) => out.errors.add(format!("publisher {p}: {e}")),
        }
    }
    out.connected = conns.len();
    let _ = ready.send(conns.len());
    let _ = phase.wait_for(|p| *p >= Phase::Go).await;
    if *phase.borrow() == Phase::Stop || conns.is_empty() {
        return out;
    }
    let shared = Rc::new(RefCell::new(out));
    let started = Instant::now();
    shared.borrow_mut().start_us = now_us();
    let count = conns.len() as u64;
    let mut tasks = Vec::new();
    for (p, ws) in conns.into_iter().enumerate() {
        let (run, shared, cdf) = (run.clone(), shared.clone(), cdf.clone());
        tasks.push(tokio::task::spawn_local(async move {
            one_publisher(&run, p as u64, count, ws, started, &shared, cdf.as_deref()).await
        }));
    }
    let cpu = thread_cpu_pct_until(async {
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;
    let mut out = std::mem::take(&mut *shared.borrow_mut());
    out.cpu_pct = cpu;
    out.publish_s = out.publish_s.max(1e-9);
    out
}

/// Publisher `p` of `count`: publications p, p + count, ... due at j / rate.
async fn one_publisher(
    run: &Run,
    p: u64,
    count: u64,
    ws: super::client::Ws,
    started: Instant,
    out: &RefCell<Published>,
    cdf: Option<&[f64]>,
) {
    let a = &run.args;
    let (mut sink, stream) = ws.split();
    let answers = Rc::new(RefCell::new(Answers::default()));
    let window = Rc::new(Semaphore::new(a.load.window.max(1)));
    let per_channel = Rc::new(RefCell::new((vec![0u64; a.channels], vec![0u64; a.channels])));
    let reader = tokio::task::spawn_local({
        let (answers, window, per_channel) = (answers.clone(), window.clone(), per_channel.clone());
        async move {
            read_answers(stream, &window, |v, text| {
                let mut ans = answers.borrow_mut();
                let channel = v["id"].as_u64().and_then(|id| ans.pending.remove(&id));
                match (v["result"]["offset"].as_u64(), channel) {
                    (Some(offset), Some(c)) => {
                        ans.acked += 1;
                        let mut pc = per_channel.borrow_mut();
                        pc.0[c] = pc.0[c].max(offset);
                        pc.1[c] += 1;
                    }
                    _ => ans.errors.add(answer_error(v, text)),
                }
            })
            .await;
            answers.borrow_mut().closed = true;
        }
    });
    let end = started + Duration::from_secs_f64(a.seconds);
    let (mut sent, mut lag_wait, mut behind) = (0u64, Duration::ZERO, Duration::ZERO);
    let mut j = p;
    while j < a.load.max_messages && !answers.borrow().closed {
        let lag = || run.average_lag();
        if !pace(&window, end, started, j, a.load.rate, a.load.max_lag, lag, &mut lag_wait, &mut behind).await
        {
            break;
        }
        let c = channel_of(j, a.channels, cdf, a.seed);
        let data = publisher::data_of(a.load.payload, a.load.payload_bytes, now_us(), j);
        let id = j + 1;
        let channel = serde_json::to_string(&run.names[c]).expect("a string serializes; qed");
        let call = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"publish","params":{{"channel":{channel},"data":{data}}}}}"#
        );
        answers.borrow_mut().pending.insert(id, c);
        run.owed.fetch_add(run.subscribers[c], Relaxed);
        if let Err(e) = sink.send(Message::text(call)).await {
            out.borrow_mut().errors.add(format!("publisher send: {e}"));
            break;
        }
        sent += 1;
        j += count;
    }
    let publish_s = started.elapsed().as_secs_f64();
    let answered = || {
        let ans = answers.borrow();
        ans.acked + ans.errors.count >= sent || ans.closed
    };
    wait_until_async(Instant::now() + Duration::from_secs_f64(a.load.answer_seconds), answered).await;
    reader.abort();
    let ans = std::mem::take(&mut *answers.borrow_mut());
    let mut out = out.borrow_mut();
    let unanswered = sent.saturating_sub(ans.acked + ans.errors.count);
    if unanswered > 0 {
        out.errors.add(format!("{unanswered} publish calls unanswered after {} s", a.load.answer_seconds));
    }
    out.sent += sent;
    out.unanswered += unanswered;
    out.acked += ans.acked;
    out.errors.merge(ans.errors);
    let pc = per_channel.borrow();
    for c in 0..a.channels {
        out.max_offset[c] = out.max_offset[c].max(pc.0[c]);
        out.per_channel[c] += pc.1[c];
    }
    out.publish_s = out.publish_s.max(publish_s);
    out.lag_wait_s = out.lag_wait_s.max(lag_wait.as_secs_f64());
    out.behind_max_s = out.behind_max_s.max(behind.as_secs_f64());
}

/// The figures of the publishers' result and the threads' tallies, against `last` per channel.
fn summary(run: &Run, p: &Published, tallies: Vec<Tally>, last: &[u64]) -> Value {
    let mut totals = Totals::new(p.cpu_pct);
    for t in tallies {
        for s in t.conns.iter().flatten() {
            totals.subscription(last[s.channel].saturating_sub(s.snap), &s.offsets);
        }
        totals.thread(t.r);
    }
    totals.json(&Publishing {
        acked: p.acked,
        unanswered: p.unanswered,
        errors: &p.errors,
        start_us: p.start_us,
        publish_s: p.publish_s,
        lag_wait_s: p.lag_wait_s,
        behind_max_s: p.behind_max_s,
        max_messages_reached: p.sent >= run.args.load.max_messages,
    })
}

/// Prints the main figures of a market result.
pub(crate) fn table(v: &Value) {
    let rate = match v["rate"].as_f64() {
        Some(r) if r > 0.0 => format!("{r}/s"),
        _ => "as fast as allowed".into(),
    };
    let skew = match v["zipf"].as_f64() {
        Some(s) => format!("zipf {s}"),
        None => "uniform".into(),
    };
    let title = format!(
        "market: {} connections x {} subscriptions over {} channels ({skew}), {} publishers, {rate} for {} s ({})",
        v["connections"],
        v["subs_per_conn"],
        v["channels"],
        v["publishers"],
        v["seconds"],
        report::text(v, "url"),
    );
    let per = &v["subscribers_per_channel"];
    let mut rows = vec![
        ("setup", format!("{} of {} subscribed in {} s", v["ready"], v["connections"], v["setup_s"])),
        (
            "server memory/conn",
            match v["server_bytes_per_conn"].as_f64() {
                Some(b) => format!("{b} bytes (RSS growth while subscribing)"),
                None => "n/a (give --server-pid)".into(),
            },
        ),
        (
            "subscribers/channel",
            format!(
                "min {} median {} max {} (channel 0: {})",
                per["min"], per["median"], per["max"], per["channel_0"]
            ),
        ),
        ("deliveries/publication", report::dec(v, "deliveries_per_publication", 1)),
    ];
    rows.extend(counts::rows(v));
    if v["compress"] == true {
        rows.push(("wire bytes/delivery", report::dec(v, "wire_bytes_per_delivery", 1)));
    }
    counts::closing_rows(v, "subscriptions", &mut rows);
    report::print_table(&title, &rows);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_connection_gets_distinct_channels_the_same_for_the_same_seed() {
        let a = assign(200, 500, 10, None, 1);
        assert_eq!(a, assign(200, 500, 10, None, 1));
        assert_ne!(a, assign(200, 500, 10, None, 2));
        for chans in &a {
            let mut c = chans.clone();
            c.sort_unstable();
            c.dedup();
            assert_eq!(c.len(), 10);
            assert!(c.iter().all(|&c| c < 200));
        }
    }

    #[test]
    fn publications_go_to_the_channels_in_turn_or_by_the_weights() {
        assert_eq!((0..400).filter(|&j| channel_of(j, 200, None, 1) == 7).count(), 2);
        let cdf = zipf_cdf(200, 1.1);
        let mut per = vec![0u32; 200];
        for j in 0..100_000 {
            per[channel_of(j, 200, Some(&cdf), 1)] += 1;
        }
        let share = |i: usize| (cdf[i] - if i == 0 { 0.0 } else { cdf[i - 1] }) / cdf[199];
        for i in [0, 10, 150] {
            let got = f64::from(per[i]) / 100_000.0;
            assert!((got - share(i)).abs() < 0.2 * share(i) + 0.001, "channel {i}: {got} vs {}", share(i));
        }
        assert_eq!(channel_of(12345, 200, Some(&cdf), 1), channel_of(12345, 200, Some(&cdf), 1));
    }

    #[test]
    fn zipf_draws_favour_the_first_channels() {
        let cdf = zipf_cdf(200, 1.1);
        let a = assign(200, 2000, 10, Some(&cdf), 1);
        let mut per = vec![0; 200];
        for c in a.iter().flatten() {
            per[*c] += 1;
        }
        // Channel 0 is on nearly every connection; the last channels on few.
        assert!(per[0] > 1700, "{}", per[0]);
        assert!(per[199] < 60 && per[199] > 0, "{}", per[199]);
        let uniform = assign(200, 2000, 10, None, 1);
        let mut flat = vec![0; 200];
        for c in uniform.iter().flatten() {
            flat[*c] += 1;
        }
        assert!(flat.iter().all(|&n| (50..160).contains(&n)), "{flat:?}");
    }
}
