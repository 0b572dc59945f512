//! `GET /ws`: the compatibility front door for clients written for other servers. Its dialect
//! is fixed by the first message a connection sends:
//! - `{type,data}` (a first message with `"type"`): `auth`, `subscribe` and `unsubscribe` with
//!   `data.channel` (`subscribe` also with a list of such objects), `ping`/`pong` both ways, events carrying the publication's `event` name as
//!   their `type` ([`encoding`]), errors as `{"type":"error","data":{"code","message"}}` with
//!   string codes;
//! - Hyperliquid style (a first message with `"method"` and no `"jsonrpc"`, [`hyperliquid`]):
//!   `subscribe`/`unsubscribe` with subscription objects mapped to channels (`subscribe` also
//!   with a list of them),
//!   `subscriptionResponse`, `{"channel":TYPE,"data":...}` frames, `post` requests onto the
//!   JSON-RPC methods, `ping`, errors as `{"channel":"error","data":"..."}`.
//!
//! The gate, the session (principal, call budget), the subscription service and the hub are
//! the same as `/ws/rpc`'s: a publication made through any door reaches every door. Messages
//! of a connection are handled one after another, in the order sent.

pub mod encoding;
pub mod hyperliquid;

use super::Door;
use super::jsonrpc::JsonRpc;
use crate::auth::{AuthError, Authenticator};
use crate::backend::proxy::{self, Flavor, Takes};
use crate::backend::{Backend, BackendError};
use crate::hub::{Encoding, Encodings, Sink};
use crate::metrics::Metrics;
use crate::rpc::api::Since;
use crate::session::{Session, SubscribeError, Subscriptions, Verdict, pattern};
use crate::transport::{Conn, Ending, Handled, Link, Outbox, Splice, frame};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;

/// The door's label in metrics.
pub const DOOR: &str = "ws";

/// The `/ws` front door.
#[derive(Debug)]
pub struct Compat {
    subscriptions: Arc<Subscriptions>,
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
    encoding: Encodings,
    hyperliquid: Encodings,
    /// The JSON-RPC door, whose methods `post` requests call.
    jsonrpc: Arc<JsonRpc>,
    default_rate: u32,
    /// The application's backend, whose `backend.methods` are message types here.
    backend: Option<Arc<Backend>>,
    me: std::sync::Weak<Compat>,
}

impl Compat {
    /// The door.
    pub fn new(
        subscriptions: Arc<Subscriptions>,
        auth: Arc<Authenticator>,
        jsonrpc: Arc<JsonRpc>,
        metrics: Arc<Metrics>,
        default_rate: u32,
        backend: Option<Arc<Backend>>,
        compression_min_bytes: usize,
    ) -> Arc<Compat> {
        Arc::new_cyclic(|me| Compat {
            subscriptions,
            auth,
            metrics,
            encoding: Encodings::new(Arc::new(encoding::TypedEncoding), compression_min_bytes),
            hyperliquid: Encodings::new(Arc::new(hyperliquid::HyperliquidEncoding), compression_min_bytes),
            jsonrpc,
            default_rate,
            backend,
            me: me.clone(),
        })
    }
}

impl Door for Compat {
    fn name(&self) -> &'static str {
        DOOR
    }

    fn connect(&self, session: Arc<Session>) -> Arc<dyn Conn> {
        let door = self.me.upgrade().expect("a door in use is alive; qed");
        self.metrics.connection_opened(DOOR);
        self.subscriptions.connected(&session);
        Arc::new_cyclic(|me| CompatConn {
            door,
            session,
            dialect: Mutex::new(Dialect::Undecided),
            order: tokio::sync::Mutex::new(()),
            me: me.clone(),
        })
    }
}

/// What a connection speaks, fixed by its first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Undecided,
    Typed,
    Hyperliquid,
}

/// One `/ws` connection.
#[derive(Debug)]
struct CompatConn {
    door: Arc<Compat>,
    session: Arc<Session>,
    dialect: Mutex<Dialect>,
    /// Messages are handled in the order sent, one at a time.
    order: tokio::sync::Mutex<()>,
    me: std::sync::Weak<CompatConn>,
}

