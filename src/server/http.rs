//! `POST /rpc`: JSON-RPC over HTTP. The same methods as over WebSocket, in a session of one
//! request, so without subscriptions. Before a call runs:
//! - the page's origin must be the server's own or allowed by CORS ([`super::cors`]; 403);
//! - the body must say it is JSON: `application/json` or `application/json-rpc` (415), so a
//!   form or `text/plain` post from another site (the CSRF "simple request") runs nothing;
//! - the body must arrive within `limits.request_timeout`, plus a second per
//!   `limits.request_min_rate` bytes (408 and the connection closed), and be at most
//!   `limits.max_message_bytes` (413 with -32007). It is copied out of hyper's buffers as it
//!   arrives, so a body sent a byte at a time holds its own size and no more.
//!
//! The content type, deadline and size rules are [`read_json`] and [`refusal`], which
//! `POST /api/publish` ([`super::api`]) reads its body with too, under its own [`BodyRules`].
//!
//! Calls are charged to the budget of the request's principal, or for anonymous clients of its
//! address ([`Budgets`](crate::session::Budgets)), shared by all its requests and connections:
//! -32003 over the rate; a client that keeps flooding gets 429 and its connection closed.

use super::{Node, client_addr, cors, principal_of};
use crate::frontends::jsonrpc;
use crate::gate::{Body, json_error, json_response};
use crate::rpc;
use crate::session::Session;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The media types `POST /rpc` takes.
const JSON_TYPES: [&str; 2] = ["application/json", "application/json-rpc"];

/// JSON-RPC over HTTP: the same methods, no subscriptions.
pub(super) async fn http_rpc(node: &Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let metrics = &node.metrics;
    let allow_origin = match node.cors.verdict(req.headers()) {
        cors::Verdict::Refused => {
            metrics.http_refused("origin");
            return cors::refused();
        }
        cors::Verdict::SameOrigin => None,
        cors::Verdict::Allowed(origin) => Some(origin),
    };
    let mut response = answer(node, req).await;
    if let Some(origin) = allow_origin {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// The answer to a request CORS let through.
async fn answer(node: &Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let (metrics, limits) = (&node.metrics, &node.config.limits);
    let remote = client_addr(&req);
    let principal = principal_of(&req);
    let forwarded = node.backend.as_ref().map(|b| b.forwarded(req.headers()));
    let max = limits.max_message_bytes;
    let body = match read_json(node, req, &RPC_BODY).await {
        Ok(b) => b,
        Err(BodyError::TooBig) => {
            metrics.http_refused("too_big");
            let err = rpc::error::too_big(
                "Request is too big",
                format!("the limit is {max} bytes (limits.max_message_bytes)"),
            );
            let body = jsonrpc::error_json(jsonrpsee::types::Id::Null, err);
            return closing(json_response(StatusCode::PAYLOAD_TOO_LARGE, body));
        }
        Err(e) => return refusal(node, &RPC_BODY, e),
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        let body =
            jsonrpc::error_json(jsonrpsee::types::Id::Null, rpc::error::standard(rpc::error::PARSE_ERROR));
        return json_response(StatusCode::OK, body);
    };
    let id = node.next_session.fetch_add(1, Ordering::Relaxed);
    let budget = node.budgets.of(&principal, remote.ip());
    let session = Session::over_http(id, remote, jsonrpc::DOOR, principal, budget);
    let session = Arc::new(match forwarded {
        Some(headers) => session.with_backend(headers),
        None => session,
    });
    let answer = node.jsonrpc.handle_http(&session, text).await;
    if answer.flood {
        metrics.http_refused("flood");
        let err: jsonrpsee::types::ErrorObjectOwned = rpc::RpcError::RateLimited(format!(
            "far over the rate of {} calls a second (limits.calls_per_second) for too long; the \
             connection is closed",
            session.principal().call_rate(limits.calls_per_second).unwrap_or(0)
        ))
        .into();
        let mut r = json_response(
            StatusCode::TOO_MANY_REQUESTS,
            jsonrpc::error_json(jsonrpsee::types::Id::Null, err),
        );
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return closing(r);
    }
    match answer.json {
        Some(json) => json_response(StatusCode::OK, json),
        None => {
            Response::builder().status(StatusCode::NO_CONTENT).body(Body::default()).expect("static; qed")
        }
    }
}

/// What a route takes as its body: the media types, and the limit with its config key.
#[derive(Debug)]
pub(super) struct BodyRules {
    /// The route, for messages (`POST /rpc`).
    pub(super) route: &'static str,
    /// The media types taken (their essence; parameters such as `charset` are allowed).
    pub(super) types: &'static [&'static str],
    /// The `Accept-Post` header of a 415.
    pub(super) accept_post: &'static str,
    /// The size limit's value.
    pub(super) max: fn(&crate::config::Limits) -> usize,
    /// The size limit's config key.
    pub(super) max_key: &'static str,
}

/// The body rules of `POST /rpc`.
const RPC_BODY: BodyRules = BodyRules {
    route: "POST /rpc",
    types: &JSON_TYPES,
    accept_post: "application/json, application/json-rpc",
    max: |l| l.max_message_bytes,
    max_key: "limits.max_message_bytes",
};

/// Reads the JSON body of `req` under `rules` and the node's deadline: the content type first
/// (nothing is read of a body of another type), then at most the limit's bytes within
/// `limits.request_timeout` plus a second per `limits.request_min_rate` bytes.
pub(super) async fn read_json(
    node: &Node,
    req: Request<Incoming>,
    rules: &BodyRules,
) -> Result<Vec<u8>, BodyError> {
    if !is_json(req.headers(), rules.types) {
        return Err(BodyError::NotJson);
    }
    let limits = &node.config.limits;
    read_body(req.into_body(), (rules.max)(limits), limits.request_timeout, limits.request_min_rate).await
}

/// The answer to a body [`read_json`] refused, with the JSON error body, counted in
/// `rpchub_http_refused_total`; the connection is closed where the body was left unread.
pub(super) fn refusal(node: &Node, rules: &BodyRules, e: BodyError) -> Response<Body> {
    let (metrics, limits) = (&node.metrics, &node.config.limits);
    match e {
        BodyError::NotJson => {
            metrics.http_refused("media_type");
            let message =
                format!("{} takes a JSON body with Content-Type: {}", rules.route, rules.types.join(" or "));
            let mut r = json_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, &message);
            r.headers_mut().insert("accept-post", HeaderValue::from_static(rules.accept_post));
            r
        }
        BodyError::TooBig => {
            metrics.http_refused("too_big");
            let message = format!(
                "the body is too big: the limit is {} bytes ({})",
                (rules.max)(limits),
                rules.max_key
            );
            closing(json_error(StatusCode::PAYLOAD_TOO_LARGE, &message))
        }
        BodyError::TimedOut => {
            metrics.http_refused("request_timeout");
            let message = format!(
                "the request body did not arrive in time: {:?} (limits.request_timeout), and a \
                 second more per {} bytes (limits.request_min_rate)",
                limits.request_timeout, limits.request_min_rate
            );
            closing(json_error(StatusCode::REQUEST_TIMEOUT, &message))
        }
        BodyError::Unreadable => {
            closing(json_error(StatusCode::BAD_REQUEST, "could not read the request body"))
        }
    }
}

