//! The broker contract, checked on every broker through the library's public API, and the hub's
//! promise on top of it: whatever a broker drops, repeats or reorders, and even when it loses a
//! stream, no subscriber ever sees a silent gap or a duplicate.
//!
//! # What the suite promises
//!
//! Part 1 is the contract of `rpchub::broker` (its module doc), one test per promise and broker:
//! offsets from 1, by 1, distinct and gap-free under concurrent publishers; history ranges and
//! retention, oldest first, and how a position beyond the stream reads; idempotency keys; epochs
//! per channel and on a lost stream; deliveries only with interest, each once, in offset order,
//! each in history by the time it arrives, none once interest is gone; and the hub's recovery
//! rules (`since` honoured exactly when history covers it, in its epoch) over the broker.
//!
//! Part 2 is the hub over the broker. Publishers race on one channel, subscribers join at
//! staggered times, drain their outbox as a connection's writer would, and resubscribe with
//! `since` whenever they are told `closed` `insufficient_state`. Each subscriber's stream must be
//! segments, each a snapshot at N then N+1, N+2, ... with no gap and no duplicate, a new one only
//! after a `closed`, the last one reaching the end of the stream. It runs over every broker
//! (losing the stream midway when the broker can be made to), and over a [`FaultyBroker`] that
//! drops, repeats and reorders deliveries: with history that can fill the gaps (the hub must fill
//! them), and with history that cannot (the hub must say so). One more case is staged step by
//! step: two subscribers join a channel the hub has no position for yet while a delivery lags
//! behind history, as a shared broker's pub/sub does.
//!
//! # Adding a broker
//!
//! Write a constructor giving a [`Subject`] (the broker, and what the suite can make it do
//! besides the trait: lose a stream, settle) and add one line to the `broker_contract!`
//! invocation below, as `redis => redis().await;` is: every contract test then runs for it, as
//! `broker_contract::redis::<test>`. Channel names are unique per run, so a shared broker that
//! keeps streams between runs needs no cleaning.