/// A `{type,data}` message.
#[derive(Deserialize)]
struct Typed<'a> {
    #[serde(rename = "type")]
    kind: Cow<'a, str>,
    #[serde(default)]
    token: Option<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    /// Echoed in the answer of a proxied message.
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

/// The `data` of `subscribe` and `unsubscribe`.
#[derive(Deserialize)]
struct TypedData {
    channel: String,
    #[serde(default)]
    since: Option<Since>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    conflate_ms: Option<u64>,
    #[serde(default)]
    checksum: Option<bool>,
}

/// How the answer of a proxied `{type,data}` message is written: its type, and the client's
/// `id` if it sent one.
struct Reply {
    kind: String,
    id: Option<Box<RawValue>>,
}

impl Reply {
    fn result(&self, result: &RawValue) -> String {
        let mut v = json!({"type": self.kind});
        if let Some(id) = &self.id {
            v["id"] = serde_json::from_str(id.get()).unwrap_or(serde_json::Value::Null);
        }
        // The result is spliced in as the backend wrote it.
        let head = v.to_string();
        format!("{},\"data\":{}}}", &head[..head.len() - 1], result.get())
    }

    fn error(&self, code: &serde_json::Value, message: &str) -> String {
        let mut v = json!({"type": "error", "data": {"code": code, "message": message}});
        if let Some(id) = &self.id {
            v["id"] = serde_json::from_str(id.get()).unwrap_or(serde_json::Value::Null);
        }
        v.to_string()
    }
}

/// A `{type,data}` error.
fn typed_error(code: &str, message: &str) -> String {
    json!({"type": "error", "data": {"code": code, "message": message}}).to_string()
}

impl CompatConn {
    fn outbox(&self) -> &Arc<Outbox> {
        &self.session.link().expect("a WebSocket session has a link; qed").outbox
    }

    /// Queues one text frame of `text`.
    fn send(&self, text: &str) {
        let (h, n) = frame::header_bytes(frame::OP_TEXT, text.len());
        // An overflow fails the connection; it is counted when the connection ends.
        let _ = self.outbox().push_answer(&[&h[..n], text.as_bytes()]);
    }

    /// Handles one message, after the ones before it.
    async fn run(self: Arc<Self>, text: String) {
        let _turn = self.order.lock().await;
        let (dialect, decided) = {
            let mut d = self.dialect.lock();
            let undecided = *d == Dialect::Undecided;
            if undecided {
                *d = detect(&text);
            }
            (*d, undecided && *d == Dialect::Typed)
        };
        if decided {
            // A connection with a token from its upgrade request: its user channels now.
            self.auto_subscribe().await;
        }
        match self.session.charge_call() {
            Verdict::Allow => {}
            Verdict::Reject => {
                self.door.metrics.rate_limited.inc();
                let message = "too many messages; slow down (limits.calls_per_second)";
                return match dialect {
                    Dialect::Hyperliquid => {
                        self.send(&json!({"channel": "error", "data": message}).to_string())
                    }
                    _ => self.send(&typed_error("rate_limited", message)),
                };
            }
            Verdict::Flood => {
                self.door.metrics.rate_limited.inc();
                return self.outbox().end(Ending::Close(frame::code::POLICY, "rate limit exceeded"));
            }
        }
        match dialect {
            Dialect::Typed => self.typed(&text).await,
            Dialect::Hyperliquid => self.hyperliquid(&text).await,
            Dialect::Undecided => self.send(&typed_error(
                "invalid_request",
                "the first message must be a JSON object with \"type\" ({type,data} messages) or \"method\" (Hyperliquid style)",
            )),
        }
    }

    /// The `{type,data}` connection's user channels of namespaces with `auto_subscribe`.
    async fn auto_subscribe(&self) {
        let subs = &self.door.subscriptions;
        if subs.has_auto_subscribe() {
            subs.auto_subscribe(&self.session, self.door.encoding.of(self.outbox()), |_| Splice::EMPTY).await;
        }
    }

