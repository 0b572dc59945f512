//! storm --since: a reconnect storm, as after a deploy or a dropped load balancer. N clients
//! subscribe to one channel and stay; then every connection is cut at once (each client drops its
//! TCP connection without a close frame), `--missed` publications go out while they are away,
//! and every client reconnects at once (at most `--concurrency` connecting at a time, from source
//! addresses of their own) and subscribes again with `since` = the epoch and the last offset it
//! had. A client is back when its snapshot said `recovered: true` and it holds every publication
//! up to the last one published, from the snapshot or live, each once and in order.
//!
//! With `--away-ms`, the clients wait that long after the cut before they come back (as
//! clients with a reconnect delay do), so the missed publications are all out by then and come
//! from history; by default they come back at once, while the publications are going out.
//!
//! Figures: `storm_s` = from the clients starting back (the cut, plus `--away-ms`) to the last
//! one back; per client, the same span to its own return (latency);
//! `back`, `not_recovered` (snapshots with `recovered: false`), lost, gaps and duplicates over
//! every client; failures by reason; the server's CPU over the storm.

use super::client::{SourceIps, Target, block};
use super::counts::Offsets;
use super::measure::{
    CpuWindow, Errors, histogram, latency_json, now_us, round, spawn_runtimes, thread_cpu_pct_until,
    wait_until, watchdog,
};
use super::publisher;
use super::report::{self, Progress};
use super::socket::Socket;
use super::storm::StormArgs;
use super::{CommonArgs, Error, check_files, extend};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;

/// Size of each missed publication's data, bytes.
const DATA_BYTES: usize = 100;

/// What the threads of one run share.
struct Run {
    args: StormArgs,
    target: Arc<Target>,
    /// Source addresses of the first connections and of the reconnections.
    first_ips: SourceIps,
    again_ips: SourceIps,
    setup: Duration,
    /// Client threads; thread t runs clients t, t + threads, ...
    threads: usize,
    /// Connection attempts in flight per thread, before the cut.
    setup_permits: usize,
    /// Clients subscribed before the cut, and those that could not subscribe.
    ready: AtomicUsize,
    failed: AtomicUsize,
    /// Clients back after the cut (or given up).
    done: AtomicUsize,
    /// When the clients start back: the cut plus `--away-ms` (µs on the bench clock).
    back_from_us: AtomicU64,
}

/// Where the run is; clients and the publisher follow it.
#[derive(Clone, Copy, PartialEq, PartialOrd, Debug)]
enum Phase {
    Setup,
    /// Every connection is cut; the clients come back.
    Cut,
    /// The measurement is over.
    Stop,
}

/// What one thread counted.
#[derive(Default)]
struct Tally {
    hist: Option<Histogram<u64>>,
    setup_errors: Errors,
    failures: BTreeMap<String, u64>,
    back: u64,
    not_recovered: u64,
    /// Publications each client should have got back, and what they got.
    expected: u64,
    received: u64,
    lost: u64,
    gaps: u64,
    dups: u64,
    from_snapshots: u64,
    last_back_us: u64,
    cpu_pct: f64,
}

