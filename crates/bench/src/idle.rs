//! idle: N connections each subscribe once and stay idle; with `--server-pid`, the server's
//! resident memory per connection.
//!
//! With the PID, `--warmup` connections are first opened, subscribed and closed (so one-time
//! allocations of the server are not charged to the measured connections) and the server's VmRSS
//! is read 1.5 s later; then the N connections are opened, VmRSS is read 1 s after they all are,
//! and again after `--hold` seconds. `bytes_per_conn` = growth / connections subscribed. Kernel
//! socket buffers are not in VmRSS.

use super::client::{SourceIps, Target, block};
use super::measure::{Errors, pid_rss_kib, round, spawn_runtimes, wait_until, watchdog};
use super::report::{self, Progress};
use super::socket::Socket;
use super::{CommonArgs, Error, check_files};
use clap::Args;
use serde_json::{Value, json};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};

/// `rpchub bench idle` options.
#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Channel each connection subscribes to.
    #[arg(long, alias = "subscribe", default_value = "bench:idle")]
    pub channel: String,
    /// Spread the subscriptions over K channels, CHANNEL-0 .. CHANNEL-(K-1) (1: all on CHANNEL).
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Seconds to hold the connections before the final reading.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    /// Connections opened, subscribed and closed before the baseline reading (with --server-pid).
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// Read buffer per client connection, bytes (client memory only).
    #[arg(long, default_value_t = 4096)]
    pub read_buffer: usize,
}

/// Connections of one block, opened and subscribed, held until [`Group::close`].
struct Group {
    ready: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    alive: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<Errors>>,
}

impl Group {
    fn open(c: &CommonArgs, a: &IdleArgs, target: &Arc<Target>, n: usize, block: u8) -> Group {
        let threads = c.threads();
        let counters = || Arc::new(AtomicUsize::new(0));
        let (ready, failed, alive) = (counters(), counters(), counters());
        let (stop, stop_rx) = watch::channel(false);
        let ips = SourceIps::new(c, target, block);
        let (permits, setup) = (c.connect_permits(threads), Duration::from_secs_f64(c.setup_seconds));
        let (ready2, failed2, alive2, target, a) =
            (ready.clone(), failed.clone(), alive.clone(), target.clone(), a.clone());
        let threads = spawn_runtimes(threads, "bench-idle", move |t| {
            let (ready, failed, alive, target, a, ips) =
                (ready2.clone(), failed2.clone(), alive2.clone(), target.clone(), a.clone(), ips.clone());
            let mut stop = stop_rx.clone();
            async move {
                let errors = Rc::new(RefCell::new(Errors::default()));
                let permits = Rc::new(Semaphore::new(permits));
                for i in (t..n).step_by(threads) {
                    let channel = if a.channels > 1 {
                        format!("{}-{}", a.channel, i % a.channels)
                    } else {
                        a.channel.clone()
                    };
                    let (ready, failed, alive, target, errors, permits) = (
                        ready.clone(),
                        failed.clone(),
                        alive.clone(),
                        target.clone(),
                        errors.clone(),
                        permits.clone(),
                    );
                    let (src, read_buffer) = (ips.for_conn(i), a.read_buffer);
                    tokio::task::spawn_local(async move {
                        let permit = permits.acquire().await;
                        let setup = tokio::time::timeout(setup, async {
                            let mut s = Socket::open(&target, src, read_buffer, false).await?;
                            s.subscribe(&channel).await?;
                            Ok::<_, String>(s)
                        });
                        let mut socket = match setup.await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => return failed_with(&failed, &errors, e),
                            Err(_) => return failed_with(&failed, &errors, "timed out".into()),
                        };
                        drop(permit);
                        ready.fetch_add(1, Relaxed);
                        alive.fetch_add(1, Relaxed);
                        // Idle: read (and so answer pings) until the server ends the connection.
                        while socket.drain(|_| true).is_ok()
                            && socket.flush_replies().await.is_ok()
                            && socket.fill().await.is_ok()
                        {}
                        alive.fetch_sub(1, Relaxed);
                    });
                }
                let _ = stop.wait_for(|s| *s).await;
                std::mem::take(&mut *errors.borrow_mut())
            }
        });
        Group { ready, failed, alive, stop, threads }
    }

    /// Waits until all `n` are open or failed (or `deadline`), showing progress.
    fn wait_open(&self, n: usize, deadline: Instant, progress: &Progress) {
        wait_until(deadline, || {
            let done = self.ready.load(Relaxed) + self.failed.load(Relaxed);
            progress.set(done as u64);
            done >= n
        });
    }

    /// Closes every connection and returns the setup errors.
    fn close(self) -> Errors {
        let _ = self.stop.send(true);
        let mut errors = Errors::default();
        for t in self.threads {
            errors.merge(t.join().expect("idle threads do not panic; qed"));
        }
        errors
    }
}

