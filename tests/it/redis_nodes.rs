//! Several rpchub nodes, each a process of the built binary (`rpchub serve --broker URL`), on one
//! real Redis and on a 3-master Redis Cluster, with nodes and Redis killed and restarted while
//! publishers and subscribers run: a publication made on one node reaches the subscribers of
//! every node in order; a client moving to another node with `since` recovers exactly; history
//! and epochs outlive every node, stopped at once or replaced one by one under traffic; a Redis
//! (or the cluster shard of the channel) SIGKILLed and restarted mid-stream leaves every
//! subscriber with every publication or an explicit signal (with AOF `appendfsync always`: every
//! acknowledged publication); a node SIGKILLed while publishers run on the others loses nothing
//! for the subscribers of the survivors.
//!
//! Every subscriber is a [`Subscriber`]: a client task that records each publication's (epoch,
//! offset) and data and each explicit signal (`closed`, a snapshot with `recovered: false` after
//! a `since`, a `gap`), resubscribes with `since` after a signal (retrying -32008) and connects
//! to its next node when its node dies. Every publisher is a [`Publisher`] that records each
//! acknowledged publication, retrying one answered -32008 with its idempotency key. At the end
//! [`check`] holds each subscriber's record against the acknowledgements: no duplicate, no
//! silent gap, nothing acknowledged missing unless an explicit signal covers it; and what it got
//! at an acknowledged position is what was acknowledged there, each publication once an epoch.

use crate::redis_support::{RedisCluster, RedisServer, shared, shared_cluster};
use crate::support::{self, ADMIN, Ws, until};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// How long a scenario waits for its subscribers to catch up, or for a node or Redis to be back.
const WAIT: Duration = Duration::from_secs(20);
/// The pause of a publisher between two publications: enough for a few hundred a second over
/// the nodes, so that kills land mid-stream on 2 cores.
const PACE: Duration = Duration::from_millis(4);
/// How long a killed Redis (or shard) stays down: longer than the nodes' ping period.
const OUTAGE: Duration = Duration::from_millis(1500);
/// The history the nodes keep of each channel: more than a scenario publishes.
const HISTORY: usize = 2000;

// ---------------------------------------------------------------------------------------------
// The checker.

/// A position in a channel's stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Pos {
    epoch: String,
    offset: u64,
}

/// `{epoch, offset}`.
fn pos(epoch: &str, offset: u64) -> Pos {
    Pos { epoch: epoch.to_string(), offset }
}

impl Pos {
    /// The position right after this one, in its epoch.
    fn next(&self) -> Pos {
        pos(&self.epoch, self.offset + 1)
    }

    /// True if this is `other` or beyond it in the same epoch.
    fn reached(&self, other: &Pos) -> bool {
        self.epoch == other.epoch && self.offset >= other.offset
    }
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

/// What a subscriber saw, in the order it saw it.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    /// A publication, of a snapshot or live.
    Pub(Pos),
    /// A snapshot reaching this position (recorded after the snapshot's publications).
    At(Pos),
    /// An explicit signal that publications may be missing: `closed`, a snapshot with
    /// `recovered: false` after a `since`, a `gap`.
    Signal(String),
    /// The client connected again (its node died, or it moved): not a signal, it resubscribes
    /// with `since` and must recover exactly.
    Reconnected(String),
}

/// Whether an explicit signal excuses the acknowledged publications a subscriber did not get
/// across it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Signals {
    /// Yes: the stream was lost (a Redis without persistence restarted), the subscriber was told.
    Excuse,
    /// No: the stream was not lost, so a subscriber told `closed` must recover with `since`.
    ExcuseNothing,
}