use rpchub::Config;
use rpchub::broker::memory::MemoryBroker;
use rpchub::broker::redis::RedisBroker;
use rpchub::broker::testing::{Faults, FaultyBroker};
use rpchub::broker::{
    Broker, HistoryPage, HistoryRange, Listener, NO_EPOCH, NewPublication, PresenceClient, Publication,
    Published, Retention, StreamPosition,
};
use rpchub::frontends::jsonrpc::{JsonRpcEncoding, splice};
use rpchub::hub::{Encoding, Hub, HubError, Pending, Sink, Subscription, reason};
use rpchub::metrics::Metrics;
use rpchub::transport::{Batch, Outbox, Take};
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Instantiates every contract test for each broker listed as `name => constructor;`, where the
/// constructor is an expression (it may `.await`) that gives an `Option<Subject>` (`None`: the
/// test is skipped, e.g. `redis-server` is not installed and not required).
macro_rules! broker_contract {
    ($($broker:ident => $make:expr;)+) => {$(
        mod $broker {
            use super::*;

            #[tokio::test]
            async fn offsets_start_at_one_and_grow_by_one() {
                let Some(s) = $make else { return };
                super::offsets_start_at_one_and_grow_by_one(s).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_publishers_get_distinct_gap_free_offsets() {
                let Some(s) = $make else { return };
                super::concurrent_publishers_get_distinct_gap_free_offsets(s).await;
            }

            #[tokio::test]
            async fn history_keeps_the_newest_oldest_first() {
                let Some(s) = $make else { return };
                super::history_keeps_the_newest_oldest_first(s).await;
            }

            #[tokio::test]
            async fn a_repeated_idempotency_key_publishes_nothing() {
                let Some(s) = $make else { return };
                super::a_repeated_idempotency_key_publishes_nothing(s).await;
            }

            #[tokio::test]
            async fn epochs_differ_per_channel() {
                let Some(s) = $make else { return };
                super::epochs_differ_per_channel(s).await;
            }

            #[tokio::test]
            async fn a_lost_stream_starts_a_new_epoch_from_zero() {
                let Some(s) = $make else { return };
                super::a_lost_stream_starts_a_new_epoch_from_zero(s).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn deliveries_follow_interest_in_order_each_in_history() {
                let Some(s) = $make else { return };
                super::deliveries_follow_interest_in_order_each_in_history(s).await;
            }

            #[tokio::test]
            async fn recovery_honours_only_a_position_history_covers() {
                let Some(s) = $make else { return };
                super::recovery_honours_only_a_position_history_covers(s).await;
            }

            #[tokio::test]
            async fn watched_prefixes_hear_every_publication_and_streams_are_listed() {
                let Some(s) = $make else { return };
                super::watched_prefixes_hear_every_publication_and_streams_are_listed(s).await;
            }

            #[tokio::test]
            async fn a_state_channel_keeps_the_latest_of_each_key() {
                let Some(s) = $make else { return };
                super::a_state_channel_keeps_the_latest_of_each_key(s).await;
            }

            #[tokio::test]
            async fn presence_counts_clients_and_users_and_expires() {
                let Some(s) = $make else { return };
                super::presence_counts_clients_and_users_and_expires(s).await;
            }

            #[tokio::test]
            async fn read_cursors_only_rise() {
                let Some(s) = $make else { return };
                super::read_cursors_only_rise(s).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn hub_streams_have_no_gap_and_no_duplicate() {
                let Some(s) = $make else { return };
                super::hub_streams_have_no_gap_and_no_duplicate(s).await;
            }
        }
    )+};
}

broker_contract! {
    memory => Some(memory());
    faulty_clean => Some(faulty(Faults::default()).1);
    redis => redis().await;
    redis_cluster => redis_cluster().await;
}

// ---------------------------------------------------------------------------------------------
// The brokers under test.

/// A broker under test, with what the suite can make it do besides the [`Broker`] trait.
struct Subject {
    /// The broker.
    broker: Arc<dyn Broker>,
    /// Loses a channel's stream as a shared broker may (evicted, expired, flushed): its history
    /// and offset go, a new epoch starts. `None` for a broker that cannot be made to: the tests
    /// that need it are skipped for it.
    lose: Option<Box<Lose>>,
    /// Makes the broker hand over what it still holds back and ask its listener to check every
    /// channel (a shared broker's periodic position check). `None` when it holds nothing back.
    settle: Option<Box<dyn Fn() + Send + Sync>>,
}

/// What loses a channel's stream.
type Lose = dyn Fn(&str) + Send + Sync;

/// Streams one broker of the suite may hold.
const MAX_CHANNELS: usize = 1_000;

/// The embedded broker.
fn memory() -> Subject {
    let broker = MemoryBroker::start(MAX_CHANNELS);
    let lost = broker.clone();
    Subject { broker, lose: Some(Box::new(move |channel| lost.lose(channel))), settle: None }
}

/// The Redis broker on this process's `redis-server`; a stream is lost by deleting its keys.
async fn redis() -> Option<Subject> {
    let server = crate::redis_support::shared()?;
    let broker = RedisBroker::connect(&server.url()).await.expect("the redis broker connects");
    let lose = move |channel: &str| {
        let (meta, stream) = (format!("rpchub:{{{channel}}}:meta"), format!("rpchub:{{{channel}}}:stream"));
        server.cli(&["DEL", &meta, &stream]);
    };
    Some(Subject { broker, lose: Some(Box::new(lose)), settle: None })
}

/// The Redis broker on this process's 3-master Redis Cluster.
async fn redis_cluster() -> Option<Subject> {
    let cluster = crate::redis_support::shared_cluster()?;
    let broker =
        RedisBroker::connect(&cluster.url()).await.expect("the redis broker connects to the cluster");
    let lose = move |channel: &str| {
        let (meta, stream) = (format!("rpchub:{{{channel}}}:meta"), format!("rpchub:{{{channel}}}:stream"));
        cluster.nodes[0].cli(&["DEL", &meta, &stream]);
    };
    Some(Subject { broker, lose: Some(Box::new(lose)), settle: None })
}

/// A memory broker behind `faults` (none: it must keep the whole contract), and the handle that
/// tells what it broke.
fn faulty(faults: Faults) -> (Arc<FaultyBroker>, Subject) {
    let broker = FaultyBroker::start(MAX_CHANNELS, faults);
    let (lost, settled) = (broker.clone(), broker.clone());
    let subject = Subject {
        broker: broker.clone(),
        lose: Some(Box::new(move |channel| lost.lose(channel))),
        settle: Some(Box::new(move || settled.settle())),
    };
    (broker, subject)
}

// ---------------------------------------------------------------------------------------------
// Part 1: the broker contract.

/// Publications kept by the tests that do not test retention.
const KEPT: usize = 1_000;
/// How long a delivery that must not come is given to come anyway (a shared broker's deliveries
/// are in flight for a while).
const SETTLE: Duration = Duration::from_millis(100);
/// How long a test waits for something that must come.
const WAIT: Duration = Duration::from_secs(10);

/// Offsets start at 1 and grow by exactly 1 per publication, in one epoch.
async fn offsets_start_at_one_and_grow_by_one(s: Subject) {
    let (b, ch) = (&*s.broker, channel("offsets"));
    let first = publish(b, &ch, 1).await;
    assert_eq!(first.position.offset, 1, "the first publication of a channel has offset 1");
    for n in 2..=5 {
        let p = publish(b, &ch, n).await;
        assert_eq!(p.position.offset, n, "each publication's offset is one more than the last");
        assert_eq!(p.position.epoch, first.position.epoch, "the epoch stays while the stream lives");
        assert!(!p.duplicate, "a publication without a key is never a duplicate");
    }
    let page = read(b, &ch, HistoryRange::Newest(Some(0)), KEPT).await;
    assert_eq!((page.offset, page.publications.len()), (5, 0), "history's offset is the newest one");
    assert_eq!(*page.epoch, first.position.epoch, "history reads the publishers' epoch");
}

/// Presence lists and counts clients and distinct users; a leave removes a client, and an entry
/// not refreshed within its TTL is gone.
async fn presence_counts_clients_and_users_and_expires(s: Subject) {
    let (b, ch) = (&*s.broker, channel("presence"));
    let who = |c: &str, u: &str| PresenceClient { client: c.into(), user: u.into() };
    let ttl = Duration::from_secs(30);
    let join = [who("n-1", "alice"), who("n-2", "alice"), who("n-3", "bob")];
    b.presence_update(&ch, &join, &[], ttl, false).await.unwrap();
    let page = b.presence(&ch, 10, false).await.unwrap();
    assert_eq!((page.count, page.users, page.clients.len()), (3, 2, 3), "{page:?}");
    let mut listed: Vec<_> = page.clients.iter().map(|c| (c.client.clone(), c.user.clone())).collect();
    listed.sort();
    assert_eq!(listed[2], ("n-3".to_string(), "bob".to_string()));
    let page = b.presence(&ch, 1, false).await.unwrap();
    assert_eq!((page.count, page.clients.len()), (3, 1), "max bounds the list, not the count");
    b.presence_update(&ch, &[], &["n-2".into()], ttl, false).await.unwrap();
    let page = b.presence(&ch, 10, false).await.unwrap();
    assert_eq!((page.count, page.users), (2, 2), "{page:?}");
    // A client not refreshed within its TTL is gone; the others are kept alive by a refresh.
    b.presence_update(&ch, &[who("n-4", "carol")], &[], Duration::from_secs(1), false).await.unwrap();
    assert_eq!(b.presence(&ch, 10, false).await.unwrap().count, 3);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let page = b.presence(&ch, 10, false).await.unwrap();
    assert_eq!((page.count, page.users), (2, 2), "carol's entry expired: {page:?}");
    assert_eq!(b.presence(&channel("presence"), 10, false).await.unwrap().count, 0, "an empty channel");
}

/// A read cursor only rises, per user and channel; an unset one reads 0.
async fn read_cursors_only_rise(s: Subject) {
    let (b, ch, other) = (&*s.broker, channel("cursor"), channel("cursor"));
    let user = format!("u{}", std::process::id());
    assert_eq!(b.cursor_set(&user, &ch, 5, "n-1").await.unwrap(), 5);
    assert_eq!(b.cursor_set(&user, &ch, 3, "n-1").await.unwrap(), 5, "a lower value changes nothing");
    assert_eq!(b.cursor_set(&user, &ch, 7, "n-2").await.unwrap(), 7);
    assert_eq!(b.cursor_get(&user, &[ch.clone(), other.clone()]).await.unwrap(), vec![7, 0]);
    assert_eq!(b.cursor_get("someone-else", std::slice::from_ref(&ch)).await.unwrap(), vec![0], "per user");
}

/// Concurrent publishers get distinct, gap-free offsets, each holding its own publication.
async fn concurrent_publishers_get_distinct_gap_free_offsets(s: Subject) {
    const TASKS: u64 = 4;
    const EACH: u64 = 200;
    let ch = channel("concurrent");
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (b, ch) = (s.broker.clone(), ch.clone());
            tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..EACH {
                    let n = t * EACH + i;
                    got.push((publish(&*b, &ch, n).await.position, n));
                    if i % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                got
            })
        })
        .collect();
    let mut data_at = BTreeMap::new();
    let mut epochs = Vec::new();
    for t in tasks {
        for (position, n) in t.await.expect("a publisher task") {
            assert!(
                data_at.insert(position.offset, n).is_none(),
                "offset {} was given twice",
                position.offset
            );
            epochs.push(position.epoch);
        }
    }
    let offsets: Vec<u64> = data_at.keys().copied().collect();
    assert_eq!(offsets, (1..=TASKS * EACH).collect::<Vec<_>>(), "concurrent publishers get offsets 1..=N");
    epochs.dedup();
    assert_eq!(epochs.len(), 1, "one epoch for all: {epochs:?}");
    let page = read(&*s.broker, &ch, HistoryRange::Newest(None), KEPT).await;
    let held: BTreeMap<u64, u64> = page.publications.iter().map(|p| (p.offset, data_of(p))).collect();
    assert_eq!(held, data_at, "history holds at each offset the publication that was given it");
}

/// History keeps the newest `size` publications and reads them oldest first; `Newest` and
/// `After` select from them, and a position beyond the stream reads as nothing (with the page's
/// offset showing where the stream is).
async fn history_keeps_the_newest_oldest_first(s: Subject) {
    const SIZE: usize = 5;
    let (b, ch) = (&*s.broker, channel("history"));
    let fresh = read(b, &ch, HistoryRange::Newest(None), SIZE).await;
    assert_eq!((fresh.offset, fresh.publications.len()), (0, 0), "a channel never published to is empty");
    assert_eq!(&*fresh.epoch, NO_EPOCH, "a channel with no stream reads in the empty epoch");
    if let Some(streams) = b.held() {
        assert_eq!(streams, 0, "and the read made no stream");
    }
    let first = publish_kept(b, &ch, 1, None, SIZE).await;
    assert!(!first.position.epoch.is_empty(), "a stream has an epoch of its own");
    for n in 2..=10 {
        publish_kept(b, &ch, n, None, SIZE).await;
    }
    let read_range = |range| read(b, &ch, range, SIZE);
    let all = read_range(HistoryRange::Newest(None)).await;
    assert_eq!(*all.epoch, first.position.epoch, "history reads the publishers' stream");
    assert_eq!(all.offset, 10, "the page's offset is the stream's, whatever was trimmed");
    assert_eq!(offsets(&all), vec![6, 7, 8, 9, 10], "retention keeps the newest 5, oldest first");
    for p in &all.publications {
        assert_eq!(data_of(p), p.offset, "each kept publication is the one published at its offset");
    }
    let cases = [
        (HistoryRange::Newest(Some(2)), vec![9, 10], "the newest 2"),
        (HistoryRange::Newest(Some(0)), vec![], "the newest 0"),
        (HistoryRange::Newest(Some(50)), vec![6, 7, 8, 9, 10], "more than kept: all kept"),
        (HistoryRange::After(7, None), vec![8, 9, 10], "all after 7"),
        (HistoryRange::After(7, Some(1)), vec![8], "the first after 7"),
        (HistoryRange::After(3, None), vec![6, 7, 8, 9, 10], "after a trimmed offset: from the oldest kept"),
        (HistoryRange::After(0, Some(2)), vec![6, 7], "the first 2 of the stream: the oldest kept"),
        (HistoryRange::After(10, None), vec![], "nothing after the newest"),
        (HistoryRange::After(11, None), vec![], "a position beyond the stream reads as nothing"),
        (HistoryRange::After(1_000, Some(3)), vec![], "far beyond too"),
    ];
    for (range, want, what) in cases {
        let page = read_range(range).await;
        assert_eq!(offsets(&page), want, "{range:?}: {what}");
        assert_eq!((page.offset, &*page.epoch), (10, &*all.epoch), "{range:?}: the stream's position");
    }
}

