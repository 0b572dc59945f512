//! fanout: N subscribers on one channel, one publisher.
//!
//! The run: open and subscribe N connections (each waits for its subscription id and snapshot),
//! then one publisher connection publishes for `--seconds` (see `publisher.rs`). When
//! publishing stops the server has `--answer-seconds` to answer every call, then subscribers have
//! `--drain-seconds` to receive everything up to the last offset (the highest answered, or higher
//! if a publication whose answer never came reached someone); what has not arrived is lost.
//!
//! Figures: `deliveries_per_s` = publications received by all subscribers / time from the first
//! publish to the last receipt; latency = receive time - the send time in the data (one clock,
//! one process); per subscriber, `lost` = last offset - snapshot offset - received, `gaps` =
//! times an offset was not the previous + 1, `dups` = offsets seen again; `invalid` = sampled
//! notifications (every `--validate-every`-th and each subscriber's first) failing a full check.

use super::client::{SourceIps, Target, block};
use super::counts::{self, LoadArgs, Publishing, Totals};
use super::measure::{round, spawn_runtimes, wait_until, watchdog};
use super::publisher::{self, Published};
use super::report::{self, Progress};
use super::subscriber::{self, Phase, Scan, Shared, Tally};
use super::{CommonArgs, Error, check_files, extend};
use clap::Args;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// `rpchub bench fanout` options.
#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Channel every subscriber joins and the publisher publishes to.
    #[arg(long, default_value = "bench:fanout")]
    pub channel: String,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Publishing and counting.
    #[command(flatten)]
    pub load: LoadArgs,
    /// WebSocket URL the publisher connects to (default: --url), e.g. another node on the same
    /// broker: then latency is from a publish on one node to delivery on the other.
    #[arg(long)]
    pub publish_url: Option<String>,
}

/// What the threads of one fanout run share.
pub(crate) struct Run {
    pub(crate) args: FanoutArgs,
    pub(crate) target: Arc<Target>,
    /// Where the publisher connects (`--publish-url`, or `target`).
    pub(crate) publish_target: Arc<Target>,
    pub(crate) shared: Shared,
    /// Source addresses of the subscribers, and the publisher's.
    pub(crate) ips: SourceIps,
    pub(crate) publisher_ip: Option<std::net::Ipv4Addr>,
    pub(crate) threads: usize,
    /// Connection attempts in flight per thread.
    pub(crate) permits: usize,
    /// Time allowed for opening and subscribing.
    pub(crate) setup: Duration,
    pub(crate) scan: Scan,
}

