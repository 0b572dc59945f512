//! The upstream JSON-RPC node (`[upstream]`): calls of methods rpchub does not serve itself,
//! forwarded unchanged as JSON-RPC 2.0 over HTTP to an HTTP-only node, so its clients reach the
//! node and rpchub's subscriptions over one socket.
//!
//! - Which methods: `upstream.methods` (globs); empty, every method that neither rpchub's method
//!   table nor the backend (`backend.methods`) serves. The dispatcher looks in that order, so a
//!   method rpchub defines is never forwarded, whatever the globs say.
//! - Ids: each call goes up with a numeric id unique on the node, and its answer comes down
//!   with the client's id (a string, a number or null) put back, so two clients using the same
//!   ids never see each other's answers. A notification goes up as a
//!   notification; only the HTTP status of its request is awaited.
//! - Batches: a client's batch sends its forwarded calls up as one JSON-RPC batch; the answers
//!   are matched by id, and a call the node's batch answer leaves out gets -32021.
//! - Byte for byte: the node's answer is parsed only to find each `id` and the raw `result` or
//!   `error` slice, which is copied into `{"jsonrpc":"2.0","id":ORIG,"result":RAW}` as it came
//!   (never re-encoded: a large block is copied once). A node's error object is relayed as it
//!   is: it is the node's answer, not rpchub's.
//! - Failures ([`Failure`]): the node down, slower than `upstream.timeout`, answering a status
//!   other than 2xx without a JSON-RPC body, or sending something that is not a JSON-RPC answer:
//!   [`Failure::Unavailable`] for every call of the request (-32021, the connection stays open);
//!   an answer over `limits.max_response_bytes`: [`Failure::TooBig`] (-32007, as the dispatcher
//!   answers its own oversized answers). Messages never carry the URL or its credentials.
//!
//! Nothing of the client's request but the calls goes up: no header, no token.

use crate::auth::Globs;
use crate::config::Config;
use crate::metrics::Metrics;
use jsonrpsee::types::Id;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The `kind` label of the upstream's requests in `rpchub_backend_requests_total`.
const KIND: &str = "upstream";

/// One call to forward, borrowed from the client's message.
#[derive(Debug, Clone)]
pub struct UpCall<'a> {
    /// The method, as the client named it.
    pub method: Cow<'a, str>,
    /// The params, as the client wrote them.
    pub params: Option<&'a RawValue>,
    /// The client's id; `None` for a notification.
    pub id: Option<Id<'a>>,
}

/// Why a call got no answer from the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Down, slow, a non-2xx status without a JSON-RPC body, malformed, or the call missing from
    /// a batch answer (-32021 `backend_unavailable`). The message says which.
    Unavailable(String),
    /// The node's answer is over `limits.max_response_bytes` (the limit), so it was not read.
    TooBig(usize),
}

/// The node's answer to a call, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// `{"jsonrpc":"2.0","id":ID,"result":R}` or `..."error":E}`: the client's id, R or E as the
    /// node wrote them.
    pub json: String,
    /// The node answered with an error object.
    pub refused: bool,
}

/// A call's outcome: the answer to relay, or why there is none.
pub type Relayed = Result<Relay, Failure>;

/// The upstream node of a rpchub node.
#[derive(Debug)]
pub struct Upstream {
    http: reqwest::Client,
    url: String,
    timeout: Duration,
    /// `upstream.methods`; empty: every method not served otherwise.
    methods: Globs,
    /// `backend.methods`: served by the backend, so never forwarded.
    backend: Globs,
    /// The largest answer read from the node: `limits.max_response_bytes`.
    max_answer: usize,
    /// The next id of a call going up, unique on the node.
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
}

/// One answer object of the node: its id and the raw `result` or `error`.
#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

impl<'a> Reply<'a> {
    /// The raw `result` or `error`, with its key; `None` when it has neither, or both (an
    /// `"error":null` beside a result counts as no error).
    fn outcome(&self) -> Option<(&'static str, &'a RawValue)> {
        let error = self.error.filter(|e| e.get() != "null");
        match (self.result, error) {
            (None, Some(e)) => Some(("error", e)),
            (Some(r), Some(e)) if r.get() == "null" => Some(("error", e)),
            (Some(_), Some(_)) => None,
            (Some(r), None) => Some(("result", r)),
            (None, None) => None,
        }
    }

    /// The answer to the call of client id `id`, if this reply is one.
    fn relay(&self, id: &Id<'_>) -> Relayed {
        let (key, raw) = self.outcome().ok_or_else(malformed)?;
        Ok(Relay { json: relay(id, key, raw), refused: key == "error" })
    }

