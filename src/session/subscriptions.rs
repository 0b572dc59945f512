//! The subscription service: the one place where a session's subscriptions are made and ended,
//! for every front door. It checks rights (and the token's expiry) and the per-connection cap,
//! makes the subscription in two phases on the hub, ends subscriptions by id, by channel, when
//! the token expires and when the connection ends, and tells lifecycle hooks about each start
//! and end, with the reason, and about each WebSocket connection's start and end: every door
//! calls [`Subscriptions::connected`] from `Door::connect` and [`Subscriptions::disconnected`]
//! from `Conn::on_end`. On a namespace with `subscribe_proxy`, it also asks the
//! application's backend ([`Subscriptions::ask_backend`]) before every subscribe and history
//! read, after its own rights check, so the backend is never asked about what rpchub refuses.

use super::share::{AddressShare, ShareHold};
use super::{Live, Session};
use crate::auth::{Action, authorize};
use crate::backend::{Backend, BackendError};
use crate::broker::StreamPosition;
use crate::broker::memory::now_ms;
use crate::config::{Access, Config};
use crate::hub::{Hub, HubError, Pending, Sink, SubId, reason};
use crate::metrics::SlotRefusal;
use crate::transport::Ending;
use std::sync::Arc;

/// Why a subscription could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The session may not read the channel (or its token expired).
    #[error("{0}")]
    Unauthorized(String),
    /// The connection holds its maximum of subscriptions.
    #[error("this connection holds its maximum of {0} subscriptions; unsubscribe first")]
    Limit(usize),
    /// Anonymous clients of the session's address hold their share of the node's channels, and
    /// this channel is not among them.
    #[error(
        "anonymous clients of this address already hold their share of {0} channels \
         (limits.anonymous_channel_share of limits.max_channels); unsubscribe first, or connect \
         with a token"
    )]
    AnonymousShare(usize),
    /// A param out of its bounds (`conflate_ms`, a `since` map).
    #[error("{0}")]
    InvalidParams(String),
    /// Well-formed but not acceptable here (a pattern where its namespace has patterns off, or
    /// that matches too many channels).
    #[error("{0}")]
    Unacceptable(String),
    /// The session has no socket to deliver to (plain HTTP).
    #[error("subscriptions need a WebSocket: connect to /ws/rpc")]
    NoSocket,
    /// The hub refused or failed.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The backend refused (`subscribe_proxy`), or gave no usable answer.
    #[error(transparent)]
    Backend(BackendError),
}

impl SubscribeError {
    /// True when it failed because the shared broker cannot be reached (-32008
    /// `broker_unavailable` and its dialect forms).
    pub fn is_broker_unavailable(&self) -> bool {
        matches!(self, SubscribeError::Hub(HubError::Broker(crate::broker::BrokerError::Unavailable(_))))
    }
}

/// Why a subscription ended, as hooks are told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The client unsubscribed.
    Client,
    /// The connection ended.
    Disconnect,
    /// The token expired and the channel needs one.
    TokenExpired,
    /// The hub ended it (slow consumer, lost stream).
    Server,
}

impl EndReason {
    /// The reason's name.
    pub fn as_str(&self) -> &'static str {
        match self {
            EndReason::Client => "client",
            EndReason::Disconnect => "disconnect",
            EndReason::TokenExpired => "token_expired",
            EndReason::Server => "server",
        }
    }
}

/// A connection or a subscription starting or ending.
#[derive(Debug)]
pub enum Lifecycle<'a> {
    /// A WebSocket connection opened (of any door).
    Connected {
        /// Its session.
        session: &'a Session,
    },
    /// A WebSocket connection ended; its subscriptions' ends were told first.
    Disconnected {
        /// Its session.
        session: &'a Session,
        /// How it ended, as its outbox says (`None`: the client left before any ending).
        ending: Option<Ending>,
    },
    /// A subscription went live.
    Subscribed {
        /// Whose.
        session: &'a Session,
        /// To what.
        channel: &'a str,
    },
    /// A subscription ended.
    Unsubscribed {
        /// Whose.
        session: &'a Session,
        /// Of what.
        channel: &'a str,
        /// Why.
        reason: EndReason,
    },
}

