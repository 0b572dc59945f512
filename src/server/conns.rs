//! What every TCP connection costs before it is a WebSocket: a place under the node-wide limit
//! of such connections (`limits.max_http_connections`) and one under its address's cap
//! (`limits.http_connections_per_address`, IPv6 by /64), as nginx's `limit_conn` counts. Both
//! are taken by the accept loop before hyper sees a byte; a connection over either is closed at
//! once, so a client holding thousands of idle or half-sent connections takes neither the
//! descriptors nor the accept loop of anybody else.
//!
//! A WebSocket counts against `limits.max_connections` instead (the gate's capacity check, 429
//! before the upgrade), so every TCP connection is under one of the two limits, and at start
//! both are kept within the descriptor limit ([`within_descriptors`]): `accept` never runs out
//! of descriptors, whatever clients do.
//!
//! The places travel with the connection as an [`Admitted`] in every request's extensions; the
//! upgrade gives them back.

use crate::constants::DESCRIPTOR_RESERVE;
use crate::gate::address_key;
use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Why a connection was closed at accept: the `reason` label of
/// `rpchub_connections_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The node holds `limits.max_http_connections` connections that are not WebSockets.
    Limit,
    /// The address holds `limits.http_connections_per_address` connections that are not
    /// WebSockets.
    PerAddress,
}

impl Refusal {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::Limit => "limit",
            Refusal::PerAddress => "per_address",
        }
    }
}

/// The counts, shared by the accept loop and every connection.
#[derive(Debug)]
pub(crate) struct TcpLimits {
    open: AtomicUsize,
    /// `rpchub_tcp_connections`.
    gauge: Gauge,
    max: usize,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    max_per_address: usize,
}

impl TcpLimits {
    /// At most `max` connections that are not WebSockets, `max_per_address` of them per
    /// address.
    /// `gauge` follows the count.
    pub(crate) fn new(max: usize, max_per_address: usize, gauge: Gauge) -> Arc<TcpLimits> {
        Arc::new(TcpLimits {
            open: AtomicUsize::new(0),
            gauge,
            max,
            per_address: Mutex::new(HashMap::new()),
            max_per_address,
        })
    }

    /// Open connections that are not WebSockets.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The places of a new connection from `ip`, or why it gets none.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Arc<Admitted>, Refusal> {
        // Node-wide first: it is one atomic, and a full node must not grow the table.
        if self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < self.max).then_some(n + 1))
            .is_err()
        {
            return Err(Refusal::Limit);
        }
        self.gauge.inc();
        let node = NodePlace(self.clone());
        let key = address_key(ip);
        {
            let mut table = self.per_address.lock();
            let n = table.entry(key).or_insert(0);
            if *n >= self.max_per_address {
                return Err(Refusal::PerAddress);
            }
            *n += 1;
        }
        let address = AddressPlace { limits: self.clone(), key };
        Ok(Arc::new(Admitted { places: Mutex::new(Some((node, address))) }))
    }

    /// Addresses holding places (for tests).
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.per_address.lock().len()
    }
}

/// A connection's place under the node-wide limit, given back when it drops.
#[derive(Debug)]
struct NodePlace(Arc<TcpLimits>);

impl Drop for NodePlace {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge.dec();
    }
}

/// A connection's place under its address's cap, given back when it drops.
#[derive(Debug)]
struct AddressPlace {
    limits: Arc<TcpLimits>,
    key: IpAddr,
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut table = self.limits.per_address.lock();
        if let Some(n) = table.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                table.remove(&self.key);
            }
        }
    }
}

/// The places one admitted connection holds, in its requests' extensions.
#[derive(Debug)]
pub(crate) struct Admitted {
    places: Mutex<Option<(NodePlace, AddressPlace)>>,
}

impl Admitted {
    /// The connection became a WebSocket, counted by `max_connections` from now on: its places
    /// are free for other requests.
    pub(crate) fn upgraded(&self) {
        self.places.lock().take();
    }
}

/// `(max_connections, max_http_connections)` within a descriptor limit of `nofile`, less
/// [`DESCRIPTOR_RESERVE`]: unchanged when their sum fits; else plain HTTP keeps at most a
/// quarter of what there is and WebSockets the rest (each at least 1).
pub(crate) fn within_descriptors(max_connections: usize, max_http: usize, nofile: u64) -> (usize, usize) {
    let usable = usize::try_from(nofile.saturating_sub(DESCRIPTOR_RESERVE)).unwrap_or(usize::MAX);
    if max_connections.saturating_add(max_http) <= usable {
        return (max_connections, max_http);
    }
    let http = max_http.min(usable / 4).max(1);
    let ws = max_connections.min(usable.saturating_sub(http)).max(1);
    (ws, http)
}

/// The process's descriptor limit (the soft one, which is what `accept` runs into); `None`
/// when it cannot be read or is unlimited.
pub(crate) fn descriptor_limit() -> Option<u64> {
    match rlimit::Resource::NOFILE.get() {
        Ok((soft, _)) if soft != rlimit::INFINITY => Some(soft),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_and_given_back() {
        let limits = TcpLimits::new(3, 2, Gauge::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = limits.admit(a).unwrap();
        let a2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), Refusal::PerAddress, "the address's cap");
        assert_eq!(limits.open(), 2, "a refusal gives its node-wide place back");
        let b1 = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).unwrap_err(), Refusal::Limit, "the node-wide limit");
        a1.upgraded();
        assert_eq!(limits.open(), 2, "a WebSocket leaves both counts");
        let a3 = limits.admit(a).unwrap();
        drop(a1);
        assert_eq!(limits.open(), 3, "and once out, for good");
        drop((a2, a3, b1));
        assert_eq!(limits.open(), 0);
        assert_eq!(limits.addresses(), 0, "no address is remembered once its connections are gone");
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        let limits = TcpLimits::new(100, 1, Gauge::default());
        let _one = limits.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(limits.admit("2001:db8:1:2:ffff::9".parse().unwrap()).is_err(), "same /64");
        assert!(limits.admit("2001:db8:1:3::1".parse().unwrap()).is_ok(), "another /64");
    }

    #[test]
    fn the_limits_stay_below_the_descriptors() {
        let usable = 20_000 - DESCRIPTOR_RESERVE as usize;
        assert_eq!(within_descriptors(100_000, 10_000, 20_000), (usable - usable / 4, usable / 4));
        assert_eq!(within_descriptors(10_000, 100, 20_000), (10_000, 100), "what fits is kept");
        assert_eq!(within_descriptors(100_000, 10_000, 1 << 20), (100_000, 10_000));
        assert_eq!(
            within_descriptors(100_000, 10_000, 65_536),
            (65_536 - DESCRIPTOR_RESERVE as usize - 10_000, 10_000)
        );
        assert_eq!(within_descriptors(500, 500, 10), (1, 1));
    }
}
