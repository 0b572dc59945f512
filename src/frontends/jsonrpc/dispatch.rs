//! JSON-RPC 2.0 over our own transport: parsing, batches, notifications, errors, and dispatch
//! into the jsonrpsee method table built from the `#[rpc]` traits.
//!
//! jsonrpsee's server would spawn a task per message and write every answer on its own; here a
//! connection hands each message to [`Dispatcher::handle`], whose future runs in one of the
//! connection's call slots (`crate::transport::Conn`), and the answer is queued into its outbox
//! with the notifications. Calls that change the connection's state ([`ORDERED_METHODS`]:
//! subscribe, unsubscribe, auth) wait for the ones before them on the connection's [`Lane`], so
//! a subscribe followed by an unsubscribe, or an auth followed by a subscribe, run in the order
//! sent; other calls run as soon as they arrive.
//!
//! A call whose handler leaves a prepared subscription in its call context gets its answer
//! queued by that subscription's `go_live`, before the snapshot: the answer-before-snapshot rule
//! is a type ([`crate::session::PendingSubscription`]), not a method name.
//!
//! The error rules follow the JSON-RPC 2.0 specification: invalid JSON is -32700 with id
//! null; valid JSON that is not a request object (or an empty batch) is -32600; a batch answers
//! with an array of the answers to its requests, or nothing if it held only notifications; a
//! notification (no `id`) is executed but never answered.
//!
//! An answer is at most `limits.max_response_bytes`, a batch's as a whole: a call whose answer
//! is bigger is answered -32007 instead, saying both sizes; once a batch's answer is full, the
//! requests left in it are not executed and are answered -32007 (notifications left are
//! dropped). So a small message can never make the node write a big one.
//!
//! A method neither the table nor the backend serves may be the upstream node's
//! ([`Upstream::forwards`]): a
//! single call is forwarded on its own; a batch's forwarded calls go up together as one batch,
//! sent before its other calls run here and awaited alongside them, and every answer takes its
//! place in the batch's answer in request order. Each forwarded call is charged against the rate
//! limit like any other, and its answer is fitted into `limits.max_response_bytes` like any
//! other (forwarded calls are sent before the batch's answer is known to be full, so they are
//! always executed).

use crate::backend::proxy::{Reply, Stream, Takes};
use crate::backend::upstream::{Failure, Relayed, UpCall, Upstream};
use crate::backend::{Backend, BackendError};
use crate::metrics::{MethodCounters, Metrics};
use crate::rpc::error::{self, standard};
use crate::rpc::{CallCtx, ORDERED_METHODS, RpcError};
use crate::session::{Session, Verdict};
use jsonrpsee::core::server::{MethodCallback, MethodResponse, Methods};
use jsonrpsee::types::{ErrorObject, ErrorObjectOwned, Id, Params};
use jsonrpsee::{ConnectionId, Extensions};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, de::IgnoredAny};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Notify;

/// What jsonrpsee is told a method's answer may be: nothing it would refuse itself (with its own
/// code); the dispatcher measures each answer against `limits.max_response_bytes`.
const UNBOUNDED: usize = usize::MAX;

/// A connection's queue for the calls that must run in the order sent: each takes a ticket
/// when it starts and runs when the ones before it are done.
#[derive(Debug, Default)]
pub struct Lane {
    next: AtomicU64,
    serving: AtomicU64,
    turn: Notify,
}

/// A ticket's turn; the next ticket's turn comes when it is dropped.
struct Turn<'a>(&'a Lane);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.serving.fetch_add(1, Ordering::AcqRel);
        self.0.turn.notify_waiters();
    }
}

impl Lane {
    /// Takes a ticket now and waits for its turn.
    async fn turn(&self) -> Turn<'_> {
        let ticket = self.next.fetch_add(1, Ordering::AcqRel);
        loop {
            let notified = self.turn.notified();
            if self.serving.load(Ordering::Acquire) == ticket {
                return Turn(self);
            }
            notified.await;
        }
    }
}

