//! Proxied methods: a call of one of `backend.methods` is POSTed to `{url}/rpc/{method}` as
//! `{"method","params","client"}`, and the backend answers either
//! - `application/json`: `{"result":R}` (the call's result, relayed as it came) or
//!   `{"error":{"code","message"}}`; or
//! - `application/x-ndjson` (also `application/ndjson`, `application/jsonl`): a streamed reply,
//!   one JSON value per line, which [`Stream::relay`] passes to the client line by line as each
//!   arrives, never buffering more than the line being read.
//!
//! The request says which it may take: `Accept: application/json, application/x-ndjson` from
//! a door that can deliver a stream (`/ws/rpc`, `{type,data}` on `/ws`), `Accept:
//! application/json` from the others (`POST /rpc`, Hyperliquid `post`), which answer a stream
//! anyway with -32005.
//!
//! A streamed line reaches the client's outbox like a publication: counted by the
//! slow-consumer rule, so a client that does not read its stream is dropped as any slow
//! subscriber is and never holds more than its outbox allows. A stream ends with the backend's
//! body, with a line whose `type` is `end` or `error`, after `backend.stream_timeout`, on a
//! line that is not JSON or over `backend.max_body_bytes`, with `stream_cancel`, or when the
//! connection ends; each way but the first two drops the backend's response, which closes its
//! HTTP connection, so the backend sees the cancellation as a failed write. A connection has at
//! most `backend.max_in_flight` proxied calls and streams at once.

use super::{Backend, BackendError, InFlight, read_bounded, send, too_slow};
use crate::session::Session;
use crate::transport::{Outbox, Push, frame};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a proxied call's answer is.
#[derive(Debug)]
pub enum Reply {
    /// `{"result":R}`: R as the backend wrote it.
    Json(Box<RawValue>),
    /// A streamed reply, its response head read: [`Stream::relay`] passes its lines on.
    Stream(Stream),
}

/// How the doors ask: whether a streamed reply can be delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Takes {
    /// JSON answers only.
    Json,
    /// JSON answers and streamed replies.
    JsonOrStream,
}

/// The body of a proxied call.
#[derive(Serialize)]
struct CallBody<'a> {
    method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<&'a RawValue>,
    client: serde_json::Value,
}

/// What a streamed line says of itself: its `type`, if it has one.
#[derive(Deserialize)]
struct LineType<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
}

/// How a door writes a stream's lines to its client.
#[derive(Clone, Debug)]
pub enum Flavor {
    /// `/ws/rpc`: each line as `{"jsonrpc":"2.0","method":"stream","params":{"stream":ID,
    /// "result":LINE}}`; rpchub ends a stream the backend did not end with `{"type":"end"}`,
    /// and a failed one with `{"type":"error","data":{"code":"backend_unavailable","message"}}`.
    JsonRpc,
    /// `{type,data}` on `/ws`: each line as it is; a failed stream ends with
    /// `{"type":"error","data":{"code":"internal_error","message"}}`. The backend's own lines
    /// (`done`, an `end` type) tell the client that a stream is complete.
    Raw,
}

impl Flavor {
    /// The frame payload of `line` of stream `id`.
    fn render(&self, id: u64, line: &str) -> String {
        match self {
            Flavor::JsonRpc => {
                format!(
                    r#"{{"jsonrpc":"2.0","method":"stream","params":{{"stream":"{id}","result":{line}}}}}"#
                )
            }
            Flavor::Raw => line.to_string(),
        }
    }

    /// The last line of a stream that failed with `message`.
    fn failure(&self, message: &str) -> String {
        let code = match self {
            Flavor::JsonRpc => "backend_unavailable",
            Flavor::Raw => "internal_error",
        };
        serde_json::json!({"type": "error", "data": {"code": code, "message": message}}).to_string()
    }
}

/// Content types of a streamed reply.
const STREAM_TYPES: [&str; 3] = ["application/x-ndjson", "application/ndjson", "application/jsonl"];

impl Backend {
    /// Calls proxied method `method` for `session` with `params` as the client gave them,
    /// holding `place` (one of the session's `backend.max_in_flight`): the JSON answer, or the
    /// stream to relay (which keeps the place until it ends).
    pub async fn call(
        self: &Arc<Self>,
        session: &Arc<Session>,
        method: &str,
        params: Option<&RawValue>,
        takes: Takes,
        place: InFlight,
    ) -> Result<Reply, BackendError> {
        let started = Instant::now();
        let body = CallBody { method, params, client: self.client_json(session) };
        let body = serde_json::to_vec(&body).expect("a call body is plain JSON; qed");
        let accept = match takes {
            Takes::Json => "application/json",
            Takes::JsonOrStream => "application/json, application/x-ndjson",
        };
        let req =
            self.post(&format!("/rpc/{method}"), body, Some(session)).header(hyper::header::ACCEPT, accept);
        let timeout = self.config.timeout;
        let head = tokio::time::timeout(timeout, send(req)).await.unwrap_or_else(|_| Err(too_slow(timeout)));
        let resp = match head {
            Ok(r) => r,
            Err(e) => {
                self.metrics.backend.request("method", e.outcome());
                return Err(e);
            }
        };
        let streamed = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| STREAM_TYPES.iter().any(|s| t.trim().eq_ignore_ascii_case(s)));
        if streamed {
            self.metrics.backend.streams.inc();
            let id = self.stream_id();
            let calls = session.calls().expect("a session holding a place has its calls; qed");
            let cancel = calls.add_stream(id);
            return Ok(Reply::Stream(Stream {
                id,
                resp: Some(resp),
                deadline: started + self.config.stream_timeout,
                cancel,
                backend: self.clone(),
                session: session.clone(),
                _place: place,
            }));
        }
        let left = timeout.saturating_sub(started.elapsed());
        let answer = tokio::time::timeout(left, async {
            let body = read_bounded(resp, self.config.max_body_bytes).await?;
            super::parse_envelope(&body)
        })
        .await
        .unwrap_or_else(|_| Err(too_slow(timeout)));
        self.metrics.backend.request("method", answer.as_ref().map_or_else(BackendError::outcome, |_| "ok"));
        answer.map(Reply::Json)
    }
}