/// Runs the scenario; the figures as one JSON object (with `error` if nothing was measured).
pub(crate) fn run(
    c: &CommonArgs,
    target: Arc<Target>,
    a: &StormArgs,
    progress: &Progress,
) -> Result<Value, Error> {
    check_files(a.clients + 2)?;
    if a.missed == 0 {
        return Err(Error::Usage("--missed must be at least 1 with --since".into()));
    }
    let limit = 2.0 * c.setup_seconds + 30.0;
    watchdog("storm --since", Duration::from_secs_f64(limit), c.json);
    let threads = c.threads().min(a.clients.max(1));
    let run = Arc::new(Run {
        args: a.clone(),
        first_ips: SourceIps::new(c, &target, block::SUBSCRIBERS),
        again_ips: SourceIps::new(c, &target, block::STORM),
        target: target.clone(),
        setup: Duration::from_secs_f64(c.setup_seconds),
        threads,
        setup_permits: c.connect_permits(threads),
        ready: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        back_from_us: AtomicU64::new(0),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let (last_tx, last_rx) = watch::channel(0u64);
    let setup_started = Instant::now();
    let clients = spawn_runtimes(threads, "bench-storm", {
        let (run, phase, last) = (run.clone(), phase_rx.clone(), last_rx.clone());
        move |t| thread(t, run.clone(), phase.clone(), last.clone())
    });
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let publisher = spawn_runtimes(1, "bench-pub", {
        let (c, target, phase) = (c.clone(), target.clone(), phase_rx.clone());
        let (channel, missed) = (a.channel.clone(), a.missed);
        move |_| {
            let src = SourceIps::new(&c, &target, block::PUBLISHER).for_conn(0);
            publish(
                target.clone(),
                src,
                channel.clone(),
                missed,
                phase.clone(),
                ready_tx.clone(),
                last_tx.clone(),
            )
        }
    });
    let publisher = publisher.into_iter().next().expect("one thread was started; qed");

    progress.phase("subscribing", a.clients as u64);
    let mut publisher_ready = None;
    wait_until(setup_started + run.setup, || {
        let n = run.ready.load(Relaxed) + run.failed.load(Relaxed);
        progress.set(n as u64);
        publisher_ready = publisher_ready.or_else(|| ready_rx.try_recv().ok());
        n == a.clients && publisher_ready.is_some()
    });
    let setup_s = setup_started.elapsed().as_secs_f64();
    let ready = run.ready.load(Relaxed);
    let go = ready > 0 && publisher_ready == Some(true);

    let cpu = CpuWindow::start(c);
    let cut = Instant::now();
    run.back_from_us.store(now_us() + a.away_ms * 1000, Relaxed);
    let _ = phase_tx.send(if go { Phase::Cut } else { Phase::Stop });
    progress.phase("reconnecting", ready as u64);
    wait_until(cut + Duration::from_millis(a.away_ms) + run.setup, || {
        progress.set(run.done.load(Relaxed) as u64);
        !go || run.done.load(Relaxed) >= ready
    });
    let used = cpu.stop();
    let storm_s = cut.elapsed().as_secs_f64();
    let _ = phase_tx.send(Phase::Stop);
    let published = publisher.join().expect("the publisher thread does not panic; qed");

    let (mut hist, mut t) = (histogram(), Tally::default());
    let (mut setup_errors, mut cpu_max) = (Errors::default(), 0f64);
    for h in clients {
        let x = h.join().expect("storm threads do not panic; qed");
        hist.add(x.hist.as_ref().expect("set at start; qed")).expect("histograms of equal bounds add; qed");
        setup_errors.merge(x.setup_errors);
        for (k, v) in x.failures {
            *t.failures.entry(k).or_default() += v;
        }
        t.back += x.back;
        t.not_recovered += x.not_recovered;
        t.expected += x.expected;
        t.received += x.received;
        t.lost += x.lost;
        t.gaps += x.gaps;
        t.dups += x.dups;
        t.from_snapshots += x.from_snapshots;
        t.last_back_us = t.last_back_us.max(x.last_back_us);
        cpu_max = cpu_max.max(x.cpu_pct);
    }
    let back_s = t.last_back_us.saturating_sub(run.back_from_us.load(Relaxed)) as f64 / 1e6;
    let failed: u64 = t.failures.values().sum();
    let mut out = json!({
        "scenario": "storm",
        "since": true,
        "url": target.url(),
        "clients": a.clients,
        "missed": a.missed,
        "away_ms": a.away_ms,
        "concurrency": a.concurrency,
        "channel": a.channel,
        "threads": threads,
        "source_ips": run.first_ips.count(a.clients) + run.again_ips.count(a.clients),
        "ready": ready,
        "setup_failed": a.clients - ready,
        "setup_errors": setup_errors.samples,
        "setup_s": round(setup_s, 2),
        "published": published.as_ref().map_or(0, |p| p.1),
        "last_offset": published.as_ref().map_or(0, |p| p.0),
        "publish_error": published.as_ref().err(),
        "back": t.back,
        "not_back": ready as u64 - t.back,
        "not_recovered": t.not_recovered,
        "failed": failed,
        "failure_reasons": t.failures,
        "expected": t.expected,
        "received": t.received,
        "from_snapshots": t.from_snapshots,
        "lost": t.lost,
        "gaps": t.gaps,
        "dups": t.dups,
        "storm_s": round(if t.back > 0 { back_s } else { storm_s }, 3),
        "reconnects_per_s": if t.back > 0 { round(t.back as f64 / back_s.max(1e-9), 0) } else { 0.0 },
        "latency_us": latency_json(&hist),
    });
    extend(&mut out, used.json(cpu_max, ("reconnect", t.back)));
    let first = |key: &str| out[key][0].as_str().map(|e| format!(": {e}")).unwrap_or_default();
    if ready == 0 {
        out["error"] = json!(format!("no client could subscribe{}", first("setup_errors")));
    } else if let Err(e) = &published {
        out["error"] = json!(format!("the publisher failed: {e}"));
    } else if t.back == 0 {
        out["error"] = json!("no client came back with every missed publication");
    }
    Ok(out)
}

/// Thread `t`: its share of the clients (every `threads`-th), then its tally.
async fn thread(
    t: usize,
    run: Arc<Run>,
    mut phase: watch::Receiver<Phase>,
    last: watch::Receiver<u64>,
) -> Tally {
    let threads = run.threads;
    let tally = Rc::new(RefCell::new(Tally { hist: Some(histogram()), ..Tally::default() }));
    let setup_permits = Rc::new(Semaphore::new(run.setup_permits));
    let again_permits = Rc::new(Semaphore::new((run.args.concurrency / threads).max(1)));
    for i in (t..run.args.clients).step_by(threads) {
        let (run, tally, phase, last) = (run.clone(), tally.clone(), phase.clone(), last.clone());
        let (setup_permits, again_permits) = (setup_permits.clone(), again_permits.clone());
        tokio::task::spawn_local(async move {
            let outcome = client(i, &run, &tally, setup_permits, again_permits, phase.clone(), last).await;
            if let Some(outcome) = outcome {
                if let Err(e) = outcome {
                    *tally.borrow_mut().failures.entry(e).or_default() += 1;
                }
                run.done.fetch_add(1, Relaxed);
                // Stay connected until the run is over, as clients that came back do.
                let mut phase = phase;
                let _ = phase.wait_for(|p| *p >= Phase::Stop).await;
            }
        });
    }
    let _ = phase.wait_for(|p| *p >= Phase::Cut).await;
    let cpu_pct = thread_cpu_pct_until(async {
        let _ = phase.wait_for(|p| *p >= Phase::Stop).await;
    })
    .await;
    let mut tally = std::mem::take(&mut *tally.borrow_mut());
    tally.cpu_pct = cpu_pct;
    tally
}

/// Client `i`: subscribe, wait for the cut, drop the connection, come back with `since`.
/// None if it never subscribed (counted as a setup failure); else how its return went.
async fn client(
    i: usize,
    run: &Run,
    tally: &RefCell<Tally>,
    setup_permits: Rc<Semaphore>,
    again_permits: Rc<Semaphore>,
    mut phase: watch::Receiver<Phase>,
    last: watch::Receiver<u64>,
) -> Option<Result<(), String>> {
    let permit = setup_permits.acquire().await;
    let setup = async {
        let mut s = Socket::open(&run.target, run.first_ips.for_conn(i), 4096, false).await?;
        let sub = s.subscribe(&run.args.channel).await?;
        Ok::<_, String>((s, sub))
    };
    let (socket, sub) = match tokio::time::timeout(run.setup, setup).await {
        Ok(Ok(x)) => x,
        outcome => {
            let e = outcome.map_or_else(|_| "timed out".to_string(), |r| r.err().unwrap_or_default());
            tally.borrow_mut().setup_errors.add(e);
            run.failed.fetch_add(1, Relaxed);
            return None;
        }
    };
    drop(permit);
    run.ready.fetch_add(1, Relaxed);
    let _ = phase.wait_for(|p| *p >= Phase::Cut).await;
    drop(socket);
    if *phase.borrow() == Phase::Stop {
        return Some(Err("not cut: the run did not start".into()));
    }
    let from_us = run.back_from_us.load(Relaxed);
    tokio::time::sleep(Duration::from_micros(from_us.saturating_sub(now_us()))).await;
    let deadline = Instant::now() + run.setup;
    let _permit = again_permits.acquire().await;
    let back = tokio::time::timeout_at(deadline.into(), come_back(run, i, &sub.epoch, sub.offset, last));
    let got = match back.await {
        Ok(Ok(got)) => got,
        Ok(Err(e)) => return Some(Err(e)),
        Err(_) => return Some(Err("not back in time".into())),
    };
    let took = now_us().saturating_sub(from_us).max(1);
    let mut t = tally.borrow_mut();
    let o = got.offsets;
    t.expected += got.last.saturating_sub(sub.offset);
    t.received += o.received;
    t.lost += got.last.saturating_sub(sub.offset).saturating_sub(o.received);
    t.gaps += o.gaps;
    t.dups += o.dups;
    t.from_snapshots += got.from_snapshot;
    if !got.recovered {
        t.not_recovered += 1;
        return Some(Err("snapshot with recovered: false".into()));
    }
    if o.gaps > 0 || o.dups > 0 {
        return Some(Err("a gap or a duplicate".into()));
    }
    t.back += 1;
    t.last_back_us = t.last_back_us.max(from_us + took);
    t.hist.as_mut().expect("set at start; qed").saturating_record(took);
    Some(Ok(()))
}

/// What one client got back.
struct Got {
    recovered: bool,
    /// The last offset published while it was away.
    last: u64,
    offsets: Offsets,
    from_snapshot: u64,
}

/// Reconnects, subscribes with `since` (`epoch`, `offset`), and reads until it holds every
/// offset up to the last one published (known once the publisher's answers are in).
async fn come_back(
    run: &Run,
    i: usize,
    epoch: &str,
    offset: u64,
    mut last: watch::Receiver<u64>,
) -> Result<Got, String> {
    let mut s = Socket::open(&run.target, run.again_ips.for_conn(i), 4096, false).await?;
    let sub = s.subscribe_since(&run.args.channel, Some((epoch, offset))).await?;
    let mut got =
        Got { recovered: sub.recovered, last: 0, offsets: Offsets::after(offset), from_snapshot: 0 };
    for &o in &sub.offsets {
        got.offsets.see(o);
        got.from_snapshot += 1;
    }
    loop {
        s.drain(|m| {
            if let Some(o) = publication_offset(m, &sub.id) {
                got.offsets.see(o);
            }
            true
        })?;
        let l = *last.borrow();
        if l > 0 && got.offsets.next > l {
            got.last = l;
            return Ok(got);
        }
        s.flush_replies().await?;
        tokio::select! {
            r = s.fill() => r?,
            _ = last.changed() => {}
        }
    }
}

/// The offset of a publication notification of subscription `id`.
fn publication_offset(m: &[u8], id: &Value) -> Option<u64> {
    let v: Value = serde_json::from_slice(m).ok()?;
    let p = &v["params"];
    (v["method"] == "subscription" && &p["subscription"] == id && p["result"]["type"] == "publication")
        .then(|| p["result"]["offset"].as_u64())
        .flatten()
}

/// The publisher: connects before the cut, publishes `missed` publications once it comes,
/// and hands the last offset to the clients. Ok((last offset, publications)).
async fn publish(
    target: Arc<Target>,
    src: Option<std::net::Ipv4Addr>,
    channel: String,
    missed: u64,
    mut phase: watch::Receiver<Phase>,
    ready: std::sync::mpsc::Sender<bool>,
    last: watch::Sender<u64>,
) -> Result<(u64, u64), String> {
    let ws = match target.connect(src, 64 * 1024).await {
        Ok(ws) => ws,
        Err(e) => {
            let _ = ready.send(false);
            return Err(e);
        }
    };
    let _ = ready.send(true);
    let _ = phase.wait_for(|p| *p >= Phase::Cut).await;
    if *phase.borrow() == Phase::Stop {
        return Err("the run did not start".into());
    }
    let (mut sink, mut stream) = ws.split();
    let channel = serde_json::to_string(&channel).expect("a string serializes; qed");
    for j in 0..missed {
        let data = publisher::data(DATA_BYTES, now_us(), j);
        let id = j + 1;
        let call = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"publish","params":{{"channel":{channel},"data":{data}}}}}"#
        );
        sink.send(Message::text(call)).await.map_err(|e| format!("send: {e}"))?;
    }
    let (mut answered, mut max) = (0, 0);
    while answered < missed {
        let text = match stream.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None => return Err("the connection ended".into()),
            Some(Err(e)) => return Err(format!("read: {e}")),
            Some(Ok(_)) => continue,
        };
        let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
        match v["result"]["offset"].as_u64() {
            Some(o) => max = max.max(o),
            None => return Err(format!("publish answered {}", &text.as_str()[..text.len().min(160)])),
        }
        answered += 1;
    }
    let _ = last.send(max);
    let _ = phase.wait_for(|p| *p >= Phase::Stop).await;
    Ok((max, answered))
}

