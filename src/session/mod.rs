//! One client's session, whichever front door it came through: who it is, its call budget, its
//! subscriptions, and (on a WebSocket) the transport link its frames go to. The subscription
//! service ([`Subscriptions`]) is the one place where subscriptions are made and ended, for
//! every front door; `share` is what anonymous sessions of one address may hold of the node's
//! channels.

mod budgets;
mod feeds;
pub mod pattern;
mod share;
mod subscriptions;

pub use budgets::Budgets;
pub(crate) use feeds::CursorFeeds;

/// The id of the client of session `session` on node `node`, unique across nodes:
/// `NODE-SESSION` (what presence, cursors, hooks and the backend name a client by).
pub fn client_id(node: &str, session: u64) -> String {
    format!("{node}-{session}")
}

pub use pattern::{Deferred, PendingPattern};
pub use subscriptions::{
    EndReason, Lifecycle, LifecycleHook, PendingSubscription, SubscribeError, Subscriptions,
};

use crate::auth::Principal;
use crate::bucket::TokenBucket;
use crate::constants::FLOOD_REJECTIONS_PER_SECOND;
use crate::hub::Subscription;
use crate::transport::Link;
use parking_lot::{Mutex, RwLock};
use share::ShareHold;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Per-connection state shared by the connection's tasks and its calls.
#[derive(Debug)]
pub struct Session {
    /// Unique per process (a WebSocket's equals its link's id).
    pub id: u64,
    /// The client's address.
    pub remote: SocketAddr,
    /// The front door it came through (`jsonrpc`, ...), for metrics and hooks.
    pub door: &'static str,
    /// When it began, for the connection's log line.
    pub opened: Instant,
    link: Option<Arc<Link>>,
    principal: RwLock<Arc<Principal>>,
    /// The principal's expiry in Unix seconds (0: never), readable without the lock.
    expires_at: AtomicU64,
    /// The call budget.
    budget: Budget,
    /// Live subscriptions and reserved places for those being made. Dropping the session (its
    /// connection ended) drops them, which unsubscribes.
    pub(crate) subscriptions: Mutex<SubscriptionSet>,
    /// What it holds for the application's backend, on a node that has one (a word
    /// otherwise: most nodes have none, and every connection has a session).
    backend: Option<Box<BackendSession>>,
    /// How its front door writes a `cursor` notification, set when the session (of a user)
    /// first subscribes: from then on the user's cursor moves made elsewhere reach it.
    pub(crate) cursor_feed: std::sync::OnceLock<Arc<dyn crate::hub::Encoding>>,
}

/// A session's part of the application's backend: the client's request headers that
/// `backend.forward_headers` names, and its proxied calls in flight and streamed replies.
#[derive(Debug, Default)]
pub struct BackendSession {
    calls: crate::backend::Calls,
    forwarded: Box<[(hyper::header::HeaderName, hyper::header::HeaderValue)]>,
}

/// A session's subscriptions.
#[derive(Debug, Default)]
pub(crate) struct SubscriptionSet {
    pub(crate) live: Vec<Live>,
    /// Pattern subscriptions, each counted as one under the cap.
    pub(crate) patterns: Vec<Arc<pattern::PatternSub>>,
    /// Subscribes in progress, counted against the cap.
    pub(crate) pending: usize,
}

/// A live subscription with what it holds besides: an anonymous session's place in its
/// address's share of the channels ([`share`]), given back when the subscription goes (it is
/// dropped after the subscription, which unsubscribes first).
#[derive(Debug)]
pub(crate) struct Live {
    sub: Subscription,
    share: Option<ShareHold>,
    /// The client's place in the channel's presence, where its namespace keeps one.
    presence: Option<crate::hub::presence::PresenceGuard>,
}

impl Live {
    /// Ends it at the client's request; false if it had already ended.
    pub(crate) fn unsubscribe(self) -> bool {
        let Live { sub, share, presence } = self;
        let was_live = sub.unsubscribe();
        drop(share);
        drop(presence);
        was_live
    }