/// A publish whose idempotency key is that of a publication still in the channel's history
/// returns that publication's position and publishes nothing; keys are per channel.
async fn a_repeated_idempotency_key_publishes_nothing(s: Subject) {
    const SIZE: usize = 3;
    let (b, ch, other) = (&*s.broker, channel("idempotent"), channel("idempotent-other"));
    let first = publish_kept(b, &ch, 1, Some("k"), SIZE).await;
    assert!(!first.duplicate, "a key seen for the first time publishes");
    publish_kept(b, &ch, 2, None, SIZE).await;
    let again = publish_kept(b, &ch, 99, Some("k"), SIZE).await;
    assert_eq!(
        again,
        Published { position: first.position.clone(), duplicate: true },
        "a repeated key returns the first publication's position, marked duplicate"
    );
    let page = read(b, &ch, HistoryRange::Newest(None), SIZE).await;
    assert_eq!(page.offset, 2, "the repeat published nothing");
    assert_eq!(
        page.publications.iter().map(|p| data_of(p)).collect::<Vec<_>>(),
        vec![1, 2],
        "nor changed anything"
    );
    let fresh = publish_kept(b, &ch, 3, Some("k2"), SIZE).await;
    assert_eq!((fresh.position.offset, fresh.duplicate), (3, false), "another key publishes");
    let elsewhere = publish_kept(b, &other, 4, Some("k"), SIZE).await;
    assert_eq!((elsewhere.position.offset, elsewhere.duplicate), (1, false), "keys are per channel");
}

/// Each channel's stream has its own epoch, which publications and history agree on.
async fn epochs_differ_per_channel(s: Subject) {
    let b = &*s.broker;
    let (x, y) = (channel("epoch-x"), channel("epoch-y"));
    let (px, py) = (publish(b, &x, 1).await, publish(b, &y, 1).await);
    assert_eq!((px.position.offset, py.position.offset), (1, 1), "channels count offsets independently");
    assert_ne!(px.position.epoch, py.position.epoch, "two channels' epochs differ");
    let unread = channel("epoch-z");
    let pz = read(b, &unread, HistoryRange::Newest(None), KEPT).await;
    assert_eq!((&*pz.epoch, pz.offset), (NO_EPOCH, 0), "a channel with no stream: the empty epoch");
    assert_eq!(*read(b, &x, HistoryRange::Newest(None), KEPT).await.epoch, px.position.epoch);
}

/// A lost stream (history and offset gone) starts a new epoch at offset 0, forgetting its keys;
/// other channels are untouched.
async fn a_lost_stream_starts_a_new_epoch_from_zero(s: Subject) {
    let Some(lose) = &s.lose else {
        eprintln!("skipped: this broker cannot be made to lose a stream");
        return;
    };
    let (b, ch, other) = (&*s.broker, channel("lost"), channel("kept"));
    let keyed = publish_kept(b, &ch, 1, Some("k"), KEPT).await;
    for n in 2..=3 {
        publish(b, &ch, n).await;
    }
    let untouched = publish(b, &other, 1).await;
    lose(&ch);
    let page = read(b, &ch, HistoryRange::Newest(None), KEPT).await;
    assert_ne!(*page.epoch, keyed.position.epoch, "a lost stream starts a new epoch");
    assert_eq!((page.offset, page.publications.len()), (0, 0), "its history and offset are gone");
    let next = publish_kept(b, &ch, 4, Some("k"), KEPT).await;
    // A broker that keeps the lost stream's place (the memory broker) reads its new epoch at
    // once; one whose stream is simply gone (Redis) reads no stream until the next publication.
    let epoch = if *page.epoch == *NO_EPOCH { next.position.epoch.clone() } else { page.epoch.to_string() };
    assert_ne!(epoch, keyed.position.epoch, "the next publication is in a new epoch");
    assert_eq!(
        (next.position.clone(), next.duplicate),
        (StreamPosition { epoch, offset: 1 }, false),
        "the new epoch counts from 1 again, and its history knows no old key"
    );
    let kept = read(b, &other, HistoryRange::Newest(None), KEPT).await;
    assert_eq!((&*kept.epoch, kept.offset), (&*untouched.position.epoch, 1), "other channels keep theirs");
}

/// Deliveries come only for channels with interest, for every publication made after
/// `subscribe` resolved, once each, in offset order, each in history by the time it arrives;
/// interest is counted; once it is gone (and a settle time passed) nothing comes.
async fn deliveries_follow_interest_in_order_each_in_history(s: Subject) {
    const TASKS: u64 = 4;
    const EACH: u64 = 50;
    let (recorder, checker) = Recorder::start(s.broker.clone());
    let listener: Arc<dyn Listener> = recorder.clone();
    s.broker.set_listener(Arc::downgrade(&listener));
    let (b, ch, quiet) = (&*s.broker, channel("watched"), channel("unwatched"));

    for n in 1..=3 {
        publish(b, &ch, n).await;
    }
    publish(b, &quiet, 1).await;
    tokio::time::sleep(SETTLE).await;
    assert!(recorder.deliveries().is_empty(), "nothing is delivered without interest");

    let retention = Retention { size: KEPT, ttl: Duration::from_secs(300), state: false };
    b.subscribe(&ch, retention).await.expect("subscribing succeeds");
    b.subscribe(&ch, retention).await.expect("a second local subscriber");
    let mut published = BTreeMap::new();
    for n in 4..=23 {
        published.insert(publish(b, &ch, n).await.position.offset, n);
    }
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (b, ch, quiet) = (s.broker.clone(), ch.clone(), quiet.clone());
            tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..EACH {
                    let n = 100 + t * EACH + i;
                    got.push((publish(&*b, &ch, n).await.position.offset, n));
                    publish(&*b, &quiet, n).await;
                }
                got
            })
        })
        .collect();
    for t in tasks {
        published.extend(t.await.expect("a publisher task"));
    }
    let epoch = read(b, &ch, HistoryRange::Newest(Some(0)), KEPT).await.epoch.to_string();
    let expected: Vec<(String, u64, u64)> = published.iter().map(|(&o, &n)| (epoch.clone(), o, n)).collect();
    let arrived = wait_until(WAIT, || recorder.deliveries_of(&ch).len() >= expected.len()).await;
    assert!(arrived, "every publication after subscribe is delivered within {WAIT:?}");
    assert_eq!(
        recorder.deliveries_of(&ch),
        expected,
        "each publication made after subscribe resolved is delivered once, in offset order, with its \
         epoch (a healthy broker loses none; lagged: {:?})",
        recorder.lags()
    );

    b.unsubscribe(&ch);
    let mut more = Vec::new();
    for n in 1_000..1_005 {
        more.push((epoch.clone(), publish(b, &ch, n).await.position.offset, n));
    }
    let all = [expected, more].concat();
    wait_until(WAIT, || recorder.deliveries_of(&ch).len() >= all.len()).await;
    assert_eq!(
        recorder.deliveries_of(&ch),
        all,
        "interest is counted: with one subscriber left, deliveries go on"
    );

    b.unsubscribe(&ch);
    tokio::time::sleep(SETTLE).await;
    let last = all.last().map_or(0, |d| d.1);
    for n in 2_000..2_005 {
        publish(b, &ch, n).await;
    }
    tokio::time::sleep(SETTLE).await;
    let late: Vec<_> = recorder.deliveries_of(&ch).into_iter().filter(|d| d.1 > last).collect();
    assert!(late.is_empty(), "nothing is delivered once interest is gone and a while passed: {late:?}");
    assert!(recorder.deliveries_of(&quiet).is_empty(), "a channel nobody subscribed to is never delivered");

    drop((listener, recorder));
    let wrong = checker.await.expect("the history checker");
    assert!(wrong.is_empty(), "every delivery is in history by the time it arrives: {wrong:?}");
}

