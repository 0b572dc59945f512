//! The hub's hot paths, through the library's public API and the memory broker:
//!
//! - `publish/N`: one publication fanned out to N live subscribers (throughput in deliveries);
//! - `snapshot/100`: a subscribe that snapshots 100 retained publications, then its unsubscribe;
//! - `history/append_trim`: a publish to a channel nobody watches whose history is full;
//! - `encode/*`: building a notification frame once (as each publication does), and copying it
//!   for one subscriber (as a snapshot is queued; live deliveries queue it by reference).
//!
//! Run with `cargo bench --bench hub` (a few minutes); CI only builds it (`cargo bench --no-run`).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rpchub::Config;
use rpchub::broker::memory::MemoryBroker;
use rpchub::broker::{NewPublication, Publication};
use rpchub::frontends::jsonrpc::{JsonRpcEncoding, splice};
use rpchub::hub::{Encoding, Event, Hub, Sink, SubIdGen, Subscription};
use rpchub::metrics::Metrics;
use rpchub::transport::{Batch, Outbox, SharedFrame, Take};
use serde_json::value::RawValue;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// Channel every benchmark publishes to (default namespace: history of 100).
const CHANNEL: &str = "bench:x";
/// Publications a full history holds (`DEFAULT_HISTORY_SIZE`).
const HISTORY: usize = rpchub::constants::DEFAULT_HISTORY_SIZE;
/// Outbox bounds far above what a benchmark queues between drains.
const OUTBOX_MESSAGES: usize = 1 << 20;
const OUTBOX_BYTES: usize = 1 << 30;
/// Bytes queued in all outboxes together between two drains in the fan-out benchmark (drains
/// are not timed): big enough that they are rare for a few subscribers, small enough to stay
/// in cache-friendly memory with 10,000.
const DRAIN_EVERY_BYTES: usize = 4 << 20;

/// 100 bytes of JSON data: a string of 98 characters.
fn data_100() -> Box<RawValue> {
    let data = RawValue::from_string(format!("\"{}\"", "x".repeat(98))).expect("a JSON string; qed");
    assert_eq!(data.get().len(), 100);
    data
}

fn publication() -> NewPublication {
    NewPublication { data: data_100(), event: Some("trade".into()), idempotency_key: None, key: None }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a current-thread runtime; qed")
}

/// A hub over a fresh memory broker (whose sweeper needs the runtime entered).
fn new_hub(rt: &Runtime) -> Arc<Hub> {
    let _entered = rt.enter();
    let broker = MemoryBroker::start(rpchub::constants::DEFAULT_MAX_CHANNELS);
    Hub::new(Arc::new(Config::default()), broker, Arc::new(Metrics::new()))
}

/// Subscribes `out` to [`CHANNEL`] as a JSON-RPC subscriber, both phases at once.
/// The encoding every subscriber of the benchmarks shares, as every subscriber of one front door
/// does (the fan-out builds one frame per encoding in use on a channel).
fn shared_encoding() -> Arc<dyn Encoding> {
    static ENCODING: std::sync::OnceLock<Arc<dyn Encoding>> = std::sync::OnceLock::new();
    ENCODING.get_or_init(|| Arc::new(JsonRpcEncoding)).clone()
}

async fn subscribe(hub: &Hub, out: &Arc<Outbox>) -> Subscription {
    let p = hub.prepare(CHANNEL, None, None).await.expect("prepare");
    let sink = Sink::new(out.clone(), shared_encoding(), splice(p.id()));
    p.go_live(sink, &[]).expect("go live")
}

/// A hub whose [`CHANNEL`] holds a full history.
fn hub_with_full_history(rt: &Runtime) -> Arc<Hub> {
    let hub = new_hub(rt);
    rt.block_on(async {
        for _ in 0..HISTORY {
            hub.publish(CHANNEL, publication()).await.expect("publish");
        }
    });
    hub
}

/// Empties every outbox, as their writers would; returns the bytes taken.
fn drain(outboxes: &[Arc<Outbox>], scratch: &mut Batch) -> usize {
    let mut taken = 0;
    for o in outboxes {
        match o.take(scratch) {
            Take::Data => taken += scratch.len(),
            Take::Idle => {}
            Take::End(e) => panic!("a benchmark outbox ended: {e:?}"),
        }
        scratch.clear(usize::MAX);
    }
    taken
}