    /// The id as the number rpchub sent, if it is one.
    fn number(&self) -> Option<u64> {
        self.id.and_then(|id| id.get().parse().ok())
    }
}

impl Upstream {
    /// The upstream node `config.upstream` describes, if it has a URL.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Option<Arc<Upstream>>, String> {
        let u = &config.upstream;
        if !u.is_on() {
            return Ok(None);
        }
        let methods = Globs::new(&u.methods).map_err(|e| format!("upstream.methods: {e}"))?;
        let backend = if config.backend.is_on() {
            Globs::new(&config.backend.methods).map_err(|e| format!("backend.methods: {e}"))?
        } else {
            Globs::default()
        };
        Ok(Some(Arc::new(Upstream {
            http: super::http_client(u.timeout)?,
            url: u.url.clone(),
            timeout: u.timeout,
            methods,
            backend,
            max_answer: config.limits.max_response_bytes,
            next_id: AtomicU64::new(1),
            metrics,
        })))
    }

    /// True when calls of `method`, which rpchub's method table does not hold, go to the node.
    pub fn forwards(&self, method: &str) -> bool {
        !self.backend.matches(method) && (self.methods.patterns().is_empty() || self.methods.matches(method))
    }

    /// Forwards one call (not in a batch); `None` for a notification, which gets no answer.
    pub async fn call(&self, call: UpCall<'_>) -> Option<Relayed> {
        let mut body =
            String::with_capacity(64 + call.method.len() + call.params.map_or(0, |p| p.get().len()));
        write_call(&mut body, &call, call.id.is_some().then(|| self.next_id()));
        let Some(id) = call.id else {
            let outcome = self.notify(body).await;
            self.metrics.backend.request(KIND, if outcome.is_ok() { "ok" } else { "unavailable" });
            return None;
        };
        // One request, one answer: it is this call's, whatever id the node wrote in it.
        let relayed = self
            .post(body)
            .await
            .and_then(|text| serde_json::from_str::<Reply>(&text).map_err(|_| malformed())?.relay(&id));
        self.count(&relayed);
        Some(relayed)
    }

    /// Forwards the calls of a client's batch as one JSON-RPC batch. Returns an outcome per call,
    /// in the order given (`None` for a notification).
    pub async fn batch(&self, calls: &[UpCall<'_>]) -> Vec<Option<Relayed>> {
        let mut body = String::from("[");
        let mut ups = Vec::with_capacity(calls.len());
        for call in calls {
            if body.len() > 1 {
                body.push(',');
            }
            let up = call.id.is_some().then(|| self.next_id());
            write_call(&mut body, call, up);
            ups.push(up);
        }
        body.push(']');
        if ups.iter().all(Option::is_none) {
            let outcome = self.notify(body).await;
            for _ in calls {
                self.metrics.backend.request(KIND, if outcome.is_ok() { "ok" } else { "unavailable" });
            }
            return calls.iter().map(|_| None).collect();
        }
        let posted = self.post(body).await;
        let notified = if posted.is_ok() { "ok" } else { "unavailable" };
        let answers: Vec<_> = match posted {
            Ok(text) => match_batch(&text, calls, &ups),
            Err(f) => calls.iter().map(|c| c.id.as_ref().map(|_| Err(f.clone()))).collect(),
        };
        for a in &answers {
            match a {
                Some(a) => self.count(a),
                None => self.metrics.backend.request(KIND, notified),
            }
        }
        answers
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a call's outcome: answered with a result, with the node's error object, or not.
    fn count(&self, relayed: &Relayed) {
        let outcome = match relayed {
            Ok(r) if r.refused => "refused",
            Ok(_) => "ok",
            Err(_) => "unavailable",
        };
        self.metrics.backend.request(KIND, outcome);
    }

    /// POSTs `body` and returns the node's answer as text, all within `upstream.timeout`.
    async fn post(&self, body: String) -> Result<String, Failure> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, async {
            let resp = self.request(body).send().await.map_err(|e| Failure::Unavailable(unreachable(&e)))?;
            let status = resp.status();
            let body = read_bounded(resp, self.max_answer).await?;
            let text = String::from_utf8(body)
                .map_err(|_| Failure::Unavailable("the upstream node's answer is not UTF-8 JSON".into()))?;
            // A node may answer an error status with a JSON-RPC error body: that is its answer.
            if !status.is_success() && !looks_like_answer(&text) {
                return Err(Failure::Unavailable(format!(
                    "the upstream node answered HTTP {} without a JSON-RPC answer",
                    status.as_u16()
                )));
            }
            Ok(text)
        })
        .await
        .unwrap_or_else(|_| Err(too_slow(timeout)))
    }

    /// POSTs notifications: only the status is awaited, the body is not read.
    async fn notify(&self, body: String) -> Result<(), Failure> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, async {
            let resp = self.request(body).send().await.map_err(|e| Failure::Unavailable(unreachable(&e)))?;
            if resp.status().is_server_error() {
                return Err(Failure::Unavailable(format!(
                    "the upstream node answered HTTP {}",
                    resp.status().as_u16()
                )));
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|_| Err(too_slow(timeout)))
    }

    fn request(&self, body: String) -> reqwest::RequestBuilder {
        self.http
            .post(&self.url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "application/json")
            .body(body)
    }
}

