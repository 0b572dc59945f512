//! Pattern subscriptions: `subscribe` to a glob (`trades:*`) on a namespace with `patterns = true`
//! follows every matching channel, those that have a stream when it is made and those published
//! to later, each with its own snapshot and then its publications, all under the pattern's one
//! subscription id.
//!
//! A pattern is made of one ordinary subscription per matching channel, made through the same
//! service as any other (rights per channel, the anonymous share of channels, the backend's
//! verdict, the two-phase snapshot), all with the pattern's id and its connection's sink. The
//! hub tells the pattern of every publication on a channel under its literal prefix
//! ([`ChannelWatch`]); a new match is subscribed in a task of its own, whose snapshot (the
//! channel's retained history, which holds the publication that revealed it) goes out as soon as
//! it is read. Channels the caller may not read are left out; more matches than the namespace's
//! `max_pattern_channels` end the pattern with `closed` `pattern_too_broad`, before any snapshot
//! beyond the limit.
//!
//! Lock order: the broker's stream lock (the hub's watch is told under it) -> a pattern's state
//! -> a channel's state -> an outbox. A pattern never calls the broker under its lock.

use super::subscriptions::{EndReason, Lifecycle, PendingSubscription, SubscribeError, Subscriptions};
use super::{Live, Session};
use crate::auth::Globs;
use crate::broker::StreamPosition;
use crate::hub::{ChannelWatch, HubError, Sink, SubId, reason};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

/// True when `channel` names a pattern (it holds a `*`).
pub fn is_pattern(channel: &str) -> bool {
    channel.contains('*')
}

/// Checks a pattern's syntax: `NAMESPACE:REST`, the namespace literal, `REST` holding at least
/// one `*`, every other byte one a channel name may hold, 255 bytes at most. Returns its literal
/// prefix (up to the first `*`).
pub fn validate_pattern(pattern: &str) -> Result<&str, String> {
    let Some((ns, rest)) = pattern.split_once(':') else {
        return Err(format!(
            "pattern {pattern} names no namespace: patterns are NAMESPACE:GLOB, e.g. trades:*"
        ));
    };
    if ns.is_empty() || ns.contains('*') {
        return Err(format!("pattern {pattern}: the namespace before ':' must be written out, without '*'"));
    }
    if !rest.contains('*') {
        return Err(format!("pattern {pattern} holds no '*'"));
    }
    if pattern.contains('#') {
        return Err(format!("pattern {pattern}: a pattern never follows user channels ('#')"));
    }
    crate::channel::validate_channel(&pattern.replace('*', "a"))
        .map_err(|e| format!("pattern {pattern}: {e}"))?;
    Ok(&pattern[..pattern.find('*').expect("checked above; qed")])
}

/// True when a pattern subscription follows `channel`: the glob matches and the channel is no
/// user channel (`…#USER`), which only its user may read, one by one.
fn follows(globs: &Globs, channel: &str) -> bool {
    !channel.contains('#') && globs.matches(channel)
}

/// True when some channel may match both globs: a conservative test (their literal prefixes,
/// up to the first wildcard, are one a prefix of the other).
pub fn globs_may_overlap(a: &str, b: &str) -> bool {
    let lit = |g: &str| g.find(['*', '?', '[', '{', '\\']).map_or(g.len(), |i| i);
    let (pa, pb) = (&a[..lit(a)], &b[..lit(b)]);
    let exact = |g: &str, p: &str| g.len() == p.len();
    if exact(a, pa) && exact(b, pb) {
        return a == b;
    }
    pa.starts_with(pb) || pb.starts_with(pa)
}