/// Told of every connection's and subscription's start and end. Called inline, on the
/// connection's own path: an implementation queues and returns, it never waits.
pub trait LifecycleHook: Send + Sync + 'static {
    /// One event.
    fn event(&self, e: &Lifecycle<'_>);
}

/// The subscription service of a node.
pub struct Subscriptions {
    hub: Arc<Hub>,
    config: Arc<Config>,
    /// The application's backend, asked on namespaces with `subscribe_proxy` (the config's
    /// validation makes sure there is one when a namespace asks for it).
    backend: Option<Arc<Backend>>,
    hooks: Vec<Arc<dyn LifecycleHook>>,
    /// What anonymous sessions of each address hold of the node's channels.
    share: Arc<AddressShare>,
    /// Users' connections that take their cursor moves.
    feeds: Arc<super::CursorFeeds>,
}

impl std::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriptions").field("hooks", &self.hooks.len()).finish_non_exhaustive()
    }
}

impl Subscriptions {
    /// The service over `hub`, telling `hooks` of each start and end, asking `backend` on
    /// namespaces with `subscribe_proxy`.
    pub fn new(
        hub: Arc<Hub>,
        config: Arc<Config>,
        backend: Option<Arc<Backend>>,
        hooks: Vec<Arc<dyn LifecycleHook>>,
    ) -> Subscriptions {
        let share =
            Arc::new(AddressShare::new(config.limits.max_channels, config.limits.anonymous_channel_share));
        let feeds = Arc::new(super::CursorFeeds::new(config.node_id.as_deref().unwrap_or("node")));
        let told = feeds.clone();
        hub.on_cursor_moved(Box::new(move |m| told.tell(m)));
        Subscriptions { hub, config, backend, hooks, share, feeds }
    }

    /// `session` as presence and cursors name it: `{client: NODE-SESSION, user}` (`user` is
    /// `""` for an anonymous session).
    pub fn who(&self, session: &Session) -> crate::broker::PresenceClient {
        let p = session.principal();
        crate::broker::PresenceClient {
            client: self.client_id(session.id),
            user: if p.is_authenticated() { p.subject.clone() } else { String::new() },
        }
    }

    /// The id of the client of session `id`, unique across nodes ([`super::client_id`]).
    pub fn client_id(&self, id: u64) -> String {
        super::client_id(self.node(), id)
    }

    /// The node's id (the server sets it at start; `node` for a service made without one).
    fn node(&self) -> &str {
        self.config.node_id.as_deref().unwrap_or("node")
    }

    /// True when some namespace has `auto_subscribe`.
    pub fn has_auto_subscribe(&self) -> bool {
        self.auto_namespaces().next().is_some()
    }

    /// The namespaces with `auto_subscribe` (and the `user_channels` it needs).
    fn auto_namespaces(&self) -> impl Iterator<Item = &str> {
        self.config
            .namespaces
            .iter()
            .filter(|(_, n)| n.auto_subscribe && n.user_channels)
            .map(|(k, _)| k.as_str())
    }

