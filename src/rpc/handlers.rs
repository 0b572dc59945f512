//! The method implementations: thin translations from JSON-RPC calls to the hub and the
//! authenticator, with the permission checks in front (rpchub's own, then the backend's where a
//! namespace asks for them: `subscribe_proxy` for history reads, `publish_proxy` for a client's
//! publish).

use super::CallCtx;
use super::api::{
    AuthResult, ChannelApiServer, ConnectionLimits, ConversationApiServer, CursorResult, HistoryResult,
    ItemError, JsonData, NodeApiServer, NodeInfo, PresenceResult, PresenceStats, PublicationJson, Since,
    StreamApiServer, SubscribeItem, SubscribeManyResult, SubscribeOutcome, Unread,
};
use super::error::{RpcError, invalid_params};
use crate::auth::{Action, AuthError, Authenticator};
use crate::broker::{NewPublication, StreamPosition};
use crate::config::Config;
use crate::hub::{ChannelInfo, Hub, SubId};
use crate::metrics::Metrics;
use crate::session::{Session, Subscriptions};
use jsonrpsee::core::{RpcResult, async_trait};
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Instant;

/// What every method handler shares: the node's parts.
pub struct NodeState {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Channels and fan-out.
    pub hub: Arc<Hub>,
    /// Where subscriptions are made and ended.
    pub subscriptions: Arc<Subscriptions>,
    /// Token checking.
    pub auth: Arc<Authenticator>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// When the node started.
    pub started: Instant,
    /// This node's id.
    pub node_id: String,
    /// The application's backend, if one is configured.
    pub backend: Option<Arc<crate::backend::Backend>>,
}

impl std::fmt::Debug for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeState").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

/// The handlers of every `#[rpc]` trait.
#[derive(Clone, Debug)]
pub struct Handlers(pub Arc<NodeState>);

/// The call being run (see [`CallCtx`]).
fn call_ctx() -> Result<Arc<CallCtx>, RpcError> {
    CallCtx::current().ok_or_else(|| RpcError::Internal("call without a session".into()))
}

fn session() -> Result<Arc<Session>, RpcError> {
    call_ctx().map(|c| c.session.clone())
}

impl Handlers {
    /// Checks that the session may do `action` on `channel` (a valid name).
    fn allow(&self, s: &Session, action: Action, channel: &str) -> Result<(), RpcError> {
        self.0
            .config
            .check_channel(channel)
            .map_err(|m| RpcError::Unacceptable(format!("invalid channel: {m}")))?;
        self.0.subscriptions.allow(s, action, channel).map_err(RpcError::Unauthorized)
    }
}

impl Handlers {
    /// Publishes for session `s` under the rules of the `publish` method: a valid channel name,
    /// the namespace's publish rule, `event` and `idempotency_key` of 1 to 255 bytes, `key` only
    /// on a state channel and of 255 bytes at most. The one
    /// place those rules are applied, for the method and for `POST /api/publish` alike.
    ///
    /// The backend is not asked (`publish_proxy`): this is the server API's way in, which is the
    /// backend's own door. A client's `publish` goes through [`Handlers::publish_by_client`].
    pub async fn publish_as(
        &self,
        s: &Session,
        channel: &str,
        data: JsonData,
        event: Option<String>,
        idempotency_key: Option<String>,
        key: Option<String>,
    ) -> Result<StreamPosition, RpcError> {
        let p = self.publication(s, channel, data, event, idempotency_key, key)?;
        self.publish_checked(channel, p).await
    }

    /// Publishes for a client (the `publish` method, from any front door): [`Handlers::publish_as`]'s
    /// rules, then, on a namespace with `publish_proxy`, the backend's verdict, which may
    /// replace the data published.
    pub async fn publish_by_client(
        &self,
        s: &Session,
        channel: &str,
        data: JsonData,
        event: Option<String>,
        idempotency_key: Option<String>,
        key: Option<String>,
    ) -> Result<StreamPosition, RpcError> {
        let mut p = self.publication(s, channel, data, event, idempotency_key, key)?;
        if self.0.config.namespace_of(channel).publish_proxy {
            let backend = self.0.backend.as_ref().ok_or_else(|| {
                // Validation refuses `publish_proxy` without a backend; refuse rather than allow.
                RpcError::BackendUnavailable("publish_proxy is on but no backend.url is set".into())
            })?;
            let verdict = backend.check("publish", s, channel, Some(&p.data)).await;
            if let Some(replaced) = verdict.map_err(RpcError::from_check)? {
                p.data = replaced;
            }
        }
        self.publish_checked(channel, p).await
    }

