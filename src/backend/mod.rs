//! The application's backend behind the hub, and an upstream JSON-RPC node.
//!
//! One HTTP client (reqwest: pooled keep-alive connections, timeouts) talks to the backend
//! `[backend] url` for everything rpchub asks it:
//! - [`proxy`]: proxied methods (`backend.methods`), answered with JSON or streamed as NDJSON,
//!   from every front door;
//! - the permission checks: `subscribe_proxy` and `publish_proxy` ([`Backend::check`]) and
//!   `connect_proxy`;
//! - [`hooks`]: the lifecycle hooks (`connect`, `disconnect`, `subscribe`, `unsubscribe`,
//!   `presence`), batched, retried and bounded.
//!
//! [`upstream`] is the other HTTP service rpchub may stand in front of: an HTTP-only JSON-RPC
//! node (`[upstream] url`) whose methods are forwarded as JSON-RPC 2.0, with a client of its own
//! made by [`http_client`].
//!
//! The backend is told who calls ([`Backend::client_json`]: `{"id","user"?,"remote"}`) and is
//! sent only the client's headers that `backend.forward_headers` names, never a token it did
//! not name. Every failure of the backend (down, slow, 5xx, a body that is not the JSON asked
//! for, or over `backend.max_body_bytes`) is one error, [`BackendError::Unavailable`], which
//! the front doors answer as -32021 `backend_unavailable` (or their dialect's shape), keeping the
//! connection open; an error object from the backend is [`BackendError::Refused`].
//!
//! This file: [`Backend`], its requests and the per-connection state ([`Calls`]);
//! [`connect`]: who connects, asked before the upgrade.

pub mod connect;
pub mod hooks;
pub mod proxy;
pub mod upstream;

use crate::auth::Globs;
use crate::config::{BackendConfig, Config};
use crate::metrics::Metrics;
use crate::session::Session;
use hyper::header::{HeaderName, HeaderValue};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What went wrong with a request to the backend.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The backend answered `{"error":{"code","message"}}`.
    #[error("{message}")]
    Refused {
        /// The backend's code, as it gave it (a string or a number).
        code: serde_json::Value,
        /// The backend's message.
        message: String,
    },
    /// No usable answer: the backend is down, too slow, answered 5xx, or sent a body that is
    /// malformed or too big. The message says which, without the backend's body.
    #[error("{0}")]
    Unavailable(String),
}

impl BackendError {
    /// The `outcome` label of the request that ended with this error.
    pub fn outcome(&self) -> &'static str {
        match self {
            BackendError::Refused { .. } => "refused",
            BackendError::Unavailable(_) => "unavailable",
        }
    }
}

/// `{"result":R}` or `{"error":{"code","message"}}`, R borrowed as it came.
#[derive(Deserialize)]
struct Envelope<'a> {
    /// `Some` whenever present, `null` included.
    #[serde(borrow, default, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

/// A field that is there, whatever its value (serde's `Option` takes `null` for absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The backend's error object.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: serde_json::Value,
    #[serde(default)]
    message: String,
}

/// A session's proxied calls: how many are in flight (JSON calls and streamed replies) and the
/// streams running, to cancel them by id or when the connection ends. Empty and a few words
/// long on a connection that never calls the backend.
#[derive(Debug, Default)]
pub struct Calls {
    in_flight: AtomicUsize,
    streams: Mutex<Vec<(u64, CancellationToken)>>,
}

/// One of a session's places for a proxied call, given back when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Session>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(calls) = self.0.calls() {
            calls.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Calls {
    /// Cancels stream `id`; false if it is not running.
    pub fn cancel(&self, id: u64) -> bool {
        let mut streams = self.streams.lock();
        let Some(at) = streams.iter().position(|(s, _)| *s == id) else { return false };
        streams.swap_remove(at).1.cancel();
        true
    }

    /// Cancels every stream (the connection ended, or its client asked); returns how many
    /// were running.
    pub fn cancel_all(&self) -> usize {
        let streams = std::mem::take(&mut *self.streams.lock());
        for (_, token) in &streams {
            token.cancel();
        }
        streams.len()
    }

    /// Registers stream `id`; its token is cancelled by [`Calls::cancel`] or
    /// [`Calls::cancel_all`].
    fn add_stream(&self, id: u64) -> CancellationToken {
        let token = CancellationToken::new();
        self.streams.lock().push((id, token.clone()));
        token
    }

    /// Forgets stream `id` once it has ended by itself.
    fn remove_stream(&self, id: u64) {
        self.streams.lock().retain(|(s, _)| *s != id);
    }
}