    /// The hub underneath.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The node's configuration.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn emit(&self, e: Lifecycle<'_>) {
        for h in &self.hooks {
            h.event(&e);
        }
    }

    /// Checks that `session` may do `action` on `channel` (a valid name) now: a token that has
    /// expired counts only where the namespace needs one.
    pub fn allow(&self, session: &Session, action: Action, channel: &str) -> Result<(), String> {
        let ns = self.config.namespace_of(channel);
        let p = session.principal();
        if ns.user_channels
            && action == Action::Subscribe
            && let Some(owner) = crate::channel::user_of(channel)
        {
            // A user channel is its user's alone, whatever the namespace's rule says (the
            // admin token included): only a connection of that user may read it.
            if !p.is_authenticated() || p.subject != owner {
                return Err(format!(
                    "{channel} is the user channel of {owner:?}: only a connection of that user may \
                     subscribe to it or read it"
                ));
            }
            if p.is_expired(now_ms() / 1000) {
                return Err("the connection's token has expired; call auth with a fresh one".into());
            }
            return Ok(());
        }
        let needs_token = match action {
            Action::Subscribe => ns.subscribe != Access::Public,
            Action::Publish => ns.publish != Access::Public,
        };
        if needs_token && p.is_expired(now_ms() / 1000) {
            return Err("the connection's token has expired; call auth with a fresh one".into());
        }
        authorize(&p, ns, action, channel)
    }

    /// Asks the backend whether `session` may subscribe to (or read the history of) `channel`,
    /// when the channel's namespace has `subscribe_proxy`; `Ok` at once otherwise. Called after
    /// [`Subscriptions::allow`]: what rpchub refuses, the backend is not asked about.
    pub async fn ask_backend(&self, session: &Session, channel: &str) -> Result<(), BackendError> {
        if !self.config.namespace_of(channel).subscribe_proxy {
            return Ok(());
        }
        let Some(backend) = &self.backend else {
            // Validation refuses `subscribe_proxy` without a backend; refuse rather than allow.
            return Err(BackendError::Unavailable("subscribe_proxy is on but no backend.url is set".into()));
        };
        // A subscribe allows or refuses: data in an answer has nothing to replace.
        backend.check("subscribe", session, channel, None).await.map(drop)
    }

    /// Phase one of a subscribe for `session`: rights, the cap (a place is reserved until the
    /// subscription goes live or is dropped), for an anonymous session a place in its address's
    /// share of the channels (kept with the subscription), the backend's verdict where the
    /// namespace asks for it, the history read. Holds nothing of the session's other
    /// subscriptions while it waits.
    pub async fn prepare(
        self: &Arc<Self>,
        session: &Arc<Session>,
        channel: &str,
        since: Option<StreamPosition>,
        limit: Option<usize>,
        conflate_ms: Option<u64>,
    ) -> Result<PendingSubscription, SubscribeError> {
        if session.link().is_none() {
            return Err(SubscribeError::NoSocket);
        }
        self.check_conflate(conflate_ms)?;
        self.config.check_channel(channel).map_err(|m| SubscribeError::Hub(HubError::InvalidChannel(m)))?;
        self.allow(session, Action::Subscribe, channel).map_err(SubscribeError::Unauthorized)?;
        // A broker that is down fails the subscribe now: no place is reserved and the backend
        // is not asked about a subscribe that cannot be made.
        self.hub.check_broker()?;
        let reservation = self.reserve(session)?;
        self.prepare_checked(session, channel, since, limit, conflate_ms, None, Some(reservation)).await
    }

    /// `conflate_ms` within `limits.min_conflate_ms..=limits.max_conflate_ms`.
    pub(crate) fn check_conflate(&self, conflate_ms: Option<u64>) -> Result<(), SubscribeError> {
        let l = &self.config.limits;
        match conflate_ms {
            Some(ms) if !(l.min_conflate_ms..=l.max_conflate_ms).contains(&ms) => {
                Err(SubscribeError::InvalidParams(format!(
                    "conflate_ms is {ms}; it must be {} to {} (limits.min_conflate_ms, limits.max_conflate_ms)",
                    l.min_conflate_ms, l.max_conflate_ms
                )))
            }
            _ => Ok(()),
        }
    }

    /// A place under `session`'s cap (`limits.max_subscriptions`, a pattern counting as one),
    /// held until the subscription is live or dropped.
    pub(crate) fn reserve(&self, session: &Arc<Session>) -> Result<Reservation, SubscribeError> {
        let max = self.config.limits.max_subscriptions;
        let mut set = session.subscriptions.lock();
        set.live.retain(|s| s.is_active());
        set.patterns.retain(|p| p.is_active());
        if set.live.len() + set.patterns.len() + set.pending >= max {
            return Err(SubscribeError::Limit(max));
        }
        set.pending += 1;
        Ok(Reservation(session.clone()))
    }

    /// A channel of pattern `id`: prepared as a subscribe of it would be, rights included,
    /// without a place of its own under the cap (the pattern has one).
    pub(crate) async fn prepare_in_pattern(
        self: &Arc<Self>,
        session: &Arc<Session>,
        channel: &str,
        since: Option<StreamPosition>,
        limit: Option<usize>,
        conflate_ms: Option<u64>,
        id: SubId,
    ) -> Result<PendingSubscription, SubscribeError> {
        self.allow(session, Action::Subscribe, channel).map_err(SubscribeError::Unauthorized)?;
        self.prepare_checked(session, channel, since, limit, conflate_ms, Some(id), None).await
    }

    /// The rest of a subscribe once rights and the cap are checked: the anonymous share, the
    /// backend, the hub's two phases.
    #[allow(clippy::too_many_arguments)]
    async fn prepare_checked(
        self: &Arc<Self>,
        session: &Arc<Session>,
        channel: &str,
        since: Option<StreamPosition>,
        limit: Option<usize>,
        conflate_ms: Option<u64>,
        id: Option<SubId>,
        reservation: Option<Reservation>,
    ) -> Result<PendingSubscription, SubscribeError> {
        if conflate_ms.is_some() && self.config.namespace_of(channel).mode == crate::config::Mode::State {
            return Err(SubscribeError::Unacceptable(format!(
                "{channel} is a state channel, which is not conflated (folding publications of different keys \
                 would lose them)"
            )));
        }
        let share = match session.principal().is_authenticated() {
            true => None,
            false => match self.share.take(session.remote.ip(), channel) {
                Some(hold) => Some(hold),
                None => {
                    self.hub.metrics().slot_refused(SlotRefusal::AnonymousShare);
                    return Err(SubscribeError::AnonymousShare(self.share.per_address()));
                }
            },
        };
        // Last of the checks, so the backend is not asked about a subscribe that would fail
        // anyway; the place stays reserved while it answers.
        self.ask_backend(session, channel).await.map_err(SubscribeError::Backend)?;
        let mut inner = match id {
            Some(id) => self.hub.prepare_as(channel, since, limit, id).await?,
            None => self.hub.prepare(channel, since, limit).await?,
        };
        if let Some(ms) = conflate_ms {
            inner.set_conflate(std::time::Duration::from_millis(ms));
        }
        Ok(PendingSubscription { service: self.clone(), inner, session: session.clone(), reservation, share })
    }

    /// Subscriptions `session` may still make: `limits.max_subscriptions` less those it holds
    /// and those in progress.
    pub fn left(&self, session: &Session) -> usize {
        let mut set = session.subscriptions.lock();
        set.live.retain(|s| s.is_active());
        set.patterns.retain(|p| p.is_active());
        self.config.limits.max_subscriptions.saturating_sub(set.live.len() + set.patterns.len() + set.pending)
    }

    /// The most subscriptions a connection may hold (`limits.max_subscriptions`).
    pub fn max_per_connection(&self) -> usize {
        self.config.limits.max_subscriptions
    }

    /// Ends `session`'s subscription `id`; false if it has none by that id (or it had ended).
    pub fn unsubscribe(&self, session: &Session, id: SubId) -> bool {
        let sub = {
            let mut set = session.subscriptions.lock();
            match set.live.iter().position(|s| s.id() == id) {
                Some(at) => set.live.swap_remove(at),
                None => {
                    let Some(at) = set.patterns.iter().position(|p| p.id == id) else { return false };
                    let pattern = set.patterns.swap_remove(at);
                    drop(set);
                    return pattern.end(session, EndReason::Client);
                }
            }
        };
        let channel = sub.channel().to_string();
        let was_live = sub.unsubscribe();
        if was_live {
            self.emit(Lifecycle::Unsubscribed { session, channel: &channel, reason: EndReason::Client });
        }
        was_live
    }

    /// Ends every subscription of `session` to `channel` (or to the pattern `channel`);
    /// returns how many were live.
    pub fn unsubscribe_channel(&self, session: &Session, channel: &str) -> usize {
        let patterns: Vec<_> = {
            let mut set = session.subscriptions.lock();
            let (gone, kept) =
                std::mem::take(&mut set.patterns).into_iter().partition(|p| p.pattern() == channel);
            set.patterns = kept;
            gone
        };
        let ended = patterns.iter().filter(|p| p.end(session, EndReason::Client)).count();
        if ended > 0 {
            return ended;
        }
        let subs: Vec<_> = {
            let mut set = session.subscriptions.lock();
            let (gone, kept) =
                std::mem::take(&mut set.live).into_iter().partition(|s| s.channel() == channel);
            set.live = kept;
            gone
        };
        let live = subs.into_iter().filter(|s| s.is_active()).map(|s| s.unsubscribe()).filter(|l| *l).count();
        for _ in 0..live {
            self.emit(Lifecycle::Unsubscribed { session, channel, reason: EndReason::Client });
        }
        live
    }

    /// The periodic check of a session: subscriptions the hub ended are let go (and reported),
    /// and once the token has expired, those that needed it end with `closed`
    /// `token_expired`; public ones go on. A client that calls `auth` with a fresh token before
    /// then keeps them all.
    pub fn tick(&self, session: &Session) {
        let expired = session.token_expired(now_ms() / 1000);
        let patterns: Vec<_> = session.subscriptions.lock().patterns.clone();
        for p in &patterns {
            let protected = self.config.namespace_of(p.pattern()).subscribe != Access::Public;
            if expired && protected {
                p.end_with(session, EndReason::TokenExpired, Some(reason::TOKEN_EXPIRED));
            } else {
                p.tick(session);
            }
        }
        if !patterns.is_empty() {
            session.subscriptions.lock().patterns.retain(|p| p.is_active());
        }
        let mut ended = Vec::new();
        {
            let mut set = session.subscriptions.lock();
            let mut i = 0;
            while i < set.live.len() {
                let s = &set.live[i];
                let protected = self.config.namespace_of(s.channel()).subscribe != Access::Public;
                if !s.is_active() {
                    ended.push((set.live.swap_remove(i), EndReason::Server));
                } else if expired && protected {
                    ended.push((set.live.swap_remove(i), EndReason::TokenExpired));
                } else {
                    i += 1;
                }
            }
        }
        for (sub, why) in ended {
            let channel = sub.channel().to_string();
            match why {
                EndReason::TokenExpired => drop(sub.close(reason::TOKEN_EXPIRED)),
                _ => drop(sub),
            }
            self.emit(Lifecycle::Unsubscribed { session, channel: &channel, reason: why });
        }
    }

    /// A WebSocket connection of `session` opened: hooks are told. Every door calls it from
    /// `Door::connect`, once per session.
    pub fn connected(&self, session: &Session) {
        let principal = session.principal();
        tracing::info!(
            session = session.id,
            door = session.door,
            remote = %session.remote,
            principal = principal_name(&principal),
            "connection opened"
        );
        self.emit(Lifecycle::Connected { session });
    }

    /// The WebSocket connection of `session` ended, as `ending` says: its subscriptions end
    /// ([`Subscriptions::end`]), then hooks are told. Every door calls it from `Conn::on_end`.
    pub fn disconnected(&self, session: &Session, ending: Option<Ending>) {
        self.end(session);
        self.feeds.unregister(session);
        let (bytes_in, bytes_out) = session.link().map_or((0, 0), |l| l.bytes());
        let principal = session.principal();
        let (code, reason) = Ending::described(ending);
        tracing::info!(
            session = session.id,
            door = session.door,
            remote = %session.remote,
            principal = principal_name(&principal),
            duration_ms = session.opened.elapsed().as_millis() as u64,
            bytes_in,
            bytes_out,
            close_code = code,
            reason,
            "connection closed"
        );
        self.emit(Lifecycle::Disconnected { session, ending });
    }

    /// Subscribes `session` to its user channel in every namespace with `auto_subscribe`
    /// (`NAMESPACE:#USER`), unless it holds that subscription already: its frames are written
    /// with `encoding`, each subscription's splice made by `splice` from its server-chosen id,
    /// and its snapshot comes unasked. Nothing for an anonymous session. Returns how many were
    /// made; one that fails is logged and skipped (the client may still subscribe itself).
    pub async fn auto_subscribe(
        self: &Arc<Self>,
        session: &Arc<Session>,
        encoding: &Arc<dyn crate::hub::Encoding>,
        splice: fn(SubId) -> crate::transport::Splice,
    ) -> usize {
        let p = session.principal();
        if !p.is_authenticated() {
            return 0;
        }
        let mut made = 0;
        let channels: Vec<String> = self.auto_namespaces().map(|ns| format!("{ns}:#{}", p.subject)).collect();
        for channel in channels {
            if session.subscriptions.lock().live.iter().any(|l| l.channel() == channel && l.is_active()) {
                continue;
            }
            match self.prepare(session, &channel, None, None, None).await {
                Ok(pending) => {
                    let sink = Sink::new(
                        session.link().expect("prepare checked the link; qed").outbox.clone(),
                        encoding.clone(),
                        splice(pending.id()),
                    );
                    if pending.go_live(sink, &[]).is_ok() {
                        made += 1;
                    }
                }
                Err(e) => tracing::info!(session = session.id, %channel, "auto_subscribe failed: {e}"),
            }
        }
        made
    }

    /// The connection ended: every subscription ends (reported as `disconnect`).
    pub fn end(&self, session: &Session) {
        let patterns = std::mem::take(&mut session.subscriptions.lock().patterns);
        for p in patterns {
            p.end(session, EndReason::Disconnect);
        }
        let subs = std::mem::take(&mut session.subscriptions.lock().live);
        for sub in subs {
            let channel = sub.channel().to_string();
            let live = sub.unsubscribe();
            let reason = if live { EndReason::Disconnect } else { EndReason::Server };
            self.emit(Lifecycle::Unsubscribed { session, channel: &channel, reason });
        }
    }
}