    /// The publication `s` asks for, once rpchub's own rules allow it.
    fn publication(
        &self,
        s: &Session,
        channel: &str,
        data: JsonData,
        event: Option<String>,
        idempotency_key: Option<String>,
        key: Option<String>,
    ) -> Result<NewPublication, RpcError> {
        self.allow(s, Action::Publish, channel)?;
        let state = self.0.config.namespace_of(channel).mode == crate::config::Mode::State;
        match &key {
            Some(_) if !state => {
                return Err(RpcError::Unacceptable(format!(
                    "key is for state channels (mode = \"state\"); {channel} is not one"
                )));
            }
            Some(k) if k.len() > 255 => {
                return Err(RpcError::Unacceptable("key must be 0 to 255 bytes".into()));
            }
            _ => {}
        }
        if event.as_ref().is_some_and(|e| e.is_empty() || e.len() > 255) {
            return Err(RpcError::Unacceptable("event must be 1 to 255 bytes".into()));
        }
        if idempotency_key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 255) {
            return Err(RpcError::Unacceptable("idempotency_key must be 1 to 255 bytes".into()));
        }
        Ok(NewPublication { data: data.0, event, idempotency_key, key })
    }

    /// Publishes `p`, every check passed.
    async fn publish_checked(&self, channel: &str, p: NewPublication) -> Result<StreamPosition, RpcError> {
        let published = self.0.hub.publish(channel, p).await?;
        Ok(published.position)
    }
}

#[async_trait]
impl ChannelApiServer for Handlers {
    async fn subscribe_channel(
        &self,
        channel: String,
        since: Option<Since>,
        limit: Option<usize>,
        conflate_ms: Option<u64>,
        checksum: Option<bool>,
    ) -> RpcResult<String> {
        let ctx = call_ctx()?;
        if crate::session::pattern::is_pattern(&channel) {
            if checksum == Some(true) {
                return Err(
                    RpcError::Unacceptable("checksum is taken on a channel, not a pattern".into()).into()
                );
            }
            let since = match since {
                None => Default::default(),
                Some(Since::Channels(m)) => m.into_iter().collect(),
                Some(Since::Position(_)) => {
                    return Err(invalid_params(
                        "since on a pattern is a map of channel to {epoch, offset}".into(),
                    ));
                }
            };
            let pending = self
                .0
                .subscriptions
                .prepare_pattern(&ctx.session, &channel, since, limit, conflate_ms)
                .await
                .map_err(RpcError::from)?;
            let id = pending.id().as_str().to_string();
            ctx.defer(pending);
            return Ok(id);
        }
        let since = match since {
            None => None,
            Some(Since::Position(p)) => Some(p),
            Some(Since::Channels(_)) => {
                return Err(invalid_params(format!(
                    "since is a map only on a pattern; for {channel} it is one {{epoch, offset}}"
                )));
            }
        };
        let mut pending = self
            .0
            .subscriptions
            .prepare(&ctx.session, &channel, since, limit, conflate_ms)
            .await
            .map_err(RpcError::from)?;
        if checksum == Some(true) {
            pending.set_checksum().map_err(RpcError::Unacceptable)?;
        }
        let id = pending.id().as_str().to_string();
        // The front door queues this call's answer, then the snapshot (PendingSubscription).
        ctx.defer(pending);
        Ok(id)
    }