/// Appends `{"jsonrpc":"2.0","id":UP,"method":M,"params":P}` (no id for a notification, no
/// params when the client gave none), the params copied as the client wrote them.
fn write_call(out: &mut String, call: &UpCall<'_>, up: Option<u64>) {
    use std::fmt::Write;
    out.push_str(r#"{"jsonrpc":"2.0","#);
    if let Some(up) = up {
        let _ = write!(out, r#""id":{up},"#);
    }
    out.push_str(r#""method":"#);
    out.push_str(&serde_json::to_string(&call.method).expect("a string serializes; qed"));
    if let Some(p) = call.params {
        out.push_str(r#","params":"#);
        out.push_str(p.get());
    }
    out.push('}');
}

/// `{"jsonrpc":"2.0","id":ID,"KEY":RAW}`, RAW copied as the node wrote it.
fn relay(id: &Id<'_>, key: &str, raw: &RawValue) -> String {
    let id = serde_json::to_string(id).expect("an id serializes; qed");
    let mut out = String::with_capacity(32 + id.len() + raw.get().len());
    out.push_str(r#"{"jsonrpc":"2.0","id":"#);
    out.push_str(&id);
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":");
    out.push_str(raw.get());
    out.push('}');
    out
}

/// The answers of a batch's calls, matched by the ids they went up with.
fn match_batch(text: &str, calls: &[UpCall<'_>], ups: &[Option<u64>]) -> Vec<Option<Relayed>> {
    match serde_json::from_str::<Vec<Reply>>(text) {
        Ok(replies) => calls
            .iter()
            .zip(ups)
            .map(|(call, up)| {
                let (id, up) = (call.id.as_ref()?, (*up)?);
                let reply = replies.iter().find(|r| r.number() == Some(up));
                Some(match reply {
                    Some(r) => r.relay(id),
                    None => Err(Failure::Unavailable(
                        "the upstream node's answer to the batch has no answer for this call".into(),
                    )),
                })
            })
            .collect(),
        // One error object for the whole batch (a node refusing batches, or this one): the
        // node's answer to each call.
        Err(_) => {
            let whole = serde_json::from_str::<Reply>(text).ok();
            let error = whole.as_ref().and_then(|r| r.error.filter(|_| r.result.is_none()));
            calls
                .iter()
                .map(|call| {
                    let id = call.id.as_ref()?;
                    Some(
                        error
                            .map(|e| Relay { json: relay(id, "error", e), refused: true })
                            .ok_or_else(malformed),
                    )
                })
                .collect()
        }
    }
}

fn malformed() -> Failure {
    Failure::Unavailable("the upstream node's answer is not a JSON-RPC 2.0 answer".into())
}

/// True when `text` is a JSON-RPC answer object or an array of them.
fn looks_like_answer(text: &str) -> bool {
    let one = |r: &Reply| r.outcome().is_some();
    serde_json::from_str::<Reply>(text).is_ok_and(|r| one(&r))
        || serde_json::from_str::<Vec<Reply>>(text).is_ok_and(|v| !v.is_empty() && v.iter().all(one))
}

/// The failure of a request that ran past `timeout`.
fn too_slow(timeout: Duration) -> Failure {
    Failure::Unavailable(format!("the upstream node did not answer within {timeout:?} (upstream.timeout)"))
}

/// Why a request did not reach the node, without the URL or its credentials.
fn unreachable(e: &reqwest::Error) -> String {
    let what = if e.is_connect() {
        "cannot connect to the upstream node"
    } else if e.is_timeout() {
        "the upstream node did not answer in time"
    } else {
        "the request to the upstream node failed"
    };
    match std::error::Error::source(e) {
        Some(cause) => format!("{what}: {cause}"),
        None => what.to_string(),
    }
}

/// The body of `resp`, at most `max` bytes (more: [`Failure::TooBig`], read no further).
async fn read_bounded(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, Failure> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(Failure::TooBig(max));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        Failure::Unavailable(format!("reading the upstream node's answer: {}", e.without_url()))
    })? {
        if body.len() + chunk.len() > max {
            return Err(Failure::TooBig(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up<'a>(method: &'a str, params: Option<&'a RawValue>, id: Option<Id<'a>>) -> UpCall<'a> {
        UpCall { method: method.into(), params, id }
    }

    #[test]
    fn calls_go_up_with_their_params_as_written() {
        let params: &RawValue = serde_json::from_str(r#"[ "0xAb",  "latest" ]"#).unwrap();
        let mut out = String::new();
        write_call(&mut out, &up("eth_getBalance", Some(params), Some(Id::Str("x".into()))), Some(7));
        assert_eq!(
            out,
            r#"{"jsonrpc":"2.0","id":7,"method":"eth_getBalance","params":[ "0xAb",  "latest" ]}"#
        );
        out.clear();
        write_call(&mut out, &up("a\"b", None, None), None);
        assert_eq!(out, r#"{"jsonrpc":"2.0","method":"a\"b"}"#);
    }

    #[test]
    fn answers_come_down_byte_for_byte_with_the_clients_id() {
        let text = r#"{ "result" : { "b":1,   "a":[ 2 ] } , "id":7,"jsonrpc":"2.0"}"#;
        let r: Reply = serde_json::from_str(text).unwrap();
        let (key, raw) = r.outcome().unwrap();
        assert_eq!(
            relay(&Id::Str("c-1".into()), key, raw),
            r#"{"jsonrpc":"2.0","id":"c-1","result":{ "b":1,   "a":[ 2 ] }}"#
        );
        assert_eq!(
            relay(&Id::Null, key, raw),
            r#"{"jsonrpc":"2.0","id":null,"result":{ "b":1,   "a":[ 2 ] }}"#
        );
        let e: Reply = serde_json::from_str(
            r#"{"jsonrpc":"2.0","id":7,"error":{"code":3,"message":"execution reverted"}}"#,
        )
        .unwrap();
        assert_eq!(e.outcome().unwrap().0, "error");
        let both: Reply = serde_json::from_str(r#"{"id":7,"result":"0x1","error":null}"#).unwrap();
        assert_eq!(both.outcome().unwrap().1.get(), r#""0x1""#);
        let neither: Reply = serde_json::from_str(r#"{"id":7}"#).unwrap();
        assert!(neither.outcome().is_none());
    }

    #[test]
    fn a_batch_answer_is_matched_by_id_and_a_missing_one_is_unavailable() {
        let calls =
            [up("a", None, Some(Id::Number(1))), up("n", None, None), up("b", None, Some(Id::Number(1)))];
        let ups = [Some(10), None, Some(11)];
        let got = match_batch(r#"[{"jsonrpc":"2.0","id":11,"result":"B"}]"#, &calls, &ups);
        assert!(matches!(&got[0], Some(Err(Failure::Unavailable(_)))), "{got:?}");
        assert_eq!(got[1], None);
        assert_eq!(got[2].clone().unwrap().unwrap().json, r#"{"jsonrpc":"2.0","id":1,"result":"B"}"#);
        let whole = match_batch(
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"no batches"}}"#,
            &calls,
            &ups,
        );
        let whole = whole[0].clone().unwrap().unwrap();
        assert_eq!(whole.json, r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"no batches"}}"#);
        assert!(whole.refused);
        let bad = match_batch("<html>", &calls, &ups);
        assert!(matches!(&bad[2], Some(Err(Failure::Unavailable(_)))));
    }

    #[test]
    fn error_answers_are_told_from_results() {
        let r: Reply = serde_json::from_str(r#"{"jsonrpc":"2.0","id":1,"error":{"code":3}}"#).unwrap();
        assert!(r.relay(&Id::Number(1)).unwrap().refused);
        let r: Reply = serde_json::from_str(r#"{"jsonrpc":"2.0","id":1,"result":{"error":1}}"#).unwrap();
        assert!(!r.relay(&Id::Number(1)).unwrap().refused);
        assert!(looks_like_answer(r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"x"}}"#));
        assert!(!looks_like_answer("Bad Gateway"));
        assert!(!looks_like_answer("[]"));
    }
}