/// A streamed reply being relayed. Dropping it drops the backend's response (which closes its
/// connection) and gives the session's place back.
#[derive(Debug)]
pub struct Stream {
    id: u64,
    resp: Option<reqwest::Response>,
    deadline: Instant,
    cancel: CancellationToken,
    backend: Arc<Backend>,
    session: Arc<Session>,
    _place: InFlight,
}

/// How a stream ended, for its metric.
enum End {
    /// Its body ended, or a line ended it.
    Done,
    /// The backend failed it (the message says how).
    Failed(String),
    /// The client cancelled it or left.
    Cancelled,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.backend.metrics.backend.streams.dec();
        if let Some(calls) = self.session.calls() {
            calls.remove_stream(self.id);
        }
    }
}

impl Stream {
    /// Its id, as the client is told it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Passes every line to `outbox` as `flavor` writes them, until the stream ends.
    pub async fn relay(mut self, outbox: Arc<Outbox>, flavor: Flavor) {
        // The backend's response is dropped when `pump` returns, before anything else: the
        // backend sees the end at once.
        let end = self.pump(&outbox, &flavor).await;
        let outcome = match &end {
            End::Done => "ok",
            End::Failed(_) => "unavailable",
            End::Cancelled => "cancelled",
        };
        self.backend.metrics.backend.request("stream", outcome);
        match end {
            End::Done if matches!(flavor, Flavor::JsonRpc) => {
                let _ = push(&outbox, &flavor.render(self.id, r#"{"type":"end"}"#));
            }
            End::Failed(m) if !self.cancel.is_cancelled() => {
                let _ = push(&outbox, &flavor.render(self.id, &flavor.failure(&m)));
            }
            _ => {}
        }
    }

    /// Reads and passes on lines until the stream ends; says how it ended.
    async fn pump(&mut self, outbox: &Arc<Outbox>, flavor: &Flavor) -> End {
        let max = self.backend.config.max_body_bytes;
        let stream_timeout = self.backend.config.stream_timeout;
        let deadline = tokio::time::Instant::from_std(self.deadline);
        let mut line = Vec::new();
        let Some(mut resp) = self.resp.take() else { return End::Done };
        loop {
            let chunk = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return End::Cancelled,
                _ = tokio::time::sleep_until(deadline) => {
                    return End::Failed(format!(
                        "the streamed reply ran past {stream_timeout:?} (backend.stream_timeout)"
                    ));
                }
                chunk = resp.chunk() => chunk,
            };
            let chunk = match chunk {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => return End::Failed(format!("the backend's stream broke off: {e}")),
            };
            let mut rest = &chunk[..];
            while let Some(at) = rest.iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&rest[..at]);
                rest = &rest[at + 1..];
                if let Some(end) = self.line(&line, max, outbox, flavor) {
                    return end;
                }
                line.clear();
            }
            if line.len() + rest.len() > max {
                return End::Failed(format!(
                    "a line of the stream is over {max} bytes (backend.max_body_bytes)"
                ));
            }
            line.extend_from_slice(rest);
        }
        // A last line without its newline still counts.
        self.line(&line, max, outbox, flavor).unwrap_or(End::Done)
    }

    /// Passes one line on; `Some` when the stream ends with it.
    fn line(&self, line: &[u8], max: usize, outbox: &Arc<Outbox>, flavor: &Flavor) -> Option<End> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        if line.len() > max {
            return Some(End::Failed(format!(
                "a line of the stream is over {max} bytes (backend.max_body_bytes)"
            )));
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return Some(End::Failed("a line of the stream is not UTF-8".into()));
        };
        let Ok(kind) = serde_json::from_str::<LineType>(text).map(|t| t.kind) else {
            return Some(End::Failed("a line of the stream is not a JSON object".into()));
        };
        if self.cancel.is_cancelled() {
            return Some(End::Cancelled);
        }
        if push(outbox, &flavor.render(self.id, text)) != Push::Queued {
            // The client is gone or was dropped as a slow consumer.
            return Some(End::Cancelled);
        }
        matches!(kind.as_deref(), Some("end" | "error")).then_some(End::Done)
    }
}

/// Queues a text frame of `text` under the slow-consumer rule.
fn push(outbox: &Outbox, text: &str) -> Push {
    let (h, n) = frame::header_bytes(frame::OP_TEXT, text.len());
    outbox.push(&[&h[..n], text.as_bytes()])
}