fn failed_with(failed: &AtomicUsize, errors: &RefCell<Errors>, e: String) {
    errors.borrow_mut().add(e);
    failed.fetch_add(1, Relaxed);
}

/// Runs the scenario; the figures as one JSON object (with `error` if nothing was measured).
pub(crate) fn run(
    c: &CommonArgs,
    target: Arc<Target>,
    a: &IdleArgs,
    progress: &Progress,
) -> Result<Value, Error> {
    check_files(a.connections.max(a.warmup))?;
    if let Some(pid) = c.server_pid.filter(|&p| pid_rss_kib(p).is_none()) {
        return Err(Error::Usage(format!("--server-pid {pid}: cannot read /proc/{pid}/status")));
    }
    if !a.hold.is_finite() || a.hold < 0.0 {
        return Err(Error::Usage("--hold must be a number >= 0".into()));
    }
    watchdog("idle", Duration::from_secs_f64(2.0 * c.setup_seconds + a.hold + 30.0), c.json);
    let setup = Duration::from_secs_f64(c.setup_seconds);
    let rss = || c.server_pid.and_then(pid_rss_kib);
    let mut warm_errors = Errors::default();
    if c.server_pid.is_some() && a.warmup > 0 {
        progress.phase("warming up", a.warmup as u64);
        let g = Group::open(c, a, &target, a.warmup, block::WARMUP);
        g.wait_open(a.warmup, Instant::now() + setup, progress);
        warm_errors = g.close();
        std::thread::sleep(Duration::from_millis(1500));
    }
    let rss_before = rss();
    progress.phase("connecting", a.connections as u64);
    let opening = Instant::now();
    let g = Group::open(c, a, &target, a.connections, block::IDLE);
    g.wait_open(a.connections, opening + setup, progress);
    let open_s = opening.elapsed().as_secs_f64();
    if c.server_pid.is_some() {
        std::thread::sleep(Duration::from_secs(1));
    }
    let rss_open = rss();
    progress.phase("holding", a.hold.ceil() as u64);
    let holding = Instant::now();
    wait_until(holding + Duration::from_secs_f64(a.hold), || {
        progress.seconds_since(holding);
        false
    });
    let rss_after = rss();
    let (ready, alive) = (g.ready.load(Relaxed), g.alive.load(Relaxed));
    let errors = g.close();
    let per_conn = |after: Option<u64>| match (rss_before, after) {
        (Some(before), Some(after)) if ready > 0 => {
            json!(round((after as f64 - before as f64) * 1024.0 / ready as f64, 0))
        }
        _ => Value::Null,
    };
    let mut out = json!({
        "scenario": "idle",
        "url": target.url(),
        "connections": a.connections,
        "ready": ready,
        "setup_failed": a.connections - ready,
        "setup_errors": errors.samples,
        "alive_at_end": alive,
        "open_s": round(open_s, 2),
        "source_ips": SourceIps::new(c, &target, block::IDLE).count(a.connections),
        "channels": a.channels,
        "hold_s": a.hold,
        "warmup": if c.server_pid.is_some() { a.warmup } else { 0 },
        "warmup_errors": warm_errors.samples,
        "rss_before_kib": rss_before,
        "rss_open_kib": rss_open,
        "rss_after_kib": rss_after,
        "bytes_per_conn_open": per_conn(rss_open),
        "bytes_per_conn": per_conn(rss_after),
    });
    if ready == 0 {
        out["error"] = json!("no connection could subscribe");
    }
    Ok(out)
}

/// Prints the main figures of an idle result.
pub(crate) fn table(v: &Value) {
    let title = format!(
        "idle: {} connections, one subscription each, held {} s ({})",
        v["connections"],
        v["hold_s"],
        report::text(v, "url")
    );
    let mut rows = vec![
        ("setup", format!("{} of {} subscribed in {} s", v["ready"], v["connections"], v["open_s"])),
        ("alive at end", report::int(v, "alive_at_end")),
    ];
    if v["bytes_per_conn"].is_number() {
        rows.push((
            "bytes/conn",
            format!(
                "{} (at open: {})",
                report::int(v, "bytes_per_conn"),
                report::int(v, "bytes_per_conn_open")
            ),
        ));
        let kib = ["rss_before_kib", "rss_open_kib", "rss_after_kib"].map(|k| report::int(v, k));
        rows.push(("server RSS KiB", format!("before {}, open {}, after {}", kib[0], kib[1], kib[2])));
    } else {
        rows.push(("bytes/conn", "n/a (give --server-pid to read the server's memory)".into()));
    }
    rows.extend(report::samples(v, "setup_errors").map(|s| ("setup errors", s)));
    report::print_table(&title, &rows);
}
