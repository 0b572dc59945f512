//! The no-gap invariant with every subscription option on at once: four publishers race on
//! channels created as they go, over a broker that drops, repeats and reorders deliveries and keeps
//! too little history to fill every hole; subscribers follow them plainly, in one
//! `subscribe_many`, conflated, by pattern, and on the `{type,data}` dialect, on a namespace with
//! heartbeats. Every subscriber's stream of each channel must be continuous, or each jump in it
//! announced with its exact count (`skipped`, `gap`), and every one must reach the last offset
//! published; a heartbeat always names the offset the subscriber stands at.

use crate::support::{self, ADMIN, call, send};
use futures::StreamExt;
use rpchub::broker::testing::{Faults, FaultyBroker};
use rpchub::config::NamespaceConfig;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Channels, each created by its first publication during the run.
const CHANNELS: usize = 4;
/// Publisher tasks; each publishes to every channel in turn.
const PUBLISHERS: usize = 4;
/// Publications of each publisher to each channel.
const EACH: usize = 60;
/// History the namespace keeps: too little to fill every hole the broker's drops open.
const HISTORY: usize = 4;

/// One subscriber's view of one channel.
#[derive(Debug, Default, Clone)]
struct Track {
    /// Its snapshot's offset.
    start: u64,
    /// The offset it stands at (its snapshot's, then each event's).
    at: u64,
    /// Publications received live.
    received: u64,
    /// Offsets announced folded (`skipped`).
    skipped: u64,
    /// Offsets announced lost (`gap`).
    lost: u64,
    /// Heartbeats seen.
    heartbeats: u64,
}

/// What a subscriber saw, by channel, and what was wrong.
#[derive(Debug, Default)]
struct Seen {
    tracks: HashMap<String, Track>,
    problems: Vec<String>,
}

impl Seen {
    /// Takes one event (`{type,channel,...}`, as both doors write it).
    fn event(&mut self, who: &str, e: &Value) {
        let Some(channel) = e["channel"].as_str() else {
            return self.problems.push(format!("{who}: an event without a channel: {e}"));
        };
        let n = |k: &str| e[k].as_u64().unwrap_or_else(|| panic!("{who}: no {k} in {e}"));
        match e["type"].as_str() {
            Some("snapshot") => {
                if self.tracks.contains_key(channel) {
                    self.problems.push(format!("{who}: a second snapshot of {channel}: {e}"));
                }
                let offsets: Vec<u64> = e["publications"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["offset"].as_u64().unwrap())
                    .collect();
                if offsets.last().is_some_and(|&l| l != n("offset")) {
                    self.problems
                        .push(format!("{who}: a snapshot of {channel} that does not end at its offset: {e}"));
                }
                self.tracks.insert(
                    channel.into(),
                    Track { start: n("offset"), at: n("offset"), ..Track::default() },
                );
            }
            kind => {
                let Some(t) = self.tracks.get_mut(channel) else {
                    return self
                        .problems
                        .push(format!("{who}: an event of {channel} before its snapshot: {e}"));
                };
                match kind {
                    Some("publication") => {
                        let skipped = e["skipped"].as_u64().unwrap_or(0);
                        if n("offset") != t.at + 1 + skipped {
                            self.problems.push(format!(
                                "{who}: {channel} at {} got offset {} with skipped {skipped}: a silent jump",
                                t.at,
                                n("offset")
                            ));
                        }
                        (t.at, t.received, t.skipped) = (n("offset"), t.received + 1, t.skipped + skipped);
                    }
                    Some("gap") => {
                        if n("from") != t.at + 1 || n("to") < n("from") || e["reason"] != "broker_lost" {
                            self.problems.push(format!(
                                "{who}: {channel} at {}: a gap that does not follow: {e}",
                                t.at
                            ));
                        }
                        (t.at, t.lost) = (n("to"), t.lost + n("to") + 1 - n("from"));
                    }
                    Some("heartbeat") => {
                        if n("offset") != t.at {
                            self.problems.push(format!("{who}: {channel} at {}: a heartbeat says {e}", t.at));
                        }
                        t.heartbeats += 1;
                    }
                    _ => self.problems.push(format!("{who}: an event it did not expect: {e}")),
                }
            }
        }
    }