/// A pattern subscription of one connection.
pub(crate) struct PatternSub {
    pub(crate) id: SubId,
    pattern: Arc<str>,
    prefix: Box<str>,
    globs: Globs,
    limit: Option<usize>,
    conflate_ms: Option<u64>,
    max: usize,
    service: Arc<Subscriptions>,
    session: Weak<Session>,
    me: Weak<PatternSub>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Its connection's sink, once the pattern is live.
    sink: Option<Sink>,
    /// Channels followed, being subscribed, or left out (not readable): each is looked at once.
    known: HashSet<Box<str>>,
    /// Channels that matched before the pattern went live, subscribed once it is.
    waiting: Vec<Box<str>>,
    /// Positions of `since` not used yet.
    since: HashMap<String, StreamPosition>,
    /// The channels' subscriptions.
    subs: Vec<Live>,
    /// Ended: nothing more is subscribed, nothing more is sent.
    ended: bool,
}

impl std::fmt::Debug for PatternSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatternSub").field("pattern", &self.pattern).field("id", &self.id).finish()
    }
}

impl ChannelWatch for PatternSub {
    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn published(&self, channel: &str) {
        if !follows(&self.globs, channel) {
            return;
        }
        let mut st = self.state.lock();
        if st.ended || st.known.contains(channel) {
            return;
        }
        st.known.insert(channel.into());
        if st.sink.is_none() {
            st.waiting.push(channel.into());
            return;
        }
        drop(st);
        self.spawn_attach(channel.into());
    }
}

impl PatternSub {
    /// The pattern as the client wrote it.
    pub(crate) fn pattern(&self) -> &str {
        &self.pattern
    }

    /// False once it ended.
    pub(crate) fn is_active(&self) -> bool {
        !self.state.lock().ended
    }

    fn spawn_attach(&self, channel: Box<str>) {
        if let Some(me) = self.me.upgrade() {
            tokio::spawn(me.attach(channel));
        }
    }

    /// Subscribes a channel that matched after the pattern went live.
    async fn attach(self: Arc<Self>, channel: Box<str>) {
        let Some(session) = self.session.upgrade() else { return };
        let (since, over) = {
            let mut st = self.state.lock();
            if st.ended {
                return;
            }
            (st.since.remove(&*channel), st.subs.len() >= self.max)
        };
        if over {
            self.end_too_broad(&session);
            return;
        }
        let prepared = self
            .service
            .prepare_in_pattern(&session, &channel, since, self.limit, self.conflate_ms, self.id)
            .await;
        match prepared {
            Ok(p) => self.go_live_one(&session, p),
            Err(e) => self.refused(&session, &channel, e),
        }
    }

    /// What became of a channel that could not be subscribed.
    fn refused(&self, session: &Session, channel: &str, e: SubscribeError) {
        match e {
            // Not the caller's to read: the pattern delivers only what it may read.
            SubscribeError::Unauthorized(_) | SubscribeError::Backend(_) => {}
            // The node or the address grants no more channels: the pattern is too broad for it.
            SubscribeError::AnonymousShare(_) | SubscribeError::Hub(HubError::TooManyChannels(_)) => {
                self.end_too_broad(session)
            }
            // Passing: looked at again at its next publication, whose snapshot holds what this
            // one would have.
            _ => {
                tracing::debug!(channel, "a pattern's channel could not be subscribed yet: {e}");
                self.state.lock().known.remove(channel);
            }
        }
    }

    fn go_live_one(&self, session: &Session, p: PendingSubscription) {
        let mut st = self.state.lock();
        let Some(sink) = st.sink.clone().filter(|_| !st.ended) else { return };
        let channel = p.channel().to_string();
        if let Ok(live) = p.go_live_into(sink.clone(), &[]) {
            st.subs.push(live);
            drop(st);
            sink.outbox.nudge_writer();
            self.service.emit(Lifecycle::Subscribed { session, channel: &channel });
        }
    }

    /// Ends it with `closed` `pattern_too_broad`.
    fn end_too_broad(&self, session: &Session) {
        self.end_with(session, EndReason::Server, Some(reason::PATTERN_TOO_BROAD));
    }