/// Runs the scenario; the figures as one JSON object (with `error` if nothing was measured).
pub(crate) fn run(
    c: &CommonArgs,
    target: Arc<Target>,
    a: &FanoutArgs,
    progress: &Progress,
) -> Result<Value, Error> {
    check_files(a.subscribers + 1)?;
    if !(a.load.rate >= 0.0 && a.seconds > 0.0 && a.load.answer_seconds >= 0.0 && a.load.drain_seconds >= 0.0)
    {
        return Err(Error::Usage("--rate, --seconds, --answer-seconds, --drain-seconds must be >= 0".into()));
    }
    let limit = c.setup_seconds + a.seconds + a.load.answer_seconds + a.load.drain_seconds + 30.0;
    watchdog("fanout", Duration::from_secs_f64(limit), c.json);
    let (n, threads) = (a.subscribers, c.threads());
    let ips = SourceIps::new(c, &target, block::SUBSCRIBERS);
    let publish_target = match &a.publish_url {
        Some(url) => Arc::new(Target::of("--publish-url", url, c)?),
        None => target.clone(),
    };
    let run = Arc::new(Run {
        args: a.clone(),
        publisher_ip: SourceIps::new(c, &publish_target, block::PUBLISHER).for_conn(0),
        publish_target,
        target,
        shared: Shared::new(n, threads),
        ips: ips.clone(),
        threads,
        permits: c.connect_permits(threads),
        setup: Duration::from_secs_f64(c.setup_seconds),
        scan: Scan::new(),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let setup_started = Instant::now();
    let subscribers = spawn_runtimes(threads, "bench-sub", {
        let (run, rx) = (run.clone(), phase_rx.clone());
        move |t| subscriber::thread(t, run.clone(), rx.clone())
    });
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let publisher = spawn_runtimes(1, "bench-pub", {
        let (run, rx) = (run.clone(), phase_rx.clone());
        move |_| publisher::publish(run.clone(), rx.clone(), ready_tx.clone())
    });
    let publisher = publisher.into_iter().next().expect("one thread was started; qed");

    progress.phase("subscribing", n as u64);
    let mut publisher_answered = false;
    wait_until(setup_started + run.setup, || {
        let done = run.shared.ready.load(Relaxed) + run.shared.failed.load(Relaxed);
        progress.set(done as u64);
        publisher_answered |= ready_rx.try_recv().is_ok();
        done == n && publisher_answered
    });
    let setup_s = setup_started.elapsed().as_secs_f64();
    let ready = run.shared.ready.load(Relaxed);
    run.shared.live_at_go.store(ready.max(1), Relaxed);
    let limit_d = Duration::from_secs_f64(limit);
    let (p, cpu) = subscriber::publish_phase(c, &phase_tx, ready, a.seconds, limit_d, progress, publisher);
    // The last offset every subscriber must reach: the highest answered, or higher if a
    // publication whose answer never came was delivered (the server accepted it).
    let last = p.max_offset.max(if p.acked > 0 { run.shared.highest_seen() } else { 0 });
    progress.phase("draining", a.load.drain_seconds.ceil() as u64);
    let drain_started = Instant::now();
    let drained = wait_until(drain_started + Duration::from_secs_f64(a.load.drain_seconds), || {
        progress.seconds_since(drain_started);
        run.shared.all_reached(last)
    });
    let used = cpu.stop();
    let _ = phase_tx.send(Phase::Stop);
    let last = last.max(if p.acked > 0 { run.shared.highest_seen() } else { 0 });
    let tallies: Vec<Tally> =
        subscribers.into_iter().map(|h| h.join().expect("subscriber threads do not panic; qed")).collect();

    let mut out = summary(a, &p, tallies, last);
    extend(
        &mut out,
        json!({
            "scenario": "fanout",
            "url": run.target.url(),
            "publish_url": run.publish_target.url(),
            "subscribers": n,
            "ready": ready,
            "setup_failed": n - ready,
            "setup_s": round(setup_s, 2),
            "source_ips": ips.count(n),
            "threads": threads,
            "channel": a.channel,
            "seconds": a.seconds,
            "drained": drained,
        }),
    );
    let received = out["received"].as_u64().unwrap_or(0);
    let thread_cpu = out["bench_thread_cpu_pct"].as_array().into_iter().flatten().filter_map(Value::as_f64);
    let cpu_max = thread_cpu.fold(0.0, f64::max);
    extend(&mut out, a.load.json());
    extend(&mut out, used.json(cpu_max, ("delivery", received)));
    if !c.also_pids.is_empty() {
        out["also_cpu"] = used.also_json(&[("delivery", received), ("publication", p.acked)]);
    }
    // Say why, with the first error seen: a refused upgrade, a token without publish rights.
    let first = |key: &str| out[key][0].as_str().map(|e| format!(": {e}")).unwrap_or_default();
    if ready == 0 {
        out["error"] = json!(format!("no subscriber could subscribe{}", first("setup_errors")));
    } else if !p.connected || p.acked == 0 {
        out["error"] = json!(format!("no publication was accepted{}", first("publish_error_samples")));
    }
    Ok(out)
}

/// The figures of the publisher's result and the subscriber threads' tallies.
fn summary(a: &FanoutArgs, p: &Published, tallies: Vec<Tally>, last: u64) -> Value {
    let mut totals = Totals::new(p.cpu_pct);
    for t in tallies {
        for s in t.subs.iter().filter(|s| s.ready) {
            totals.subscription(last.saturating_sub(s.snap), &s.offsets);
        }
        totals.thread(t.r);
    }
    let mut out = totals.json(&Publishing {
        acked: p.acked,
        unanswered: p.unanswered,
        errors: &p.errors,
        start_us: p.start_us,
        publish_s: p.publish_s,
        lag_wait_s: p.lag_wait_s,
        behind_max_s: p.behind_max_s,
        max_messages_reached: p.acked + p.unanswered >= a.load.max_messages,
    });
    out["last_offset"] = json!(last);
    out
}

/// Prints the main figures of a fanout result.
pub(crate) fn table(v: &Value) {
    let rate = match v["rate"].as_f64() {
        Some(r) if r > 0.0 => format!("{r}/s"),
        _ => "as fast as allowed".into(),
    };
    let (url, publish_url) = (report::text(v, "url"), report::text(v, "publish_url"));
    let at = match publish_url == url {
        true => url,
        false => format!("{url}, published on {publish_url}"),
    };
    let title = format!(
        "fanout: {} subscribers on {}, {rate} for {} s, {}-byte {} payloads{} ({at})",
        v["subscribers"],
        report::text(v, "channel"),
        v["seconds"],
        v["payload_bytes"],
        report::text(v, "payload"),
        if v["compress"] == true { ", permessage-deflate" } else { "" },
    );
    let mut rows =
        vec![("setup", format!("{} of {} subscribed in {} s", v["ready"], v["subscribers"], v["setup_s"]))];
    rows.extend(counts::rows(v));
    rows.insert(3, ("wire bytes/delivery", report::dec(v, "wire_bytes_per_delivery", 1)));
    counts::closing_rows(v, "subscribers", &mut rows);
    report::print_table(&title, &rows);
}
