//! The one token bucket, used wherever a rate is limited: WebSocket upgrades per address (the
//! gate) and calls per connection (sessions).

use std::time::Instant;

/// Holds up to `capacity` tokens and refills at `per_second`; each permitted event takes one.
#[derive(Clone, Debug)]
pub(crate) struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(capacity: f64, per_second: f64, now: Instant) -> TokenBucket {
        TokenBucket { capacity, per_second, tokens: capacity, last: now }
    }

    /// Tokens it refills a second.
    pub(crate) fn per_second(&self) -> f64 {
        self.per_second
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
    }

    /// Takes a token at `now`; `Err(seconds)` until the next one when there is none.
    pub(crate) fn take(&mut self, now: Instant) -> Result<(), f64> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - self.tokens) / self.per_second)
        }
    }

    /// True when, at `now`, the bucket would be full again (nothing to remember).
    pub(crate) fn is_full_at(&self, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * self.per_second
            >= self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn takes_the_capacity_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 10.0, t0);
        assert!((0..10).all(|_| b.take(t0).is_ok()));
        let wait = b.take(t0).unwrap_err();
        assert!((wait - 0.1).abs() < 1e-9, "{wait}");
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..6).filter(|_| b.take(t1).is_ok()).count(), 5);
        assert!(!b.is_full_at(t1));
        assert!(b.is_full_at(t1 + Duration::from_secs(1)));
    }
}