/// What pattern subscriptions rest on, for a broker that serves them: `streams` lists the
/// channels with a stream under a prefix (at most `max + 1`), and once `watch` resolved the
/// listener is told of every channel under the prefix that gets its first publication, with or
/// without interest (a broker may tell of later ones too, as the memory broker does), until as
/// many `unwatch`. A broker that does not serve patterns refuses both with `Unsupported`.
async fn watched_prefixes_hear_every_publication_and_streams_are_listed(s: Subject) {
    let (recorder, _checker) = Recorder::start(s.broker.clone());
    let listener: Arc<dyn Listener> = recorder.clone();
    s.broker.set_listener(Arc::downgrade(&listener));
    let b = &*s.broker;
    let stem = channel("watch");
    let prefix = format!("{stem}-p:");
    let Ok(()) = b.watch(&prefix).await else {
        assert!(
            matches!(b.streams(&prefix, 10).await, Err(rpchub::broker::BrokerError::Unsupported(_))),
            "a broker that cannot watch cannot list either"
        );
        return;
    };
    b.unwatch(&prefix);
    let (a, c, other) = (format!("{prefix}a"), format!("{prefix}c"), format!("{stem}-q:x"));
    publish(b, &c, 1).await;
    publish(b, &a, 1).await;
    publish(b, &other, 1).await;
    assert_eq!(
        b.streams(&prefix, 10).await.unwrap(),
        [a.clone(), c.clone()],
        "sorted, under the prefix only"
    );
    assert_eq!(b.streams(&prefix, 1).await.unwrap().len(), 2, "max + 1 at most, to tell there are more");
    tokio::time::sleep(SETTLE).await;
    assert!(recorder.published().is_empty(), "nothing is told before watch");

    b.watch(&prefix).await.unwrap();
    b.watch(&prefix).await.unwrap();
    let new = format!("{prefix}new");
    publish(b, &a, 2).await;
    publish(b, &new, 1).await;
    publish(b, &format!("{stem}-q:new"), 1).await;
    publish(b, &other, 2).await;
    wait_until(WAIT, || recorder.published().contains(&new)).await;
    tokio::time::sleep(SETTLE).await;
    let told = recorder.published();
    assert!(told.contains(&new), "a new channel under the prefix is told: {told:?}");
    assert!(told.iter().all(|c| *c == a || *c == new), "nothing but channels under the prefix: {told:?}");
    assert!(recorder.deliveries().is_empty(), "watching takes no interest: nothing is delivered");
    b.unwatch(&prefix);
    let newer = format!("{prefix}newer");
    publish(b, &newer, 1).await;
    wait_until(WAIT, || recorder.published().contains(&newer)).await;
    assert!(recorder.published().contains(&newer), "watches are counted: one is left");
    b.unwatch(&prefix);
    let before = recorder.published().len();
    publish(b, &format!("{prefix}newest"), 1).await;
    publish(b, &a, 3).await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(recorder.published().len(), before, "nothing once every watch is undone");
}

/// State channels, for a broker that keeps state: with `Retention::state`, `keyed_state` is
/// the latest publication of each key (`""` for one without a key) in offset order, a `null`
/// deletes its key, and it outlives the history's size; a channel without a stream reads as
/// empty and creates none. A broker that keeps no state refuses with `Unsupported`.
async fn a_state_channel_keeps_the_latest_of_each_key(s: Subject) {
    let b = &*s.broker;
    let ch = channel("state");
    let retention = Retention { size: 2, ttl: Duration::from_secs(300), state: true };
    let keyed = |k: Option<&str>, data: &str| NewPublication {
        data: RawValue::from_string(data.into()).unwrap(),
        event: None,
        idempotency_key: None,
        key: k.map(String::from),
    };
    match b.keyed_state(&ch, retention).await {
        Err(rpchub::broker::BrokerError::Unsupported(_)) => return,
        Ok(empty) => {
            assert_eq!(
                (&*empty.epoch, empty.offset, empty.publications.len()),
                (NO_EPOCH, 0, 0),
                "no stream, none made"
            );
        }
        Err(e) => panic!("{e}"),
    }
    for (k, d) in [
        (Some("a"), "1"),
        (Some("b"), "2"),
        (None, "3"),
        (Some("a"), "4"),
        (Some("b"), "null"),
        (Some("c"), "5"),
    ] {
        b.publish(&ch, keyed(k, d), retention).await.unwrap();
    }
    let page = b.keyed_state(&ch, retention).await.unwrap();
    let got: Vec<(Option<&str>, u64, &str)> =
        page.publications.iter().map(|p| (p.state_key(), p.offset, p.data())).collect();
    assert_eq!(got, [(Some(""), 3, "3"), (Some("a"), 4, "4"), (Some("c"), 6, "5")]);
    assert_eq!(page.offset, 6);
    let history = b.history(&ch, HistoryRange::Newest(None), retention).await.unwrap();
    assert_eq!(offsets(&history), [5, 6], "history keeps its size; the state outlives it");
    let keys: Vec<Option<&str>> = history.publications.iter().map(|p| p.state_key()).collect();
    assert_eq!(keys, [Some("b"), Some("c")], "history read back knows each publication's key");
    if let Some(lose) = &s.lose {
        lose(&ch);
        let p = b.publish(&ch, keyed(Some("z"), "9"), retention).await.unwrap();
        let page = b.keyed_state(&ch, retention).await.unwrap();
        let got: Vec<(Option<&str>, u64)> =
            page.publications.iter().map(|p| (p.state_key(), p.offset)).collect();
        assert_eq!(got, [(Some("z"), 1)], "a lost stream's state goes with it");
        assert_eq!((&*page.epoch, page.offset), (p.position.epoch.as_str(), 1));
        assert_ne!(p.position.epoch, history.epoch.to_string(), "a new epoch");
    }
}