/// Times `iters` publishes to [`CHANNEL`], `batch` at a time inside one `block_on` (the memory
/// broker never waits, so this times the publish itself, not the runtime), calling `between`
/// untimed after each batch. The publications are made before the timer starts.
fn timed_publishes(rt: &Runtime, hub: &Hub, iters: u64, batch: u64, mut between: impl FnMut()) -> Duration {
    let mut spent = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let now = left.min(batch);
        let pubs: Vec<NewPublication> = (0..now).map(|_| publication()).collect();
        let start = Instant::now();
        rt.block_on(async {
            for p in pubs {
                black_box(hub.publish(CHANNEL, p).await.expect("publish"));
            }
        });
        spent += start.elapsed();
        between();
        left -= now;
    }
    spent
}

fn publish_fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish");
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    for n in [1usize, 100, 10_000] {
        let rt = runtime();
        let hub = new_hub(&rt);
        let outboxes: Vec<Arc<Outbox>> =
            (0..n).map(|_| Arc::new(Outbox::new(OUTBOX_MESSAGES, OUTBOX_BYTES))).collect();
        let subs = rt.block_on(async {
            let mut subs = Vec::with_capacity(n);
            for o in &outboxes {
                subs.push(subscribe(&hub, o).await);
            }
            subs
        });
        let mut scratch = Batch::default();
        drain(&outboxes, &mut scratch);
        // One publish to learn the frame size, hence how many fit between drains.
        rt.block_on(hub.publish(CHANNEL, publication())).expect("publish");
        let frame = drain(&outboxes, &mut scratch) / n;
        let batch = (DRAIN_EVERY_BYTES / (frame * n)).max(1) as u64;

        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                timed_publishes(&rt, &hub, iters, batch, || {
                    drain(&outboxes, &mut scratch);
                })
            })
        });
        drop(subs);
    }
    group.finish();
}

fn snapshot(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot");
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    let rt = runtime();
    let hub = hub_with_full_history(&rt);
    let out = Arc::new(Outbox::new(OUTBOX_MESSAGES, OUTBOX_BYTES));
    let mut scratch = Batch::default();
    drop(rt.block_on(subscribe(&hub, &out)));
    let bytes = drain(std::slice::from_ref(&out), &mut scratch);
    assert!(bytes > HISTORY * 100, "the snapshot carries the whole history ({bytes} bytes)");
    group.throughput(Throughput::Elements(HISTORY as u64));
    group.bench_function(BenchmarkId::from_parameter(HISTORY), |b| {
        b.iter(|| {
            let sub = rt.block_on(subscribe(&hub, &out));
            assert_eq!(out.queued_messages(), 1, "one snapshot message");
            drop(sub);
            drain(std::slice::from_ref(&out), &mut scratch)
        })
    });
    group.finish();
}

fn history_append_trim(c: &mut Criterion) {
    let mut group = c.benchmark_group("history");
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    let rt = runtime();
    let hub = hub_with_full_history(&rt);
    group.throughput(Throughput::Elements(1));
    group.bench_function("append_trim", |b| {
        b.iter_custom(|iters| timed_publishes(&rt, &hub, iters, 1024, || {}))
    });
    let page = rt.block_on(hub.history(CHANNEL, None, None)).expect("history");
    assert_eq!(page.publications.len(), HISTORY, "the history stayed full");
    group.finish();
}

fn encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    let p = Publication::new(12_345, 1_700_000_000_000, Some("trade"), &data_100(), None);
    let id = splice(SubIdGen::default().next());
    let enc = JsonRpcEncoding;
    let event = Event::Publication { channel: CHANNEL, publication: &p, skipped: 0, checksum: None };
    let mut frame = SharedFrame::default();
    let len: usize =
        frame.build(enc.splice_len(), |w| enc.encode(&event, w)).parts(&id).iter().map(|x| x.len()).sum();
    group.throughput(Throughput::Bytes(len as u64));
    group.bench_function("build", |b| {
        b.iter(|| {
            let event = Event::Publication {
                channel: black_box(CHANNEL),
                publication: black_box(&p),
                skipped: 0,
                checksum: None,
            };
            let mut f = SharedFrame::with_capacity(enc.size_hint(&event));
            f.build(enc.splice_len(), |w| enc.encode(&event, w));
            black_box(Arc::new(f))
        })
    });
    let mut out = Vec::with_capacity(4096);
    group.bench_function("copy_parts", |b| {
        b.iter(|| {
            out.clear();
            for part in frame.parts(black_box(&id)) {
                out.extend_from_slice(part);
            }
            black_box(&out);
        })
    });
    group.finish();
}

criterion_group!(benches, publish_fan_out, snapshot, history_append_trim, encoding);
criterion_main!(benches);
