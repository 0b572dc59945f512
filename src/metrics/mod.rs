//! Prometheus metrics: the registry and the name of every metric, served at `GET /metrics`.
//!
//! Hot paths touch plain atomic counters only: a publication adds its delivery count once, not
//! once per subscriber, and per-method call counters are created at start so a call does one
//! lookup in a small fixed map.

mod latency;

pub use latency::Latency;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashMap;
use std::sync::OnceLock;

/// Labels of `rpchub_calls_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// Method name (`unknown` for methods that do not exist).
    pub method: String,
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Labels of `rpchub_call_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// Method name (`unknown` for methods that do not exist).
    pub method: String,
}

/// The buckets of the call latency histogram: 50 µs to 3.3 s, each four times the last.
fn call_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 4.0, 9))
}

/// Labels of the per-namespace counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    /// A namespace of the configuration, or [`OTHER_NAMESPACES`] for channels of any other
    /// (so the label set is the configuration's, whatever names clients use).
    pub namespace: String,
}

/// The `namespace` label of channels whose namespace the configuration does not list.
pub const OTHER_NAMESPACES: &str = "_default";

/// The counters of one namespace.
#[derive(Clone, Debug, Default)]
pub struct NamespaceCounters {
    /// Publications accepted.
    pub publications: Counter,
    /// Notifications queued for subscribers.
    pub deliveries: Counter,
}

/// What the broker was asked: the `op` label of `rpchub_broker_duration_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerOp {
    /// A publication.
    Publish,
    /// A history read (snapshots, recovery, gap fills, `history`).
    History,
    /// Interest in a channel (a node's first subscriber of it).
    Subscribe,
}

impl BrokerOp {
    /// Every operation, in declaration order.
    pub const ALL: [BrokerOp; 3] = [BrokerOp::Publish, BrokerOp::History, BrokerOp::Subscribe];

    /// The label value.
    pub const fn label(self) -> &'static str {
        match self {
            BrokerOp::Publish => "publish",
            BrokerOp::History => "history",
            BrokerOp::Subscribe => "subscribe",
        }
    }
}

/// Labels of `rpchub_broker_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerOpLabels {
    /// [`BrokerOp::label`].
    pub op: &'static str,
}

/// The buckets of the broker latency histogram: 10 µs to 2.6 s, each four times the last.
fn broker_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 4.0, 10))
}

/// Labels of metrics split by front door.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DoorLabels {
    /// `jsonrpc`, ...
    pub door: &'static str,
}

/// The label of the broker gauges: the broker's kind (`memory`, `redis`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerLabels {
    /// What [`crate::broker::Broker::name`] says.
    pub broker: &'static str,
}

/// Labels of counters split by reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Short machine-readable reason.
    pub reason: &'static str,
}

/// The reasons of `rpchub_connections_refused_total`: the node holds
/// `limits.max_http_connections` connections that are not WebSockets; the address holds
/// `limits.http_connections_per_address` of them.
pub const CONNECTION_REFUSALS: [&str; 2] = ["limit", "per_address"];

/// The reasons of `rpchub_http_refused_total`: the request's head or body missed
/// `limits.request_timeout` (408); its body was over `limits.max_message_bytes` (413); it was
/// not JSON (415); it came from a page of an origin CORS does not allow (403); its sender kept
/// calling far over its rate (429).
pub const HTTP_REFUSALS: [&str; 5] = ["request_timeout", "too_big", "media_type", "origin", "flood"];

/// Why the gate refused a WebSocket upgrade: the `reason` label of
/// `rpchub_upgrades_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The page's Origin is not allowed (403).
    Origin,
    /// The client's address upgraded too often (429).
    Rate,
    /// The server holds its maximum of connections (429).
    Capacity,
    /// The token is present but invalid (401).
    Auth,
    /// Not a valid upgrade on a WebSocket route: a plain request, the wrong method, missing or
    /// bad upgrade headers, not HTTP/1.1 (400, 405).
    Handshake,
    /// An upgrade to a path that is no WebSocket route (404).
    NotFound,
    /// The backend that decides who connects (`backend.connect_proxy`) gave no usable answer
    /// (503). Its refusals count as [`Rejection::Auth`].
    Backend,
}