/// Who a connection's log lines name: the principal's subject (a JWT's `sub`, a static key's
/// name, `admin`), or `anonymous`; never a token.
fn principal_name(p: &crate::auth::Principal) -> &str {
    if p.subject.is_empty() { "anonymous" } else { &p.subject }
}

/// A place under the session's cap, held from `prepare` until the subscription is live or
/// dropped.
#[derive(Debug)]
pub(crate) struct Reservation(Arc<Session>);

impl Drop for Reservation {
    fn drop(&mut self) {
        self.0.subscriptions.lock().pending -= 1;
    }
}

/// A subscription whose snapshot is read, waiting for its answer to be queued
/// ([`PendingSubscription::go_live`]). Dropping it undoes it.
#[must_use = "a prepared subscription is undone when dropped: call go_live"]
#[derive(Debug)]
pub struct PendingSubscription {
    service: Arc<Subscriptions>,
    inner: Pending,
    session: Arc<Session>,
    /// Its place under the cap (none for a pattern's channel: the pattern has one).
    reservation: Option<Reservation>,
    share: Option<ShareHold>,
}

impl PendingSubscription {
    /// Its id, for the answer.
    pub fn id(&self) -> SubId {
        self.inner.id()
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        self.inner.channel()
    }

    /// The snapshot read: the history page, and whether `since` was honoured exactly.
    pub fn page(&self) -> (&crate::broker::HistoryPage, bool) {
        self.inner.page()
    }