/// Prints the main figures of a storm --since result.
pub(crate) fn table(v: &Value) {
    let title = format!(
        "storm --since: {} clients on {} cut at once, {} publications missed, back {} at a time ({})",
        v["clients"],
        report::text(v, "channel"),
        v["missed"],
        v["concurrency"],
        report::text(v, "url")
    );
    let mut rows = vec![
        ("setup", format!("{} of {} subscribed in {} s", v["ready"], v["clients"], v["setup_s"])),
        ("back", format!("{} of {} in {} s", v["back"], v["ready"], v["storm_s"])),
        ("reconnects/s", report::int(v, "reconnects_per_s")),
        ("cut to back µs", report::latency(v)),
        ("recovered: false", report::int(v, "not_recovered")),
        ("lost/gaps/dups", format!("{} / {} / {}", v["lost"], v["gaps"], v["dups"])),
        ("from snapshots", format!("{} of {}", v["from_snapshots"], v["received"])),
        ("failed", report::by_reason(v, "failed", "failure_reasons")),
    ];
    rows.extend(report::cpu_rows(v, "reconnect"));
    if let Some(s) = report::samples(v, "setup_errors") {
        rows.push(("setup errors", s));
    }
    report::print_table(&title, &rows);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_offset_of_its_own_publications_only() {
        let id = json!("a1");
        let note = br#"{"jsonrpc":"2.0","method":"subscription","params":{"subscription":"a1","result":{"type":"publication","channel":"c","offset":7,"ts":1,"data":{}}}}"#;
        assert_eq!(publication_offset(note, &id), Some(7));
        assert_eq!(publication_offset(note, &json!("b2")), None);
        let closed = br#"{"jsonrpc":"2.0","method":"subscription","params":{"subscription":"a1","result":{"type":"closed","reason":"x"}}}"#;
        assert_eq!(publication_offset(closed, &id), None);
        assert_eq!(publication_offset(b"not json", &id), None);
    }
}