impl Rejection {
    /// Every reason, in declaration order.
    pub const ALL: [Rejection; 7] = [
        Rejection::Origin,
        Rejection::Rate,
        Rejection::Capacity,
        Rejection::Auth,
        Rejection::Handshake,
        Rejection::NotFound,
        Rejection::Backend,
    ];

    /// The label value.
    pub const fn label(self) -> &'static str {
        match self {
            Rejection::Origin => "origin",
            Rejection::Rate => "rate",
            Rejection::Capacity => "capacity",
            Rejection::Auth => "auth",
            Rejection::Handshake => "handshake",
            Rejection::NotFound => "not_found",
            Rejection::Backend => "backend",
        }
    }

    /// The reason's place in [`Rejection::ALL`].
    const fn index(self) -> usize {
        self as usize
    }
}

const _: () = {
    let mut i = 0;
    while i < Rejection::ALL.len() {
        assert!(Rejection::ALL[i].index() == i, "Rejection::ALL is in declaration order");
        i += 1;
    }
};

/// Why a call was refused a channel slot: the `reason` label of `rpchub_channels_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SlotRefusal {
    /// The node holds `limits.max_channels` channels and the call would make one more.
    MaxChannels,
    /// Anonymous clients of the caller's address hold their share of them
    /// (`limits.anonymous_channel_share`).
    AnonymousShare,
}

impl SlotRefusal {
    /// Every reason, in declaration order.
    pub const ALL: [SlotRefusal; 2] = [SlotRefusal::MaxChannels, SlotRefusal::AnonymousShare];

    /// The label value.
    pub const fn label(self) -> &'static str {
        match self {
            SlotRefusal::MaxChannels => "max_channels",
            SlotRefusal::AnonymousShare => "anonymous_share",
        }
    }
}

const _: () = {
    let mut i = 0;
    while i < SlotRefusal::ALL.len() {
        assert!(SlotRefusal::ALL[i] as usize == i, "SlotRefusal::ALL is in declaration order");
        i += 1;
    }
};

/// Labels of the backend's counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// What was asked ([`BACKEND_KINDS`]).
    pub kind: &'static str,
    /// How it went ([`BACKEND_OUTCOMES`]).
    pub outcome: &'static str,
}

/// The `kind` label of `rpchub_backend_requests_total`: a proxied method's call (`method`), a
/// streamed reply (`stream`, counted when it ends), the permission checks (`subscribe`,
/// `publish`, `connect`), a call forwarded to the upstream node (`upstream`).
pub const BACKEND_KINDS: [&str; 6] = ["method", "stream", "subscribe", "publish", "connect", "upstream"];

/// The `outcome` label of `rpchub_backend_requests_total`: answered (`ok`), answered with an
/// error object (`refused`), not answered usably (`unavailable`: down, slow, 5xx, malformed,
/// oversized), ended by the client (`cancelled`, streams only).
pub const BACKEND_OUTCOMES: [&str; 4] = ["ok", "refused", "unavailable", "cancelled"];

/// The `outcome` label of `rpchub_hook_events_total`: posted and taken (`sent`), posted again
/// after a failed post (`retried`, once per event per retry), dropped from a full queue
/// (`dropped`).
pub const HOOK_OUTCOMES: [&str; 3] = ["sent", "retried", "dropped"];

/// Labels of counters split by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// What happened.
    pub outcome: &'static str,
}

/// The metrics of the backend, the upstream node and the lifecycle hooks.
#[derive(Debug, Default)]
pub struct BackendMetrics {
    /// Requests to the backend and the upstream node, by kind and outcome.
    requests: Family<BackendLabels, Counter>,
    /// Streamed replies running.
    pub streams: Gauge,
    /// Hook events, by outcome.
    hook_events: Family<OutcomeLabels, Counter>,
    /// Hook events waiting to be posted.
    pub hook_queue: Gauge,
}