    /// Asks for the state's checksum with every publication event: `Err` (why) when the
    /// channel is not a state channel.
    pub fn set_checksum(&mut self) -> Result<(), String> {
        if !self.inner.is_keyed() {
            return Err(format!(
                "checksum is for state channels (mode = \"state\"); {} is not one",
                self.inner.channel()
            ));
        }
        self.inner.set_checksum();
        Ok(())
    }

    /// Queues `answer`, the snapshot and what arrived meanwhile into `sink`, in that order (see
    /// [`Pending::go_live`]), and adds the subscription to the session.
    pub fn go_live(self, sink: Sink, answer: &[&[u8]]) -> Result<SubId, HubError> {
        let service = self.service.clone();
        let session = self.session.clone();
        let (live, reservation) = self.go_live_held(sink, answer)?;
        let id = live.id();
        let channel = live.channel().to_string();
        {
            let mut set = session.subscriptions.lock();
            // Most connections hold one or a few: grow one at a time until then, not to four.
            if set.live.len() < 4 {
                set.live.reserve_exact(1);
            }
            set.live.push(live);
        }
        drop(reservation);
        service.emit(Lifecycle::Subscribed { session: &session, channel: &channel });
        Ok(id)
    }

    /// Like [`PendingSubscription::go_live`], for a pattern's channel: the live subscription is
    /// returned to the pattern instead of joining the session's, and no hook is told (the
    /// pattern tells them).
    pub(crate) fn go_live_into(self, sink: Sink, answer: &[&[u8]]) -> Result<Live, HubError> {
        self.go_live_held(sink, answer).map(|(live, _)| live)
    }

