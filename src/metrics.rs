//! Prometheus metrics: the registry and the name of every metric, served at `GET /metrics`.
//!
//! Hot paths touch plain atomic counters only: a publication adds its delivery count once, not
//! once per subscriber, and per-method call counters are created at start so a call does one
//! lookup in a small fixed map.

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;

/// Labels of `rpchub_calls_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// Method name (`unknown` for methods that do not exist).
    pub method: String,
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Labels of counters split by reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Short machine-readable reason.
    pub reason: &'static str,
}

/// Counters of one method.
#[derive(Clone, Default)]
pub struct MethodCounters {
    /// Calls answered with a result.
    pub ok: Counter,
    /// Calls answered with an error.
    pub error: Counter,
}

/// Every metric of the node.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// WebSocket connections accepted since start.
    pub connections_total: Counter,
    /// Active subscriptions.
    pub subscriptions: Gauge,
    /// Channels with local subscribers.
    pub channels: Gauge,
    /// Publications accepted by this node.
    pub publications: Counter,
    /// Notifications queued for subscribers (one per subscriber per publication).
    pub deliveries: Counter,
    /// Connections dropped for falling behind.
    pub slow_consumers: Counter,
    /// Connections closed by the server, by reason.
    pub closed: Family<ReasonLabels, Counter>,
    /// Calls refused by the per-connection rate limit.
    pub rate_limited: Counter,
    /// Upgrades refused before the WebSocket existed, by reason.
    pub upgrades_rejected: Family<ReasonLabels, Counter>,
    calls: Family<CallLabels, Counter>,
    methods: HashMap<&'static str, MethodCounters>,
    unknown_method: MethodCounters,
}

impl Metrics {
    /// A registry with every metric registered; `methods` are the method names served.
    pub fn new(method_names: &[&'static str]) -> Metrics {
        let mut r = Registry::with_prefix("rpchub");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            connections: Gauge::default(),
            connections_total: Counter::default(),
            subscriptions: Gauge::default(),
            channels: Gauge::default(),
            publications: Counter::default(),
            deliveries: Counter::default(),
            slow_consumers: Counter::default(),
            closed: Family::default(),
            rate_limited: Counter::default(),
            upgrades_rejected: Family::default(),
            calls: Family::default(),
            methods: HashMap::new(),
            unknown_method: MethodCounters::default(),
        };
        r.register("connections", "Open WebSocket connections", m.connections.clone());
        r.register("connections_accepted", "WebSocket connections accepted", m.connections_total.clone());
        r.register("subscriptions", "Active subscriptions", m.subscriptions.clone());
        r.register("channels", "Channels with local subscribers", m.channels.clone());
        r.register("publications", "Publications accepted by this node", m.publications.clone());
        r.register("deliveries", "Notifications queued for subscribers", m.deliveries.clone());
        r.register("slow_consumers", "Connections dropped for falling behind", m.slow_consumers.clone());
        r.register("connections_closed", "Connections closed by the server, by reason", m.closed.clone());
        r.register("rate_limited", "Calls refused by the per-connection rate limit", m.rate_limited.clone());
        r.register(
            "upgrades_rejected",
            "Upgrades refused before the WebSocket, by reason",
            m.upgrades_rejected.clone(),
        );
        r.register("calls", "JSON-RPC calls answered, by method and result", m.calls.clone());
        let mut methods = HashMap::new();
        for &name in methods_with_unknown(method_names).iter() {
            // One statement each: a family's guard must be gone before the next get_or_create.
            let ok = m.calls.get_or_create(&CallLabels { method: name.into(), result: "ok" }).clone();
            let error = m.calls.get_or_create(&CallLabels { method: name.into(), result: "error" }).clone();
            let c = MethodCounters { ok, error };
            methods.insert(name, c);
        }
        let unknown_method = methods.get("unknown").cloned().expect("inserted above; qed");
        *m.registry.lock() = r;
        Metrics { methods, unknown_method, ..m }
    }

    /// The counters of `method`.
    pub fn method(&self, method: &str) -> &MethodCounters {
        self.methods.get(method).unwrap_or(&self.unknown_method)
    }

    /// Counts a connection the server closed.
    pub fn closed(&self, reason: &'static str) {
        self.closed.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts an upgrade refused before the WebSocket existed.
    pub fn upgrade_rejected(&self, reason: &'static str) {
        self.upgrades_rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry.lock())
            .expect("writing to a String; qed");
        out
    }
}

fn methods_with_unknown(methods: &[&'static str]) -> Vec<&'static str> {
    let mut v = methods.to_vec();
    v.push("unknown");
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_was_counted() {
        let m = Metrics::new(&["ping"]);
        m.method("ping").ok.inc();
        m.method("nope").error.inc();
        m.deliveries.inc_by(1000);
        m.closed("slow_consumer");
        let text = m.render();
        assert!(text.contains(r#"rpchub_calls_total{method="ping",result="ok"} 1"#), "{text}");
        assert!(text.contains(r#"rpchub_calls_total{method="unknown",result="error"} 1"#), "{text}");
        assert!(text.contains("rpchub_deliveries_total 1000"), "{text}");
        assert!(text.contains(r#"rpchub_connections_closed_total{reason="slow_consumer"} 1"#), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