    async fn subscribe_many(&self, subscriptions: Vec<SubscribeItem>) -> RpcResult<SubscribeManyResult> {
        let ctx = &call_ctx()?;
        let service = &self.0.subscriptions;
        let max = service.max_per_connection();
        if subscriptions.is_empty() || subscriptions.len() > max {
            return Err(invalid_params(format!(
                "subscriptions: 1 to {max} items (limits.max_subscriptions), not {}",
                subscriptions.len()
            )));
        }
        // Each item is prepared on its own, all at once; their places under the cap are taken
        // in the order of the items (each prepare reserves before its first wait).
        let mut seen = std::collections::HashSet::new();
        let prepares = subscriptions.iter().map(|item| {
            let first = seen.insert(item.channel.as_str());
            async move {
                if crate::session::pattern::is_pattern(&item.channel) {
                    return Err(RpcError::Unacceptable(format!(
                        "{} is a pattern: subscribe to it with subscribe",
                        item.channel
                    )));
                }
                if !first {
                    return Err(RpcError::Unacceptable(format!(
                        "channel {} is named more than once in this call",
                        item.channel
                    )));
                }
                let mut p = service
                    .prepare(&ctx.session, &item.channel, item.since.clone(), item.limit, item.conflate_ms)
                    .await
                    .map_err(RpcError::from)?;
                if item.checksum == Some(true) {
                    p.set_checksum().map_err(RpcError::Unacceptable)?;
                }
                Ok(p)
            }
        });
        let prepared = futures_util::future::join_all(prepares).await;
        let mut results = Vec::with_capacity(prepared.len());
        for (item, p) in subscriptions.iter().zip(prepared) {
            let (subscription, error) = match p {
                Ok(pending) => {
                    let id = pending.id().as_str().to_string();
                    // Queued behind this call's answer, in the order of the items.
                    ctx.defer(pending);
                    (Some(id), None)
                }
                Err(e) => (None, Some(ItemError::from(e))),
            };
            results.push(SubscribeOutcome { channel: item.channel.clone(), subscription, error });
        }
        let limits = ConnectionLimits {
            subscriptions_left: service.left(&ctx.session),
            calls_per_s: ctx.session.call_rate(),
        };
        Ok(SubscribeManyResult { results, limits })
    }

    fn unsubscribe_channel(&self, subscription: String) -> RpcResult<bool> {
        let s = session()?;
        let Some(id) = SubId::parse(&subscription) else { return Ok(false) };
        Ok(self.0.subscriptions.unsubscribe(&s, id))
    }

    async fn publish(
        &self,
        channel: String,
        data: JsonData,
        event: Option<String>,
        idempotency_key: Option<String>,
        key: Option<String>,
    ) -> RpcResult<StreamPosition> {
        let s = session()?;
        Ok(self.publish_by_client(&s, &channel, data, event, idempotency_key, key).await?)
    }