/// The backend of a node.
#[derive(Debug)]
pub struct Backend {
    config: BackendConfig,
    http: reqwest::Client,
    /// `url` without a trailing `/`.
    base: String,
    methods: Globs,
    node_id: String,
    metrics: Arc<Metrics>,
    /// Stream ids, unique on the node.
    next_stream: std::sync::atomic::AtomicU64,
}

/// The HTTP client rpchub uses for the backend and the upstream node: pooled, with `timeout`
/// to connect, no proxy from the environment, and rpchub's user agent.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .no_proxy()
        .user_agent(concat!("rpchub/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("the backend's HTTP client: {e}"))
}

impl Backend {
    /// The backend `config.backend` describes, if it has a URL.
    pub fn new(
        config: &Config,
        node_id: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Arc<Backend>>, String> {
        let b = &config.backend;
        if !b.is_on() {
            return Ok(None);
        }
        let methods = Globs::new(&b.methods).map_err(|e| format!("backend.methods: {e}"))?;
        Ok(Some(Arc::new(Backend {
            config: b.clone(),
            http: http_client(b.timeout)?,
            base: b.url.trim_end_matches('/').to_string(),
            methods,
            node_id: node_id.to_string(),
            metrics,
            next_stream: std::sync::atomic::AtomicU64::new(1),
        })))
    }

    /// The `[backend]` table.
    pub fn config(&self) -> &BackendConfig {
        &self.config
    }

    /// The node's id, as the backend is told it.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// True when the backend serves `method`: it matches `backend.methods`, and is a name that
    /// fits a URL path segment as it is (1 to 128 of `A-Za-z0-9_-.:`, not starting with `.`).
    pub fn proxies(&self, method: &str) -> bool {
        let fits = !method.is_empty()
            && method.len() <= 128
            && !method.starts_with('.')
            && method.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
        fits && self.methods.matches(method)
    }

    /// A client's id as the backend sees it, unique across nodes: `{node}-{session}`.
    pub fn client_id(&self, session: &Session) -> String {
        self.client_id_of(session.id)
    }

    /// The id of the client whose session will be `session_id` (the connect check asks before
    /// the session exists; the id it gives is the one every later request carries).
    pub fn client_id_of(&self, session_id: u64) -> String {
        crate::session::client_id(&self.node_id, session_id)
    }

    /// `{"id","user"?,"remote"}`: who a session is, as the backend is told.
    pub fn client_json(&self, session: &Session) -> serde_json::Value {
        let p = session.principal();
        let mut c = serde_json::json!({"id": self.client_id(session), "remote": session.remote.to_string()});
        if p.is_authenticated() {
            c["user"] = p.subject.clone().into();
        }
        c
    }

    /// The headers of `request` that `backend.forward_headers` names, to keep with its session.
    pub fn forwarded(&self, request: &hyper::HeaderMap) -> Box<[(HeaderName, HeaderValue)]> {
        forwarded(&self.config.forward_headers, request)
    }

    /// A POST of `body` (JSON) to `{url}{path}` with the session's forwarded headers.
    fn post(&self, path: &str, body: Vec<u8>, session: Option<&Session>) -> reqwest::RequestBuilder {
        self.post_with(path, body, session.map_or(&[], Session::forwarded))
    }

    /// A POST of `body` (JSON) to `{url}{path}` with `headers` (the forwarded ones: nothing else
    /// of a client's request is ever passed on).
    fn post_with(
        &self,
        path: &str,
        body: Vec<u8>,
        headers: &[(HeaderName, HeaderValue)],
    ) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(body);
        for (name, value) in headers {
            req = req.header(name.clone(), value.clone());
        }
        req
    }

    /// POSTs `body` to `{url}{path}` and reads a JSON answer `{"result":R}` (R returned as it
    /// came) or `{"error":{"code","message"}}`, all within `backend.timeout`.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
        session: Option<&Session>,
    ) -> Result<Box<RawValue>, BackendError> {
        self.answer(self.post(path, body.to_string().into_bytes(), session)).await
    }

    /// [`Backend::post_json`] with `headers` rather than a session's.
    async fn post_json_with(
        &self,
        path: &str,
        body: &serde_json::Value,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Box<RawValue>, BackendError> {
        self.answer(self.post_with(path, body.to_string().into_bytes(), headers)).await
    }

    /// Sends `req` and reads its JSON answer, within `backend.timeout`.
    async fn answer(&self, req: reqwest::RequestBuilder) -> Result<Box<RawValue>, BackendError> {
        let timeout = self.config.timeout;
        let answer = tokio::time::timeout(timeout, async {
            let resp = send(req).await?;
            let body = read_bounded(resp, self.config.max_body_bytes).await?;
            parse_envelope(&body)
        })
        .await;
        answer.unwrap_or_else(|_| Err(too_slow(timeout)))
    }

    /// Asks the backend whether `session` may `kind` (`subscribe`, `publish`) `channel`:
    /// POST `{url}/{kind}` with `{"channel","client","data"?}`. `Ok(Some(D))` when the answer
    /// replaces the data (`{"result":{"data":D}}`), `Ok(None)` when it allows as it is.
    pub async fn check(
        &self,
        kind: &'static str,
        session: &Session,
        channel: &str,
        data: Option<&RawValue>,
    ) -> Result<Option<Box<RawValue>>, BackendError> {
        let mut body = serde_json::json!({"channel": channel, "client": self.client_json(session)});
        if let Some(d) = data {
            body["data"] = serde_json::from_str(d.get()).unwrap_or(serde_json::Value::Null);
        }
        let answer = self.post_json(&format!("/{kind}"), &body, Some(session)).await;
        self.metrics.backend.request(kind, answer.as_ref().map_or_else(BackendError::outcome, |_| "ok"));
        #[derive(Deserialize)]
        struct Allowed {
            #[serde(default)]
            data: Option<Box<RawValue>>,
        }
        let result = answer?;
        match serde_json::from_str::<Allowed>(result.get()) {
            Ok(a) => Ok(a.data),
            Err(_) => Err(BackendError::Unavailable(format!(
                "the backend's answer to /{kind} is not {{\"result\":{{}}}} or {{\"result\":{{\"data\":...}}}}"
            ))),
        }
    }

    /// A new stream id.
    fn stream_id(&self) -> u64 {
        self.next_stream.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes one of `session`'s `backend.max_in_flight` places for a proxied call.
    pub fn take_place(&self, session: &Arc<Session>) -> Option<InFlight> {
        // Every session of a node with a backend has its part (`Session::with_backend`).
        let calls = session.calls()?;
        let taken = calls.in_flight.fetch_add(1, Ordering::AcqRel);
        let place = InFlight(session.clone());
        (taken < self.config.max_in_flight).then_some(place)
    }
}

/// The headers of `request` among `names` (case-insensitive), in the order named.
pub fn forwarded(names: &[String], request: &hyper::HeaderMap) -> Box<[(HeaderName, HeaderValue)]> {
    let mut out = Vec::new();
    for name in names {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else { continue };
        for v in request.get_all(&name) {
            out.push((name.clone(), v.clone()));
        }
    }
    out.into_boxed_slice()
}

/// The error of a request that ran past `timeout`.
pub fn too_slow(timeout: Duration) -> BackendError {
    BackendError::Unavailable(format!("the backend did not answer within {timeout:?} (backend.timeout)"))
}

/// Sends `req`; a 5xx (or any status but 2xx and the 4xx that carry an error object) is
/// unavailable.
async fn send(req: reqwest::RequestBuilder) -> Result<reqwest::Response, BackendError> {
    let resp = req.send().await.map_err(|e| BackendError::Unavailable(unreachable("the backend", &e)))?;
    let status = resp.status();
    if status.is_server_error() || !(status.is_success() || status.is_client_error()) {
        return Err(BackendError::Unavailable(format!("the backend answered HTTP {}", status.as_u16())));
    }
    Ok(resp)
}

/// Why a request did not reach `who` ("the backend", "the upstream node"), without the URL or
/// its credentials.
pub(crate) fn unreachable(who: &str, e: &reqwest::Error) -> String {
    let what = if e.is_connect() {
        format!("cannot connect to {who}")
    } else if e.is_timeout() {
        format!("{who} did not answer in time")
    } else {
        format!("the request to {who} failed")
    };
    match std::error::Error::source(e) {
        Some(cause) => format!("{what}: {cause}"),
        None => what,
    }
}

/// Why a body could not be read whole.
pub(crate) enum ReadError {
    /// It is over the bound.
    TooBig,
    /// The connection broke off (the message says how).
    Broken(String),
}

/// The body of `resp`, at most `max` bytes (more is [`ReadError::TooBig`], read no further).
pub(crate) async fn read_capped(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, ReadError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(ReadError::TooBig);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| ReadError::Broken(e.without_url().to_string()))? {
        if body.len() + chunk.len() > max {
            return Err(ReadError::TooBig);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The backend's body of `resp`, at most `max` bytes.
async fn read_bounded(resp: reqwest::Response, max: usize) -> Result<Vec<u8>, BackendError> {
    read_capped(resp, max).await.map_err(|e| match e {
        ReadError::TooBig => BackendError::Unavailable(format!(
            "the backend's answer is over {max} bytes (backend.max_body_bytes)"
        )),
        ReadError::Broken(m) => BackendError::Unavailable(format!("reading the backend's answer: {m}")),
    })
}

/// `{"result":R}` -> R; `{"error":{"code","message"}}` -> refused; anything else unavailable.
fn parse_envelope(body: &[u8]) -> Result<Box<RawValue>, BackendError> {
    let malformed = || {
        BackendError::Unavailable("the backend's answer is not {\"result\":...} or {\"error\":{...}}".into())
    };
    // An object: serde would take an array for the struct too, by position.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(malformed());
    }
    let env: Envelope = serde_json::from_slice(body).map_err(|_| malformed())?;
    match (env.result, env.error) {
        (_, Some(e)) => Err(BackendError::Refused {
            code: e.code,
            message: if e.message.is_empty() { "refused by the backend".into() } else { e.message },
        }),
        (Some(r), None) => Ok(r.to_owned()),
        (None, None) => Err(malformed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_are_read_strictly() {
        assert_eq!(parse_envelope(br#"{"result":{"a":1}}"#).unwrap().get(), r#"{"a":1}"#);
        assert_eq!(parse_envelope(br#"{"result":null}"#).unwrap().get(), "null");
        match parse_envelope(br#"{"error":{"code":"forbidden","message":"no"}}"#) {
            Err(BackendError::Refused { code, message }) => {
                assert_eq!(code, "forbidden");
                assert_eq!(message, "no");
            }
            other => panic!("{other:?}"),
        }
        for bad in [&b"{}"[..], b"[1]", b"not json", b"", br#"{"result":1"#] {
            assert!(matches!(parse_envelope(bad), Err(BackendError::Unavailable(_))), "{bad:?}");
        }
    }

    #[test]
    fn only_named_headers_are_forwarded() {
        let mut h = hyper::HeaderMap::new();
        h.insert("authorization", "Bearer secret".parse().unwrap());
        h.insert("cookie", "s=1".parse().unwrap());
        h.insert("x-tenant", "acme".parse().unwrap());
        let f = forwarded(&["X-Tenant".into(), "x-missing".into()], &h);
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].0.as_str(), f[0].1.to_str().unwrap()), ("x-tenant", "acme"));
        assert!(forwarded(&[], &h).is_empty());
    }
}