impl BackendMetrics {
    /// Counts one request of `kind` that ended with `outcome`.
    pub fn request(&self, kind: &'static str, outcome: &'static str) {
        self.requests.get_or_create(&BackendLabels { kind, outcome }).inc();
    }

    /// Counts `n` hook events with `outcome`.
    pub fn hook_events(&self, outcome: &'static str, n: u64) {
        self.hook_events.get_or_create(&OutcomeLabels { outcome }).inc_by(n);
    }

    fn register(&self, r: &mut Registry) {
        for kind in BACKEND_KINDS {
            for outcome in BACKEND_OUTCOMES {
                let _ = self.requests.get_or_create(&BackendLabels { kind, outcome });
            }
        }
        for outcome in HOOK_OUTCOMES {
            let _ = self.hook_events.get_or_create(&OutcomeLabels { outcome });
        }
        r.register(
            "backend_requests",
            "Requests to the backend and the upstream node, by kind and outcome",
            self.requests.clone(),
        );
        r.register("backend_streams", "Streamed replies running", self.streams.clone());
        r.register("hook_events", "Lifecycle hook events, by outcome", self.hook_events.clone());
        r.register("hook_queue", "Lifecycle hook events waiting to be posted", self.hook_queue.clone());
    }
}

/// Counts the channels the node holds state for, when the metrics are read.
type ChannelCount = Box<dyn Fn() -> usize + Send + Sync>;

/// What the broker says of itself when the metrics are read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BrokerReading {
    /// It can be used now.
    pub up: bool,
    /// Its last round trip, for a shared broker that made one.
    pub latency: Option<std::time::Duration>,
}

