//! The hub's promises, checked on the hub itself (the integration tests check them again over
//! real sockets): snapshot then live with no gap and no duplicate under concurrent publishers,
//! recovery rules, slow subscribers dropped without disturbing others.

use super::*;
use crate::broker::memory::MemoryBroker;
use crate::transport::{Batch, FrameWriter, Outbox, Splice, Take, frame};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn hub_with(config: Config) -> Arc<Hub> {
    let broker = MemoryBroker::start(config.limits.max_channels);
    Hub::new(Arc::new(config), broker, Arc::new(Metrics::new()))
}

/// Events as `{"sub":SPLICE,"result":EVENT}`, counting how often it encodes.
#[derive(Default)]
struct TestEncoding {
    encoded: AtomicUsize,
}

fn event_json(e: &Event<'_>) -> Value {
    let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap();
    match e {
        Event::Publication { channel, publication, .. } => {
            json!({"type":"publication","channel":channel,"offset":publication.offset,"data":parse(publication.data())})
        }
        Event::Snapshot { channel, page, recovered, earliest, .. } => {
            json!({"type":"snapshot","channel":channel,
            "epoch":&*page.epoch,"offset":page.offset,"recovered":recovered,"earliest":earliest,
            "publications":page.publications.iter().map(|p| parse(p.json())).collect::<Vec<_>>()})
        }
        Event::Closed { channel, reason } => json!({"type":"closed","channel":channel,"reason":reason}),
        Event::Heartbeat { channel, offset } => json!({"type":"heartbeat","channel":channel,"offset":offset}),
        Event::Gap { channel, from, to, reason } => {
            json!({"type":"gap","channel":channel,"from":from,"to":to,"reason":reason})
        }
        Event::Presence { channel, join, who } => {
            json!({"type": if *join { "join" } else { "leave" },"channel":channel,"info":who})
        }
    }
}

impl Encoding for TestEncoding {
    fn splice_len(&self) -> usize {
        SUB_ID_LEN
    }