    /// True once every channel in `ends` is at its end.
    fn reached(&self, ends: &HashMap<String, u64>) -> bool {
        ends.iter().all(|(c, &end)| self.tracks.get(c).is_some_and(|t| t.at == end))
    }
}

/// How a subscriber subscribes.
#[derive(Clone, Copy, Debug)]
enum Way {
    /// One `subscribe` per channel, as each appears.
    Plain,
    /// One `subscribe_many` of every channel, as they appear, conflated to 40 ms.
    ManyConflated,
    /// A pattern over the run's channels.
    Pattern,
    /// A pattern over the run's channels, conflated to 25 ms.
    PatternConflated,
    /// The `{type,data}` dialect: a pattern.
    Typed,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_jump_is_announced_with_its_count_with_every_option_on() {
    let mut c = support::config();
    c.limits.calls_per_second = 100_000;
    c.namespaces.insert(
        "inv".into(),
        NamespaceConfig {
            patterns: true,
            history_size: HISTORY,
            heartbeat: Some(Duration::from_millis(200)),
            ..Default::default()
        },
    );
    // History reads wait a little: publications go on meanwhile, so that some holes are past what
    // the history of 4 holds by the time it is read.
    let faults = Faults {
        drop: 150,
        repeat: 40,
        reorder: 40,
        history_delay: Duration::from_millis(10),
        seed: 0x1a_7a11,
    };
    let broker = FaultyBroker::start(c.limits.max_channels, faults);
    let server = rpchub::start_with(c, broker.clone()).await.expect("server starts");
    let addr = server.addr;
    let run = support::channel("inv").replace(':', "-");
    let channels: Vec<String> = (0..CHANNELS).map(|i| format!("inv:{run}-{i}")).collect();
    // The first channel exists before anyone subscribes; the others appear during the run.
    let mut admin = support::ws(addr, Some(ADMIN)).await;
    call(&mut admin, "publish", json!([channels[0], {"p": "first"}])).await;

    let ways = [
        Way::Plain,
        Way::Plain,
        Way::ManyConflated,
        Way::Pattern,
        Way::Pattern,
        Way::PatternConflated,
        Way::Typed,
        Way::Typed,
    ];
    let (go, _) = tokio::sync::broadcast::channel::<HashMap<String, u64>>(1);
    let mut subscribers = Vec::new();
    for (i, way) in ways.iter().copied().enumerate() {
        let who = format!("subscriber {i} ({way:?})");
        let (run, channels, mut ends) = (run.clone(), channels.clone(), go.subscribe());
        let ready = Arc::new(tokio::sync::Notify::new());
        let told = ready.clone();
        subscribers.push((
            tokio::spawn(async move {
                let path = if matches!(way, Way::Typed) { "/ws" } else { "/ws/rpc" };
                let mut w = support::try_ws(addr, path, None, &[]).await.unwrap();
                let pattern = format!("inv:{run}-*");
                let mut seen = Seen::default();
                match way {
                    Way::Pattern | Way::PatternConflated => {
                        let conflate = matches!(way, Way::PatternConflated).then_some(25);
                        let params = json!({"channel": pattern, "limit": 0, "conflate_ms": conflate});
                        send(&mut w, json!({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": params})).await;
                    }
                    Way::Typed => {
                        send(&mut w, json!({"type": "subscribe", "data": {"channel": pattern, "limit": 0}})).await
                    }
                    // Channels need not exist to be subscribed to: these are made now, or were.
                    Way::Plain => {
                        for (i, ch) in channels.iter().enumerate() {
                            let req = json!({"jsonrpc": "2.0", "id": 10 + i, "method": "subscribe", "params": [ch, null, 0]});
                            send(&mut w, req).await;
                        }
                    }
                    Way::ManyConflated => {
                        let items: Vec<Value> =
                            channels.iter().map(|ch| json!({"channel": ch, "limit": 0, "conflate_ms": 40})).collect();
                        send(&mut w, json!({"jsonrpc": "2.0", "id": 1, "method": "subscribe_many", "params": [items]})).await;
                    }
                }
                told.notify_one();
                let mut end: Option<HashMap<String, u64>> = None;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                loop {
                    if end.is_none()
                        && let Ok(e) = ends.try_recv()
                    {
                        end = Some(e);
                    }
                    if end.as_ref().is_some_and(|e| seen.reached(e)) {
                        // A little longer, for the heartbeats of the quiet channels.
                        let quiet = tokio::time::Instant::now() + Duration::from_millis(500);
                        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(quiet, w.next()).await {
                            if let Message::Text(t) = m {
                                take(&who, &t, &mut seen);
                            }
                        }
                        break;
                    }
                    if tokio::time::Instant::now() > deadline {
                        seen.problems.push(format!("{who}: did not reach the end within 60 s: {:?} of {end:?}", seen.tracks));
                        break;
                    }
                    match tokio::time::timeout(Duration::from_millis(20), w.next()).await {
                        Ok(Some(Ok(Message::Text(t)))) => take(&who, &t, &mut seen),
                        Ok(Some(Ok(_))) | Err(_) => {}
                        Ok(other) => {
                            seen.problems.push(format!("{who}: the connection ended: {other:?}"));
                            break;
                        }
                    }
                }
                seen
            }),
            ready,
        ));
    }
    for (_, ready) in &subscribers {
        ready.notified().await;
    }

    // Four publishers, each over its own connection, each through every channel in turn.
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let channels = channels.clone();
            tokio::spawn(async move {
                let mut w = support::ws(addr, Some(ADMIN)).await;
                let mut last = HashMap::new();
                for i in 0..EACH {
                    for (k, ch) in channels.iter().enumerate() {
                        let r = call(&mut w, "publish", json!([ch, {"p": p, "i": i, "k": k}])).await;
                        let offset = r["result"]["offset"].as_u64().unwrap_or_else(|| panic!("{r}"));
                        let e: &mut u64 = last.entry(ch.clone()).or_default();
                        *e = (*e).max(offset);
                    }
                    if i % 10 == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                last
            })
        })
        .collect();
    let mut ends: HashMap<String, u64> = HashMap::new();
    for p in publishers {
        for (ch, o) in p.await.unwrap() {
            let e = ends.entry(ch).or_default();
            *e = (*e).max(o);
        }
    }
    assert_eq!(ends[&channels[0]], (PUBLISHERS * EACH + 1) as u64, "every publication got an offset");
    // What the broker still holds back comes out, and every channel is checked again.
    broker.settle();
    let _ = go.send(ends.clone());

    let mut totals = Track::default();
    for (i, (task, _)) in subscribers.into_iter().enumerate() {
        let seen = task.await.unwrap();
        assert!(seen.problems.is_empty(), "{} problems:\n{}", seen.problems.len(), seen.problems.join("\n"));
        for (ch, t) in &seen.tracks {
            assert_eq!(
                t.start + t.received + t.skipped + t.lost,
                ends[ch],
                "subscriber {i} ({:?}), {ch}: from its snapshot, every offset is received, skipped or lost, \
                 exactly: {t:?}",
                ways[i]
            );
            totals.received += t.received;
            totals.skipped += t.skipped;
            totals.lost += t.lost;
            totals.heartbeats += t.heartbeats;
        }
        assert_eq!(seen.tracks.len(), CHANNELS, "subscriber {i} ({:?}) follows every channel", ways[i]);
    }
    // The run exercised what it is about: drops the history could not fill, conflation, heartbeats.
    assert!(
        broker.counts.dropped.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the broker dropped deliveries"
    );
    assert!(totals.lost > 0, "some stretches were announced lost: {totals:?}");
    assert!(totals.skipped > 0, "conflation folded some: {totals:?}");
    assert!(totals.heartbeats > 0, "quiet channels sent heartbeats: {totals:?}");
    eprintln!("{totals:?}");
}

/// Takes one text frame of either door into `seen`.
fn take(who: &str, text: &str, seen: &mut Seen) {
    let v: Value = serde_json::from_str(text).unwrap();
    if v.get("id").is_some() {
        // An answer: a subscription id, or subscribe_many's results; an error is a problem.
        if v.get("error").is_some()
            || v["result"]["results"].as_array().is_some_and(|r| r.iter().any(|x| x.get("error").is_some()))
        {
            seen.problems.push(format!("{who}: a subscribe failed: {v}"));
        }
        return;
    }
    match v.get("method") {
        Some(m) if m == "subscription" => seen.event(who, &v["params"]["result"]),
        Some(_) => seen.problems.push(format!("{who}: an unexpected notification: {v}")),
        // The `{type,data}` dialect's events are the objects themselves (and its pings).
        None if v["type"] == "ping" => {}
        None => seen.event(who, &v),
    }
}