    /// Ends it from the server's side with `closed` `reason`; false if it had already ended.
    pub(crate) fn close(self, reason: &str) -> bool {
        let Live { sub, share, presence } = self;
        let was_live = sub.close(reason);
        drop(share);
        drop(presence);
        was_live
    }
}

impl std::ops::Deref for Live {
    type Target = Subscription;

    fn deref(&self) -> &Subscription {
        &self.sub
    }
}

impl Session {
    /// A session for a client `remote` with the given principal; `link` for WebSockets.
    pub fn new(
        id: u64,
        remote: SocketAddr,
        door: &'static str,
        principal: Arc<Principal>,
        link: Option<Arc<Link>>,
        default_rate: u32,
    ) -> Session {
        let budget = Budget::Own(Mutex::new(CallBudget::new(principal.call_rate(default_rate))));
        Session::with_budget(id, remote, door, principal, link, budget)
    }

    /// A session of one HTTP request, charged to `budget`, which it shares with the other
    /// requests of its principal ([`Budgets::of`]).
    pub fn over_http(
        id: u64,
        remote: SocketAddr,
        door: &'static str,
        principal: Arc<Principal>,
        budget: Arc<Mutex<CallBudget>>,
    ) -> Session {
        Session::with_budget(id, remote, door, principal, None, Budget::Shared(budget))
    }

    fn with_budget(
        id: u64,
        remote: SocketAddr,
        door: &'static str,
        principal: Arc<Principal>,
        link: Option<Arc<Link>>,
        budget: Budget,
    ) -> Session {
        let expires_at = AtomicU64::new(principal.expires_at.unwrap_or(0));
        Session {
            id,
            remote,
            door,
            opened: Instant::now(),
            link,
            principal: RwLock::new(principal),
            expires_at,
            budget,
            subscriptions: Mutex::new(SubscriptionSet::default()),
            backend: None,
            cursor_feed: std::sync::OnceLock::new(),
        }
    }

    /// The session of a node with a backend, passing `headers` (of the client's request) on
    /// to it.
    pub fn with_backend(
        mut self,
        headers: Box<[(hyper::header::HeaderName, hyper::header::HeaderValue)]>,
    ) -> Session {
        self.backend = Some(Box::new(BackendSession { calls: Default::default(), forwarded: headers }));
        self
    }

    /// The client's request headers passed on to the backend.
    pub fn forwarded(&self) -> &[(hyper::header::HeaderName, hyper::header::HeaderValue)] {
        self.backend.as_ref().map_or(&[], |b| &b.forwarded)
    }

    /// Its proxied calls and streamed replies, on a node with a backend.
    pub fn calls(&self) -> Option<&crate::backend::Calls> {
        self.backend.as_ref().map(|b| &b.calls)
    }

    /// Who the client is now.
    pub fn principal(&self) -> Arc<Principal> {
        self.principal.read().clone()
    }

    /// Replaces the principal (after a successful `auth`), with its call rate (on a WebSocket;
    /// an HTTP request stays charged to the budget it came with).
    pub fn set_principal(&self, p: Arc<Principal>, default_rate: u32) {
        if let Budget::Own(budget) = &self.budget {
            budget.lock().set_rate(p.call_rate(default_rate));
        }
        self.expires_at.store(p.expires_at.unwrap_or(0), Ordering::Relaxed);
        *self.principal.write() = p;
    }

    /// True once the principal's token has expired (never for keys without expiry).
    pub fn token_expired(&self, now_s: u64) -> bool {
        let e = self.expires_at.load(Ordering::Relaxed);
        e != 0 && now_s >= e
    }

    /// The WebSocket link; `None` over HTTP.
    pub fn link(&self) -> Option<&Arc<Link>> {
        self.link.as_ref()
    }