/// Checks one subscriber's record `seen` against `acked`, every publication the publishers got
/// an answer `{epoch, offset}` for, in the order the answers came (over all publishers). The
/// rule:
///
/// 1. The record starts where its first snapshot starts: the position before the first
///    publication, or the first snapshot's position when it has none (`start`). Acknowledged
///    publications at or before `start` in its epoch, or in an epoch acknowledged before it,
///    are not owed.
/// 2. No publication is seen twice (the same epoch and offset).
/// 3. Walking the record with the subscriber's position `p` (its last publication or snapshot
///    position), each publication must be `p`'s next offset in `p`'s epoch, and each snapshot
///    position must be `p` itself, unless a [`Seen::Signal`] came since `p` was set: then the
///    record may jump to any position `q` (a publication not seen yet), and the jump `(p, q]`
///    is excused. The allowance ends at the next publication or snapshot position: a
///    resubscription answered with a snapshot goes on from it exactly. A [`Seen::Reconnected`]
///    is not a signal.
/// 4. Every acknowledged publication not excused by 1 was seen, unless `signals` is
///    [`Signals::Excuse`] and it lies in an excused jump `(p, q]`: in `p`'s epoch after `p`, in
///    `q`'s epoch up to `q`, or in an epoch whose first acknowledgement came between those of
///    `p`'s and `q`'s epochs (an epoch nobody acknowledged counts as before every other for
///    `p`, after every other for `q`).
///
/// Returns every violation, each with the records around it.
fn check(seen: &[Seen], acked: &[Pos], signals: Signals) -> Result<(), String> {
    // The order of epochs: that of their first acknowledgement.
    let mut rank: HashMap<&str, usize> = HashMap::new();
    for (i, a) in acked.iter().enumerate() {
        rank.entry(a.epoch.as_str()).or_insert(i);
    }
    let rank_of = |e: &str, missing: usize| rank.get(e).copied().unwrap_or(missing);
    let around = |i: usize| {
        let from = i.saturating_sub(3);
        let to = (i + 3).min(seen.len());
        format!("{from}..{to}: {:?}", &seen[from..to])
    };
    let mut problems = Vec::new();
    let mut got: HashSet<&Pos> = HashSet::new();
    let mut start: Option<Pos> = None;
    let mut p: Option<Pos> = None;
    let mut signalled = false;
    let mut jumps: Vec<(Pos, Pos)> = Vec::new();
    for (i, s) in seen.iter().enumerate() {
        match s {
            Seen::Signal(_) => signalled = true,
            Seen::Reconnected(_) => {}
            Seen::Pub(q) => {
                if !got.insert(q) {
                    problems.push(format!("{q} seen twice, at {}", around(i)));
                }
                match &p {
                    None => start = Some(pos(&q.epoch, q.offset.saturating_sub(1))),
                    Some(p) if *q == p.next() => {}
                    Some(p) if signalled => jumps.push((p.clone(), q.clone())),
                    Some(p) => problems.push(format!("a silent jump from {p} to {q}, at {}", around(i))),
                }
                p = Some(q.clone());
                signalled = false;
            }
            Seen::At(q) => {
                match &p {
                    None => start = Some(q.clone()),
                    Some(p) if p == q => {}
                    Some(p) if signalled => jumps.push((p.clone(), q.clone())),
                    Some(p) => {
                        problems.push(format!("a snapshot at {q} after {p} with no signal, at {}", around(i)))
                    }
                }
                // A snapshot says where the stream goes on: a signal before it is answered.
                p = Some(q.clone());
                signalled = false;
            }
        }
    }
    let Some(start) = start else {
        return if acked.is_empty() { Ok(()) } else { Err("the subscriber saw nothing".into()) };
    };
    let start_rank = rank_of(&start.epoch, 0);
    let excused = |a: &Pos| {
        jumps.iter().any(|(p, q)| {
            if p.epoch == q.epoch {
                a.epoch == p.epoch && a.offset > p.offset && a.offset <= q.offset
            } else {
                let r = rank_of(&a.epoch, usize::MAX);
                (a.epoch == p.epoch && a.offset > p.offset)
                    || (a.epoch == q.epoch && a.offset <= q.offset)
                    || (rank_of(&p.epoch, 0) < r && r < rank_of(&q.epoch, usize::MAX))
            }
        })
    };
    let mut missing = Vec::new();
    for a in acked {
        let before_start = if a.epoch == start.epoch {
            a.offset <= start.offset
        } else {
            rank_of(&a.epoch, usize::MAX) < start_rank
        };
        if before_start || got.contains(a) || (signals == Signals::Excuse && excused(a)) {
            continue;
        }
        missing.push(a.to_string());
    }
    if !missing.is_empty() {
        let n = missing.len();
        missing.truncate(20);
        problems.push(format!(
            "{n} acknowledged publications never seen{}: {missing:?}; the signalled jumps: {jumps:?}",
            if signals == Signals::Excuse { " nor excused by a signal" } else { "" }
        ));
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

#[test]
fn the_checker_finds_silent_gaps_duplicates_and_missing_publications() {
    use Seen::{At, Pub, Signal};
    let e = |o| pos("e1", o);
    let f = |o| pos("e2", o);
    let acked: Vec<Pos> = (1..=4).map(e).collect();
    let clean = [At(e(0)), Pub(e(1)), Pub(e(2)), Pub(e(3)), Pub(e(4))];
    assert_eq!(check(&clean, &acked, Signals::ExcuseNothing), Ok(()));
    // A snapshot with its publications, then live events: the same stream.
    let snapshot = [Pub(e(1)), Pub(e(2)), At(e(2)), Pub(e(3)), Pub(e(4))];
    assert_eq!(check(&snapshot, &acked, Signals::ExcuseNothing), Ok(()));

    let silent_gap = [At(e(0)), Pub(e(1)), Pub(e(3)), Pub(e(4))];
    let err = check(&silent_gap, &acked, Signals::Excuse).unwrap_err();
    assert!(err.contains("silent jump from e1:1 to e1:3") && err.contains("e1:2"), "{err}");
    let duplicate = [At(e(0)), Pub(e(1)), Pub(e(2)), Pub(e(2)), Pub(e(3)), Pub(e(4))];
    assert!(check(&duplicate, &acked, Signals::Excuse).unwrap_err().contains("e1:2 seen twice"));
    let again_after_signal = [At(e(0)), Pub(e(1)), Pub(e(2)), Signal("closed".into()), Pub(e(2))];
    assert!(check(&again_after_signal, &acked, Signals::Excuse).unwrap_err().contains("seen twice"));
    let stops_early = [At(e(0)), Pub(e(1)), Pub(e(2))];
    assert!(check(&stops_early, &acked, Signals::Excuse).unwrap_err().contains("[\"e1:3\", \"e1:4\"]"));
    let snapshot_moved = [At(e(0)), Pub(e(1)), At(e(3)), Pub(e(4))];
    assert!(check(&snapshot_moved, &acked, Signals::Excuse).unwrap_err().contains("no signal"));

    // The stream lost (a new epoch), the subscriber told: what it missed is excused, but only
    // when signals excuse, and only what lies in the jump.
    let acked: Vec<Pos> = [e(1), e(2), e(3), f(1), f(2), f(3)].into();
    let told = [
        At(e(0)),
        Pub(e(1)),
        Signal("closed insufficient_state".into()),
        Signal("recovered:false".into()),
        Pub(f(2)),
        At(f(2)),
        Pub(f(3)),
    ];
    assert_eq!(check(&told, &acked, Signals::Excuse), Ok(()));
    assert!(
        check(&told, &acked, Signals::ExcuseNothing).unwrap_err().contains("[\"e1:2\", \"e1:3\", \"e2:1\"]")
    );
    let untold = [At(e(0)), Pub(e(1)), Pub(e(2)), Pub(e(3)), Pub(f(1)), Pub(f(2)), Pub(f(3))];
    assert!(check(&untold, &acked, Signals::Excuse).unwrap_err().contains("silent jump from e1:3 to e2:1"));
    // A signal excuses only its own jump: a later silent gap is still one.
    let later = [At(e(0)), Signal("gap".into()), Pub(e(2)), Pub(e(3)), Pub(f(2)), Pub(f(3))];
    let err = check(&later, &acked, Signals::Excuse).unwrap_err();
    assert!(err.contains("silent jump from e1:3 to e2:2") && err.contains("e2:1"), "{err}");
    // A client that moved nodes is no excuse.
    let moved = [At(e(0)), Pub(e(1)), Seen::Reconnected("moved".into()), Pub(e(3))];
    assert!(check(&moved, &acked[..3], Signals::Excuse).unwrap_err().contains("silent jump"));
    // What was published before the subscriber's first snapshot is not owed.
    let late = [Pub(e(2)), At(e(2)), Pub(e(3))];
    assert_eq!(check(&late, &acked[..3], Signals::ExcuseNothing), Ok(()));
}

// ---------------------------------------------------------------------------------------------
// Nodes, subscribers and publishers.

/// An rpchub node: a process of the built binary on a broker, SIGKILLed when dropped. Its log
/// goes to a file, whose tail is printed when a test fails.
struct Node {
    child: support::ServerProcess,
    addr: SocketAddr,
    log: PathBuf,
}

impl Node {
    /// Starts one on `broker` (a Redis URL) on a free port; returns once it accepts connections.
    async fn start(broker: &str) -> Node {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::env::temp_dir().join(format!("rpchub-it-node-{}-{port}.log", std::process::id()));
        let (node_id, history) =
            (format!("node-{port}"), format!("default_namespace.history_size={HISTORY}"));
        // Every publication of a scenario stays in history, so that a client that moves
        // recovers however slow its move on a busy machine.
        let args = ["--broker", broker, "--node-id", &node_id, "--set", &history];
        let stderr = std::fs::File::create(&log).unwrap();
        let child = support::serve_binary_at(port, &args, &[], None, stderr.into()).await;
        Node { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), log }
    }

    /// Three nodes on `broker`.
    async fn three(broker: &str) -> [Node; 3] {
        [Node::start(broker).await, Node::start(broker).await, Node::start(broker).await]
    }

    /// SIGKILLs it and waits until it is gone.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Stops it with SIGTERM (a graceful shutdown) and waits until it is gone.
    async fn terminate(mut self) {
        // SAFETY: signalling our own child, which has not been waited for yet.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM)
        };
        let deadline = Instant::now() + WAIT;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the node stops on SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- the last lines of node {}:", self.addr);
            tail.iter().rev().for_each(|l| eprintln!("{l}"));
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The nodes a [`Subscriber`] may connect to.
type Directory = Arc<Mutex<Vec<SocketAddr>>>;

/// A subscriber's record, shared with its task.
#[derive(Debug, Default)]
struct Record {
    seen: Vec<Seen>,
    /// Its position: its last publication's or snapshot's.
    at: Option<Pos>,
    /// The data of each publication seen (the first time).
    data: HashMap<Pos, Value>,
    /// What went wrong beyond the stream: unexpected answers or notifications.
    problems: Vec<String>,
}

impl Record {
    /// Notes publication `p` with its `data`.
    fn publication(&mut self, p: Pos, data: &Value) {
        self.data.entry(p.clone()).or_insert_with(|| data.clone());
        self.push(Seen::Pub(p));
    }

    /// Notes `s`, moving the position for a publication or snapshot.
    fn push(&mut self, s: Seen) {
        if let Seen::Pub(p) | Seen::At(p) = &s {
            self.at = Some(p.clone());
        }
        self.seen.push(s);
    }

    fn signals(&self) -> usize {
        self.seen.iter().filter(|s| matches!(s, Seen::Signal(_))).count()
    }
}

/// A client subscribed to one channel on one node (the checker's client side, see [`check`]).
struct Subscriber {
    name: String,
    record: Arc<Mutex<Record>>,
    moves: mpsc::UnboundedSender<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Starts one on `nodes[0]` subscribing to `channel`; when its connection ends, it connects
    /// to the next of `nodes` (round) and resubscribes with `since`.
    fn start(name: &str, channel: &str, nodes: &[SocketAddr]) -> Subscriber {
        Subscriber::start_in(name, channel, &Arc::new(Mutex::new(nodes.to_vec())), 0)
    }

    /// Like [`Subscriber::start`], on `directory[first]`, going on to the next of `directory`,
    /// as it is then, when its connection ends: a directory the test updates as nodes are
    /// replaced.
    fn start_in(name: &str, channel: &str, directory: &Directory, first: usize) -> Subscriber {
        let record = Arc::new(Mutex::new(Record::default()));
        let (moves, rx) = mpsc::unbounded_channel();
        let task =
            tokio::spawn(subscriber(channel.to_string(), directory.clone(), first, record.clone(), rx));
        Subscriber { name: name.to_string(), record, moves, task }
    }

    /// Tells it to leave its node for `to` and resubscribe there with `since`.
    fn move_to(&self, to: SocketAddr) {
        self.moves.send(to).unwrap();
    }

    fn at(&self) -> Option<Pos> {
        self.record.lock().unwrap().at.clone()
    }

    /// Stops it; its record.
    fn stop(self) -> (String, Record) {
        self.task.abort();
        let record = std::mem::take(&mut *self.record.lock().unwrap());
        (self.name, record)
    }
}

/// Sends `subscribe` for `channel` with request `id`, with `since` when it has a position.
async fn send_subscribe(ws: &mut Ws, id: u64, channel: &str, since: Option<&Pos>) -> bool {
    let params = match since {
        Some(p) => json!({"channel": channel, "since": {"epoch": p.epoch, "offset": p.offset}}),
        None => json!({"channel": channel}),
    };
    let req = json!({"jsonrpc": "2.0", "id": id, "method": "subscribe", "params": params});
    ws.send(Message::text(req.to_string())).await.is_ok()
}

/// Where one connection of a [`Subscriber`] stands.
#[derive(Debug, Default)]
struct Connection {
    /// The position its current subscribe asked for.
    since: Option<Pos>,
    /// The epoch of its live events (its last snapshot's).
    epoch: String,
    /// Its subscription, once answered.
    sub: Option<String>,
    /// The id of its subscribe waiting for an answer.
    pending: Option<u64>,
    /// The last request id used.
    id: u64,
}

/// What a [`Subscriber`] does after a message.
#[derive(Debug, PartialEq)]
enum Then {
    Read,
    /// Subscribe again (with `since` its position) after this pause.
    Resubscribe(Duration),
}

/// Takes one message `v` of a [`Subscriber`]'s connection `c` into its record `r`.
fn on_message(v: &Value, c: &mut Connection, r: &mut Record) -> Then {
    if let Some(answered) = v.get("id") {
        if c.pending.is_none() || answered != &json!(c.pending) {
            r.problems.push(format!("an answer to nothing asked: {v}"));
        } else if let Some(s) = v["result"].as_str() {
            (c.sub, c.pending) = (Some(s.to_string()), None);
        } else {
            // -32008 while Redis is away: retried, as a client does.
            if v["error"]["code"] != -32008 {
                r.problems.push(format!("subscribe failed: {v}"));
            }
            return Then::Resubscribe(Duration::from_millis(50));
        }
        return Then::Read;
    }
    let event = &v["params"]["result"];
    if v["method"] != "subscription" || c.sub.is_none() || v["params"]["subscription"] != json!(c.sub) {
        r.problems.push(format!("a notification of no current subscription: {v}"));
        return Then::Read;
    }
    match event["type"].as_str() {
        Some("snapshot") => {
            c.epoch = event["epoch"].as_str().unwrap().to_string();
            if c.since.is_some() && event["recovered"] != true {
                r.push(Seen::Signal(format!("{event}")));
            }
            for p in event["publications"].as_array().unwrap() {
                r.publication(pos(&c.epoch, p["offset"].as_u64().unwrap()), &p["data"]);
            }
            r.push(Seen::At(pos(&c.epoch, event["offset"].as_u64().unwrap())));
        }
        Some("publication") => {
            r.publication(pos(&c.epoch, event["offset"].as_u64().unwrap()), &event["data"])
        }
        Some("gap") => r.push(Seen::Signal(format!("{event}"))),
        Some("closed") => {
            r.push(Seen::Signal(format!("{event}")));
            c.sub = None;
            return Then::Resubscribe(Duration::ZERO);
        }
        Some("heartbeat") => {}
        _ => r.problems.push(format!("an unexpected event: {v}")),
    }
    Then::Read
}

/// Sends `c`'s next subscribe for `channel`, with `since` the record's position when it has one.
async fn resubscribe(ws: &mut Ws, c: &mut Connection, channel: &str, record: &Mutex<Record>) -> bool {
    c.since = record.lock().unwrap().at.clone();
    c.id += 1;
    c.pending = Some(c.id);
    send_subscribe(ws, c.id, channel, c.since.as_ref()).await
}

/// The task of a [`Subscriber`].
async fn subscriber(
    channel: String,
    mut nodes: Directory,
    mut node: usize,
    record: Arc<Mutex<Record>>,
    mut moves: mpsc::UnboundedReceiver<SocketAddr>,
) {
    let mut id = 0;
    'connect: loop {
        let addr = {
            let nodes = nodes.lock().unwrap();
            nodes[node % nodes.len()]
        };
        let url = format!("ws://{addr}/ws/rpc");
        let mut ws = match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await {
            Ok(Ok((ws, _))) => ws,
            _ => {
                node += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut c = Connection { id, ..Connection::default() };
        let sent = resubscribe(&mut ws, &mut c, &channel, &record).await;
        id = c.id;
        if !sent {
            continue;
        }
        loop {
            let message = tokio::select! {
                m = ws.next() => m,
                Some(to) = moves.recv() => {
                    record.lock().unwrap().push(Seen::Reconnected(format!("moved from {addr} to {to}")));
                    (nodes, node) = (Arc::new(Mutex::new(vec![to])), 0);
                    continue 'connect;
                }
            };
            let text = match message {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_)) | Err(_)) | None => {
                    let how = match &message {
                        Some(Ok(Message::Close(Some(f)))) => {
                            format!("closed with {} {:?}", f.code, f.reason.as_str())
                        }
                        Some(Err(e)) => format!("failed: {e}"),
                        _ => "closed".to_string(),
                    };
                    let why = format!("the connection to {addr} ended: {how}");
                    record.lock().unwrap().push(Seen::Reconnected(why));
                    node += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue 'connect;
                }
                Some(Ok(_)) => continue,
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            let then = on_message(&v, &mut c, &mut record.lock().unwrap());
            if let Then::Resubscribe(pause) = then {
                tokio::time::sleep(pause).await;
                let sent = resubscribe(&mut ws, &mut c, &channel, &record).await;
                id = c.id;
                if !sent {
                    continue 'connect;
                }
            }
        }
    }
}

/// The publications acknowledged to every publisher of a scenario, with the data published, in
/// the order the answers came.
type Acks = Arc<Mutex<Vec<(Pos, Value)>>>;

/// A client publishing to one channel through one node as fast as [`PACE`] allows, until
/// stopped or its node dies. A publication answered -32008 is sent again with the same data and
/// idempotency key (one that reached Redis before the failure is answered with its position, not
/// published twice, while history holds it).
struct Publisher {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Publisher {
    /// Starts one named `name` on `node`, noting what is acknowledged in `acks`.
    fn start(name: &str, node: SocketAddr, channel: &str, acks: &Acks) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let task =
            tokio::spawn(publisher(name.to_string(), node, channel.to_string(), acks.clone(), stop.clone()));
        Publisher { stop, task }
    }

    /// Stops it; what went wrong (answers other than a result or -32008).
    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// The task of a [`Publisher`].
async fn publisher(
    name: String,
    node: SocketAddr,
    channel: String,
    acks: Acks,
    stop: Arc<AtomicBool>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut ws = support::ws(node, Some(ADMIN)).await;
    let (mut n, mut id) = (1u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        let data = json!({"by": name, "n": n});
        let req = json!({"jsonrpc": "2.0", "id": id, "method": "publish",
            "params": {"channel": channel, "data": data, "idempotency_key": format!("{name}-{n}")}});
        if ws.send(Message::text(req.to_string())).await.is_err() {
            break;
        }
        let answer = loop {
            match tokio::time::timeout(WAIT, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["id"] == id {
                        break Some(v);
                    }
                }
                Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => break None,
                Ok(Some(Ok(_))) => {}
                Err(_) => {
                    problems.push(format!("{name}: no answer to publication {n} within {WAIT:?}"));
                    break None;
                }
            }
        };
        // Its node died (or hung): what it had acknowledged stands.
        let Some(v) = answer else { break };
        let r = &v["result"];
        if let (Some(epoch), Some(offset)) = (r["epoch"].as_str(), r["offset"].as_u64()) {
            acks.lock().unwrap().push((pos(epoch, offset), data));
            n += 1;
            tokio::time::sleep(PACE).await;
        } else {
            if v["error"]["code"] != -32008 {
                problems.push(format!("{name}: publication {n} failed: {v}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    problems
}

/// Waits until every subscriber holds a subscription (its first snapshot came).
async fn ready(subscribers: &[Subscriber]) {
    assert!(
        until(WAIT, || subscribers.iter().all(|s| s.at().is_some())).await,
        "every subscriber subscribes"
    );
}

/// Waits until `n` publications in all were acknowledged.
async fn acknowledged(acks: &Acks, n: usize) {
    let done = until(WAIT, || acks.lock().unwrap().len() >= n).await;
    assert!(done, "{n} publications acknowledged within {WAIT:?}: {}", acks.lock().unwrap().len());
}

/// The newest acknowledged position: the highest offset of the last acknowledgement's epoch.
fn newest(acks: &[Pos]) -> Pos {
    let last = acks.last().expect("something was acknowledged");
    acks.iter().filter(|a| a.epoch == last.epoch).max_by_key(|a| a.offset).unwrap().clone()
}

/// Stops `publishers` (asserting that nothing but -32008 went wrong), waits until every
/// subscriber reached the newest acknowledged position, stops them and checks each with
/// [`check`], that what a subscriber saw at an acknowledged position is the data acknowledged
/// there (an offset is never given to two publications), and that no data came twice in one
/// epoch (a retried publication was not published again). Returns the acknowledgements and the
/// records, by subscriber name.
async fn finish(
    publishers: Vec<Publisher>,
    subscribers: Vec<Subscriber>,
    acks: &Acks,
    signals: Signals,
) -> (Vec<Pos>, Vec<(String, Record)>) {
    let mut problems = Vec::new();
    for p in publishers {
        problems.extend(p.stop().await);
    }
    assert!(problems.is_empty(), "publishers: {problems:#?}");
    let all = acks.lock().unwrap().clone();
    let acked: Vec<Pos> = all.iter().map(|(p, _)| p.clone()).collect();
    let last = newest(&acked);
    let caught_up =
        until(WAIT, || subscribers.iter().all(|s| s.at().is_some_and(|at| at.reached(&last)))).await;
    let records: Vec<(String, Record)> = subscribers.into_iter().map(Subscriber::stop).collect();
    let mut failures = Vec::new();
    for (name, r) in &records {
        if !caught_up && !r.at.as_ref().is_some_and(|at| at.reached(&last)) {
            failures.push(format!("{name}: stuck at {:?}, the newest acknowledged is {last}", r.at));
        }
        if !r.problems.is_empty() {
            failures.push(format!("{name}: {:#?}", r.problems));
        }
        if let Err(e) = check(&r.seen, &acked, signals) {
            failures.push(format!("{name}: {e}"));
        }
        for (p, data) in &all {
            if let Some(got) = r.data.get(p).filter(|got| *got != data) {
                failures.push(format!("{name}: at {p} got {got}, but {data} was acknowledged there"));
            }
        }
        // A publication retried with its idempotency key is in its epoch once.
        let mut once: HashMap<(&str, String), &Pos> = HashMap::new();
        for (p, data) in &r.data {
            if let Some(first) = once.insert((p.epoch.as_str(), data.to_string()), p) {
                failures.push(format!("{name}: {data} published twice in one epoch, at {first} and {p}"));
            }
        }
    }
    eprintln!("{} publications acknowledged in epochs {:?}, newest {last}", acked.len(), epochs(&acked));
    for (name, r) in &records {
        let count = |f: fn(&Seen) -> bool| r.seen.iter().filter(|s| f(s)).count();
        let (pubs, reconnects) =
            (count(|s| matches!(s, Seen::Pub(_))), count(|s| matches!(s, Seen::Reconnected(_))));
        eprintln!("  {name}: {pubs} publications, {} signals, {reconnects} reconnections", r.signals());
    }
    assert!(
        failures.is_empty(),
        "{} publications acknowledged, newest {last}:\n{}",
        acked.len(),
        failures.join("\n")
    );
    (acked, records)
}

/// Asserts that no record holds a signal.
fn assert_no_signal(records: &[(String, Record)]) {
    for (name, r) in records {
        let signals: Vec<&str> = r
            .seen
            .iter()
            .filter_map(|s| if let Seen::Signal(what) = s { Some(what.as_str()) } else { None })
            .collect();
        assert!(signals.is_empty(), "{name} was told of a loss where nothing was lost: {signals:?}");
    }
}

/// The distinct epochs of `acked`, in order.
fn epochs(acked: &[Pos]) -> Vec<String> {
    let mut epochs: Vec<String> = acked.iter().map(|a| a.epoch.clone()).collect();
    epochs.dedup();
    epochs
}

fn channel(what: &str) -> String {
    support::channel(&format!("nodes-{what}"))
}

// ---------------------------------------------------------------------------------------------
// The scenarios.

/// Three nodes on `url`: a publisher on A, subscribers on A, B and C get every publication in
/// order, and a subscriber that moves from A to B mid-stream with `since` recovers exactly.
async fn publish_on_one_receive_on_all(url: &str) {
    let [a, b, c] = Node::three(url).await;
    let ch = channel("fanout");
    let subscribers = vec![
        Subscriber::start("on A", &ch, &[a.addr]),
        Subscriber::start("on B", &ch, &[b.addr]),
        Subscriber::start("on C", &ch, &[c.addr]),
        Subscriber::start("moving from A to B", &ch, &[a.addr]),
    ];
    ready(&subscribers).await;
    let acks = Acks::default();
    let publisher = Publisher::start("on A", a.addr, &ch, &acks);
    acknowledged(&acks, 80).await;
    subscribers[3].move_to(b.addr);
    acknowledged(&acks, 200).await;
    let (acked, records) = finish(vec![publisher], subscribers, &acks, Signals::ExcuseNothing).await;
    assert_no_signal(&records);
    assert_eq!(epochs(&acked).len(), 1, "one epoch");
    let mover = &records[3].1;
    let moved =
        mover.seen.iter().position(|s| matches!(s, Seen::Reconnected(why) if why.starts_with("moved")));
    let moved = moved.expect("it moved");
    let after = mover.seen[moved + 1..].iter().filter(|s| matches!(s, Seen::Pub(_))).count();
    assert!(after > 50, "the move came mid-stream, with publications after it: {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_one_redis_deliver_every_publication_in_order_and_a_moving_client_recovers() {
    let Some(server) = shared() else { return };
    publish_on_one_receive_on_all(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_a_redis_cluster_deliver_every_publication_in_order_and_a_moving_client_recovers() {
    let Some(cluster) = shared_cluster() else { return };
    publish_on_one_receive_on_all(&cluster.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_epochs_survive_a_restart_of_every_node() {
    let Some(server) = shared() else { return };
    let url = server.url();
    let ch = channel("restart-all");
    let nodes = Node::three(&url).await;
    let mut publishers = Vec::new();
    for n in &nodes {
        publishers.push(support::ws(n.addr, Some(ADMIN)).await);
    }
    let mut positions = Vec::new();
    for i in 0..30 {
        let r = support::call(&mut publishers[i % 3], "publish", json!([ch, i + 1])).await;
        positions.push(pos(r["result"]["epoch"].as_str().unwrap(), r["result"]["offset"].as_u64().unwrap()));
    }
    let epoch = positions[0].epoch.clone();
    assert_eq!(
        positions,
        (1..=30).map(|o| pos(&epoch, o)).collect::<Vec<_>>(),
        "one stream over three nodes"
    );
    drop(publishers);
    // Every node goes away: one gracefully, two killed.
    let [a, b, c] = nodes;
    a.terminate().await;
    b.kill();
    c.kill();

    let again = Node::three(&url).await;
    let mut clients = Vec::new();
    for (n, from) in again.iter().zip([10, 0, 29]) {
        let mut w = support::ws(n.addr, None).await;
        let (_, snap) =
            support::subscribe(&mut w, json!({"channel": ch, "since": {"epoch": epoch, "offset": from}}))
                .await;
        assert_eq!(
            (snap["epoch"].as_str(), snap["recovered"].as_bool()),
            (Some(&*epoch), Some(true)),
            "{snap}"
        );
        let offsets: Vec<u64> =
            snap["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect();
        assert_eq!(offsets, (from + 1..=30).collect::<Vec<_>>(), "exactly what followed {from}");
        assert_eq!(snap["offset"], 30);
        clients.push(w);
    }
    let next = support::publish(again[1].addr, &ch, json!(31)).await;
    assert_eq!(next, json!({"epoch": epoch, "offset": 31}), "the stream goes on in its epoch");
    for w in &mut clients {
        let live = support::event(w).await;
        assert_eq!(
            (live["type"].as_str(), live["offset"].as_u64()),
            (Some("publication"), Some(31)),
            "{live}"
        );
    }
}

/// Every node on `url` replaced in turn (two SIGKILLed, one stopped with SIGTERM) while
/// publishers on each node and subscribers on each run: the stream keeps its epoch, and the
/// subscribers of a node that goes connect to another and recover exactly with `since`: nothing
/// lost, nothing twice. The node stopped gracefully closes its connections with 1001 (no
/// `closed` `shutdown` event yet, as docs/protocol.md says); should it send that event, it is
/// the one signal allowed, and it excuses nothing.
async fn every_node_replaced_in_turn(url: &str) {
    let mut nodes: Vec<Node> = Node::three(url).await.into();
    let directory: Directory = Arc::new(Mutex::new(nodes.iter().map(|n| n.addr).collect()));
    let ch = channel("rolling");
    let subscribers: Vec<Subscriber> = (0..6)
        .map(|i| Subscriber::start_in(&format!("first on node {}, #{i}", i % 3), &ch, &directory, i % 3))
        .collect();
    ready(&subscribers).await;
    let acks = Acks::default();
    let mut publishers: Vec<Publisher> =
        (0..3).map(|i| Publisher::start(&format!("on node {i}"), nodes[i].addr, &ch, &acks)).collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        let n = acks.lock().unwrap().len();
        acknowledged(&acks, n + 60).await;
        let replacement = Node::start(url).await;
        directory.lock().unwrap()[i] = replacement.addr;
        let old = std::mem::replace(node, replacement);
        if i == 1 {
            old.terminate().await;
        } else {
            old.kill();
        }
        publishers.push(Publisher::start(&format!("on node {i} again"), node.addr, &ch, &acks));
    }
    let n = acks.lock().unwrap().len();
    acknowledged(&acks, n + 60).await;
    let (acked, records) = finish(publishers, subscribers, &acks, Signals::ExcuseNothing).await;
    assert_eq!(epochs(&acked).len(), 1, "one epoch throughout");
    for (name, r) in &records {
        for s in &r.seen {
            if let Seen::Signal(what) = s {
                assert!(
                    what.contains("\"shutdown\""),
                    "{name} was told of a loss where nothing was lost: {what}"
                );
            }
        }
        assert!(r.seen.iter().any(|s| matches!(s, Seen::Reconnected(_))), "{name} lost its node");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_replaced_in_turn_under_traffic_keeps_one_stream_for_every_subscriber() {
    let Some(server) = shared() else { return };
    every_node_replaced_in_turn(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_replaced_in_turn_on_a_redis_cluster_keeps_one_stream_for_every_subscriber() {
    let Some(cluster) = shared_cluster() else { return };
    every_node_replaced_in_turn(&cluster.url()).await;
}

/// How a Redis is killed and restarted mid-stream.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Restart {
    /// One Redis without persistence: the stream is lost.
    Plain,
    /// One Redis with AOF `appendfsync always`: every acknowledged publication survives.
    Aof,
    /// The shard of a 3-master cluster (without persistence) that holds the channel's keys.
    ClusterShard,
}

/// The Redis of [`redis_killed_and_restarted_mid_stream`]: one server (and its arguments) or a
/// cluster.
enum Redis {
    One(RedisServer, Vec<String>, Option<PathBuf>),
    Cluster(RedisCluster),
}

/// Three nodes on a Redis killed and restarted twice as `restart` says while publishers on A
/// and B publish and subscribers on A, B and C run the checker; node A dies while Redis is
/// down, its subscriber moving to C, and a new subscriber joins meanwhile. Without persistence
/// every subscriber is told of each lost stream and ends with every publication of the last
/// epoch; with AOF every acknowledged publication reaches every subscriber, and a signal
/// (tolerated if one comes: a node may drop a subscription it cannot vouch for, which
/// resubscribes with `since`) excuses nothing.
async fn redis_killed_and_restarted_mid_stream(restart: Restart) {
    let ch = channel(&format!("{restart:?}").to_lowercase());
    let mut redis = match restart {
        Restart::Plain | Restart::Aof => {
            if shared().is_none() {
                return;
            }
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let (args, dir) = if restart == Restart::Aof {
                let dir =
                    std::env::temp_dir().join(format!("rpchub-it-nodes-aof-{}-{port}", std::process::id()));
                std::fs::create_dir_all(&dir).unwrap();
                let args = ["--appendonly", "yes", "--appendfsync", "always", "--dir", dir.to_str().unwrap()];
                (args.map(String::from).to_vec(), Some(dir))
            } else {
                (Vec::new(), None)
            };
            Redis::One(RedisServer::with(port, args.as_slice()), args, dir)
        }
        Restart::ClusterShard => {
            let Some(cluster) = RedisCluster::start() else { return };
            Redis::Cluster(cluster)
        }
    };
    let url = match &redis {
        Redis::One(server, ..) => server.url(),
        Redis::Cluster(cluster) => cluster.url(),
    };
    let [a, b, c] = Node::three(&url).await;
    let mut subscribers = vec![
        Subscriber::start("on A, then C", &ch, &[a.addr, c.addr]),
        Subscriber::start("on B", &ch, &[b.addr]),
        Subscriber::start("on C", &ch, &[c.addr]),
        Subscriber::start("also on C", &ch, &[c.addr]),
    ];
    ready(&subscribers).await;
    let acks = Acks::default();
    let publishers =
        vec![Publisher::start("on A", a.addr, &ch, &acks), Publisher::start("on B", b.addr, &ch, &acks)];
    acknowledged(&acks, 80).await;
    let owner = match &redis {
        Redis::One(..) => 0,
        Redis::Cluster(cluster) => {
            tokio::task::block_in_place(|| cluster.owner(&format!("rpchub:{{{ch}}}:meta")))
        }
    };
    // Killed twice: down for longer than the nodes' ping period, so that they see it down
    // (meanwhile a client subscribes, answered -32008 until Redis is back, and node A dies, its
    // subscriber moving to C), then again soon after it came back, while subscribers may still
    // be recovering.
    let mut a = Some(a);
    let mut at_kill = 0;
    for (i, outage) in [OUTAGE, Duration::from_millis(200)].into_iter().enumerate() {
        let n = acks.lock().unwrap().len();
        acknowledged(&acks, n + if i == 0 { 0 } else { 15 }).await;
        tokio::task::block_in_place(|| match &mut redis {
            Redis::One(server, ..) => server.kill(),
            Redis::Cluster(cluster) => cluster.nodes[owner].kill(),
        });
        at_kill = acks.lock().unwrap().len();
        if i == 0 {
            subscribers.push(Subscriber::start("joining B while Redis is down", &ch, &[b.addr]));
            a.take().unwrap().kill();
        }
        tokio::time::sleep(outage).await;
        tokio::task::block_in_place(|| match &mut redis {
            Redis::One(server, args, _) => *server = RedisServer::with(server.port, args.as_slice()),
            Redis::Cluster(cluster) => {
                cluster.restart(owner);
                cluster.wait_ok();
            }
        });
    }
    acknowledged(&acks, at_kill + 100).await;
    let signals = if restart == Restart::Aof { Signals::ExcuseNothing } else { Signals::Excuse };
    let (acked, records) = finish(publishers, subscribers, &acks, signals).await;
    let epochs = epochs(&acked);
    if restart == Restart::Aof {
        assert_eq!(epochs.len(), 1, "the stream outlived the restart: one epoch");
    } else {
        assert_eq!(epochs.len(), 3, "the stream was lost with Redis, twice: a new epoch after each");
        for (name, r) in &records[..4] {
            assert!(r.signals() > 0, "{name} was told of the lost stream");
        }
    }
    assert!(records[0].1.seen.iter().any(|s| matches!(s, Seen::Reconnected(_))), "A's subscriber moved");
    if let Redis::One(_, _, Some(dir)) = &redis {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_without_persistence_killed_mid_stream_leaves_every_subscriber_told_never_silently_short() {
    redis_killed_and_restarted_mid_stream(Restart::Plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_with_aof_killed_mid_stream_loses_no_acknowledged_publication_for_any_subscriber() {
    redis_killed_and_restarted_mid_stream(Restart::Aof).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_shard_of_a_channel_killed_mid_stream_leaves_every_subscriber_told_never_silently_short()
{
    redis_killed_and_restarted_mid_stream(Restart::ClusterShard).await;
}

/// Three nodes on `url` with publishers on each and subscribers on each (those of A move to B
/// and C when it dies): A SIGKILLed mid-stream loses nothing for anyone, with no signal: every
/// publication acknowledged on B and C, and on A before it died, reaches every subscriber once,
/// in order, and A's subscribers recover exactly on the node they move to.
async fn a_node_killed_mid_stream(url: &str) {
    let [a, b, c] = Node::three(url).await;
    let ch = channel("node-killed");
    let subscribers = vec![
        Subscriber::start("on B", &ch, &[b.addr]),
        Subscriber::start("on C", &ch, &[c.addr]),
        Subscriber::start("also on C", &ch, &[c.addr]),
        Subscriber::start("on A, then B", &ch, &[a.addr, b.addr]),
        Subscriber::start("on A, then C", &ch, &[a.addr, c.addr]),
    ];
    ready(&subscribers).await;
    let acks = Acks::default();
    let publishers = vec![
        Publisher::start("on A", a.addr, &ch, &acks),
        Publisher::start("on B", b.addr, &ch, &acks),
        Publisher::start("on C", c.addr, &ch, &acks),
    ];
    acknowledged(&acks, 100).await;
    a.kill();
    let at_kill = acks.lock().unwrap().len();
    acknowledged(&acks, at_kill + 150).await;
    let (acked, records) = finish(publishers, subscribers, &acks, Signals::ExcuseNothing).await;
    assert_no_signal(&records);
    assert_eq!(epochs(&acked).len(), 1, "one epoch");
    for (name, r) in &records[3..] {
        let lost = r.seen.iter().any(|s| matches!(s, Seen::Reconnected(why) if why.contains("ended")));
        assert!(lost, "{name} lost its node");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_on_one_redis_loses_nothing_for_the_subscribers_of_the_others() {
    let Some(server) = shared() else { return };
    a_node_killed_mid_stream(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_on_a_redis_cluster_loses_nothing_for_the_subscribers_of_the_others() {
    let Some(cluster) = shared_cluster() else { return };
    a_node_killed_mid_stream(&cluster.url()).await;
}
