//! Layer 3: WebSocket upgrades per client IP address.
//!
//! A token bucket per address (IPv6 addresses by their /64, which one client usually holds
//! whole) holding `per_minute` upgrades and refilling at `per_minute / 60` a second. Over the
//! limit: 429 with `Retry-After` (seconds until the next upgrade is allowed). Buckets that have
//! refilled are forgotten, so the table only holds addresses that upgraded recently; it is
//! capped, and when full (an attack from very many addresses) new addresses are refused too.
//! Refusals count as `rate`.

use super::{Body, Check, ClientAddr, json_error, refused, upgrade_match};
use crate::bucket::TokenBucket;
use crate::metrics::{Metrics, Rejection};
use hyper::{Request, Response, StatusCode};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Addresses tracked at most.
const MAX_TRACKED: usize = 262_144;
/// How often refilled buckets are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Table {
    buckets: HashMap<IpAddr, TokenBucket>,
    swept: Instant,
}

/// The per-address upgrade limiter.
#[derive(Debug, Clone)]
pub struct UpgradeRate {
    table: Arc<Mutex<Table>>,
    capacity: f64,
    per_second: f64,
    metrics: Arc<Metrics>,
}

/// The address a client is counted by: IPv4 addresses (also IPv4-mapped IPv6 ones) whole, IPv6
/// addresses by their /64, which one client usually holds whole.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

impl UpgradeRate {
    /// `per_minute` upgrades per address; refusals are counted in `metrics`.
    pub fn new(per_minute: u32, metrics: Arc<Metrics>) -> UpgradeRate {
        UpgradeRate {
            table: Arc::new(Mutex::new(Table { buckets: HashMap::new(), swept: Instant::now() })),
            capacity: per_minute as f64,
            per_second: per_minute as f64 / 60.0,
            metrics,
        }
    }

    /// Takes one upgrade for `ip` at `now`; `Err(seconds)` to wait when none is left.
    pub fn take(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let mut t = self.table.lock();
        if now.saturating_duration_since(t.swept) >= SWEEP_EVERY || t.buckets.len() >= MAX_TRACKED {
            t.buckets.retain(|_, b| !b.is_full_at(now));
            t.swept = now;
        }
        let key = address_key(ip);
        if !t.buckets.contains_key(&key) && t.buckets.len() >= MAX_TRACKED {
            return Err(60);
        }
        let (capacity, per_second) = (self.capacity, self.per_second);
        let b = t.buckets.entry(key).or_insert_with(|| TokenBucket::new(capacity, per_second, now));
        b.take(now).map_err(|wait_s| wait_s.ceil().max(1.0) as u64)
    }
}

impl Check for UpgradeRate {
    #[allow(clippy::result_large_err)]
    fn check<B>(&self, req: &mut Request<B>) -> Result<(), Response<Body>> {
        if upgrade_match(req.extensions()).is_none() {
            return Ok(());
        }
        let Some(ClientAddr(addr)) = req.extensions().get::<ClientAddr>().copied() else { return Ok(()) };
        self.take(addr.ip(), Instant::now()).map_err(|wait| {
            let mut r = json_error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("too many WebSocket upgrades from this address; retry in {wait} s"),
            );
            r.headers_mut().insert(hyper::header::RETRY_AFTER, wait.into());
            refused(&self.metrics, Rejection::Rate, r)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_minute: u32) -> UpgradeRate {
        UpgradeRate::new(per_minute, Arc::new(Metrics::new()))
    }

    #[test]
    fn limits_per_address_and_refills() {
        let r = limit(60);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        assert!((0..60).all(|_| r.take(a, t0).is_ok()));
        assert_eq!(r.take(a, t0), Err(1));
        assert!(r.take(b, t0).is_ok(), "addresses are independent");
        // One a second comes back.
        assert!(r.take(a, t0 + Duration::from_millis(1100)).is_ok());
        assert!(r.take(a, t0 + Duration::from_millis(1100)).is_err());
        assert!((0..60).all(|_| r.take(a, t0 + Duration::from_secs(70)).is_ok()), "full after a minute");
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let r = limit(2);
        let t0 = Instant::now();
        assert!(r.take("2001:db8::1".parse().unwrap(), t0).is_ok());
        assert!(r.take("2001:db8::2".parse().unwrap(), t0).is_ok());
        assert!(r.take("2001:db8::3".parse().unwrap(), t0).is_err());
        assert!(r.take("2001:db8:0:1::1".parse().unwrap(), t0).is_ok());
    }

    #[test]
    fn refilled_buckets_are_forgotten() {
        let r = limit(10);
        let t0 = Instant::now();
        for i in 0..100u8 {
            r.take(IpAddr::from([10, 0, 0, i]), t0).unwrap();
        }
        r.take(IpAddr::from([10, 0, 1, 0]), t0 + Duration::from_secs(61)).unwrap();
        assert_eq!(r.table.lock().buckets.len(), 1);
    }
}