    /// One `{type,data}` message.
    async fn typed(&self, text: &str) {
        let msg: Typed = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                return self
                    .send(&typed_error("invalid_request", &format!("not a {{type,data}} message: {e}")));
            }
        };
        match &*msg.kind {
            "ping" => self.send(r#"{"type":"pong"}"#),
            "pong" => {}
            "auth" => {
                let Some(token) = msg.token else {
                    return self.send(&typed_error("invalid_request", "auth needs \"token\""));
                };
                match self.door.auth.authenticate(&token) {
                    Ok(p) => {
                        let reply =
                            json!({"type": "auth", "data": {"sub": p.subject, "expires_at": p.expires_at}});
                        self.session.set_principal(p, self.door.default_rate);
                        self.send(&reply.to_string());
                        self.auto_subscribe().await;
                    }
                    Err(e) => {
                        let message = match e {
                            AuthError::Invalid(m) => m,
                            e => e.to_string(),
                        };
                        self.send(&typed_error("unauthorized", &message));
                    }
                }
            }
            "subscribe" if msg.data.is_some_and(|d| d.get().trim_start().starts_with('[')) => {
                let data = msg.data.expect("checked just above; qed");
                match serde_json::from_str::<Vec<TypedData>>(data.get()) {
                    Ok(items) => self.subscribe_list(items).await,
                    Err(e) => self.send(&typed_error("invalid_request", &format!("subscribe: data: {e}"))),
                }
            }
            kind @ ("subscribe" | "unsubscribe") => {
                let d = msg.data.map(|d| serde_json::from_str::<TypedData>(d.get()));
                let d = match d {
                    Some(Ok(d)) => d,
                    None => {
                        return self.send(&typed_error(
                            "invalid_request",
                            &format!("{kind} needs \"data\": {{\"channel\"}}"),
                        ));
                    }
                    Some(Err(e)) => {
                        return self.send(&typed_error("invalid_request", &format!("{kind}: data: {e}")));
                    }
                };
                if kind == "subscribe" {
                    return self.subscribe(d).await;
                }
                if self.door.subscriptions.unsubscribe_channel(&self.session, &d.channel) == 0 {
                    return self
                        .send(&typed_error("invalid_request", &format!("not subscribed to {}", d.channel)));
                }
                self.send(&json!({"type": "unsubscribed", "data": {"channel": d.channel}}).to_string());
            }
            kind @ ("presence" | "presence_stats" | "cursor_set" | "cursor_get" | "unread") => {
                self.conversation(kind, &msg).await
            }
            "stream_cancel" => {
                let cancelled = self.session.calls().map_or(0, |c| c.cancel_all());
                self.send(&json!({"type": "stream_cancel", "data": {"cancelled": cancelled}}).to_string());
            }
            other => match self.door.backend.as_ref().filter(|b| b.proxies(other)) {
                Some(backend) => self.proxy(backend, &msg),
                None => self.send(&typed_error(
                    "invalid_request",
                    &format!(
                        "unknown message type {other:?}: use auth, subscribe, unsubscribe, presence, \
                         presence_stats, cursor_set, cursor_get, unread, ping or pong"
                    ),
                )),
            },
        }
    }

    /// A conversation message (`presence`, `presence_stats`, `cursor_set`, `cursor_get`,
    /// `unread`): `data` holds the method's params by name, the answer is
    /// `{"type":KIND,"id"?,"data":RESULT}` or `{"type":"error","id"?,"data":{"code","message"}}`
    /// with the JSON-RPC error's name as `code`.
    async fn conversation(&self, kind: &str, msg: &Typed<'_>) {
        let reply = Reply { kind: kind.to_string(), id: msg.id.map(|i| i.to_owned()) };
        let mut call = format!(r#"{{"jsonrpc":"2.0","id":0,"method":"{kind}""#);
        if let Some(d) = msg.data {
            call.push_str(",\"params\":");
            call.push_str(d.get());
        }
        call.push('}');
        let answer = self.door.jsonrpc.dispatcher.handle(&self.session, None, &call).await;
        let v: serde_json::Value = answer
            .json
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or(serde_json::Value::Null);
        let text = match v.get("result") {
            Some(r) => reply.result(&RawValue::from_string(r.to_string()).expect("a value is JSON; qed")),
            None => {
                let e = &v["error"];
                let code = e["data"]["code"]
                    .as_str()
                    .unwrap_or_else(|| crate::rpc::error::standard_name(e["code"].as_i64().unwrap_or(0)));
                reply.error(&json!(code), e["message"].as_str().unwrap_or("internal error"))
            }
        };
        self.send(&text);
    }

    /// A message whose type the backend serves: its call runs on its own, so that the
    /// connection's next messages are not held up by it. A JSON answer comes back as
    /// `{"type":TYPE,"id"?,"data":RESULT}`, a streamed reply line by line as the backend writes
    /// them, an error as `{"type":"error","id"?,"data":{"code","message"}}`.
    fn proxy(&self, backend: &Arc<Backend>, msg: &Typed<'_>) {
        let reply = Reply { kind: msg.kind.to_string(), id: msg.id.map(|i| i.to_owned()) };
        let Some(place) = backend.take_place(&self.session) else {
            let m = format!(
                "{} proxied calls are in flight on this connection (backend.max_in_flight); wait for one \
                 to end",
                backend.config().max_in_flight
            );
            return self.send(&reply.error(&json!("rate_limited"), &m));
        };
        let (backend, session) = (backend.clone(), self.session.clone());
        let (method, params) = (msg.kind.to_string(), msg.data.map(|d| d.to_owned()));
        let outbox = self.outbox().clone();
        tokio::spawn(async move {
            let answer = backend.call(&session, &method, params.as_deref(), Takes::JsonOrStream, place).await;
            let text = match answer {
                Ok(proxy::Reply::Stream(stream)) => return stream.relay(outbox, Flavor::Raw).await,
                Ok(proxy::Reply::Json(result)) => reply.result(&result),
                Err(BackendError::Refused { code, message }) => reply.error(&code, &message),
                Err(BackendError::Unavailable(m)) => reply.error(&json!("internal_error"), &m),
            };
            let (h, n) = frame::header_bytes(frame::OP_TEXT, text.len());
            // Queued from a task of its own, not the reader's: the writer is woken for it.
            let _ = outbox.push_answer(&[&h[..n], text.as_bytes()]);
            outbox.nudge_writer();
        });
    }

    /// One Hyperliquid-style message.
    async fn hyperliquid(&self, text: &str) {
        let error = |m: &str| json!({"channel": "error", "data": m}).to_string();
        let msg: serde_json::Value = match serde_json::from_str(text) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            _ => return self.send(&error("Invalid JSON: expected an object with \"method\"")),
        };
        match msg["method"].as_str().unwrap_or("") {
            "ping" => self.send(r#"{"channel":"pong"}"#),
            "subscribe" if msg.get("subscription").is_some_and(|s| s.is_array()) => {
                let items = msg["subscription"].as_array().expect("checked just above; qed");
                if let Err(m) = self.list_fits(items.len()) {
                    return self.send(&error(&m));
                }
                let mut seen = std::collections::HashSet::new();
                for item in items {
                    match self.hyperliquid_subscribe(item, &mut seen).await {
                        Ok(()) => {}
                        Err(m) => self.send(&error(&m)),
                    }
                }
            }
            method @ ("subscribe" | "unsubscribe") => {
                let Some(sub) = msg.get("subscription").and_then(|s| s.as_object()) else {
                    return self.send(&error(&format!("{method} needs a \"subscription\" object")));
                };
                let channel = match hyperliquid::channel_of(sub) {
                    Ok(c) => c,
                    Err(e) => return self.send(&error(&format!("Invalid subscription: {e}"))),
                };
                let response =
                    json!({"channel": "subscriptionResponse", "data": {"method": method, "subscription": sub}}).to_string();
                if method == "unsubscribe" {
                    if self.door.subscriptions.unsubscribe_channel(&self.session, &channel) == 0 {
                        return self.send(&error(&format!("Already unsubscribed: {}", msg["subscription"])));
                    }
                    return self.send(&response);
                }
                let since = match sub.get("since") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(v) => match serde_json::from_value::<Since>(v.clone()) {
                        Ok(p) => Some(p),
                        Err(e) => return self.send(&error(&format!("Invalid subscription: since: {e}"))),
                    },
                };
                let conflate_ms = match conflate_of(sub) {
                    Ok(c) => c,
                    Err(e) => return self.send(&error(&e)),
                };
                let checksum = sub.get("checksum").and_then(serde_json::Value::as_bool);
                let data = TypedData { channel, since, limit: None, conflate_ms, checksum };
                if let Err((_, m)) =
                    self.go_live(data, self.door.hyperliquid.of(self.outbox()).clone(), &response).await
                {
                    self.send(&error(&m));
                }
            }
            "post" => self.post(&msg).await,
            other => self
                .send(&error(&format!("unknown method {other:?}: use subscribe, unsubscribe, post or ping"))),
        }
    }

    /// A `post` request: `{"method":"post","id":N,"request":{"type":METHOD,"payload":PARAMS}}`
    /// runs the JSON-RPC method METHOD; the answer comes back by `id` as
    /// `{"channel":"post","data":{"id":N,"response":{"type":"info","payload":RESULT}}}`, or with
    /// `{"type":"error","payload":MESSAGE}`.
    async fn post(&self, msg: &serde_json::Value) {
        let id = msg.get("id").cloned().unwrap_or(serde_json::Value::Null);
        let reply = |response: serde_json::Value| {
            json!({"channel": "post", "data": {"id": id, "response": response}}).to_string()
        };
        let Some(method) = msg["request"]["type"].as_str() else {
            return self.send(&reply(
                json!({"type": "error", "payload": "post needs request.type (a method name)"}),
            ));
        };
        if matches!(method, "subscribe" | "unsubscribe") {
            let m = format!("{method} is a message of its own, not a post request");
            return self.send(&reply(json!({"type": "error", "payload": m})));
        }
        let mut call = json!({"jsonrpc": "2.0", "id": 0, "method": method});
        match &msg["request"]["payload"] {
            serde_json::Value::Null => {}
            p => call["params"] = p.clone(),
        }
        let answer = self.door.jsonrpc.dispatcher.handle(&self.session, None, &call.to_string()).await;
        let v: serde_json::Value = answer
            .json
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or(serde_json::Value::Null);
        let response = match v.get("result") {
            Some(r) => json!({"type": "info", "payload": r}),
            None => {
                json!({"type": "error", "payload": v["error"]["message"].as_str().unwrap_or("internal error")})
            }
        };
        self.send(&reply(response));
    }

    /// One subscription object of a Hyperliquid `subscribe` list: its `subscriptionResponse`
    /// and snapshot, or `Err` with the error frame's text. A channel already named in the list
    /// (`seen`) is refused.
    async fn hyperliquid_subscribe(
        &self,
        item: &serde_json::Value,
        seen: &mut std::collections::HashSet<String>,
    ) -> Result<(), String> {
        let Some(sub) = item.as_object() else {
            return Err(format!("Invalid subscription: {item} is not an object"));
        };
        let channel = hyperliquid::channel_of(sub).map_err(|e| format!("Invalid subscription: {e}"))?;
        if !seen.insert(channel.clone()) {
            return Err(format!("Invalid subscription: {item} is named more than once in this message"));
        }
        let since = match sub.get("since") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(
                serde_json::from_value::<Since>(v.clone())
                    .map_err(|e| format!("Invalid subscription: since: {e}"))?,
            ),
        };
        let response =
            json!({"channel": "subscriptionResponse", "data": {"method": "subscribe", "subscription": sub}})
                .to_string();
        let checksum = sub.get("checksum").and_then(serde_json::Value::as_bool);
        let data = TypedData { channel, since, limit: None, conflate_ms: conflate_of(sub)?, checksum };
        self.go_live(data, self.door.hyperliquid.of(self.outbox()).clone(), &response)
            .await
            .map_err(|(_, m)| m)
    }

    /// `Ok` when a list of `n` subscriptions is within the connection's limit in size (each
    /// item may still fail on its own, over what the connection already holds).
    fn list_fits(&self, n: usize) -> Result<(), String> {
        let max = self.door.subscriptions.max_per_connection();
        if n == 0 || n > max {
            return Err(format!(
                "a subscribe list holds 1 to {max} items (limits.max_subscriptions), not {n}"
            ));
        }
        Ok(())
    }

    /// A `{type,data}` `subscribe` whose `data` is a list: each item as a `subscribe` of its
    /// own, in order; an item that fails is answered with an error naming its channel, and the
    /// others go on.
    async fn subscribe_list(&self, items: Vec<TypedData>) {
        if let Err(m) = self.list_fits(items.len()) {
            return self.send(&typed_error("invalid_request", &m));
        }
        let mut seen = std::collections::HashSet::new();
        for d in items {
            let channel = d.channel.clone();
            let outcome = if seen.insert(channel.clone()) {
                self.go_live(d, self.door.encoding.of(self.outbox()).clone(), "").await
            } else {
                Err(("invalid_request", format!("channel {channel} is named more than once in this message")))
            };
            if let Err((code, message)) = outcome {
                let e =
                    json!({"type": "error", "data": {"code": code, "message": message, "channel": channel}});
                self.send(&e.to_string());
            }
        }
    }

    /// Makes a subscription live with `encoding`, `answer` queued before its snapshot; `Err`
    /// says why it could not be made: an error code of the `{type,data}` dialect and a message.
    async fn go_live(
        &self,
        d: TypedData,
        encoding: Arc<dyn Encoding>,
        answer: &str,
    ) -> Result<(), (&'static str, String)> {
        let subscribed = {
            let set = self.session.subscriptions.lock();
            set.live.iter().any(|s| s.is_active() && s.channel() == d.channel)
                || set.patterns.iter().any(|p| p.is_active() && p.pattern() == d.channel)
        };
        if subscribed {
            return Err(("subscription_failed", format!("already subscribed to {}", d.channel)));
        }
        let code = |e: SubscribeError| {
            let code = match &e {
                SubscribeError::Unauthorized(_)
                | SubscribeError::Backend(crate::backend::BackendError::Refused { .. }) => "unauthorized",
                // The dialect has no code of its own for the backend being away.
                SubscribeError::Backend(crate::backend::BackendError::Unavailable(_)) => "internal_error",
                SubscribeError::Hub(crate::hub::HubError::InvalidChannel(_))
                | SubscribeError::Hub(crate::hub::HubError::Broker(
                    crate::broker::BrokerError::Unsupported(_),
                ))
                | SubscribeError::InvalidParams(_)
                | SubscribeError::Unacceptable(_) => "invalid_request",
                e if e.is_broker_unavailable() => "broker_unavailable",
                _ => "subscription_failed",
            };
            (code, e.to_string())
        };
        let pending: crate::session::Deferred = if pattern::is_pattern(&d.channel) {
            let since = match d.since {
                None => Default::default(),
                Some(Since::Channels(m)) => m.into_iter().collect(),
                Some(Since::Position(_)) => {
                    return Err((
                        "invalid_request",
                        "since on a pattern is a map of channel to {epoch, offset}".into(),
                    ));
                }
            };
            let subs = &self.door.subscriptions;
            subs.prepare_pattern(&self.session, &d.channel, since, d.limit, d.conflate_ms)
                .await
                .map_err(code)?
                .into()
        } else {
            let since = match d.since {
                None => None,
                Some(Since::Position(p)) => Some(p),
                Some(Since::Channels(_)) => {
                    return Err((
                        "invalid_request",
                        format!("since is a map only on a pattern, not on {}", d.channel),
                    ));
                }
            };
            let subs = &self.door.subscriptions;
            let mut p =
                subs.prepare(&self.session, &d.channel, since, d.limit, d.conflate_ms).await.map_err(code)?;
            if d.checksum == Some(true) {
                p.set_checksum().map_err(|m| ("invalid_request", m))?;
            }
            p.into()
        };
        let splice = Splice::new(&[]).expect("an empty splice fits; qed");
        let sink = Sink::new(self.outbox().clone(), encoding, splice);
        let (h, n) = frame::header_bytes(frame::OP_TEXT, answer.len());
        let frame: [&[u8]; 2] = [&h[..n], answer.as_bytes()];
        let first: &[&[u8]] = if answer.is_empty() { &[] } else { &frame };
        // Fails only when the connection is closing: nothing more goes out then anyway.
        let _ = pending.go_live(sink, first);
        Ok(())
    }

    /// `subscribe`: the snapshot is the acknowledgement.
    async fn subscribe(&self, d: TypedData) {
        if let Err((code, message)) = self.go_live(d, self.door.encoding.of(self.outbox()).clone(), "").await
        {
            self.send(&typed_error(code, &message));
        }
    }
}