    fn encode(&self, e: &Event<'_>, w: &mut FrameWriter<'_>) {
        self.encoded.fetch_add(1, Ordering::Relaxed);
        w.put(br#"{"sub":""#);
        w.splice_here();
        w.put(br#"","result":"#);
        w.put(event_json(e).to_string().as_bytes());
        w.put(b"}");
    }
}

fn sink_for(out: &Arc<Outbox>, enc: Arc<dyn Encoding>, id: SubId) -> Sink {
    Sink::new(out.clone(), enc, Splice::new(&id.0).unwrap())
}

/// Both phases at once, with no answer.
async fn subscribe(
    hub: &Hub,
    out: &Arc<Outbox>,
    channel: &str,
    since: Option<StreamPosition>,
    limit: Option<usize>,
) -> Result<Subscription, HubError> {
    let p = hub.prepare(channel, since, limit).await?;
    let sink = sink_for(out, Arc::new(TestEncoding::default()), p.id());
    p.go_live(sink, &[])
}

fn hub() -> Arc<Hub> {
    hub_with(Config::default())
}

fn data(v: Value) -> NewPublication {
    NewPublication {
        data: serde_json::value::to_raw_value(&v).unwrap(),
        event: None,
        idempotency_key: None,
        key: None,
    }
}

/// Splits server frames (unmasked) into their JSON payloads.
fn frames(mut bytes: &[u8]) -> Vec<Value> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (len, h) = match bytes[1] {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        out.push(serde_json::from_slice(&bytes[h..h + len]).unwrap());
        bytes = &bytes[h + len..];
    }
    out
}

fn drain(out: &Outbox) -> Vec<Value> {
    let mut batch = Batch::default();
    match out.take(&mut batch) {
        Take::Data => frames(&batch.to_vec()),
        _ => Vec::new(),
    }
}

fn events(out: &Outbox) -> Vec<Value> {
    drain(out).into_iter().map(|f| f["result"].clone()).collect()
}

fn big_outbox() -> Arc<Outbox> {
    Arc::new(Outbox::new(1 << 20, 1 << 30))
}

#[tokio::test]
async fn snapshot_then_live_in_order() {
    let hub = hub();
    for i in 1..=3 {
        hub.publish("t:a", data(serde_json::json!(i))).await.unwrap();
    }
    let out = big_outbox();
    let sub = subscribe(&hub, &out, "t:a", None, Some(2)).await.unwrap();
    hub.publish("t:a", data(serde_json::json!(4))).await.unwrap();
    let ev = events(&out);
    assert_eq!(ev[0]["type"], "snapshot");
    assert_eq!(ev[0]["offset"], 3);
    assert_eq!(ev[0]["recovered"], false);
    assert_eq!(ev[0]["publications"].as_array().unwrap().len(), 2, "limit 2: the newest two");
    assert_eq!(ev[0]["publications"][0]["offset"], 2);
    assert_eq!(ev[1]["type"], "publication");
    assert_eq!((ev[1]["offset"].clone(), ev[1]["data"].clone()), (4.into(), 4.into()));
    assert!(sub.unsubscribe());
    hub.publish("t:a", data(serde_json::json!(5))).await.unwrap();
    assert!(drain(&out).is_empty(), "nothing after unsubscribe");
    assert!(hub.channels("").is_empty(), "the channel is forgotten once unused");
}

#[tokio::test]
async fn recovery_rules() {
    let mut config = Config::default();
    config.default_namespace.history_size = 5;
    let hub = hub_with(config);
    let mut last = None;
    for i in 1..=10 {
        last = Some(hub.publish("r", data(serde_json::json!(i))).await.unwrap().position);
    }
    let epoch = last.unwrap().epoch;
    let since = |offset| Some(StreamPosition { epoch: epoch.clone(), offset });

    // Covered: everything after 7, recovered.
    let out = big_outbox();
    let _s = subscribe(&hub, &out, "r", since(7), Some(1)).await.unwrap();
    let snap = &events(&out)[0];
    assert_eq!(snap["recovered"], true);
    let offsets: Vec<_> =
        snap["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, vec![8, 9, 10], "recovery ignores limit");

    // Up to date: nothing missed, recovered.
    let out = big_outbox();
    let _s = subscribe(&hub, &out, "r", since(10), None).await.unwrap();
    let snap = &events(&out)[0];
    assert_eq!((snap["recovered"].clone(), snap["publications"].as_array().unwrap().len()), (true.into(), 0));

    // Too old (history keeps 6..=10), another epoch, or from the future: the tail, not recovered.
    for s in [since(2), Some(StreamPosition { epoch: "other".into(), offset: 8 }), since(11)] {
        let out = big_outbox();
        let _s = subscribe(&hub, &out, "r", s.clone(), None).await.unwrap();
        let snap = &events(&out)[0];
        assert_eq!(snap["recovered"], false, "{s:?}");
        assert_eq!(snap["publications"][0]["offset"], 6, "{s:?}");
        assert_eq!(snap["offset"], 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_gap_and_no_duplicate_while_publishers_race_and_subscribers_join() {
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 2_500;
    const TOTAL: u64 = PUBLISHERS * EACH;
    // History holds everything, so that a subscriber told to resubscribe recovers exactly.
    let mut config = Config::default();
    config.default_namespace.history_size = TOTAL as usize;
    let hub = hub_with(config);
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let hub = hub.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                hub.publish("race", data(serde_json::json!([p, i]))).await.unwrap();
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    // Subscribers join while the publishers run, each draining its outbox concurrently.
    let mut subs = Vec::new();
    for s in 0..8u64 {
        let hub = hub.clone();
        subs.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_micros(300 * s)).await;
            let out = big_outbox();
            let mut sub = subscribe(&hub, &out, "race", None, Some(0)).await.unwrap();
            let (mut seen, mut epoch) = (Vec::new(), String::new());
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while seen.last().copied() != Some(TOTAL) && tokio::time::Instant::now() < deadline {
                for e in events(&out) {
                    let offset =
                        |v: &Value| v["offset"].as_u64().unwrap_or_else(|| panic!("no offset in {v}"));
                    match e["type"].as_str() {
                        // The first snapshot marks where the stream starts; a recovery's snapshot
                        // carries exactly what was missed.
                        Some("snapshot") if seen.is_empty() => seen.push(offset(&e)),
                        Some("snapshot") => {
                            assert_eq!(e["recovered"], true, "history covers every resubscription: {e}");
                            seen.extend(e["publications"].as_array().unwrap().iter().map(offset));
                        }
                        Some("publication") => seen.push(offset(&e)),
                        // A subscriber may be told to resubscribe (its buffer overflowed while it
                        // went live on a busy machine): it does, with `since`, as a client would.
                        Some("closed") => {
                            assert_eq!(e["reason"], "insufficient_state", "{e}");
                            let since =
                                StreamPosition { epoch: epoch.clone(), offset: *seen.last().unwrap() };
                            sub = subscribe(&hub, &out, "race", Some(since), None).await.unwrap();
                        }
                        _ => panic!("unexpected event {e}"),
                    }
                    if let Some(ep) = e["epoch"].as_str() {
                        epoch = ep.to_string();
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            drop(sub);
            seen
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for s in subs {
        let seen = s.await.unwrap();
        let start = seen[0];
        let expected: Vec<u64> = (start..=TOTAL).collect();
        assert_eq!(seen, expected, "snapshot at {start}, then every offset once, in order");
    }
}

#[tokio::test]
async fn an_overflowing_subscriber_is_dropped_and_others_continue() {
    let hub = hub();
    let slow = Arc::new(Outbox::new(3, 1 << 20));
    slow.set_socket_full(true); // its client is not reading
    let fast = big_outbox();
    let _slow = subscribe(&hub, &slow, "s", None, None).await.unwrap();
    let _fast = subscribe(&hub, &fast, "s", None, None).await.unwrap();
    for i in 0..10 {
        hub.publish("s", data(serde_json::json!(i))).await.unwrap();
    }
    assert!(slow.is_ending(), "the slow outbox is aborted");
    let ev = events(&fast);
    assert_eq!(ev.len(), 11, "snapshot and all ten publications");
    assert_eq!(hub.channels("")[0].subscribers, 1);
}

#[tokio::test]
async fn idempotent_publish_and_invalid_names() {
    let hub = hub();
    let key = |k: &str| NewPublication { idempotency_key: Some(k.into()), ..data(serde_json::json!(1)) };
    let a = hub.publish("i", key("k1")).await.unwrap();
    let b = hub.publish("i", key("k1")).await.unwrap();
    assert!(!a.duplicate && b.duplicate);
    assert_eq!(a.position, b.position);
    assert!(matches!(
        hub.publish("bad name", data(serde_json::json!(1))).await,
        Err(HubError::InvalidChannel(_))
    ));
    let out = big_outbox();
    assert!(matches!(subscribe(&hub, &out, "", None, None).await, Err(HubError::InvalidChannel(_))));
}

#[tokio::test]
async fn the_answer_goes_first_and_what_arrived_meanwhile_follows_the_snapshot() {
    let hub = hub();
    hub.publish("two", data(json!(1))).await.unwrap();
    let out = big_outbox();
    let pending = hub.prepare("two", None, None).await.unwrap();
    // Published between the history read and going live: buffered, not lost, not doubled.
    hub.publish("two", data(json!(2))).await.unwrap();
    hub.publish("two", data(json!(3))).await.unwrap();
    assert!(drain(&out).is_empty(), "nothing is queued before the answer");
    let mut answer = Vec::new();
    frame::put_frame(&mut answer, frame::OP_TEXT, br#"{"answer":true}"#);
    let id = pending.id();
    let _sub = pending.go_live(sink_for(&out, Arc::new(TestEncoding::default()), id), &[&answer]).unwrap();
    hub.publish("two", data(json!(4))).await.unwrap();
    let got = drain(&out);
    assert_eq!(got[0], json!({"answer": true}));
    assert_eq!(got[1]["result"]["type"], "snapshot");
    assert_eq!(got[1]["result"]["offset"], 1);
    assert_eq!(got[1]["sub"], id.as_str());
    let offsets: Vec<_> = got[2..].iter().map(|f| f["result"]["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, vec![2, 3, 4]);
}

#[tokio::test]
async fn dropping_a_pending_or_live_subscription_undoes_it() {
    let hub = hub();
    let pending = hub.prepare("undo", None, None).await.unwrap();
    assert_eq!(hub.channels.read().len(), 1, "the pending subscriber holds the channel");
    drop(pending);
    assert!(hub.channels.read().is_empty(), "dropped before going live: the channel is forgotten");
    let out = big_outbox();
    let sub = subscribe(&hub, &out, "undo", None, None).await.unwrap();
    assert_eq!(hub.channels("")[0].subscribers, 1);
    drop(sub);
    assert!(hub.channels("").is_empty(), "a dropped subscription unsubscribes");
    hub.publish("undo", data(json!(1))).await.unwrap();
    assert_eq!(drain(&out).len(), 1, "only the snapshot was ever queued");
}

#[tokio::test]
async fn one_frame_per_encoding_per_publication_and_filters_per_subscriber() {
    let hub = hub();
    let (a, b) = (Arc::new(TestEncoding::default()), Arc::new(TestEncoding::default()));
    let mut outs = Vec::new();
    let mut subs = Vec::new();
    for i in 0..5 {
        let enc: Arc<dyn Encoding> = if i < 3 { a.clone() } else { b.clone() };
        let out = big_outbox();
        let p = hub.prepare("enc", None, None).await.unwrap();
        let mut sink = sink_for(&out, enc, p.id());
        if i == 4 {
            sink = sink.with_filter(Filter::new(|p| p.offset % 2 == 0));
        }
        subs.push(p.go_live(sink, &[]).unwrap());
        outs.push(out);
    }
    let before = a.encoded.load(Ordering::Relaxed) + b.encoded.load(Ordering::Relaxed);
    assert_eq!(before, 5, "one snapshot each");
    for i in 1..=4 {
        hub.publish("enc", data(json!(i))).await.unwrap();
    }
    assert_eq!(a.encoded.load(Ordering::Relaxed), 3 + 4, "encoding a: one frame per publication");
    assert_eq!(b.encoded.load(Ordering::Relaxed), 2 + 4, "encoding b: one frame per publication");
    for (i, out) in outs.iter().enumerate() {
        let offsets: Vec<_> = events(out)[1..].iter().map(|e| e["offset"].as_u64().unwrap()).collect();
        let want: Vec<u64> = if i == 4 { vec![2, 4] } else { vec![1, 2, 3, 4] };
        assert_eq!(offsets, want, "subscriber {i}");
    }
}

#[tokio::test]
async fn the_node_channel_cap_is_the_hubs() {
    let mut config = Config::default();
    config.limits.max_channels = 2;
    // The broker's own storage bound is another matter: room for more streams than that.
    let hub = Hub::new(Arc::new(config), MemoryBroker::start(100), Arc::new(Metrics::new()));
    let out = big_outbox();
    let _a = subscribe(&hub, &out, "cap:a", None, None).await.unwrap();
    let _b = subscribe(&hub, &out, "cap:b", None, None).await.unwrap();
    assert!(matches!(subscribe(&hub, &out, "cap:c", None, None).await, Err(HubError::TooManyChannels(2))));
    drop(_a);
    assert!(
        subscribe(&hub, &out, "cap:c", None, None).await.is_ok(),
        "a slot is freed when its channel empties"
    );
}

/// A hub over a memory broker of `max_channels` streams, with the broker's handle.
fn hub_and_broker(max_channels: usize) -> (Arc<Hub>, Arc<MemoryBroker>, Arc<Metrics>) {
    let mut config = Config::default();
    config.limits.max_channels = max_channels;
    let broker = MemoryBroker::start(max_channels);
    let metrics = Arc::new(Metrics::new());
    (Hub::new(Arc::new(config), broker.clone(), metrics.clone()), broker, metrics)
}

#[tokio::test]
async fn a_history_read_of_a_channel_with_no_stream_stores_nothing() {
    let (hub, broker, metrics) = hub_and_broker(2);
    for i in 0..10 {
        let since = (i % 2 == 1).then(|| StreamPosition { epoch: "e".into(), offset: i });
        let h = hub.history(&format!("nobody:{i}"), since, Some(3)).await.expect("reads never fill the node");
        assert_eq!((h.position.epoch.as_str(), h.position.offset, h.publications.len()), (NO_EPOCH, 0, 0));
    }
    assert_eq!((broker.len(), hub.channels.read().len(), hub.held_channels()), (0, 0, 0));
    assert!(metrics.render().contains("rpchub_channels 0"));
    assert!(metrics.render().contains(r#"rpchub_channels_refused_total{reason="max_channels"} 0"#));
}

#[tokio::test]
async fn the_last_subscriber_leaving_an_empty_channel_frees_its_slot_at_once() {
    let (hub, broker, metrics) = hub_and_broker(1);
    let out = big_outbox();
    let a = subscribe(&hub, &out, "slot:a", None, None).await.unwrap();
    assert_eq!((broker.len(), hub.held_channels()), (1, 1));
    assert!(matches!(
        subscribe(&hub, &out, "slot:b", None, None).await,
        Err(HubError::TooManyChannels(1) | HubError::Broker(BrokerError::Full(1)))
    ));
    drop(a);
    assert_eq!((broker.len(), hub.held_channels()), (0, 0), "nothing retained: the stream goes with it");
    let b = subscribe(&hub, &out, "slot:b", None, None).await.expect("the slot is free again");
    // A channel that retains a publication keeps its stream (and its epoch) for its TTL.
    let kept = hub.publish("slot:b", data(json!(1))).await.unwrap().position;
    drop(b);
    assert_eq!((broker.len(), hub.held_channels()), (1, 1), "its history holds slot:b");
    assert!(metrics.render().contains("rpchub_channels 1"));
    let h = hub.history("slot:b", None, None).await.unwrap();
    assert_eq!(h.position, kept);
    assert!(subscribe(&hub, &out, "slot:c", None, None).await.is_err(), "slot:b still holds the slot");
    assert!(metrics.render().contains(r#"rpchub_channels_refused_total{reason="max_channels"} 2"#));
}

#[tokio::test]
async fn a_subscriber_that_comes_while_the_last_one_leaves_keeps_the_stream_it_read() {
    let (hub, broker, _) = hub_and_broker(10);
    let out = big_outbox();
    let first = subscribe(&hub, &out, "stay", None, None).await.unwrap();
    // The next one registers (and takes interest) before the first leaves.
    let pending = hub.prepare("stay", None, None).await.unwrap();
    let epoch = pending.page.epoch.clone();
    drop(first);
    assert_eq!(broker.len(), 1, "the stream stays: someone is subscribing to it");
    let id = pending.id();
    let _second = pending.go_live(sink_for(&out, Arc::new(TestEncoding::default()), id), &[]).unwrap();
    drain(&out);
    let p = hub.publish("stay", data(json!(1))).await.unwrap();
    assert_eq!(*p.position.epoch, *epoch, "publishers append to the stream the subscriber read");
    assert_eq!(events(&out)[0]["offset"], 1, "and it gets the publication");
}

#[tokio::test]
async fn a_broker_that_is_down_fails_every_call_at_once_and_nothing_is_registered() {
    use crate::broker::testing::{Faults, FaultyBroker};
    let config = Config::default();
    let broker = FaultyBroker::start(config.limits.max_channels, Faults::default());
    let hub = Hub::new(Arc::new(config), broker.clone(), Arc::new(Metrics::new()));
    broker.set_down(true);
    let unavailable = |e: HubError| matches!(e, HubError::Broker(BrokerError::Unavailable(_)));
    let out = big_outbox();
    assert!(unavailable(subscribe(&hub, &out, "down:a", None, None).await.unwrap_err()));
    assert!(unavailable(hub.publish("down:a", data(json!(1))).await.unwrap_err()));
    assert!(unavailable(hub.history("down:a", None, None).await.unwrap_err()));
    assert_eq!(hub.channels.read().len(), 0, "a failed subscribe leaves no channel behind");
    assert_eq!(broker.counts.unavailable.load(Ordering::Relaxed), 0, "the broker was not waited on");
    broker.set_down(false);
    assert_eq!(hub.publish("down:a", data(json!(1))).await.unwrap().position.offset, 1);
}
