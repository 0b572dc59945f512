//! rpc: closed-loop calls on C connections; calls/s and latency.
//!
//! Each connection sends a call, waits for its answer, checks it, and sends the next. Calls of
//! the first `--warmup-seconds` are not counted; then, for `--seconds`, a call counts if it was
//! both sent and answered in the measured window. `calls_per_s` = counted calls / window.

use super::client::{SourceIps, Target, block};
use super::measure::{
    CpuWindow, Errors, histogram, latency_json, now_us, round, spawn_runtimes, thread_cpu_pct_until,
    wait_until, watchdog,
};
use super::report::{self, Progress};
use super::{CommonArgs, Error, check_files, extend};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

/// `rpchub bench rpc` options.
#[derive(Args, Debug, Clone)]
pub struct RpcArgs {
    /// Connections, each with one call in flight.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds of measured calls.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Method to call.
    #[arg(long, default_value = "ping")]
    pub method: String,
    /// Params of each call, as JSON (an array or an object; none if not given). `{conn}` in
    /// it stands for the connection's number (see --spread).
    #[arg(long)]
    pub params: Option<String>,
    /// With `{conn}` in --params: it is the connection's number modulo this (0: the number
    /// itself), e.g. `--method publish --params '["bench:c{conn}",1]' --spread 100` calls into
    /// 100 channels.
    #[arg(long, default_value_t = 0)]
    pub spread: usize,
    /// Seconds of calls before measuring.
    #[arg(long, default_value_t = 0.5)]
    pub warmup_seconds: f64,
}

/// Phases, in order, of [`Shared::phase`].
const SETUP: u8 = 0;
const WARMUP: u8 = 1;
const MEASURE: u8 = 2;
const STOP: u8 = 3;

struct Shared {
    ready: AtomicUsize,
    failed: AtomicUsize,
    phase: AtomicU8,
}

/// What one thread counted.
struct Tally {
    hist: Histogram<u64>,
    calls: u64,
    errors: Errors,
    setup_errors: Errors,
}

/// The fields of an answer the check needs; `result` and `error` stay unparsed.
#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(default)]
    id: Option<u64>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