/// True if the request says its body is of one of `types`.
fn is_json(headers: &HeaderMap, types: &[&str]) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = value.split(';').next().unwrap_or("").trim();
    types.iter().any(|t| essence.eq_ignore_ascii_case(t))
}

/// `r`, telling hyper to close the connection after it (whatever of the request is unread).
pub(super) fn closing(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Why a body was not read.
#[derive(Debug, PartialEq)]
pub(super) enum BodyError {
    /// Not of a JSON media type the route takes (415).
    NotJson,
    /// Over the route's limit (413).
    TooBig,
    /// Not arrived in time (408).
    TimedOut,
    /// The connection failed while it was read (400).
    Unreadable,
}

/// Reads a body of at most `max` bytes that must arrive within `timeout`, extended by a second
/// per `min_rate` bytes received (0: not extended). Each chunk is copied into one buffer of
/// the body's size and hyper's is let go at once.
async fn read_body(
    mut body: Incoming,
    max: usize,
    timeout: Duration,
    min_rate: u32,
) -> Result<Vec<u8>, BodyError> {
    let announced = body.size_hint().lower();
    if announced > max as u64 {
        return Err(BodyError::TooBig);
    }
    let start = Instant::now();
    let mut buf = Vec::with_capacity(announced as usize);
    loop {
        let earned = if min_rate == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(buf.len() as f64 / min_rate as f64)
        };
        let deadline = tokio::time::Instant::from_std(start + timeout + earned);
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyError::TimedOut),
            Ok(None) => return Ok(buf),
            Ok(Some(frame)) => frame.map_err(|_| BodyError::Unreadable)?,
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(BodyError::TooBig);
            }
            buf.extend_from_slice(&data);
        }
    }
}
