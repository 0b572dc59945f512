//! storm: a connection storm. N clients each connect, subscribe, receive the snapshot and
//! leave (close 1000, waiting at most 1 s for the server's close), with at most
//! `--concurrency` of them in progress at once, as fast as the server lets them.
//!
//! Figures: `connects_per_s` = clients that got their snapshot / time from the first connect to
//! the last snapshot; setup latency = TCP connect start to snapshot received; failures by reason
//! (`upgrade refused: HTTP 429` when the server's upgrade or connection limits refuse). Clients
//! still waiting when `--setup-seconds` have passed are not started (`not_started`).

use super::client::{SourceIps, Target, block};
use super::measure::{
    CpuWindow, Errors, histogram, latency_json, now_us, round, spawn_runtimes, thread_cpu_pct_until,
    wait_until, watchdog,
};
use super::report::{self, Progress};
use super::socket::Socket;
use super::{CommonArgs, Error, check_files, extend};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How long a client waits for the server's answer to its close.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// `rpchub bench storm` options.
#[derive(Args, Debug, Clone)]
pub struct StormArgs {
    /// Clients, each connecting once.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Clients in progress (connecting, subscribing or closing) at once, over all threads.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Channel each client subscribes to.
    #[arg(long, default_value = "bench:storm")]
    pub channel: String,
    /// A reconnect storm instead: the clients subscribe and stay, every connection is cut at
    /// once, `--missed` publications go out, and all come back with `since` (each must get
    /// `recovered: true` and every missed publication); `--concurrency` bounds the reconnects
    /// in flight.
    #[arg(long)]
    pub since: bool,
    /// With --since: publications made while the clients are away.
    #[arg(long, default_value_t = 10, requires = "since")]
    pub missed: u64,
    /// With --since: milliseconds between the cut and the clients starting back (0: at once,
    /// while the missed publications are going out).
    #[arg(long, default_value_t = 0, requires = "since")]
    pub away_ms: u64,
}

/// What one thread counted.
#[derive(Default)]
struct Tally {
    hist: Option<Histogram<u64>>,
    failures: BTreeMap<String, u64>,
    close_errors: Errors,
    first_start_us: Option<u64>,
    last_done_us: u64,
}