    async fn history(
        &self,
        channel: String,
        since: Option<StreamPosition>,
        limit: Option<usize>,
    ) -> RpcResult<HistoryResult> {
        let s = session()?;
        self.allow(&s, Action::Subscribe, &channel)?;
        self.0.subscriptions.ask_backend(&s, &channel).await.map_err(RpcError::from_check)?;
        let h = self.0.hub.history(&channel, since, limit).await.map_err(RpcError::from)?;
        let publications = h
            .publications
            .iter()
            .map(|p| {
                RawValue::from_string(p.json().to_string())
                    .map(PublicationJson)
                    .map_err(|e| RpcError::Internal(format!("stored publication is not JSON: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(HistoryResult { epoch: h.position.epoch, offset: h.position.offset, publications })
    }

    fn channels(&self, prefix: Option<String>) -> RpcResult<Vec<ChannelInfo>> {
        let s = session()?;
        if !s.principal().is_authenticated() {
            return Err(RpcError::Unauthorized("channels is for callers with a token".into()).into());
        }
        Ok(self.0.hub.channels(prefix.as_deref().unwrap_or("")))
    }
}

impl NodeApiServer for Handlers {
    fn ping(&self) -> RpcResult<String> {
        Ok("pong".to_string())
    }

    fn info(&self) -> RpcResult<NodeInfo> {
        Ok(NodeInfo {
            name: "rpchub".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            node_id: self.0.node_id.clone(),
            uptime_s: self.0.started.elapsed().as_secs(),
            connections: self.0.metrics.open_connections(),
            broker: self.0.hub.broker().name().into(),
            broker_state: self.0.hub.broker().state(),
            broker_latency_ms: self.0.hub.broker().latency().map(|d| d.as_secs_f64() * 1e3),
        })
    }

    fn auth(&self, token: String) -> RpcResult<AuthResult> {
        let s = session()?;
        let p = self.0.auth.authenticate(&token).map_err(|e| {
            RpcError::Unauthorized(match e {
                AuthError::Invalid(m) => m,
                e => e.to_string(),
            })
        })?;
        let result = AuthResult { sub: p.subject.clone(), expires_at: p.expires_at };
        s.set_principal(p, self.0.config.limits.calls_per_second);
        Ok(result)
    }
}

impl StreamApiServer for Handlers {
    fn stream_cancel(&self, stream: String) -> RpcResult<bool> {
        let s = session()?;
        Ok(stream.parse::<u64>().is_ok_and(|id| s.calls().is_some_and(|c| c.cancel(id))))
    }
}

use crate::constants::MAX_CURSOR_CHANNELS;

impl Handlers {
    /// The checks of `presence` and `presence_stats`: a valid channel of a namespace with
    /// `presence`, read rights (and the backend's, where its namespace asks).
    async fn presence_of(&self, channel: &str) -> Result<crate::broker::PresencePage, RpcError> {
        let s = session()?;
        self.allow(&s, Action::Subscribe, channel)?;
        if !self.0.config.namespace_of(channel).presence {
            return Err(RpcError::Unacceptable(format!(
                "{channel}'s namespace keeps no presence (namespace option presence = true)"
            )));
        }
        self.0.subscriptions.ask_backend(&s, channel).await.map_err(RpcError::from_check)?;
        Ok(self.0.hub.presence(channel, crate::constants::MAX_PRESENCE_LISTED).await?)
    }

    /// The caller of a cursor method: a user (a token is needed) who may read every one of
    /// `channels`.
    fn cursor_user(&self, channels: &[String]) -> Result<(Arc<Session>, String), RpcError> {
        let s = session()?;
        let p = s.principal();
        if !p.is_authenticated() {
            return Err(RpcError::Unauthorized(
                "read cursors are kept per user: connect with a token".into(),
            ));
        }
        if channels.len() > MAX_CURSOR_CHANNELS {
            return Err(RpcError::InvalidParams(format!(
                "{} channels named; at most {MAX_CURSOR_CHANNELS} a call",
                channels.len()
            )));
        }
        for c in channels {
            if c.contains('*') {
                return Err(RpcError::Unacceptable(format!("a cursor is of a channel, not a pattern: {c}")));
            }
            self.allow(&s, Action::Subscribe, c)?;
        }
        Ok((s, p.subject.clone()))
    }
}

#[async_trait]
impl ConversationApiServer for Handlers {
    async fn presence(&self, channel: String) -> RpcResult<PresenceResult> {
        let page = self.presence_of(&channel).await?;
        Ok(PresenceResult { clients: page.clients, count: page.count })
    }

    async fn presence_stats(&self, channel: String) -> RpcResult<PresenceStats> {
        let page = self.presence_of(&channel).await?;
        Ok(PresenceStats { clients: page.count, users: page.users })
    }

    async fn cursor_set(&self, channel: String, offset: u64) -> RpcResult<CursorResult> {
        let (s, user) = self.cursor_user(std::slice::from_ref(&channel))?;
        let origin = self.0.subscriptions.client_id(s.id);
        match self.0.hub.cursor_set(&user, &channel, offset, &origin).await {
            Ok(Ok(offset)) => Ok(CursorResult { offset }),
            Ok(Err(newest)) => Err(RpcError::Unacceptable(format!(
                "offset {offset} is beyond {channel}'s newest offset, {newest}"
            ))
            .into()),
            Err(crate::hub::HubError::Broker(crate::broker::BrokerError::Full(n))) => {
                Err(RpcError::Unacceptable(format!("this user holds its maximum of {n} read cursors")).into())
            }
            Err(e) => Err(RpcError::from(e).into()),
        }
    }

    async fn cursor_get(&self, channels: Vec<String>) -> RpcResult<std::collections::BTreeMap<String, u64>> {
        let (_, user) = self.cursor_user(&channels)?;
        let got = self.0.hub.cursor_get(&user, &channels).await.map_err(RpcError::from)?;
        Ok(channels.into_iter().zip(got).collect())
    }

    async fn unread(&self, channels: Vec<String>) -> RpcResult<std::collections::BTreeMap<String, Unread>> {
        let (_, user) = self.cursor_user(&channels)?;
        let cursors = self.0.hub.cursor_get(&user, &channels).await.map_err(RpcError::from)?;
        let mut out = std::collections::BTreeMap::new();
        for (c, cursor) in channels.into_iter().zip(cursors) {
            let (count, capped) = self.0.hub.unread(&c, cursor).await.map_err(RpcError::from)?;
            out.insert(c, Unread { count, capped });
        }
        Ok(out)
    }
}