/// Reads the broker, when the metrics are read: its kind, and a function that asks it.
type BrokerRead = (&'static str, Box<dyn Fn() -> BrokerReading + Send + Sync>);

/// Counters of one method.
#[derive(Clone, Debug)]
pub struct MethodCounters {
    /// Calls answered with a result.
    pub ok: Counter,
    /// Calls answered with an error.
    pub error: Counter,
    /// How long its calls took, from the parsed call to its answer.
    pub duration: Histogram,
}

/// Reads bytes read from and written to WebSocket clients since start, when the metrics are read.
type BytesRead = Box<dyn Fn() -> (u64, u64) + Send + Sync>;

/// Every metric of the node.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Open WebSocket connections, by front door.
    connections: Family<DoorLabels, Gauge>,
    /// Open WebSocket connections in all (for `info`).
    open: Gauge,
    /// WebSocket connections accepted since start, by front door.
    connections_total: Family<DoorLabels, Counter>,
    /// Active subscriptions.
    pub subscriptions: Gauge,
    /// Channels the node holds state for (history, offsets, subscribers): set from
    /// `count_channels` each time the metrics are read, so it is what the node holds then,
    /// whoever made or dropped the channels (the hub, the embedded broker, its sweeper).
    channels: Gauge,
    count_channels: OnceLock<ChannelCount>,
    /// 1 while the broker can be used, 0 while a shared one cannot be reached; set from
    /// `read_broker` each time the metrics are read, as `channels` is.
    broker_up: Family<BrokerLabels, Gauge>,
    /// The shared broker's last round trip; no sample for a broker that reports none.
    broker_latency: Family<BrokerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    read_broker: OnceLock<BrokerRead>,
    /// Calls refused a channel slot, by reason; one counter per [`SlotRefusal`], made at start
    /// (a flood of refusals takes no lock, and every reason is exported from zero).
    slot_refusals: [Counter; SlotRefusal::ALL.len()],
    /// Publications accepted by this node.
    pub publications: Counter,
    /// Notifications queued for subscribers (one per subscriber per publication).
    pub deliveries: Counter,
    /// Connections dropped for falling behind.
    pub slow_consumers: Counter,
    /// Subscribers of `on_slow = "conflate"` namespaces switched to conflation for falling
    /// behind (instead of being dropped).
    pub slow_conflations: Counter,
    /// Publications conflation folded into a later one (each announced by its `skipped`).
    pub conflated: Counter,
    /// Connections closed by the server, by reason.
    pub closed: Family<ReasonLabels, Counter>,
    /// Calls refused by the per-connection rate limit.
    pub rate_limited: Counter,
    /// Upgrades refused before the WebSocket existed, by reason.
    pub upgrades_rejected: Family<ReasonLabels, Counter>,
    /// The counters of `upgrades_rejected`, one per [`Rejection`] by [`Rejection::index`], made
    /// at start: a flood of refusals takes no lock, and every reason is exported from zero.
    rejections: [Counter; Rejection::ALL.len()],
    /// TCP connections closed at accept, by reason (`limit`, `per_address`).
    connections_refused: Family<ReasonLabels, Counter>,
    /// Open TCP connections that are not WebSockets (yet).
    pub http_connections: Gauge,
    /// Plain HTTP requests refused, by reason ([`HTTP_REFUSALS`]).
    http_refused: Family<ReasonLabels, Counter>,
    /// Answers replaced by -32007 because they were over `limits.max_response_bytes`.
    pub responses_too_big: Counter,
    /// Gaps in a broker's deliveries filled from history.
    pub gaps_filled: Counter,
    /// Stretches of a stream lost for good and announced to subscribers as `gap`.
    pub gaps_announced: Counter,
    /// Times a channel lost track of its stream (a new epoch) and told its subscribers to
    /// resubscribe.
    pub streams_lost: Counter,
    /// The backend's, the upstream node's and the hooks'.
    pub backend: BackendMetrics,
    calls: Family<CallLabels, Counter>,
    call_duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    /// Broker operations' durations, one histogram per [`BrokerOp`], made at start.
    broker_ops: [Histogram; BrokerOp::ALL.len()],
    /// From a publication's fan-out on this node to the return of the socket write that handed
    /// its frame to the kernel, once per delivery.
    pub publish_to_write: Latency,
    namespace_publications: Family<NamespaceLabels, Counter>,
    namespace_deliveries: Family<NamespaceLabels, Counter>,
    /// Per-namespace counters, made once from the configuration ([`Metrics::label_namespaces`]).
    namespaces: OnceLock<HashMap<String, NamespaceCounters>>,
    other_namespaces: NamespaceCounters,
    /// Bytes read from WebSocket clients; brought up to `read_bytes` when the metrics are read.
    received_bytes: Counter,
    /// Bytes written to WebSocket clients; as `received_bytes`.
    sent_bytes: Counter,
    read_bytes: OnceLock<BytesRead>,
    /// This process's, under Prometheus's standard `process_` names, read from `/proc`.
    process: ProcessMetrics,
    /// Per-method counters, made once from the method table ([`Metrics::label_methods`]).
    methods: OnceLock<HashMap<&'static str, MethodCounters>>,
    unknown_method: MethodCounters,
}