/// Runs the scenario; the figures as one JSON object (with `error` if nothing was measured).
pub(crate) fn run(
    c: &CommonArgs,
    target: Arc<Target>,
    a: &StormArgs,
    progress: &Progress,
) -> Result<Value, Error> {
    if a.since {
        return super::reconnect::run(c, target, a, progress);
    }
    check_files(a.concurrency.min(a.clients))?;
    watchdog("storm", Duration::from_secs_f64(c.setup_seconds + CLOSE_WAIT.as_secs_f64() + 30.0), c.json);
    let threads = c.threads().min(a.clients.max(1));
    let ips = SourceIps::new(c, &target, block::STORM);
    let (done, completed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(c.setup_seconds);
    let cpu = CpuWindow::start(c);
    let handles = spawn_runtimes(threads, "bench-storm", {
        let (target, ips, a, done, completed) =
            (target.clone(), ips.clone(), a.clone(), done.clone(), completed.clone());
        let permits = (a.concurrency / threads).max(1);
        move |t| {
            let (target, ips, a, done, completed) =
                (target.clone(), ips.clone(), a.clone(), done.clone(), completed.clone());
            async move {
                let tally = Rc::new(RefCell::new(Tally { hist: Some(histogram()), ..Tally::default() }));
                let permits = Rc::new(Semaphore::new(permits));
                let mut clients = Vec::new();
                for i in (t..a.clients).step_by(threads) {
                    let (target, tally, permits, done, completed) =
                        (target.clone(), tally.clone(), permits.clone(), done.clone(), completed.clone());
                    let (src, channel) = (ips.for_conn(i), a.channel.clone());
                    clients.push(tokio::task::spawn_local(async move {
                        let _permit = permits.acquire().await;
                        if Instant::now() >= deadline {
                            return;
                        }
                        let outcome = client(&target, src, &channel, deadline).await;
                        let mut t = tally.borrow_mut();
                        match outcome {
                            Ok((start, took, closed)) => {
                                t.first_start_us = Some(t.first_start_us.map_or(start, |f| f.min(start)));
                                t.last_done_us = t.last_done_us.max(start + took);
                                t.hist.as_mut().expect("set at start; qed").saturating_record(took.max(1));
                                if let Err(e) = closed {
                                    t.close_errors.add(e);
                                }
                                completed.fetch_add(1, Relaxed);
                            }
                            Err(e) => *t.failures.entry(e).or_default() += 1,
                        }
                        done.fetch_add(1, Relaxed);
                    }));
                }
                let cpu = thread_cpu_pct_until(async {
                    for c in clients {
                        let _ = c.await;
                    }
                })
                .await;
                (std::mem::take(&mut *tally.borrow_mut()), cpu)
            }
        }
    });
    progress.phase("clients", a.clients as u64);
    wait_until(deadline + CLOSE_WAIT * 2, || {
        progress.set(done.load(Relaxed) as u64);
        handles.iter().all(|h| h.is_finished())
    });
    let used = cpu.stop();
    let storm_s = started.elapsed().as_secs_f64();
    let (mut hist, mut failures, mut close_errors) =
        (histogram(), BTreeMap::<String, u64>::new(), Errors::default());
    let (mut first, mut last, mut cpu_max) = (u64::MAX, 0u64, 0f64);
    for h in handles {
        let (t, cpu) = h.join().expect("storm threads do not panic; qed");
        hist.add(t.hist.as_ref().expect("set at start; qed")).expect("histograms of equal bounds add; qed");
        for (k, v) in t.failures {
            *failures.entry(k).or_default() += v;
        }
        close_errors.merge(t.close_errors);
        first = first.min(t.first_start_us.unwrap_or(u64::MAX));
        last = last.max(t.last_done_us);
        cpu_max = cpu_max.max(cpu);
    }
    let completed = completed.load(Relaxed);
    let span_s = last.saturating_sub(first) as f64 / 1e6;
    let failed: u64 = failures.values().sum();
    let mut out = json!({
        "scenario": "storm",
        "url": target.url(),
        "clients": a.clients,
        "concurrency": a.concurrency,
        "channel": a.channel,
        "threads": threads,
        "source_ips": ips.count(a.clients),
        "completed": completed,
        "failed": failed,
        "failure_reasons": failures,
        "not_started": a.clients as u64 - completed - failed,
        "close_errors": close_errors.count,
        "close_error_samples": close_errors.samples,
        "connects_per_s": if completed > 0 { round(completed as f64 / span_s.max(1e-9), 0) } else { 0.0 },
        "storm_s": round(storm_s, 3),
        "latency_us": latency_json(&hist),
    });
    extend(&mut out, used.json(cpu_max, ("connect", completed)));
    if completed == 0 {
        out["error"] = json!("no client got its snapshot");
    }
    Ok(out)
}

/// One client: connect, subscribe, snapshot, close. Ok((start µs, setup µs, how the close went)).
async fn client(
    target: &Target,
    src: Option<std::net::Ipv4Addr>,
    channel: &str,
    deadline: Instant,
) -> Result<(u64, u64, Result<(), String>), String> {
    let start = now_us();
    let setup = async {
        let mut s = Socket::open(target, src, 4096, false).await?;
        s.subscribe(channel).await?;
        Ok::<_, String>(s)
    };
    let mut socket = match tokio::time::timeout_at(deadline.into(), setup).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("timed out".into()),
    };
    let took = now_us() - start;
    let closed = match tokio::time::timeout(CLOSE_WAIT, socket.close()).await {
        Ok(r) => r,
        Err(_) => Err("close unanswered within 1 s".into()),
    };
    Ok((start, took, closed))
}

/// Prints the main figures of a storm result.
pub(crate) fn table(v: &Value) {
    let title = format!(
        "storm: {} clients connect, subscribe to {} and leave, {} at a time ({})",
        v["clients"],
        report::text(v, "channel"),
        v["concurrency"],
        report::text(v, "url")
    );
    let mut rows = vec![
        ("completed", format!("{} of {} in {} s", v["completed"], v["clients"], v["storm_s"])),
        ("connects/s", report::int(v, "connects_per_s")),
        ("setup latency µs", report::latency(v)),
        ("failed", report::by_reason(v, "failed", "failure_reasons")),
        ("not started", report::int(v, "not_started")),
        ("close errors", report::int(v, "close_errors")),
    ];
    rows.extend(report::cpu_rows(v, "connect"));
    report::print_table(&title, &rows);
}