/// The hub's recovery over the broker: `since` in the stream's epoch and covered by its history
/// is honoured exactly (whatever the limit); any other position gives the newest `limit` kept,
/// `recovered: false`. `Hub::history` with a position of another epoch reads from the oldest.
async fn recovery_honours_only_a_position_history_covers(s: Subject) {
    let (hub, _metrics) = hub_over(s.broker.clone(), 5);
    let ch = channel("recovery");
    let mut last = None;
    for n in 1..=10 {
        last = Some(hub.publish(&ch, new_publication(n, None)).await.expect("publishing succeeds"));
    }
    let epoch = last.expect("published").position.epoch;
    let at = |epoch: &str, offset| Some(StreamPosition { epoch: epoch.into(), offset });
    let cases = [
        (at(&epoch, 7), Some(1), true, vec![8, 9, 10], "covered: all after since, whatever the limit"),
        (at(&epoch, 5), None, true, vec![6, 7, 8, 9, 10], "the oldest kept is the one after since"),
        (at(&epoch, 10), None, true, vec![], "up to date: nothing missed"),
        (at(&epoch, 4), None, false, vec![6, 7, 8, 9, 10], "too old: 5 is no longer kept"),
        (at(&epoch, 11), Some(2), false, vec![9, 10], "from the future: the newest limit"),
        (at("another-epoch", 8), None, false, vec![6, 7, 8, 9, 10], "another epoch says nothing here"),
        (at("", 0), Some(1), false, vec![10], "an unknown epoch neither"),
        (None, Some(3), false, vec![8, 9, 10], "no since: the newest limit"),
    ];
    let conn = Conn::new();
    for (since, limit, recovered, publications, what) in cases {
        let sub = conn.subscribe(&hub, &ch, since.clone(), limit).await.expect("subscribing succeeds");
        let got = conn.drain();
        let want = Seen::Snapshot {
            sub: sub.id().as_str().into(),
            epoch: epoch.clone(),
            offset: 10,
            recovered,
            publications,
        };
        assert_eq!(got, vec![want], "since {since:?}, limit {limit:?}: {what}");
    }
    let from = |since: Option<StreamPosition>| {
        let (hub, ch) = (hub.clone(), ch.clone());
        async move {
            let h = hub.history(&ch, since, None).await.expect("reading history succeeds");
            (h.position.offset, h.publications.iter().map(|p| p.offset).collect::<Vec<_>>())
        }
    };
    assert_eq!(from(at(&epoch, 7)).await, (10, vec![8, 9, 10]), "history after a position of its epoch");
    assert_eq!(
        from(at("another-epoch", 7)).await,
        (10, vec![6, 7, 8, 9, 10]),
        "another epoch: from the oldest"
    );
}

// ---------------------------------------------------------------------------------------------
// Part 2: the hub over the broker, no silent gap and no duplicate.

/// The hub over each broker (losing the stream midway when the broker can be made to): each
/// subscriber's stream is gap-free and duplicate-free, and it is closed only for the lost stream.
async fn hub_streams_have_no_gap_and_no_duplicate(s: Subject) {
    let lose = s.lose.is_some();
    let run = run_hub(s, Plan { history_size: 10_000, lose_midway: lose }).await;
    for (n, stream) in run.streams.iter().enumerate() {
        let who = format!("subscriber {n}");
        let segments = segments(&who, stream);
        assert_reaches(&who, &segments, &run.end);
        assert_eq!(segments[0].epoch, run.first_epoch, "{who} joined in the first epoch");
        if lose {
            assert_eq!(
                segments.len(),
                2,
                "{who}: losing nothing else, it is closed once, for the lost stream: {segments:?}"
            );
            assert_lost_and_resubscribed(&who, &segments, &run);
        } else {
            assert_eq!(
                segments.len(),
                1,
                "{who}: a broker that loses nothing never has a subscription ended"
            );
        }
    }
    let lost = run.metrics.streams_lost.get();
    assert!(
        if lose { lost >= 1 } else { lost == 0 },
        "the hub counts a lost stream, and nothing else as one: {lost}"
    );
}

/// A faulty broker dropping, repeating and reordering deliveries, with history that covers every
/// gap, and the stream lost midway: the hub fills the gaps and skips the repeats, so that no
/// subscriber sees either; every subscriber is told of the lost stream and resubscribes into the
/// new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_broker_gaps_are_filled_and_a_lost_stream_is_announced() {
    let faults = Faults { drop: 30, repeat: 30, reorder: 30, seed: 0x5eed_0001, ..Faults::default() };
    let (faulty, subject) = faulty(faults);
    let run = run_hub(subject, Plan { history_size: 10_000, lose_midway: true }).await;
    for (n, stream) in run.streams.iter().enumerate() {
        let who = format!("subscriber {n}");
        let segments = segments(&who, stream);
        assert_reaches(&who, &segments, &run.end);
        assert_eq!(segments[0].epoch, run.first_epoch, "{who} joined in the first epoch");
        assert_lost_and_resubscribed(&who, &segments, &run);
    }
    assert_faults_happened(&faulty);
    assert_eq!(faulty.counts.lost.load(Ordering::Relaxed), 1, "the stream was lost once");
    assert!(run.metrics.gaps_filled.get() > 0, "the hub filled the gaps the faults opened from history");
    assert!(run.metrics.streams_lost.get() >= 1, "the hub counted the lost stream");
}

/// A faulty broker dropping a fifth of its deliveries, with history of 3 that cannot cover most
/// gaps: the hub never lets a gap through silently; every offset a subscriber does not see is in
/// a `gap` it was told of (`broker_lost`), its subscription goes on after it, and each reaches
/// the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_broker_gaps_history_cannot_fill_are_announced() {
    let faults = Faults { drop: 200, repeat: 30, reorder: 30, seed: 0x5eed_0002, ..Faults::default() };
    let (faulty, subject) = faulty(faults);
    let run = run_hub(subject, Plan { history_size: 3, lose_midway: false }).await;
    let mut announced = 0;
    for (n, stream) in run.streams.iter().enumerate() {
        let who = format!("subscriber {n}");
        let segments = segments(&who, stream);
        assert_reaches(&who, &segments, &run.end);
        announced += segments.iter().map(|s| s.gaps).sum::<u64>();
        // Resubscriptions happen only when going live raced a gap (closed insufficient_state);
        // the stream itself is never given up on.
        for w in segments.windows(2) {
            assert_eq!(w[0].epoch, w[1].epoch, "{who}: one epoch throughout");
        }
    }
    assert_faults_happened(&faulty);
    assert!(announced > 0, "gaps history cannot fill are announced with their bounds");
    assert!(run.metrics.gaps_announced.get() > 0, "and counted");
    assert_eq!(run.metrics.streams_lost.get(), 0, "no stream is given up on for a gap");
    eprintln!("{announced} offsets announced lost");
}

/// Two subscribers join a channel the hub has no position for yet, while a delivery lags behind
/// history (as a shared broker's pub/sub does): the one whose snapshot is older than the other's
/// must not miss what lies between, which the late delivery cannot bring it.
#[tokio::test]
async fn a_snapshot_older_than_another_subscribers_gets_no_gap() {
    let (faulty, subject) = faulty(Faults::default());
    let (hub, _metrics) = hub_over(subject.broker.clone(), 100);
    let ch = channel("behind");
    for n in 1..=5 {
        hub.publish(&ch, new_publication(n, None)).await.expect("publishing succeeds");
    }
    let (older, newer) = (Conn::new(), Conn::new());
    let behind = hub.prepare(&ch, None, None).await.expect("the first subscriber reads its snapshot");
    // 6 is in history; its delivery is held back until the next one.
    faulty.set_faults(Faults { reorder: 1_000, ..Faults::default() });
    hub.publish(&ch, new_publication(6, None)).await.expect("publishing succeeds");
    faulty.set_faults(Faults::default());
    let _ahead = newer.subscribe(&hub, &ch, None, None).await.expect("the second subscriber goes live first");
    let sink = older.sink(&behind);
    let _behind = behind.go_live(sink, &[]).expect("then the first");
    for n in 7..=8 {
        hub.publish(&ch, new_publication(n, None)).await.expect("publishing succeeds");
    }
    let ahead = segments("the subscriber with the newer snapshot", &newer.drain());
    assert_eq!(
        (ahead.len(), ahead[0].from, ahead[0].to),
        (1, 6, 8),
        "it gets 7 and 8 after its snapshot at 6"
    );
    // The other either gets 6, 7, 8 after its snapshot at 5, or is told to resubscribe.
    let behind = segments("the subscriber with the older snapshot", &older.drain());
    assert_eq!(behind[0].from, 5, "its snapshot is at 5");
    assert!(behind[0].to == 8 || behind[0].closed.is_some(), "it reaches 8 or is closed: {behind:?}");
}