impl Metrics {
    /// A registry with every metric registered; per-method counters come with
    /// [`Metrics::label_methods`].
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("rpchub");
        let calls: Family<CallLabels, Counter> = Family::default();
        let call_duration: Family<MethodLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(call_buckets);
        // One statement each: a family's guard must be gone before the next get_or_create.
        let ok = calls.get_or_create(&CallLabels { method: "unknown".into(), result: "ok" }).clone();
        let error = calls.get_or_create(&CallLabels { method: "unknown".into(), result: "error" }).clone();
        let duration = call_duration.get_or_create(&MethodLabels { method: "unknown".into() }).clone();
        let unknown_method = MethodCounters { ok, error, duration };
        let broker_duration: Family<BrokerOpLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(broker_buckets);
        let broker_ops =
            BrokerOp::ALL.map(|op| broker_duration.get_or_create(&BrokerOpLabels { op: op.label() }).clone());
        let (namespace_publications, namespace_deliveries): (
            Family<NamespaceLabels, Counter>,
            Family<_, Counter>,
        ) = Default::default();
        let other = NamespaceLabels { namespace: OTHER_NAMESPACES.into() };
        let other_namespaces = NamespaceCounters {
            publications: namespace_publications.get_or_create(&other).clone(),
            deliveries: namespace_deliveries.get_or_create(&other).clone(),
        };
        let upgrades_rejected: Family<ReasonLabels, Counter> = Family::default();
        let rejections = Rejection::ALL
            .map(|r| upgrades_rejected.get_or_create(&ReasonLabels { reason: r.label() }).clone());
        let channels_refused: Family<ReasonLabels, Counter> = Family::default();
        let slot_refusals = SlotRefusal::ALL
            .map(|r| channels_refused.get_or_create(&ReasonLabels { reason: r.label() }).clone());
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            connections: Family::default(),
            open: Gauge::default(),
            connections_total: Family::default(),
            subscriptions: Gauge::default(),
            channels: Gauge::default(),
            count_channels: OnceLock::new(),
            broker_up: Family::default(),
            broker_latency: Family::default(),
            read_broker: OnceLock::new(),
            slot_refusals,
            publications: Counter::default(),
            deliveries: Counter::default(),
            slow_consumers: Counter::default(),
            slow_conflations: Counter::default(),
            conflated: Counter::default(),
            closed: Family::default(),
            rate_limited: Counter::default(),
            upgrades_rejected,
            rejections,
            connections_refused: Family::default(),
            http_connections: Gauge::default(),
            http_refused: Family::default(),
            responses_too_big: Counter::default(),
            gaps_filled: Counter::default(),
            gaps_announced: Counter::default(),
            streams_lost: Counter::default(),
            backend: BackendMetrics::default(),
            calls,
            call_duration,
            broker_ops,
            publish_to_write: Latency::default(),
            namespace_publications,
            namespace_deliveries,
            namespaces: OnceLock::new(),
            other_namespaces,
            received_bytes: Counter::default(),
            sent_bytes: Counter::default(),
            read_bytes: OnceLock::new(),
            process: ProcessMetrics::default(),
            methods: OnceLock::new(),
            unknown_method,
        };
        r.register("connections", "Open WebSocket connections, by front door", m.connections.clone());
        r.register(
            "connections_accepted",
            "WebSocket connections accepted, by front door",
            m.connections_total.clone(),
        );
        r.register("subscriptions", "Active subscriptions", m.subscriptions.clone());
        r.register(
            "channels",
            "Channels the node holds state for (history, offsets, subscribers)",
            m.channels.clone(),
        );
        r.register(
            "broker_up",
            "1 while the broker can be used, 0 while a shared broker cannot be reached, by broker kind",
            m.broker_up.clone(),
        );
        r.register_with_unit(
            "broker_latency",
            "The shared broker's last round trip (none for the embedded broker), by broker kind",
            Unit::Seconds,
            m.broker_latency.clone(),
        );
        r.register(
            "channels_refused",
            "Calls refused a channel slot (limits.max_channels), by reason",
            channels_refused,
        );
        r.register("publications", "Publications accepted by this node", m.publications.clone());
        r.register("deliveries", "Notifications queued for subscribers", m.deliveries.clone());
        r.register("slow_consumers", "Connections dropped for falling behind", m.slow_consumers.clone());
        r.register(
            "slow_conflations",
            "Subscribers switched to conflation for falling behind (on_slow = conflate) instead of being dropped",
            m.slow_conflations.clone(),
        );
        r.register(
            "conflated",
            "Publications conflation folded into a later one, each announced by its skipped count",
            m.conflated.clone(),
        );
        r.register("connections_closed", "Connections closed by the server, by reason", m.closed.clone());
        r.register("rate_limited", "Calls refused by the per-connection rate limit", m.rate_limited.clone());
        r.register(
            "upgrades_rejected",
            "Upgrades refused before the WebSocket, by reason",
            m.upgrades_rejected.clone(),
        );
        r.register(
            "connections_refused",
            "TCP connections closed at accept, by reason",
            m.connections_refused.clone(),
        );
        r.register(
            "http_connections",
            "Open TCP connections that are not WebSockets",
            m.http_connections.clone(),
        );
        r.register("http_refused", "Plain HTTP requests refused, by reason", m.http_refused.clone());
        r.register(
            "responses_too_big",
            "Answers replaced by an error for being over limits.max_response_bytes",
            m.responses_too_big.clone(),
        );
        for reason in CONNECTION_REFUSALS {
            let _ = m.connections_refused.get_or_create(&ReasonLabels { reason });
        }
        for reason in HTTP_REFUSALS {
            let _ = m.http_refused.get_or_create(&ReasonLabels { reason });
        }
        // The WebSocket endings, and an HTTP connection that took no bytes for limits.write_timeout.
        for reason in crate::transport::Ending::LABELS.into_iter().chain(["write_timeout"]) {
            let _ = m.closed.get_or_create(&ReasonLabels { reason });
        }
        r.register("gaps_filled", "Gaps in broker deliveries filled from history", m.gaps_filled.clone());
        r.register(
            "gaps_announced",
            "Stretches of a stream lost for good (history no longer holds them), announced to subscribers as gap",
            m.gaps_announced.clone(),
        );
        r.register(
            "streams_lost",
            "Channels that lost track of their stream and told subscribers to resubscribe",
            m.streams_lost.clone(),
        );
        r.register("calls", "JSON-RPC calls answered, by method and result", m.calls.clone());
        r.register_with_unit(
            "call_duration",
            "How long JSON-RPC calls took, from the parsed call to its answer, by method",
            Unit::Seconds,
            m.call_duration.clone(),
        );
        r.register_with_unit(
            "broker_duration",
            "How long broker operations took, by operation (publish, history, subscribe)",
            Unit::Seconds,
            broker_duration,
        );
        r.register_with_unit(
            "publish_to_write",
            "From a publication's fan-out on this node (for the embedded broker, its acceptance) to \
             the socket write that handed its frame to the kernel, per delivery",
            Unit::Seconds,
            m.publish_to_write.clone(),
        );
        r.register(
            "namespace_publications",
            "Publications accepted by this node, by namespace (_default: namespaces not configured)",
            m.namespace_publications.clone(),
        );
        r.register(
            "namespace_deliveries",
            "Notifications queued for subscribers, by namespace (_default: namespaces not configured)",
            m.namespace_deliveries.clone(),
        );
        r.register_with_unit(
            "received",
            "Bytes read from WebSocket clients",
            Unit::Bytes,
            m.received_bytes.clone(),
        );
        r.register_with_unit("sent", "Bytes written to WebSocket clients", Unit::Bytes, m.sent_bytes.clone());
        m.backend.register(r);
        m.process.register(&mut root);
        *m.registry.lock() = root;
        m
    }

    /// Makes the counters of every method in `names` (the method table's), once.
    pub fn label_methods(&self, names: impl IntoIterator<Item = &'static str>) {
        let mut methods = HashMap::new();
        for name in names {
            // One statement each: a family's guard must be gone before the next get_or_create.
            let ok = self.calls.get_or_create(&CallLabels { method: name.into(), result: "ok" }).clone();
            let error =
                self.calls.get_or_create(&CallLabels { method: name.into(), result: "error" }).clone();
            let duration = self.call_duration.get_or_create(&MethodLabels { method: name.into() }).clone();
            methods.insert(name, MethodCounters { ok, error, duration });
        }
        let _ = self.methods.set(methods);
    }

    /// Makes the counters of every namespace in `names` (the configuration's), once.
    pub fn label_namespaces<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let mut namespaces = HashMap::new();
        for name in names {
            let labels = NamespaceLabels { namespace: name.to_string() };
            // One statement each: a family's guard must be gone before the next get_or_create.
            let publications = self.namespace_publications.get_or_create(&labels).clone();
            let deliveries = self.namespace_deliveries.get_or_create(&labels).clone();
            namespaces.insert(name.to_string(), NamespaceCounters { publications, deliveries });
        }
        let _ = self.namespaces.set(namespaces);
    }

    /// The counters of `channel`'s namespace.
    pub fn namespace(&self, channel: &str) -> &NamespaceCounters {
        let ns = channel.split_once(':').map_or("", |(ns, _)| ns);
        self.namespaces.get().and_then(|m| m.get(ns)).unwrap_or(&self.other_namespaces)
    }

    /// Records how long a broker operation took.
    pub fn broker_op(&self, op: BrokerOp, took: std::time::Duration) {
        self.broker_ops[op as usize].observe(took.as_secs_f64());
    }

    /// The counters of `method`.
    pub fn method(&self, method: &str) -> &MethodCounters {
        self.methods.get().and_then(|m| m.get(method)).unwrap_or(&self.unknown_method)
    }

    /// Counts a WebSocket connection opened through `door`.
    pub fn connection_opened(&self, door: &'static str) {
        self.open.inc();
        self.connections.get_or_create(&DoorLabels { door }).inc();
        self.connections_total.get_or_create(&DoorLabels { door }).inc();
    }

    /// Counts a WebSocket connection of `door` that ended, with the label of how the server or
    /// the protocol ended it, if either did.
    pub fn connection_closed(&self, door: &'static str, ending: Option<&'static str>) {
        self.open.dec();
        self.connections.get_or_create(&DoorLabels { door }).dec();
        if let Some(reason) = ending {
            if reason == "slow_consumer" {
                self.slow_consumers.inc();
            }
            self.closed(reason);
        }
    }

    /// Open WebSocket connections in all.
    pub fn open_connections(&self) -> u64 {
        self.open.get().max(0) as u64
    }

    /// Counts a connection the server closed.
    pub fn closed(&self, reason: &'static str) {
        self.closed.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts a TCP connection closed at accept; `reason` is one of [`CONNECTION_REFUSALS`].
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts a plain HTTP request refused; `reason` is one of [`HTTP_REFUSALS`].
    pub fn http_refused(&self, reason: &'static str) {
        self.http_refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts an upgrade refused before the WebSocket existed.
    pub fn upgrade_rejected(&self, reason: Rejection) {
        self.rejections[reason.index()].inc();
    }

    /// Counts a call refused a channel slot.
    pub fn slot_refused(&self, reason: SlotRefusal) {
        self.slot_refusals[reason as usize].inc();
    }

    /// Sets what `rpchub_channels` reads from (once; the hub does it).
    pub fn count_channels_with(&self, count: impl Fn() -> usize + Send + Sync + 'static) {
        let _ = self.count_channels.set(Box::new(count));
    }

    /// Sets what `rpchub_broker_up` and `rpchub_broker_latency_seconds` read from: the broker's
    /// kind and a function that asks it (once; the hub does it).
    pub fn read_broker_with(
        &self,
        kind: &'static str,
        read: impl Fn() -> BrokerReading + Send + Sync + 'static,
    ) {
        let _ = self.read_broker.set((kind, Box::new(read)));
    }

    /// Sets what `rpchub_received_bytes_total` and `rpchub_sent_bytes_total` read from (once;
    /// the server does it, from its connection registry).
    pub fn read_bytes_with(&self, read: impl Fn() -> (u64, u64) + Send + Sync + 'static) {
        let _ = self.read_bytes.set(Box::new(read));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        if let Some(read) = self.read_bytes.get() {
            let (received, sent) = read();
            self.received_bytes.inc_by(received.saturating_sub(self.received_bytes.get()));
            self.sent_bytes.inc_by(sent.saturating_sub(self.sent_bytes.get()));
        }
        self.process.read();
        if let Some(count) = self.count_channels.get() {
            self.channels.set(count() as i64);
        }
        if let Some((kind, read)) = self.read_broker.get() {
            let labels = BrokerLabels { broker: kind };
            let reading = read();
            self.broker_up.get_or_create(&labels).set(i64::from(reading.up));
            match reading.latency {
                Some(l) => {
                    self.broker_latency.get_or_create(&labels).set(l.as_secs_f64());
                }
                None => {
                    self.broker_latency.remove(&labels);
                }
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry.lock())
            .expect("writing to a String; qed");
        out
    }
}

/// `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
/// `process_open_fds`, `process_max_fds`, `process_start_time_seconds`: the names every
/// Prometheus client library exports, read from `/proc/self` when the metrics are read (absent
/// where `/proc` is not).
#[derive(Debug, Default)]
struct ProcessMetrics {
    cpu: Counter<f64, std::sync::atomic::AtomicU64>,
    resident: Gauge,
    virtual_memory: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl ProcessMetrics {
    fn register(&self, root: &mut Registry) {
        let p = root.sub_registry_with_prefix("process");
        p.register_with_unit("cpu", "User and system CPU time spent", Unit::Seconds, self.cpu.clone());
        p.register_with_unit("resident_memory", "Resident memory size", Unit::Bytes, self.resident.clone());
        p.register_with_unit(
            "virtual_memory",
            "Virtual memory size",
            Unit::Bytes,
            self.virtual_memory.clone(),
        );
        p.register("open_fds", "Open file descriptors", self.open_fds.clone());
        p.register("max_fds", "The open-file limit (soft)", self.max_fds.clone());
        p.register_with_unit(
            "start_time",
            "Start time of the process since the Unix epoch",
            Unit::Seconds,
            self.start_time.clone(),
        );
    }

    /// Reads `/proc/self`.
    fn read(&self) {
        let Some(stat) = std::fs::read_to_string("/proc/self/stat").ok() else { return };
        // The fields after the command name, which is in parentheses and may hold spaces.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        // SAFETY: sysconf only reads configuration values.
        #[allow(unsafe_code)]
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let (ticks, page) = (ticks.max(1) as f64, page.max(1) as u64);
        // Fields 14 and 15 of stat(5) (utime, stime), 22 (starttime), 23 (vsize), 24 (rss):
        // here 2 fewer, as the list starts at field 3.
        if let (Some(utime), Some(stime)) = (num(11), num(12)) {
            let cpu = (utime + stime) as f64 / ticks;
            self.cpu.inc_by((cpu - self.cpu.get()).max(0.0));
        }
        if let Some(v) = num(20) {
            self.virtual_memory.set(v as i64);
        }
        if let Some(rss) = num(21) {
            self.resident.set((rss * page) as i64);
        }
        if let (Some(start), Some(boot)) = (num(19), boot_time()) {
            self.start_time.set(boot as f64 + start as f64 / ticks);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
        if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
            self.max_fds.set(soft.min(i64::MAX as u64) as i64);
        }
    }
}

/// The machine's boot time in Unix seconds (`btime` of `/proc/stat`).
fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_was_counted() {
        let m = Metrics::new();
        m.label_methods(["ping"]);
        m.method("ping").ok.inc();
        m.method("nope").error.inc();
        m.deliveries.inc_by(1000);
        m.closed("slow_consumer");
        m.upgrade_rejected(Rejection::Origin);
        m.upgrade_rejected(Rejection::Origin);
        m.slot_refused(SlotRefusal::AnonymousShare);
        m.count_channels_with(|| 7);
        m.read_broker_with("redis", || BrokerReading {
            up: false,
            latency: Some(std::time::Duration::from_millis(2)),
        });
        let text = m.render();
        assert!(text.contains(r#"rpchub_broker_up{broker="redis"} 0"#), "{text}");
        assert!(text.contains(r#"rpchub_broker_latency_seconds{broker="redis"} 0.002"#), "{text}");
        assert!(text.contains("rpchub_channels 7"), "{text}");
        assert!(text.contains(r#"rpchub_channels_refused_total{reason="anonymous_share"} 1"#), "{text}");
        assert!(text.contains(r#"rpchub_channels_refused_total{reason="max_channels"} 0"#), "{text}");
        assert!(text.contains(r#"rpchub_calls_total{method="ping",result="ok"} 1"#), "{text}");
        assert!(text.contains(r#"rpchub_calls_total{method="unknown",result="error"} 1"#), "{text}");
        assert!(text.contains("rpchub_deliveries_total 1000"), "{text}");
        assert!(text.contains(r#"rpchub_connections_closed_total{reason="slow_consumer"} 1"#), "{text}");
        assert!(text.contains(r#"rpchub_upgrades_rejected_total{reason="origin"} 2"#), "{text}");
        assert!(text.contains(r#"rpchub_upgrades_rejected_total{reason="not_found"} 0"#), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