    /// Ends every channel's subscription, stops watching, tells the hooks; with `closed`, then
    /// tells the client `{"type":"closed","channel":PATTERN,"reason":closed}` (after the
    /// channels ended, so that nothing follows it). False if it had ended already.
    pub(crate) fn end_with(&self, session: &Session, why: EndReason, closed: Option<&str>) -> bool {
        let (subs, sink) = {
            let mut st = self.state.lock();
            if st.ended {
                return false;
            }
            st.ended = true;
            st.waiting.clear();
            (std::mem::take(&mut st.subs), st.sink.clone())
        };
        self.service.hub().unwatch(self);
        for live in subs {
            let channel = live.channel().to_string();
            let why = if live.unsubscribe() { why } else { EndReason::Server };
            self.service.emit(Lifecycle::Unsubscribed { session, channel: &channel, reason: why });
        }
        if let (Some(reason), Some(sink)) = (closed, sink) {
            sink.push_closed(&self.pattern, reason);
            sink.outbox.nudge_writer();
        }
        true
    }

    /// [`PatternSub::end_with`] without `closed`.
    pub(crate) fn end(&self, session: &Session, why: EndReason) -> bool {
        self.end_with(session, why, None)
    }

    /// The periodic check: channels whose subscription the hub ended (each told `closed` with
    /// its channel) are let go and reported; they are not followed again.
    pub(crate) fn tick(&self, session: &Session) {
        let gone: Vec<Live> = {
            let mut st = self.state.lock();
            let (gone, kept) = std::mem::take(&mut st.subs).into_iter().partition(|s| !s.is_active());
            st.subs = kept;
            gone
        };
        for live in gone {
            let channel = live.channel().to_string();
            drop(live);
            self.service.emit(Lifecycle::Unsubscribed {
                session,
                channel: &channel,
                reason: EndReason::Server,
            });
        }
    }
}

/// A pattern subscription whose existing channels' snapshots are read, waiting for its answer to
/// be queued ([`PendingPattern::go_live`]). Dropping it undoes it.
#[must_use = "a prepared subscription is undone when dropped: call go_live"]
#[derive(Debug)]
pub struct PendingPattern {
    pub(crate) sub: Arc<PatternSub>,
    pub(crate) channels: Vec<PendingSubscription>,
    pub(crate) session: Arc<Session>,
    /// Its place under the connection's cap, until it is live.
    pub(crate) reservation: Option<super::subscriptions::Reservation>,
}

impl PendingPattern {
    /// Its id, for the answer.
    pub fn id(&self) -> SubId {
        self.sub.id
    }

    /// Queues `answer`, then each existing channel's snapshot (and what arrived meanwhile), in
    /// the order of their names, into `sink`; from then on, channels that match are followed as
    /// they are published to.
    pub fn go_live(mut self, sink: Sink, answer: &[&[u8]]) -> Result<SubId, HubError> {
        if !answer.is_empty() && sink.outbox.push_answer(answer) != crate::transport::Push::Queued {
            return Err(HubError::ConnectionClosed);
        }
        let sub = self.sub.clone();
        let waiting = {
            let mut st = sub.state.lock();
            for p in std::mem::take(&mut self.channels) {
                let channel = p.channel().to_string();
                st.subs.push(p.go_live_into(sink.clone(), &[])?);
                sub.service.emit(Lifecycle::Subscribed { session: &self.session, channel: &channel });
            }
            st.sink = Some(sink);
            std::mem::take(&mut st.waiting)
        };
        self.session.subscriptions.lock().patterns.push(sub.clone());
        drop(self.reservation.take());
        for channel in waiting {
            sub.spawn_attach(channel);
        }
        Ok(sub.id)
    }
}

impl Drop for PendingPattern {
    fn drop(&mut self) {
        // Not live: its channels' pendings undo themselves; it stops watching.
        if self.sub.state.lock().sink.is_none() {
            let mut st = self.sub.state.lock();
            st.ended = true;
            drop(st);
            self.sub.service.hub().unwatch(&*self.sub);
        }
    }
}