/// What a hub run looks like.
struct Plan {
    /// The channel's history size.
    history_size: usize,
    /// Lose the stream once, while publishers run (the broker must be able to).
    lose_midway: bool,
}

/// Publisher tasks of a hub run.
const PUBLISHERS: u64 = 4;
/// Publications of each.
const EACH: u64 = 500;
/// Subscriber tasks of a hub run.
const SUBSCRIBERS: usize = 6;
/// How many publications a (non-recovering) snapshot carries.
const SNAPSHOT_LIMIT: Option<usize> = Some(10);
/// How long a hub run may take to bring every subscriber to the end of the stream.
const REACH: Duration = Duration::from_secs(20);

/// What a hub run saw.
struct Run {
    /// Each subscriber's events, as its outbox handed them over.
    streams: Vec<Vec<Seen>>,
    /// The channel's epoch when the run started.
    first_epoch: String,
    /// Where the stream ended: its last epoch and offset.
    end: StreamPosition,
    /// The hub's metrics.
    metrics: Arc<Metrics>,
}

/// What the tasks of a hub run share.
struct Shared {
    hub: Arc<Hub>,
    channel: String,
    /// Subscribers that went live once.
    joined: AtomicUsize,
    /// Open once every subscriber went live: publishers wait for it halfway.
    all_joined: Gate,
    /// Open once the stream was lost: publishers wait for it three quarters of the way.
    lost: Gate,
    published: AtomicU64,
    /// The end of the stream, once publishers are done.
    end: OnceLock<StreamPosition>,
    /// Per subscriber: live and at the end of the stream.
    reached: Vec<AtomicBool>,
    /// Subscribers drain once more and stop.
    stop: AtomicBool,
}

/// Publishers race on one channel while subscribers join at staggered times and follow it,
/// resubscribing with `since` when told `closed`; after the publishers (and a settle of the
/// broker), waits until every subscriber is at the end of the stream.
async fn run_hub(s: Subject, plan: Plan) -> Run {
    let (hub, metrics) = hub_over(s.broker.clone(), plan.history_size);
    let channel = channel("hub");
    // An interest of the run's own makes the stream (a read makes none) and keeps it, so that its
    // first epoch is known before anyone subscribes or publishes.
    let retention = Retention { size: plan.history_size, ttl: Duration::from_secs(300), state: false };
    s.broker.subscribe(&channel, retention).await.expect("taking interest");
    let first_epoch = hub.history(&channel, None, Some(0)).await.expect("reading history").position.epoch;
    assert!(!first_epoch.is_empty(), "a stream with interest has an epoch");
    let lose = plan.lose_midway.then(|| s.lose.as_ref().expect("the plan loses the stream: the broker can"));
    let sh = Arc::new(Shared {
        hub: hub.clone(),
        channel: channel.clone(),
        joined: AtomicUsize::new(0),
        all_joined: Gate::new(),
        lost: Gate::new(),
        published: AtomicU64::new(0),
        end: OnceLock::new(),
        reached: (0..SUBSCRIBERS).map(|_| AtomicBool::new(false)).collect(),
        stop: AtomicBool::new(false),
    });
    let publishers: Vec<_> =
        (0..PUBLISHERS).map(|p| tokio::spawn(publisher(sh.clone(), p, lose.is_some()))).collect();
    let subscribers: Vec<_> = (0..SUBSCRIBERS).map(|n| tokio::spawn(subscriber(sh.clone(), n))).collect();
    let joined = tokio::time::timeout(REACH, sh.all_joined.wait()).await;
    assert!(joined.is_ok(), "every subscriber goes live within {REACH:?}");
    if let Some(lose) = lose {
        let midway = wait_until(REACH, || sh.published.load(Ordering::Relaxed) >= PUBLISHERS * EACH * 5 / 8);
        assert!(midway.await, "publishers get past halfway");
        lose(&channel);
        sh.lost.open();
    }
    for p in publishers {
        p.await.expect("a publisher task");
    }
    if let Some(settle) = &s.settle {
        settle();
    }
    let end = hub.history(&channel, None, Some(0)).await.expect("reading history").position;
    sh.end.set(end.clone()).expect("the end is set once");
    let hub_at_end = || hub.channels(&channel).iter().any(|c| c.channel == channel && c.offset == end.offset);
    let all_reached = || sh.reached.iter().all(|r| r.load(Ordering::Acquire)) && hub_at_end();
    let reached = wait_until(REACH, all_reached).await;
    sh.stop.store(true, Ordering::Release);
    let mut streams = Vec::new();
    for s in subscribers {
        streams.push(s.await.expect("a subscriber task"));
    }
    let at: Vec<_> = streams.iter().map(|s| s.last()).collect();
    assert!(
        reached,
        "every subscriber reaches the end of the stream ({end:?}) within {REACH:?}; last events: {at:?}"
    );
    s.broker.unsubscribe(&channel);
    Run { streams, first_epoch, end, metrics }
}

