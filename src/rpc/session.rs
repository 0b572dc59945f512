//! One client's session: who it is, its subscriptions, its call budget, and (on a WebSocket) the
//! outbox its answers and notifications go to. Method handlers reach it through the request
//! extensions, where the connection put it.

use crate::auth::Principal;
use crate::constants::FLOOD_REJECTIONS_PER_SECOND;
use crate::hub::Subscription;
use crate::transport::outbox::Outbox;
use parking_lot::{Mutex, RwLock};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Per-connection state shared by the connection's tasks and its method calls.
pub struct Session {
    /// Unique per process.
    pub id: u64,
    /// The client's address.
    pub remote: SocketAddr,
    principal: RwLock<Arc<Principal>>,
    outbox: Option<Arc<Outbox>>,
    /// Subscriptions held; only the connection's reader adds and removes (one call at a time),
    /// the lock is for the shutdown and expiry paths.
    pub subscriptions: Mutex<Vec<Subscription>>,
    limiter: Mutex<RateLimiter>,
    /// When the client last sent anything, on the connection registry's clock (ms).
    last_seen: AtomicU64,
    /// The principal's expiry in Unix seconds (0: never), readable without the lock.
    expires_at: AtomicU64,
}

impl Session {
    /// A session for a client `remote` with the given principal; `outbox` for WebSockets.
    pub fn new(
        id: u64,
        remote: SocketAddr,
        principal: Arc<Principal>,
        outbox: Option<Arc<Outbox>>,
        default_rate: u32,
    ) -> Session {
        let limiter = RateLimiter::new(principal.call_rate(default_rate));
        let expires_at = AtomicU64::new(principal.expires_at.unwrap_or(0));
        Session {
            expires_at,
            id,
            remote,
            principal: RwLock::new(principal),
            outbox,
            subscriptions: Mutex::new(Vec::new()),
            limiter: Mutex::new(limiter),
            last_seen: AtomicU64::new(0),
        }
    }

    /// Records that the client sent something at `now_ms`.
    pub fn touch(&self, now_ms: u64) {
        self.last_seen.store(now_ms, Ordering::Relaxed);
    }

    /// When the client last sent something.
    pub fn last_seen(&self) -> u64 {
        self.last_seen.load(Ordering::Relaxed)
    }

    /// Who the client is now.
    pub fn principal(&self) -> Arc<Principal> {
        self.principal.read().clone()
    }

    /// Replaces the principal (after a successful `auth`), with its call rate.
    pub fn set_principal(&self, p: Arc<Principal>, default_rate: u32) {
        self.limiter.lock().set_rate(p.call_rate(default_rate));
        self.expires_at.store(p.expires_at.unwrap_or(0), Ordering::Relaxed);
        *self.principal.write() = p;
    }

    /// True once the principal's token has expired (never for keys without expiry).
    pub fn token_expired(&self, now_s: u64) -> bool {
        let e = self.expires_at.load(Ordering::Relaxed);
        e != 0 && now_s >= e
    }

    /// The WebSocket outbox; `None` over HTTP.
    pub fn outbox(&self) -> Option<&Arc<Outbox>> {
        self.outbox.as_ref()
    }

    /// Charges one message (a call, a notification, a batch entry, or something invalid)
    /// against the budget.
    pub fn charge_call(&self) -> Verdict {
        let mut limiter = self.limiter.lock();
        // Unlimited principals (admin) skip the clock read: this runs for every message.
        if limiter.rate.is_none() {
            return Verdict::Allow;
        }
        limiter.check(Instant::now())
    }
}

/// What the rate limiter says about a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within budget.
    Allow,
    /// Over budget: answer -32003.
    Reject,
    /// Over budget and still sending hard after many refusals: close the connection.
    Flood,
}

/// A token bucket holding one second's worth of calls, plus a count of refusals per second.
#[derive(Debug)]
pub struct RateLimiter {
    rate: Option<u32>,
    tokens: f64,
    last: Instant,
    window: Instant,
    refused: u32,
}

impl RateLimiter {
    /// `None`: unlimited.
    pub fn new(rate: Option<u32>) -> RateLimiter {
        let now = Instant::now();
        RateLimiter { rate, tokens: rate.unwrap_or(0) as f64, last: now, window: now, refused: 0 }
    }

    fn set_rate(&mut self, rate: Option<u32>) {
        if rate != self.rate {
            self.rate = rate;
            self.tokens = rate.unwrap_or(0) as f64;
        }
    }

    /// Takes a token if there is one.
    pub fn check(&mut self, now: Instant) -> Verdict {
        let Some(rate) = self.rate else { return Verdict::Allow };
        let rate = rate as f64;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.refused = 0;
        }
        self.refused += 1;
        if self.refused > FLOOD_REJECTIONS_PER_SECOND { Verdict::Flood } else { Verdict::Reject }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_rate_then_refuses_then_refills() {
        let mut r = RateLimiter::new(Some(10));
        let t0 = r.last;
        assert!((0..10).all(|_| r.check(t0) == Verdict::Allow));
        assert_eq!(r.check(t0), Verdict::Reject);
        // Half a second later, five more.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..6).filter(|_| r.check(t1) == Verdict::Allow).count(), 5);
    }

    #[test]
    fn sustained_refusals_become_a_flood() {
        let mut r = RateLimiter::new(Some(1));
        let t0 = r.last;
        let verdicts: Vec<_> = (0..FLOOD_REJECTIONS_PER_SECOND + 2).map(|_| r.check(t0)).collect();
        assert_eq!(verdicts[0], Verdict::Allow);
        assert_eq!(verdicts[1], Verdict::Reject);
        assert_eq!(*verdicts.last().unwrap(), Verdict::Flood);
    }

    #[test]
    fn unlimited_is_unlimited() {
        let mut r = RateLimiter::new(None);
        assert!((0..10_000).all(|_| r.check(Instant::now()) == Verdict::Allow));
    }
}