impl Subscriptions {
    /// Phase one of a pattern subscription for `session`: the namespace allows patterns, the
    /// caller may read some of its channels, `since` names only matching channels, the pattern
    /// takes one place under the connection's cap; then every matching channel that has a
    /// stream is prepared as a subscribe of it would be (those the caller may not read left
    /// out). More than `max_pattern_channels` of them fails the call.
    pub async fn prepare_pattern(
        self: &Arc<Self>,
        session: &Arc<Session>,
        pattern: &str,
        since: HashMap<String, StreamPosition>,
        limit: Option<usize>,
        conflate_ms: Option<u64>,
    ) -> Result<PendingPattern, SubscribeError> {
        if session.link().is_none() {
            return Err(SubscribeError::NoSocket);
        }
        self.check_conflate(conflate_ms)?;
        let prefix =
            validate_pattern(pattern).map_err(|m| SubscribeError::Hub(HubError::InvalidChannel(m)))?;
        let ns_name = crate::channel::namespace(pattern);
        let ns = self.config().namespace_of(pattern).clone();
        if !ns.patterns {
            return Err(SubscribeError::Unacceptable(format!(
                "patterns are off on namespace {ns_name}: its table [namespaces.{ns_name}] needs patterns = true"
            )));
        }
        let globs = Globs::new(&[pattern]).map_err(|m| SubscribeError::Hub(HubError::InvalidChannel(m)))?;
        self.allow_pattern(session, &ns, pattern).map_err(SubscribeError::Unauthorized)?;
        if let Some(bad) = since.keys().find(|c| !globs.matches(c)) {
            return Err(SubscribeError::InvalidParams(format!(
                "since names {bad}, which the pattern {pattern} does not match"
            )));
        }
        self.hub().check_broker()?;
        let reservation = self.reserve(session)?;
        let sub = Arc::new_cyclic(|me| PatternSub {
            id: self.hub().next_id(),
            pattern: pattern.into(),
            prefix: prefix.into(),
            globs,
            limit,
            conflate_ms,
            max: ns.max_pattern_channels,
            service: self.clone(),
            session: Arc::downgrade(session),
            me: me.clone(),
            state: Mutex::new(State { since, ..State::default() }),
        });
        // Watched before the channels are listed: a channel that appears in between is both
        // listed and told, and looked at once.
        self.hub().watch(sub.clone()).await.map_err(SubscribeError::Hub)?;
        let mut pending = PendingPattern {
            sub: sub.clone(),
            channels: Vec::new(),
            session: session.clone(),
            reservation: Some(reservation),
        };
        let listed = self.hub().streams(prefix, ns.max_pattern_channels).await?;
        let matching: Vec<String> = listed.into_iter().filter(|c| follows(&sub.globs, c)).collect();
        if matching.len() > ns.max_pattern_channels {
            return Err(SubscribeError::Unacceptable(format!(
                "pattern {pattern} matches more than {} channels (max_pattern_channels of namespace {ns_name})",
                ns.max_pattern_channels
            )));
        }
        let readable: Vec<String> = {
            let mut st = sub.state.lock();
            matching
                .into_iter()
                .filter(|c| st.known.insert(c.as_str().into()))
                .filter(|c| self.allow(session, crate::auth::Action::Subscribe, c).is_ok())
                .collect()
        };
        let prepares = readable.iter().map(|c| {
            let since = sub.state.lock().since.remove(c.as_str());
            self.prepare_in_pattern(session, c, since, limit, conflate_ms, sub.id)
        });
        for (c, p) in readable.iter().zip(futures_util::future::join_all(prepares).await) {
            match p {
                Ok(p) => pending.channels.push(p),
                Err(SubscribeError::Unauthorized(_) | SubscribeError::Backend(_)) => {}
                Err(e) => {
                    tracing::debug!(channel = %c, pattern, "a pattern subscribe failed on one of its channels: {e}");
                    return Err(e);
                }
            }
        }
        Ok(pending)
    }