/// Publishes `EACH` publications, pausing now and then so that subscribers join mid-stream;
/// halfway it waits until every subscriber is live, and (when the stream is to be lost) three
/// quarters of the way until it was.
async fn publisher(sh: Arc<Shared>, p: u64, lose: bool) {
    for i in 0..EACH {
        if i == EACH / 2 {
            sh.all_joined.wait().await;
        }
        if lose && i == EACH * 3 / 4 {
            sh.lost.wait().await;
        }
        sh.hub.publish(&sh.channel, new_publication(p * EACH + i, None)).await.expect("publishing succeeds");
        sh.published.fetch_add(1, Ordering::Relaxed);
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Joins after `4 * n` ms, then follows the channel as a client would: drains its outbox every
/// millisecond and, when told `closed`, resubscribes with `since` = where it stands. Returns
/// every event it saw once the run stops.
async fn subscriber(sh: Arc<Shared>, n: usize) -> Vec<Seen> {
    tokio::time::sleep(Duration::from_millis(4 * n as u64)).await;
    let conn = Conn::new();
    let mut stream = Vec::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let since = cursor.as_ref().map(Cursor::position);
        let live = loop {
            match conn.subscribe(&sh.hub, &sh.channel, since.clone(), SNAPSHOT_LIMIT).await {
                Ok(live) => break live,
                // The channel kept changing under its history reads: a client retries.
                Err(HubError::Busy) => tokio::time::sleep(Duration::from_millis(1)).await,
                Err(e) => panic!("subscriber {n}: subscribing failed: {e}"),
            }
        };
        if cursor.is_none() && sh.joined.fetch_add(1, Ordering::AcqRel) + 1 == SUBSCRIBERS {
            sh.all_joined.open();
        }
        loop {
            let stopping = sh.stop.load(Ordering::Acquire);
            for event in conn.drain() {
                cursor.get_or_insert_default().follow(&event);
                stream.push(event);
            }
            let at_end = cursor.as_ref().is_some_and(|c| c.is_at(sh.end.get()));
            sh.reached[n].store(at_end, Ordering::Release);
            if stopping {
                return stream;
            }
            if cursor.as_ref().is_some_and(|c| c.closed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(live);
    }
}

/// Where a subscriber stands: the epoch of its last snapshot and the last offset it saw.
#[derive(Debug, Default)]
struct Cursor {
    epoch: String,
    offset: u64,
    closed: bool,
}

impl Cursor {
    fn follow(&mut self, event: &Seen) {
        match event {
            Seen::Snapshot { epoch, offset, .. } => {
                *self = Cursor { epoch: epoch.clone(), offset: *offset, closed: false }
            }
            Seen::Publication { offset, .. } => self.offset = *offset,
            Seen::Gap { to, .. } => self.offset = *to,
            Seen::Closed { .. } => self.closed = true,
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition { epoch: self.epoch.clone(), offset: self.offset }
    }

    fn is_at(&self, end: Option<&StreamPosition>) -> bool {
        !self.closed && end.is_some_and(|e| e.epoch == self.epoch && e.offset == self.offset)
    }
}

/// One subscription as its subscriber saw it.
#[derive(Debug)]
struct Segment {
    sub: String,
    epoch: String,
    /// The snapshot's offset.
    from: u64,
    /// The last offset seen.
    to: u64,
    recovered: bool,
    closed: Option<String>,
    /// Offsets announced lost (`gap`) within it.
    gaps: u64,
}

/// Checks that `stream` is a sequence of segments, each a snapshot at N followed by N+1, N+2, ...
/// (no gap, no duplicate) of one subscription id, a new one only after `closed`
/// `insufficient_state`, a recovered one continuing exactly where the last one stopped; and
/// returns them.
fn segments(who: &str, stream: &[Seen]) -> Vec<Segment> {
    let mut segments: Vec<Segment> = Vec::new();
    for (i, event) in stream.iter().enumerate() {
        match event {
            Seen::Snapshot { sub, epoch, offset, recovered, publications } => {
                let before = segments.last();
                if let Some(prev) = before {
                    assert!(
                        prev.closed.is_some(),
                        "{who}, event {i}: a new subscription starts only after the last was closed; \
                         {} was live at {} when a snapshot at {offset} came",
                        prev.sub,
                        prev.to
                    );
                    assert_ne!(&prev.sub, sub, "{who}, event {i}: a resubscription has an id of its own");
                }
                if let Some(&last) = publications.last() {
                    let first = (last + 1).saturating_sub(publications.len() as u64);
                    assert_eq!(
                        (publications, last),
                        (&(first..=last).collect::<Vec<_>>(), *offset),
                        "{who}, event {i}: a snapshot's publications are consecutive and end at its offset"
                    );
                }
                if *recovered {
                    let prev = before.unwrap_or_else(|| {
                        panic!("{who}: a first subscription (no since) is never recovered")
                    });
                    assert_eq!(epoch, &prev.epoch, "{who}, event {i}: recovered only within since's epoch");
                    assert_eq!(
                        publications,
                        &(prev.to + 1..=*offset).collect::<Vec<_>>(),
                        "{who}, event {i}: a recovered snapshot holds exactly what came after since ({})",
                        prev.to
                    );
                }
                segments.push(Segment {
                    sub: sub.clone(),
                    epoch: epoch.clone(),
                    from: *offset,
                    to: *offset,
                    recovered: *recovered,
                    closed: None,
                    gaps: 0,
                });
            }
            Seen::Publication { sub, offset } => {
                let s =
                    segments.last_mut().unwrap_or_else(|| panic!("{who}: a publication before any snapshot"));
                assert!(
                    s.closed.is_none(),
                    "{who}, event {i}: nothing follows closed, yet publication {offset} did"
                );
                assert_eq!(
                    sub, &s.sub,
                    "{who}, event {i}: a publication of subscription {sub} while {} is live",
                    s.sub
                );
                assert_eq!(
                    *offset,
                    s.to + 1,
                    "{who}, event {i}: after {} comes {} (no gap, no duplicate) in subscription {} (from {})",
                    s.to,
                    s.to + 1,
                    s.sub,
                    s.from
                );
                s.to = *offset;
            }
            Seen::Gap { sub, from, to, reason: why } => {
                let s = segments.last_mut().unwrap_or_else(|| panic!("{who}: a gap before any snapshot"));
                assert!(s.closed.is_none(), "{who}, event {i}: nothing follows closed, yet a gap did");
                assert_eq!(sub, &s.sub, "{who}, event {i}: a gap names the live subscription");
                assert_eq!(why, reason::BROKER_LOST, "{who}, event {i}: gaps here are the broker's");
                assert_eq!(
                    (*from, *from <= *to),
                    (s.to + 1, true),
                    "{who}, event {i}: a gap starts right after the last offset seen ({}) and is not empty: {from}..={to}",
                    s.to
                );
                s.gaps += to - from + 1;
                s.to = *to;
            }
            Seen::Closed { sub, reason: why } => {
                let s = segments.last_mut().unwrap_or_else(|| panic!("{who}: closed before any snapshot"));
                assert!(s.closed.is_none(), "{who}, event {i}: a subscription is closed once");
                assert_eq!(sub, &s.sub, "{who}, event {i}: closed names the live subscription");
                assert_eq!(
                    why,
                    reason::INSUFFICIENT_STATE,
                    "{who}, event {i}: the hub ends subscriptions here only for lost state"
                );
                s.closed = Some(why.clone());
            }
        }
    }
    assert!(!segments.is_empty(), "{who}: every subscriber got its first snapshot");
    segments
}

/// The last segment is live and reached the end of the stream.
fn assert_reaches(who: &str, segments: &[Segment], end: &StreamPosition) {
    let last = segments.last().expect("at least one segment");
    assert!(last.closed.is_none(), "{who}: the last subscription is live: {last:?}");
    assert_eq!(
        (&last.epoch, last.to),
        (&end.epoch, end.offset),
        "{who}: the last subscription reached the end of the stream: {segments:?}"
    );
}

/// The subscriber's subscriptions of the first epoch were closed, and it resubscribed into the new
/// epoch, `recovered: false`.
fn assert_lost_and_resubscribed(who: &str, segments: &[Segment], run: &Run) {
    assert_ne!(run.end.epoch, run.first_epoch, "the lost stream ended in a new epoch");
    let first_new = segments.iter().position(|s| s.epoch == run.end.epoch);
    let first_new = first_new.unwrap_or_else(|| panic!("{who}: resubscribed in the new epoch: {segments:?}"));
    assert!(first_new > 0, "{who}: its first subscription was in the first epoch");
    assert!(
        segments[first_new - 1].closed.as_deref() == Some(reason::INSUFFICIENT_STATE),
        "{who}: its last subscription of the first epoch was closed insufficient_state: {segments:?}"
    );
    assert!(!segments[first_new].recovered, "{who}: since in the lost epoch is not recovered: {segments:?}");
    assert!(
        segments[first_new..].iter().all(|s| s.epoch == run.end.epoch),
        "{who}: once in the new epoch, never back in the old: {segments:?}"
    );
}

/// The faulty broker really broke deliveries.
fn assert_faults_happened(faulty: &FaultyBroker) {
    let c = &faulty.counts;
    let (dropped, repeated, reordered) = (
        c.dropped.load(Ordering::Relaxed),
        c.repeated.load(Ordering::Relaxed),
        c.reordered.load(Ordering::Relaxed),
    );
    assert!(dropped > 0 && repeated > 0 && reordered > 0, "faults happened: {c:?}");
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// A channel name of its own for each use, so that tests never meet (not even on a shared broker
/// that keeps its streams between runs).
fn channel(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static RUN: OnceLock<u64> = OnceLock::new();
    let run = RUN.get_or_init(|| {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        now ^ (u64::from(std::process::id()) << 40)
    });
    format!("contract:{what}-{run:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A publication whose data is `n`.
fn new_publication(n: u64, key: Option<&str>) -> NewPublication {
    NewPublication {
        data: RawValue::from_string(n.to_string()).expect("a number is JSON"),
        event: None,
        idempotency_key: key.map(String::from),
        key: None,
    }
}

/// The `n` a publication was made with.
fn data_of(p: &Publication) -> u64 {
    p.data().parse().unwrap_or_else(|_| panic!("a publication of the suite holds a number: {}", p.json()))
}

/// Publishes `n` to `ch`, keeping `KEPT` publications.
async fn publish(b: &dyn Broker, ch: &str, n: u64) -> Published {
    publish_kept(b, ch, n, None, KEPT).await
}

/// Publishes `n` with `key` to `ch`, keeping `size` publications.
async fn publish_kept(b: &dyn Broker, ch: &str, n: u64, key: Option<&str>, size: usize) -> Published {
    let retention = Retention { size, ttl: Duration::from_secs(300), state: false };
    b.publish(ch, new_publication(n, key), retention).await.expect("the broker accepts a publication")
}

/// Reads `range` of `ch`'s history, keeping `size` publications.
async fn read(b: &dyn Broker, ch: &str, range: HistoryRange, size: usize) -> HistoryPage {
    let retention = Retention { size, ttl: Duration::from_secs(300), state: false };
    b.history(ch, range, retention).await.expect("the broker reads history")
}

fn offsets(page: &HistoryPage) -> Vec<u64> {
    page.publications.iter().map(|p| p.offset).collect()
}

/// Polls `done` every millisecond until it holds or `within` passed; true if it held.
async fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
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

/// A one-way signal tasks wait for.
struct Gate(watch::Sender<bool>);

impl Gate {
    fn new() -> Gate {
        Gate(watch::Sender::new(false))
    }

    fn open(&self) {
        self.0.send_replace(true);
    }

    async fn wait(&self) {
        let _ = self.0.subscribe().wait_for(|open| *open).await;
    }
}

/// A hub over `broker` whose channels keep `history_size` publications.
fn hub_over(broker: Arc<dyn Broker>, history_size: usize) -> (Arc<Hub>, Arc<Metrics>) {
    let mut config = Config::default();
    config.default_namespace.history_size = history_size;
    let metrics = Arc::new(Metrics::new());
    (Hub::new(Arc::new(config), broker, metrics.clone()), metrics)
}

/// The JSON-RPC encoding, one for every subscriber as on a node (a publication is encoded once).
fn jsonrpc() -> Arc<dyn Encoding> {
    static ENCODING: OnceLock<Arc<dyn Encoding>> = OnceLock::new();
    ENCODING.get_or_init(|| Arc::new(JsonRpcEncoding)).clone()
}

/// A subscriber's connection: its outbox, drained the way its writer would.
struct Conn {
    out: Arc<Outbox>,
}

impl Conn {
    fn new() -> Conn {
        Conn { out: Arc::new(Outbox::new(1 << 20, 1 << 30)) }
    }

    /// Both phases of a subscribe, with no answer frame.
    async fn subscribe(
        &self,
        hub: &Hub,
        ch: &str,
        since: Option<StreamPosition>,
        limit: Option<usize>,
    ) -> Result<Subscription, HubError> {
        let pending = hub.prepare(ch, since, limit).await?;
        let sink = self.sink(&pending);
        pending.go_live(sink, &[])
    }

    /// Where a subscription's events go on this connection.
    fn sink(&self, pending: &Pending) -> Sink {
        Sink::new(self.out.clone(), jsonrpc(), splice(pending.id()))
    }

    /// The events queued since the last drain.
    fn drain(&self) -> Vec<Seen> {
        let mut batch = Batch::default();
        match self.out.take(&mut batch) {
            Take::Data => payloads(&batch.to_vec()).iter().map(seen).collect(),
            Take::Idle => Vec::new(),
            Take::End(how) => panic!("a subscriber's connection ended: {how:?}"),
        }
    }
}

/// Splits server frames (final, text, unmasked) into their JSON payloads.
fn payloads(mut bytes: &[u8]) -> Vec<Value> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        assert_eq!(bytes[0], 0x81, "a final text frame");
        let (len, header) = match bytes[1] {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes")) as usize, 10),
            n if n < 126 => (n as usize, 2),
            n => panic!("a server frame is unmasked: length byte {n:#x}"),
        };
        out.push(serde_json::from_slice(&bytes[header..header + len]).expect("a frame's payload is JSON"));
        bytes = &bytes[header + len..];
    }
    out
}

/// An event as a subscriber sees it, with the subscription id its notification carries.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Snapshot { sub: String, epoch: String, offset: u64, recovered: bool, publications: Vec<u64> },
    Publication { sub: String, offset: u64 },
    Closed { sub: String, reason: String },
    Gap { sub: String, from: u64, to: u64, reason: String },
}

/// Reads a `subscription` notification.
fn seen(frame: &Value) -> Seen {
    assert_eq!(frame["method"], "subscription", "a subscriber gets subscription notifications: {frame}");
    let sub = frame["params"]["subscription"].as_str().expect("a subscription id").to_string();
    let event = &frame["params"]["result"];
    let text = |k: &str| event[k].as_str().unwrap_or_else(|| panic!("{k} in {event}")).to_string();
    let number = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("an offset in {event}"));
    match event["type"].as_str() {
        Some("snapshot") => Seen::Snapshot {
            sub,
            epoch: text("epoch"),
            offset: number(&event["offset"]),
            recovered: event["recovered"].as_bool().expect("recovered"),
            publications: event["publications"]
                .as_array()
                .expect("publications")
                .iter()
                .map(|p| number(&p["offset"]))
                .collect(),
        },
        Some("publication") => Seen::Publication { sub, offset: number(&event["offset"]) },
        Some("closed") => Seen::Closed { sub, reason: text("reason") },
        Some("gap") => {
            Seen::Gap { sub, from: number(&event["from"]), to: number(&event["to"]), reason: text("reason") }
        }
        _ => panic!("an event of an unknown type: {frame}"),
    }
}

/// What a broker called its listener with: `(epoch, offset, data)` per channel, and lags.
/// Deliveries are also passed to a task that checks each is in history by the time it arrives.
struct Recorder {
    deliveries: Mutex<Vec<(String, String, u64, u64)>>,
    lagged: Mutex<Vec<String>>,
    /// Channels of [`Listener::published`], in the order told.
    published: Mutex<Vec<String>>,
    check: mpsc::UnboundedSender<(String, Arc<str>, u64)>,
}

impl Recorder {
    /// A recorder and its checker, which reads `broker`'s history for each delivery, and once the
    /// recorder is dropped returns what it found wrong.
    fn start(broker: Arc<dyn Broker>) -> (Arc<Recorder>, JoinHandle<Vec<String>>) {
        let (check, mut arrived) = mpsc::unbounded_channel::<(String, Arc<str>, u64)>();
        let checker = tokio::spawn(async move {
            let mut wrong = Vec::new();
            while let Some((channel, epoch, offset)) = arrived.recv().await {
                let page = read(&*broker, &channel, HistoryRange::After(offset - 1, Some(1)), KEPT).await;
                if page.epoch != epoch || page.publications.first().map(|p| p.offset) != Some(offset) {
                    wrong.push(format!("{channel} {epoch}:{offset} delivered, history has {page:?}"));
                }
            }
            wrong
        });
        let recorder = Recorder {
            deliveries: Mutex::default(),
            lagged: Mutex::default(),
            published: Mutex::default(),
            check,
        };
        (Arc::new(recorder), checker)
    }

    fn lags(&self) -> Vec<String> {
        self.lagged.lock().expect("not poisoned").clone()
    }

    fn published(&self) -> Vec<String> {
        self.published.lock().expect("not poisoned").clone()
    }

    fn deliveries(&self) -> Vec<(String, String, u64, u64)> {
        self.deliveries.lock().expect("not poisoned").clone()
    }

    /// `(epoch, offset, data)` of each delivery of `channel`, in the order they came.
    fn deliveries_of(&self, channel: &str) -> Vec<(String, u64, u64)> {
        let all = self.deliveries();
        all.into_iter().filter(|d| d.0 == channel).map(|(_, e, o, n)| (e, o, n)).collect()
    }
}

impl Listener for Recorder {
    fn deliver(&self, channel: &str, epoch: &Arc<str>, p: &Arc<Publication>) {
        let delivery = (channel.to_string(), epoch.to_string(), p.offset, data_of(p));
        self.deliveries.lock().expect("not poisoned").push(delivery);
        let _ = self.check.send((channel.to_string(), epoch.clone(), p.offset));
    }

    fn lagged(&self, channel: &str) {
        self.lagged.lock().expect("not poisoned").push(channel.to_string());
    }

    fn published(&self, channel: &str) {
        self.published.lock().expect("not poisoned").push(channel.to_string());
    }
}