/// A request or notification object, borrowing from the message.
#[derive(Deserialize)]
struct Call<'a> {
    #[serde(rename = "jsonrpc")]
    _version: Version,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
    /// `None`: absent (a notification). `Some(Id::Null)`: `"id": null`, which is answered.
    #[serde(borrow, default, deserialize_with = "present_id")]
    id: Option<Id<'a>>,
}

/// Only the id of an invalid request, to echo it when it can be read.
#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow, default, deserialize_with = "present_id")]
    id: Option<Id<'a>>,
}

/// `"2.0"` and nothing else.
struct Version;

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        if s == "2.0" { Ok(Version) } else { Err(de::Error::custom("jsonrpc must be \"2.0\"")) }
    }
}

fn present_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Id<'de>>, D::Error> {
    d.deserialize_any(IdVisitor).map(Some)
}

/// Reads an id without serde's untagged-enum buffering: null, a non-negative integer, or a string.
struct IdVisitor;

impl<'de> Visitor<'de> for IdVisitor {
    type Value = Id<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("null, a non-negative integer or a string")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Id<'de>, E> {
        Ok(Id::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Id<'de>, E> {
        Ok(Id::Null)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id<'de>, E> {
        Ok(Id::Number(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Id<'de>, E> {
        Ok(Id::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Id<'de>, E> {
        Ok(Id::Str(Cow::Owned(v.to_string())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Id<'de>, E> {
        Ok(Id::Str(Cow::Owned(v)))
    }
}

/// What handling one message produced.
#[derive(Debug, Default)]
pub struct Answer {
    /// JSON to send back (`None`: nothing, e.g. only notifications).
    pub json: Option<String>,
    /// The client kept sending far over its call rate: close the connection.
    pub flood: bool,
    /// Subscriptions the message's calls prepared: the first queues the answer, then each its
    /// snapshot.
    pub pending: Vec<crate::session::Deferred>,
    /// Streamed replies of proxied methods, to relay once the answer (`{"stream":ID}`) is
    /// queued.
    pub streams: Vec<Stream>,
}

/// Dispatches JSON-RPC messages to the method table.
pub struct Dispatcher {
    methods: Methods,
    metrics: Arc<Metrics>,
    max_response: usize,
    /// The application's backend, whose `backend.methods` are proxied.
    backend: Option<Arc<Backend>>,
    /// The upstream node, where the methods neither the table nor the backend serve may go.
    upstream: Option<Arc<Upstream>>,
}

/// Where the answer to one entry of a batch comes from.
enum Entry<'a> {
    /// A call run here (or an invalid one, answered here), or proxied to the backend.
    Local(&'a str),
    /// A call forwarded to the upstream node: its place among the batch's forwarded calls.
    Up(usize),
    /// Answered already (refused by the rate limit), or not to be answered.
    Done(Option<String>),
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").field("methods", &self.method_names()).finish()
    }
}

impl Dispatcher {
    /// A dispatcher over `methods` whose answers are at most `max_response` bytes, proxying
    /// the methods `backend` serves and forwarding to `upstream` the methods it serves.
    pub fn new(
        methods: Methods,
        metrics: Arc<Metrics>,
        max_response: usize,
        backend: Option<Arc<Backend>>,
        upstream: Option<Arc<Upstream>>,
    ) -> Dispatcher {
        Dispatcher { methods, metrics, max_response, backend, upstream }
    }

    /// The method names served, sorted.
    pub fn method_names(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self.methods.method_names().collect();
        v.sort_unstable();
        v
    }

    /// Handles one message (a request, a notification or a batch); `lane` orders the calls
    /// that must keep their order (none over HTTP, where each request stands alone).
    pub async fn handle(&self, session: &Arc<Session>, lane: Option<&Lane>, text: &str) -> Answer {
        let mut answer = Answer::default();
        let trimmed = text.trim_start();
        if trimmed.starts_with('[') {
            let Ok(entries) = serde_json::from_str::<Vec<&RawValue>>(text) else {
                answer.json = Some(error_json(Id::Null, standard(error::PARSE_ERROR)));
                return answer;
            };
            if entries.is_empty() {
                answer.json = Some(error_json(Id::Null, invalid_request("empty batch")));
                return answer;
            }
            let (slots, up_calls) = self.route_batch(session, &entries, &mut answer);
            let local = async {
                // The length the batch's answer would have with the local answers alone.
                let mut used = 1;
                let mut done = Vec::new();
                for slot in &slots {
                    let Entry::Local(text) = slot else { continue };
                    let json = if used >= self.max_response {
                        // Full: what is left is not executed.
                        self.metrics.responses_too_big.inc();
                        serde_json::from_str::<IdOnly>(text).ok().and_then(|i| i.id).map(|id| {
                            error_json(id, self.too_big("the batch's answer reached it before this call ran"))
                        })
                    } else {
                        self.call(session, lane, text, true, &mut answer)
                            .await
                            .map(|json| self.fitted(json, used + 1))
                    };
                    if let Some(json) = &json {
                        used += json.len() + usize::from(used > 1);
                    }
                    done.push(json);
                }
                done
            };
            let (done, forwarded) = match &self.upstream {
                Some(up) if !up_calls.is_empty() => tokio::join!(local, up.batch(&up_calls)),
                _ => (local.await, Vec::new()),
            };
            let mut done = done.into_iter();
            let mut forwarded = forwarded.into_iter();
            let mut out = String::from("[");
            // Once an upstream answer is in, the local ones after it are fitted again.
            let mut refit = false;
            for slot in slots {
                let json = match slot {
                    Entry::Local(_) => done
                        .next()
                        .flatten()
                        .map(|json| if refit { self.fitted(json, out.len() + 1) } else { json }),
                    Entry::Up(i) => {
                        refit = true;
                        let call = &up_calls[i];
                        forwarded.next().flatten().map(|relayed| {
                            let json = self.relayed(
                                relayed,
                                call.id.clone().unwrap_or(Id::Null),
                                self.metrics.method(&call.method),
                            );
                            self.fitted(json, out.len() + 1)
                        })
                    }
                    Entry::Done(json) => json,
                };
                if let Some(json) = json {
                    if out.len() > 1 {
                        out.push(',');
                    }
                    out.push_str(&json);
                }
            }
            if out.len() > 1 {
                out.push(']');
                answer.json = Some(out);
            }
        } else {
            let json = self.call(session, lane, text, false, &mut answer).await;
            answer.json = json.map(|json| self.fitted(json, 0));
        }
        answer
    }

    /// `json`, or the error in its place when it does not fit after `used` bytes of its
    /// message's answer.
    fn fitted(&self, json: String, used: usize) -> String {
        if used + json.len() <= self.max_response {
            return json;
        }
        self.metrics.responses_too_big.inc();
        let Ok(IdOnly { id: Some(id) }) = serde_json::from_str::<IdOnly>(&json) else { return json };
        let mut why = format!("the answer is {} bytes", json.len());
        if used > 0 {
            why += &format!(", after {used} bytes of the batch's answer");
        }
        error_json(id, self.too_big(&why))
    }

    /// Which entries of a batch go to the upstream node, each charged against the rate limit
    /// here (the others are charged when they run): the batch's slots in order, and the calls
    /// to forward.
    fn route_batch<'a>(
        &self,
        session: &Session,
        entries: &[&'a RawValue],
        answer: &mut Answer,
    ) -> (Vec<Entry<'a>>, Vec<UpCall<'a>>) {
        let mut up_calls = Vec::new();
        let Some(up) = &self.upstream else {
            return (entries.iter().map(|e| Entry::Local(e.get())).collect(), up_calls);
        };
        let slots = entries
            .iter()
            .map(|e| {
                let text = e.get();
                let Ok(call) = serde_json::from_str::<Call>(text) else { return Entry::Local(text) };
                if !params_ok(call.params)
                    || self.methods.method_with_name(&call.method).is_some()
                    || !up.forwards(&call.method)
                {
                    return Entry::Local(text);
                }
                if let Some(refused) = self.charge(session, text, answer) {
                    return Entry::Done(refused);
                }
                up_calls.push(UpCall { method: call.method, params: call.params, id: call.id });
                Entry::Up(up_calls.len() - 1)
            })
            .collect();
        (slots, up_calls)
    }

    /// Charges one message against the session's call rate: `None` when allowed, else the
    /// refusal to answer (`Some(None)` when the message has no id to answer).
    fn charge(&self, session: &Session, text: &str, answer: &mut Answer) -> Option<Option<String>> {
        match session.charge_call() {
            Verdict::Allow => None,
            verdict => {
                answer.flood |= verdict == Verdict::Flood;
                self.metrics.rate_limited.inc();
                // Only the id of a refused call is read: refusing must cost less than serving.
                let id = serde_json::from_str::<IdOnly>(text).ok().and_then(|i| i.id);
                Some(id.map(|id| {
                    let err: ErrorObjectOwned = RpcError::RateLimited(
                        "too many calls on this connection; slow down (see limits.calls_per_second)".into(),
                    )
                    .into();
                    error_json(id, err)
                }))
            }
        }
    }

    /// The answer to a forwarded call, counted in its method's counters: the node's, or the
    /// error in its place.
    fn relayed(&self, relayed: Relayed, id: Id<'_>, counters: &MethodCounters) -> String {
        match relayed {
            Ok(r) => {
                if r.refused { &counters.error } else { &counters.ok }.inc();
                r.json
            }
            Err(Failure::Unavailable(why)) => {
                counters.error.inc();
                error_json(id, error::backend(&BackendError::Unavailable(why)))
            }
            Err(Failure::TooBig(max)) => {
                counters.error.inc();
                self.metrics.responses_too_big.inc();
                error_json(id, self.too_big(&format!("the upstream node's answer is over {max} bytes")))
            }
        }
    }

    /// -32007 for an answer over the limit.
    fn too_big(&self, why: &str) -> ErrorObjectOwned {
        error::too_big(
            "Response is too big",
            format!(
                "{why}; the limit is {} bytes (limits.max_response_bytes): ask for less (a smaller \
                 history limit, fewer calls in the batch)",
                self.max_response
            ),
        )
    }

    /// One request or notification. Returns its answer, if it gets one.
    async fn call(
        &self,
        session: &Arc<Session>,
        lane: Option<&Lane>,
        text: &str,
        in_batch: bool,
        answer: &mut Answer,
    ) -> Option<String> {
        // Every message is charged, valid or not: a flood of garbage costs its sender the same.
        if let Some(refused) = self.charge(session, text, answer) {
            return refused;
        }
        let call = match serde_json::from_str::<Call>(text) {
            Ok(c) => c,
            Err(e) => return Some(self.invalid(text, in_batch, &e)),
        };
        let id = call.id.clone();
        if !params_ok(call.params) {
            let err = invalid_request("params must be an array or an object");
            return Some(error_json(id.unwrap_or(Id::Null), err));
        }
        let counters = self.metrics.method(&call.method);
        let started = std::time::Instant::now();
        let Some((name, callback)) = self.methods.method_with_name(&call.method) else {
            if let Some(backend) = self.backend.as_ref().filter(|b| b.proxies(&call.method)) {
                return self.proxy(backend, session, lane, &call, answer).await;
            }
            if let Some(up) = &self.upstream
                && up.forwards(&call.method)
            {
                let relayed = up
                    .call(UpCall { method: Cow::Borrowed(&call.method), params: call.params, id: id.clone() })
                    .await?;
                counters.duration.observe(started.elapsed().as_secs_f64());
                return Some(self.relayed(relayed, id.unwrap_or(Id::Null), counters));
            }
            counters.error.inc();
            return id.map(|id| error_json(id, standard(error::METHOD_NOT_FOUND)));
        };
        let _turn = match lane {
            Some(lane) if ORDERED_METHODS.contains(&name) => Some(lane.turn().await),
            _ => None,
        };
        let is_notification = id.is_none();
        let id = id.unwrap_or(Id::Null);
        let params = Params::new(call.params.map(RawValue::get));
        let ctx = Arc::new(CallCtx::new(session.clone()));
        let ext = Extensions::new();
        let response = match callback {
            MethodCallback::Sync(f) => CallCtx::sync_scope(ctx.clone(), || f(id, params, UNBOUNDED, ext)),
            MethodCallback::Async(f) => {
                let call = f(
                    id.into_owned(),
                    params.into_owned(),
                    ConnectionId(session.id as usize),
                    UNBOUNDED,
                    ext,
                );
                CallCtx::scope(ctx.clone(), call).await
            }
            MethodCallback::Subscription(_) | MethodCallback::Unsubscription(_) => {
                MethodResponse::error(id, standard(error::INTERNAL_ERROR))
            }
        };
        counters.duration.observe(started.elapsed().as_secs_f64());
        if response.is_success() {
            counters.ok.inc();
            let mut pending = ctx.take_pending();
            if answer.pending.is_empty() {
                answer.pending = pending; // (the call's vector itself, most often the only one)
            } else {
                answer.pending.append(&mut pending);
            }
        } else {
            counters.error.inc();
        }
        if is_notification {
            return None;
        }
        // The response's own buffer, not a copy of it.
        Some(Box::<str>::from(response.into_json()).into())
    }

    /// A call of a method the backend serves. A streamed reply is taken on a WebSocket
    /// (`lane`): the call answers `{"stream":ID}` and the stream is left in `answer`, to relay
    /// behind it; elsewhere it is -32005.
    async fn proxy(
        &self,
        backend: &Arc<Backend>,
        session: &Arc<Session>,
        lane: Option<&Lane>,
        call: &Call<'_>,
        answer: &mut Answer,
    ) -> Option<String> {
        let id = call.id.clone().unwrap_or(Id::Null);
        let Some(place) = backend.take_place(session) else {
            let err: ErrorObjectOwned = RpcError::RateLimited(format!(
                "this connection has {} proxied calls in flight (backend.max_in_flight); wait for one \
                 to end",
                backend.config().max_in_flight
            ))
            .into();
            return call.id.is_some().then(|| error_json(id, err));
        };
        let takes = if lane.is_some() { Takes::JsonOrStream } else { Takes::Json };
        let reply = backend.call(session, &call.method, call.params, takes, place).await;
        let json = match reply {
            Ok(Reply::Json(result)) => result_json(&id, result.get()),
            Ok(Reply::Stream(stream)) if lane.is_some() && call.id.is_some() => {
                let json = result_json(&id, &format!(r#"{{"stream":"{}"}}"#, stream.id()));
                answer.streams.push(stream);
                json
            }
            Ok(Reply::Stream(_)) => {
                let err = RpcError::Unacceptable(format!(
                    "{} answers with a streamed reply, which needs a WebSocket: call it on /ws/rpc",
                    call.method
                ));
                error_json(id, err.into())
            }
            Err(e) => error_json(id, error::backend(&e)),
        };
        call.id.is_some().then_some(json)
    }

    /// The answer to something that is not a valid request object.
    fn invalid(&self, text: &str, in_batch: bool, why: &serde_json::Error) -> String {
        self.metrics.method("").error.inc();
        if !in_batch && serde_json::from_str::<IgnoredAny>(text).is_err() {
            return error_json(Id::Null, standard(error::PARSE_ERROR));
        }
        let id = serde_json::from_str::<IdOnly>(text).ok().and_then(|i| i.id).unwrap_or(Id::Null);
        error_json(id, invalid_request(&why.to_string()))
    }
}

/// Params, when given, are an array or an object.
fn params_ok(params: Option<&RawValue>) -> bool {
    params.is_none_or(|p| matches!(p.get().as_bytes().first(), Some(b'[' | b'{')))
}

fn invalid_request(why: &str) -> ErrorObjectOwned {
    ErrorObject::owned(error::INVALID_REQUEST, "Invalid Request", Some(why))
}

/// A success response object as JSON, `result` (JSON) copied as it is.
fn result_json(id: &Id<'_>, result: &str) -> String {
    let id = serde_json::to_string(id).expect("an id is plain JSON; qed");
    format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#)
}

/// An error response object as JSON.
pub fn error_json(id: Id<'_>, err: ErrorObjectOwned) -> String {
    Box::<str>::from(MethodResponse::error(id, err).into_json()).into()
}