    /// The caller may read some channels of the pattern's namespace: the namespace is public,
    /// or wants a token and it has one, or wants claims and one of its `channels` patterns may
    /// match a channel the pattern matches.
    fn allow_pattern(
        &self,
        session: &Session,
        ns: &crate::config::NamespaceConfig,
        pattern: &str,
    ) -> Result<(), String> {
        use crate::config::Access;
        let p = session.principal();
        if p.is_admin() || ns.subscribe == Access::Public {
            return Ok(());
        }
        if p.is_expired(crate::broker::memory::now_ms() / 1000) {
            return Err("the connection's token has expired; call auth with a fresh one".into());
        }
        match ns.subscribe {
            Access::Authenticated if p.is_authenticated() => Ok(()),
            Access::Claims if p.channels.patterns().iter().any(|g| globs_may_overlap(g, pattern)) => Ok(()),
            _ if !p.is_authenticated() => Err(format!("a token is needed to subscribe to {pattern}")),
            _ => Err(format!(
                "the token of {:?} may read no channel of {pattern}: none of its channels patterns {:?} overlap it",
                p.subject,
                p.channels.patterns()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_name_their_namespace_and_hold_a_star() {
        assert_eq!(validate_pattern("trades:*"), Ok("trades:"));
        assert_eq!(validate_pattern("l2Book:BTC-*"), Ok("l2Book:BTC-"));
        assert_eq!(validate_pattern("a:b*c*"), Ok("a:b"));
        for bad in ["*", "trades", "*:x", "tr*des:x", "trades:SOL", "trades:* x", ":*", "n:#*"] {
            assert!(validate_pattern(bad).is_err(), "{bad}");
        }
        assert!(validate_pattern(&format!("t:{}*", "a".repeat(260))).is_err());
        assert!(is_pattern("trades:*") && !is_pattern("trades:SOL"));
    }

    #[test]
    fn patterns_never_follow_user_channels() {
        let globs = Globs::new(&["notifications:*"]).unwrap();
        assert!(follows(&globs, "notifications:all"));
        assert!(!follows(&globs, "notifications:#alice"));
    }

    #[test]
    fn overlap_is_decided_by_the_literal_prefixes() {
        assert!(globs_may_overlap("trades:*", "trades:S*"));
        assert!(globs_may_overlap("trades:SOL", "trades:*"));
        assert!(globs_may_overlap("*", "trades:*"));
        assert!(!globs_may_overlap("trades:SOL", "trades:ETH*"));
        assert!(!globs_may_overlap("books:*", "trades:*"));
        assert!(!globs_may_overlap("trades:SOL", "trades:ETH"));
        assert!(globs_may_overlap("trades:SOL", "trades:SOL"));
    }
}

/// What a call prepared for its front door to take live behind its answer: a channel's
/// subscription or a pattern's.
#[derive(Debug)]
pub enum Deferred {
    /// One channel.
    Channel(PendingSubscription),
    /// A pattern and its existing channels.
    Pattern(PendingPattern),
}

impl From<PendingSubscription> for Deferred {
    fn from(p: PendingSubscription) -> Deferred {
        Deferred::Channel(p)
    }
}

impl From<PendingPattern> for Deferred {
    fn from(p: PendingPattern) -> Deferred {
        Deferred::Pattern(p)
    }
}

impl Deferred {
    /// Its subscription id.
    pub fn id(&self) -> SubId {
        match self {
            Deferred::Channel(p) => p.id(),
            Deferred::Pattern(p) => p.id(),
        }
    }

    /// Queues `answer`, then the snapshot(s), into `sink`, and makes it live.
    pub fn go_live(self, sink: Sink, answer: &[&[u8]]) -> Result<SubId, HubError> {
        match self {
            Deferred::Channel(p) => p.go_live(sink, answer),
            Deferred::Pattern(p) => p.go_live(sink, answer),
        }
    }
}