    fn go_live_held(self, sink: Sink, answer: &[&[u8]]) -> Result<(Live, Option<Reservation>), HubError> {
        let PendingSubscription { inner, reservation, share, service, session } = self;
        service.feeds.register(&session, &sink.encoding);
        let sub = inner.go_live(sink, answer)?;
        let presence = service.hub.enter_presence(sub.channel(), || service.who(&session));
        Ok((Live { sub, share, presence }, reservation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Kind, Principal};
    use crate::broker::memory::MemoryBroker;
    use crate::hub::{Encoding, Event};
    use crate::metrics::Metrics;
    use crate::transport::{FrameWriter, Link, Splice};
    use parking_lot::Mutex;

    /// Frames as `EVENT-TYPE`, enough to count them.
    struct Plain;

    impl Encoding for Plain {
        fn splice_len(&self) -> usize {
            0
        }
        fn encode(&self, e: &Event<'_>, w: &mut FrameWriter<'_>) {
            w.put(match e {
                Event::Snapshot { .. } => b"snapshot",
                Event::Publication { .. } => b"publication",
                Event::Closed { .. } => b"closed",
                Event::Heartbeat { .. } => b"heartbeat",
                Event::Gap { .. } => b"gap",
                Event::Presence { .. } => b"presence",
            });
        }
    }

    /// Records every lifecycle event as text.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl LifecycleHook for Recorder {
        fn event(&self, e: &Lifecycle<'_>) {
            self.0.lock().push(match e {
                Lifecycle::Connected { session } => format!("open {}", session.id),
                Lifecycle::Disconnected { session, ending } => format!("close {} {ending:?}", session.id),
                Lifecycle::Subscribed { session, channel } => format!("+{} {channel}", session.id),
                Lifecycle::Unsubscribed { session, channel, reason } => {
                    format!("-{} {channel} {}", session.id, reason.as_str())
                }
            });
        }
    }

    fn service(config: Config) -> (Arc<Subscriptions>, Arc<Recorder>) {
        let config = Arc::new(config);
        let hub = Hub::new(config.clone(), MemoryBroker::start(1000), Arc::new(Metrics::new()));
        let rec = Arc::new(Recorder::default());
        (Arc::new(Subscriptions::new(hub, config, None, vec![rec.clone()])), rec)
    }

    fn session(id: u64, principal: Principal) -> Arc<Session> {
        let link = Arc::new(Link::new(id, 1 << 20, 1 << 30));
        Arc::new(Session::new(
            id,
            "127.0.0.1:1".parse().unwrap(),
            "test",
            Arc::new(principal),
            Some(link),
            100,
        ))
    }

    async fn subscribe(
        svc: &Arc<Subscriptions>,
        s: &Arc<Session>,
        channel: &str,
    ) -> Result<SubId, SubscribeError> {
        let p = svc.prepare(s, channel, None, None, None).await?;
        let sink = Sink::new(s.link().unwrap().outbox.clone(), Arc::new(Plain), Splice::EMPTY);
        Ok(p.go_live(sink, &[])?)
    }

    #[tokio::test]
    async fn every_start_and_end_is_told_with_its_reason() {
        let (svc, rec) = service(Config::default());
        let s = session(1, Principal::anonymous());
        let a = subscribe(&svc, &s, "n:a").await.unwrap();
        subscribe(&svc, &s, "n:b").await.unwrap();
        subscribe(&svc, &s, "n:b").await.unwrap();
        subscribe(&svc, &s, "n:c").await.unwrap();
        assert!(svc.unsubscribe(&s, a));
        assert!(!svc.unsubscribe(&s, a), "only once");
        assert_eq!(svc.unsubscribe_channel(&s, "n:b"), 2, "both subscriptions to n:b");
        assert_eq!(s.subscription_count(), 1);
        svc.disconnected(&s, Some(Ending::Gone));
        assert_eq!(s.subscription_count(), 0);
        assert!(svc.hub().channels("").is_empty(), "every channel let go");
        assert_eq!(
            *rec.0.lock(),
            [
                "+1 n:a",
                "+1 n:b",
                "+1 n:b",
                "+1 n:c",
                "-1 n:a client",
                "-1 n:b client",
                "-1 n:b client",
                "-1 n:c disconnect",
                "close 1 Some(Gone)"
            ]
        );
    }

    #[tokio::test]
    async fn the_cap_counts_subscriptions_being_made() {
        let mut config = Config::default();
        config.limits.max_subscriptions = 2;
        let (svc, _) = service(config);
        let s = session(2, Principal::anonymous());
        let pending = svc.prepare(&s, "c:1", None, None, None).await.unwrap();
        subscribe(&svc, &s, "c:2").await.unwrap();
        assert!(
            matches!(subscribe(&svc, &s, "c:3").await, Err(SubscribeError::Limit(2))),
            "one live, one pending"
        );
        drop(pending);
        subscribe(&svc, &s, "c:3").await.expect("the dropped pending one freed its place");
    }

    #[tokio::test]
    async fn anonymous_sessions_of_one_address_share_their_channels_and_tokens_are_not_counted() {
        let mut config = Config::default();
        config.limits.max_channels = 1_000;
        config.limits.anonymous_channel_share = 0.002;
        let (svc, _) = service(config);
        let (a, b) = (session(4, Principal::anonymous()), session(5, Principal::anonymous()));
        let keyed = session(6, Principal { kind: Kind::Jwt, subject: "k".into(), ..Principal::anonymous() });
        let one = subscribe(&svc, &a, "s:1").await.unwrap();
        subscribe(&svc, &b, "s:2").await.unwrap();
        assert!(matches!(subscribe(&svc, &a, "s:3").await, Err(SubscribeError::AnonymousShare(2))));
        subscribe(&svc, &b, "s:1").await.expect("a channel the address holds costs nothing");
        subscribe(&svc, &keyed, "s:3").await.expect("a session with a token is not counted");
        let pending = svc.prepare(&keyed, "s:4", None, None, None).await.unwrap();
        drop(pending);
        assert!(svc.unsubscribe(&a, one));
        assert!(matches!(subscribe(&svc, &a, "s:3").await, Err(SubscribeError::AnonymousShare(2))));
        svc.end(&b);
        subscribe(&svc, &a, "s:3").await.expect("the session's end let go of its channels");
        let refused = r#"rpchub_channels_refused_total{reason="anonymous_share"} 2"#;
        assert!(svc.hub().metrics().render().contains(refused));
    }

    #[tokio::test]
    async fn an_expired_token_ends_only_what_needed_it() {
        let mut config = Config::default();
        config.namespaces.insert(
            "private".into(),
            crate::config::NamespaceConfig { subscribe: Access::Authenticated, ..Default::default() },
        );
        let (svc, rec) = service(config);
        let principal = Principal {
            kind: Kind::Jwt,
            subject: "k".into(),
            expires_at: Some(now_ms() / 1000 + 3600),
            ..Principal::anonymous()
        };
        let s = session(3, principal);
        subscribe(&svc, &s, "private:x").await.unwrap();
        subscribe(&svc, &s, "public:y").await.unwrap();
        svc.tick(&s);
        assert_eq!(s.subscription_count(), 2, "not expired yet");
        s.set_principal(Arc::new(Principal { expires_at: Some(1), ..(*s.principal()).clone() }), 100);
        svc.tick(&s);
        assert_eq!(s.subscription_count(), 1);
        assert_eq!(rec.0.lock().last().unwrap(), "-3 private:x token_expired");
        // A public channel takes an expired token like none at all.
        subscribe(&svc, &s, "public:z").await.expect("public channels need no token");
        assert!(matches!(subscribe(&svc, &s, "private:w").await, Err(SubscribeError::Unauthorized(_))));
    }
}