    /// Live subscriptions held.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.lock().live.len()
    }

    /// Calls a second its budget allows; `None`: no limit.
    pub fn call_rate(&self) -> Option<u32> {
        match &self.budget {
            Budget::Own(b) => b.lock().rate(),
            Budget::Shared(b) => b.lock().rate(),
        }
    }

    /// Charges one message (a call, a notification, a batch entry, or something invalid)
    /// against the budget.
    pub fn charge_call(&self) -> Verdict {
        match &self.budget {
            Budget::Own(b) => b.lock().charge(),
            Budget::Shared(b) => b.lock().charge(),
        }
    }
}

/// A session's call budget: its own on a WebSocket (inline: every connection has one); over
/// HTTP, shared by every request of the same principal (or anonymous address), from
/// [`Budgets`], so that `auth` there changes rights and not the budget.
#[derive(Debug)]
enum Budget {
    Own(Mutex<CallBudget>),
    Shared(Arc<Mutex<CallBudget>>),
}

/// What the call budget says about a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within budget.
    Allow,
    /// Over budget: refuse it.
    Reject,
    /// Over budget and still sending hard after many refusals: close the connection.
    Flood,
}

/// Calls per second as a [`TokenBucket`] holding one second's worth, plus a count of refusals
/// per second that tells a client who slows down from one who floods.
#[derive(Debug)]
pub struct CallBudget {
    bucket: Option<TokenBucket>,
    window: Instant,
    refused: u32,
}

impl CallBudget {
    /// `None`: unlimited.
    pub fn new(rate: Option<u32>) -> CallBudget {
        let now = Instant::now();
        let bucket = rate.map(|r| TokenBucket::new(r as f64, r as f64, now));
        CallBudget { bucket, window: now, refused: 0 }
    }

    fn set_rate(&mut self, rate: Option<u32>) {
        *self = CallBudget::new(rate);
    }

    /// Its rate, calls a second; `None`: unlimited.
    pub fn rate(&self) -> Option<u32> {
        self.bucket.as_ref().map(|b| b.per_second() as u32)
    }

    /// Charges a call now.
    pub fn charge(&mut self) -> Verdict {
        // Unlimited principals (admin) skip the clock read: this runs for every message.
        if self.bucket.is_none() {
            return Verdict::Allow;
        }
        self.charge_at(Instant::now())
    }

    /// True when the bucket is full at `now` (or there is none): forgetting the budget then
    /// changes nothing.
    pub fn is_idle_at(&self, now: Instant) -> bool {
        self.bucket.as_ref().is_none_or(|b| b.is_full_at(now))
    }

    /// Charges a call at `now`.
    pub fn charge_at(&mut self, now: Instant) -> Verdict {
        let Some(bucket) = &mut self.bucket else { return Verdict::Allow };
        if bucket.take(now).is_ok() {
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
    fn budget_allows_the_rate_then_refuses_then_refills() {
        let mut r = CallBudget::new(Some(10));
        let t0 = r.window;
        assert!((0..10).all(|_| r.charge_at(t0) == Verdict::Allow));
        assert_eq!(r.charge_at(t0), Verdict::Reject);
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..6).filter(|_| r.charge_at(t1) == Verdict::Allow).count(), 5);
    }

    #[test]
    fn sustained_refusals_become_a_flood() {
        let mut r = CallBudget::new(Some(1));
        let t0 = r.window;
        let verdicts: Vec<_> = (0..FLOOD_REJECTIONS_PER_SECOND + 2).map(|_| r.charge_at(t0)).collect();
        assert_eq!(verdicts[0], Verdict::Allow);
        assert_eq!(verdicts[1], Verdict::Reject);
        assert_eq!(*verdicts.last().unwrap(), Verdict::Flood);
    }

    #[test]
    fn unlimited_is_unlimited() {
        let mut r = CallBudget::new(None);
        assert!((0..10_000).all(|_| r.charge() == Verdict::Allow));
    }
}