/// Runs the scenario; the figures as one JSON object (with `error` if nothing was measured).
pub(crate) fn run(
    c: &CommonArgs,
    target: Arc<Target>,
    a: &RpcArgs,
    progress: &Progress,
) -> Result<Value, Error> {
    check_files(a.connections)?;
    if let Some(p) = &a.params {
        let p = p.replace("{conn}", "0");
        let ok = matches!(serde_json::from_str::<Value>(&p), Ok(Value::Array(_) | Value::Object(_)));
        if !ok {
            return Err(Error::Usage(format!("--params {p}: give a JSON array or object")));
        }
    }
    if !(a.seconds > 0.0 && a.warmup_seconds >= 0.0) {
        return Err(Error::Usage("--seconds must be > 0 and --warmup-seconds >= 0".into()));
    }
    let limit = c.setup_seconds + a.warmup_seconds + a.seconds + 30.0;
    watchdog("rpc", Duration::from_secs_f64(limit), c.json);
    let threads = c.threads().min(a.connections.max(1));
    let shared = Arc::new(Shared {
        ready: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        phase: AtomicU8::new(SETUP),
    });
    let ips = SourceIps::new(c, &target, block::RPC);
    let method = serde_json::to_string(&a.method).expect("a string serializes; qed");
    let spread = a.spread;
    // The start of every call of connection `i`, up to its id.
    let prefix_of = Arc::new(move |i: usize, params: &Option<String>| -> Rc<str> {
        let conn = if spread == 0 { i } else { i % spread };
        let params =
            params.as_ref().map(|p| format!(r#","params":{}"#, p.replace("{conn}", &conn.to_string())));
        Rc::from(format!(r#"{{"jsonrpc":"2.0","method":{method}{},"id":"#, params.unwrap_or_default()))
    });
    let (n, permits, setup) =
        (a.connections, c.connect_permits(threads), Duration::from_secs_f64(c.setup_seconds));
    let started = Instant::now();
    let handles = spawn_runtimes(threads, "bench-rpc", {
        let (shared, target, ips, prefix_of, params, is_ping) =
            (shared.clone(), target.clone(), ips.clone(), prefix_of, a.params.clone(), a.method == "ping");
        move |t| {
            let conns: Vec<_> = (t..n).step_by(threads).map(|i| (i, ips.for_conn(i))).collect();
            let (shared, target, prefix_of, params) =
                (shared.clone(), target.clone(), prefix_of.clone(), params.clone());
            async move {
                let tally = Rc::new(RefCell::new(new_tally()));
                let permits = Rc::new(Semaphore::new(permits));
                for (i, src) in conns {
                    let prefix = prefix_of(i, &params);
                    let (tally, permits, shared, target) =
                        (tally.clone(), permits.clone(), shared.clone(), target.clone());
                    tokio::task::spawn_local(async move {
                        let permit = permits.acquire().await;
                        let ws = tokio::time::timeout(setup, target.connect(src, 16 * 1024)).await;
                        drop(permit);
                        match ws {
                            Ok(Ok(ws)) => caller(ws, &shared, &tally, &prefix, is_ping).await,
                            Ok(Err(e)) => setup_failed(&tally, &shared, e),
                            Err(_) => setup_failed(&tally, &shared, "timed out".into()),
                        }
                    });
                }
                while shared.phase.load(Relaxed) < MEASURE {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let cpu = thread_cpu_pct_until(async {
                    while shared.phase.load(Relaxed) < STOP {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
                .await;
                (std::mem::replace(&mut *tally.borrow_mut(), new_tally()), cpu)
            }
        }
    });
    progress.phase("connecting", n as u64);
    wait_until(started + setup, || {
        let done = shared.ready.load(Relaxed) + shared.failed.load(Relaxed);
        progress.set(done as u64);
        done == n
    });
    let setup_s = started.elapsed().as_secs_f64();
    shared.phase.store(WARMUP, Relaxed);
    std::thread::sleep(Duration::from_secs_f64(a.warmup_seconds));
    let cpu = CpuWindow::start(c);
    shared.phase.store(MEASURE, Relaxed);
    progress.phase("calling", a.seconds.ceil() as u64);
    let measuring = Instant::now();
    let end = measuring + Duration::from_secs_f64(a.seconds);
    wait_until(end, || {
        progress.seconds_since(measuring);
        false
    });
    shared.phase.store(STOP, Relaxed);
    let used = cpu.stop();
    let (mut hist, mut calls, mut errors, mut setup_errors, mut cpu_max) =
        (histogram(), 0u64, Errors::default(), Errors::default(), 0f64);
    for h in handles {
        let (t, cpu) = h.join().expect("rpc threads do not panic; qed");
        hist.add(&t.hist).expect("histograms of equal bounds add; qed");
        calls += t.calls;
        errors.merge(t.errors);
        setup_errors.merge(t.setup_errors);
        cpu_max = cpu_max.max(cpu);
    }
    let ready = shared.ready.load(Relaxed);
    let mut out = json!({
        "scenario": "rpc",
        "url": target.url(),
        "connections": n,
        "ready": ready,
        "setup_failed": n - ready,
        "setup_errors": setup_errors.samples,
        "setup_s": round(setup_s, 2),
        "source_ips": ips.count(n),
        "threads": threads,
        "method": a.method,
        "params": a.params,
        "spread": a.spread,
        "seconds": a.seconds,
        "calls": calls,
        "calls_per_s": round(calls as f64 / used.wall, 0),
        "errors": errors.count,
        "error_samples": errors.samples,
        "latency_us": latency_json(&hist),
    });
    extend(&mut out, used.json(cpu_max, ("call", calls)));
    if ready == 0 || calls == 0 {
        out["error"] = json!(if ready == 0 { "no connection could be opened" } else { "no call completed" });
    }
    if let Some(hint) = rate_hint(c, &out) {
        out["hint"] = json!(hint);
    }
    Ok(out)
}

/// Why a run measured the server's call-rate limit rather than the server, when it did: calls
/// refused -32003 (or connections closed for flooding) without the admin token.
fn rate_hint(c: &CommonArgs, out: &Value) -> Option<&'static str> {
    let samples = out["error_samples"].as_array()?;
    let limited = samples
        .iter()
        .filter_map(Value::as_str)
        .any(|s| s.contains("rate_limited") || s.contains("rate limit"));
    (limited && c.token.is_none()).then_some(
        "calls were refused by the per-connection call rate (limits.calls_per_second, 200 a second by default): \
         this measured the limit; pass the admin token (--token or RPCHUB_TOKEN) to measure the server",
    )
}

fn new_tally() -> Tally {
    Tally { hist: histogram(), calls: 0, errors: Errors::default(), setup_errors: Errors::default() }
}

fn setup_failed(tally: &RefCell<Tally>, shared: &Shared, e: String) {
    tally.borrow_mut().setup_errors.add(e);
    shared.failed.fetch_add(1, Relaxed);
}

/// One connection's loop: call, wait for the answer, check it, count it if it was measured.
async fn caller(
    mut ws: super::client::Ws,
    shared: &Shared,
    tally: &RefCell<Tally>,
    prefix: &str,
    is_ping: bool,
) {
    shared.ready.fetch_add(1, Relaxed);
    while shared.phase.load(Relaxed) == SETUP {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for id in 1u64.. {
        let phase = shared.phase.load(Relaxed);
        if phase == STOP {
            return;
        }
        let sent = now_us();
        if let Err(e) = ws.send(Message::text(format!("{prefix}{id}}}"))).await {
            return tally.borrow_mut().errors.add(format!("send: {e}"));
        }
        let outcome = loop {
            let text = match ws.next().await {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(f))) => {
                    let why = f.map(|f| format!(": close {} {}", u16::from(f.code), f.reason));
                    let why = why.unwrap_or_default();
                    return tally.borrow_mut().errors.add(format!("closed by server{}", why.trim_end()));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return tally.borrow_mut().errors.add(format!("read: {e}")),
                None => return tally.borrow_mut().errors.add("connection closed"),
            };
            match serde_json::from_str::<Answer>(text.as_str()) {
                Ok(ans) if ans.id == Some(id) => {
                    break match (ans.result, ans.error) {
                        (_, Some(e)) => Err(format!("error answer: {}", e.get())),
                        (Some(r), _) if !is_ping || r.get() == r#""pong""# => Ok(()),
                        (Some(r), _) => Err(format!("ping answered {}", r.get())),
                        (None, None) => Err("answer without a result".to_string()),
                    };
                }
                Ok(_) => continue, // a notification, or another id
                Err(e) => break Err(format!("bad answer: {e}")),
            }
        };
        let took = now_us() - sent;
        if phase == MEASURE && shared.phase.load(Relaxed) == MEASURE {
            let mut t = tally.borrow_mut();
            match outcome {
                Ok(()) => {
                    t.calls += 1;
                    t.hist.saturating_record(took.max(1));
                }
                Err(e) => t.errors.add(e),
            }
        }
    }
}

/// Prints the main figures of an rpc result.
pub(crate) fn table(v: &Value) {
    let title = format!(
        "rpc: {} connections calling {} for {} s ({})",
        v["connections"],
        report::text(v, "method"),
        v["seconds"],
        report::text(v, "url")
    );
    let mut rows = vec![
        ("setup", format!("{} of {} connected in {} s", v["ready"], v["connections"], v["setup_s"])),
        ("calls/s", report::int(v, "calls_per_s")),
        ("latency µs", report::latency(v)),
        ("errors", report::int(v, "errors")),
    ];
    rows.extend(report::cpu_rows(v, "call"));
    let notes = [
        ("setup errors", report::samples(v, "setup_errors")),
        ("error samples", report::samples(v, "error_samples")),
        ("hint", v["hint"].as_str().map(str::to_string)),
    ];
    rows.extend(notes.into_iter().filter_map(|(k, s)| Some((k, s?))));
    report::print_table(&title, &rows);
}