/// The `conflate_ms` of a Hyperliquid subscription object; `Err` is the error frame's text.
fn conflate_of(sub: &serde_json::Map<String, serde_json::Value>) -> Result<Option<u64>, String> {
    match sub.get("conflate_ms") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            format!("Invalid subscription: conflate_ms must be a whole number of ms, not {v}")
        }),
    }
}

/// The dialect a first message speaks.
fn detect(text: &str) -> Dialect {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "type")]
        kind: Option<serde::de::IgnoredAny>,
        method: Option<serde::de::IgnoredAny>,
        jsonrpc: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_str::<Probe>(text) {
        Ok(Probe { kind: Some(_), .. }) => Dialect::Typed,
        Ok(Probe { method: Some(_), jsonrpc: None, .. }) => Dialect::Hyperliquid,
        _ => Dialect::Undecided,
    }
}

impl Conn for CompatConn {
    fn link(&self) -> &Link {
        self.session.link().expect("a WebSocket session has a link; qed")
    }

    fn on_text(&self, text: &str) -> Handled {
        let me = self.me.upgrade().expect("the transport holds the connection while it reads; qed");
        Handled::Later(Box::pin(me.run(text.to_owned())))
    }

    fn keepalive(&self) {
        // A WebSocket ping always; `{type,data}` clients also expect a text one.
        self.link().outbox.push_control(frame::OP_PING, b"");
        if *self.dialect.lock() == Dialect::Typed {
            self.send(r#"{"type":"ping"}"#);
        }
    }

    fn tick(&self) {
        self.door.subscriptions.tick(&self.session);
    }

    fn on_end(&self, ending: Option<Ending>) {
        self.door.metrics.connection_closed(DOOR, ending.and_then(|e| e.label()));
        if let Some(calls) = self.session.calls() {
            calls.cancel_all();
        }
        self.door.subscriptions.disconnected(&self.session, ending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_message_picks_the_dialect() {
        assert_eq!(detect(r#"{"type":"subscribe","data":{"channel":"a"}}"#), Dialect::Typed);
        assert_eq!(
            detect(r#"{"method":"subscribe","subscription":{"type":"trades","coin":"SOL"}}"#),
            Dialect::Hyperliquid,
            "a nested type is no {{type,data}} message"
        );
        assert_eq!(detect(r#"{"method":"ping"}"#), Dialect::Hyperliquid);
        assert_eq!(detect(r#"{"jsonrpc":"2.0","method":"ping","id":1}"#), Dialect::Undecided);
        assert_eq!(detect("[1]"), Dialect::Undecided);
        assert_eq!(detect("nope"), Dialect::Undecided);
    }
}
