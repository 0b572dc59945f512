//! `POST /api/publish`: the server API for backends. One publication `{"channel","data",
//! "event"?,"idempotency_key"?,"key"?}` answers its position `{"epoch","offset"}`; a JSON array of up to
//! [`MAX_PUBLISH_BATCH`] of them answers an array of results in order
//! ([`crate::rpc::server_api`]). In order:
//! - a token is required (the gate already answered 401 for an invalid one): none is 401, and
//!   nothing of the body is read;
//! - the body is read as `POST /rpc`'s is ([`super::http::read_json`]): `application/json`
//!   (415), at most `limits.max_publish_body_bytes` (413), within the request deadline (408);
//! - a body that is neither a publication nor an array of 1 to 1,000 items is 400;
//! - each publication follows the `publish` method's rules ([`Handlers::publish_as`]) and is
//!   charged one call to the principal's budget, the one its `POST /rpc` calls use (the admin
//!   token has none). A single publication's failure is its HTTP status (400, 403, 429, 503); a
//!   batch item's is its own result, and the batch is 200.
//!
//! No CORS: this route is for servers, so a browser's preflight (`OPTIONS`) is 405 and no page
//! of another origin can send it a JSON body.
//!
//! [`Handlers::publish_as`]: crate::rpc::Handlers::publish_as

use super::http::{BodyRules, closing, read_json, refusal};
use super::{Node, client_addr, principal_of};
use crate::constants::MAX_PUBLISH_BATCH;
use crate::gate::{Body, json_error, json_response};
use crate::rpc::RpcError;
use crate::rpc::server_api::{self, PublishBody, PublishRequest, PublishResult};
use crate::session::{Session, Verdict};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The session door name of the server API, for logs and hooks.
const DOOR: &str = "api";

/// The body rules of `POST /api/publish`.
const PUBLISH_BODY: BodyRules = BodyRules {
    route: "POST /api/publish",
    types: &["application/json"],
    accept_post: "application/json",
    max: |l| l.max_publish_body_bytes,
    max_key: "limits.max_publish_body_bytes",
};

/// 401 for a request that came without a token (counted as `auth`), with `message` saying which
/// token the route takes; nothing of the body is read, so the connection is closed.
fn needs_token(node: &Node, message: &str) -> Response<Body> {
    node.metrics.http_refused("auth");
    let mut r = json_error(StatusCode::UNAUTHORIZED, message);
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    closing(r)
}

/// The answer to `POST /api/publish`.
pub(super) async fn publish(node: &Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let principal = principal_of(&req);
    if !principal.is_authenticated() {
        return needs_token(
            node,
            "POST /api/publish needs a token (the admin token, or one with publish rights for the \
             channel) in Authorization: Bearer, the token header or ?token=",
        );
    }
    let remote = client_addr(&req);
    let body = match read_json(node, req, &PUBLISH_BODY).await {
        Ok(b) => b,
        Err(e) => return refusal(node, &PUBLISH_BODY, e),
    };
    let parsed = match server_api::parse(&body) {
        Ok(p) => p,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, &message),
    };
    drop(body);
    let id = node.next_session.fetch_add(1, Ordering::Relaxed);
    let budget = node.budgets.of(&principal, remote.ip());
    let session = Session::over_http(id, remote, DOOR, principal, budget);
    match parsed {
        PublishBody::One(p) => match publish_one(node, &session, p).await {
            Ok(position) => json_response(StatusCode::OK, to_json(&position)),
            Err((e, flood)) => {
                let status = StatusCode::from_u16(server_api::status_of(&e)).expect("a valid status; qed");
                let mut r = json_error(status, &e.to_string());
                if status == StatusCode::TOO_MANY_REQUESTS {
                    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                if flood { closing(r) } else { r }
            }
        },
        PublishBody::Batch(items) => {
            debug_assert!(items.len() <= MAX_PUBLISH_BATCH);
            let mut results = Vec::with_capacity(items.len());
            let mut flooded = false;
            for item in items {
                let r = match item {
                    Ok(p) => publish_one(node, &session, p).await.map_err(|(e, flood)| {
                        flooded |= flood;
                        e
                    }),
                    Err(e) => Err(e),
                };
                results.push(PublishResult::of(r));
            }
            let r = json_response(StatusCode::OK, to_json(&results));
            if flooded { closing(r) } else { r }
        }
    }
}

/// Publishes `p` for `session`, charged one call; `Err` says why not, and whether the budget
/// calls it a flood (the connection is then closed after the answer).
async fn publish_one(
    node: &Node,
    session: &Session,
    p: PublishRequest,
) -> Result<crate::broker::StreamPosition, (RpcError, bool)> {
    match session.charge_call() {
        Verdict::Allow => {}
        verdict => {
            let rate = session.principal().call_rate(node.config.limits.calls_per_second).unwrap_or(0);
            let e = RpcError::RateLimited(format!(
                "over the rate of {rate} publications a second of this token (limits.calls_per_second, \
                 or the key's rate); retry after a second"
            ));
            return Err((e, verdict == Verdict::Flood));
        }
    }
    node.publisher
        .publish_as(session, &p.channel, p.data, p.event, p.idempotency_key, p.key)
        .await
        .map_err(|e| (e, false))
}

/// `v` as JSON text.
fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("positions and results serialize; qed")
}

/// The body rules of `POST /api/events/websocket/{instance}`.
const INSTANCE_BODY: BodyRules = BodyRules {
    route: "POST /api/events/websocket/{instance}",
    types: &["application/json"],
    accept_post: "application/json",
    max: |l| l.max_message_bytes.max(16 * 1024),
    max_key: "limits.max_message_bytes (at least 16 KiB)",
};

/// The answer to `POST /api/events/websocket/{instance}`: creates or changes the instance with
/// the admin token (401 without a token, 403 with another), 400 for a bad name or body, 415 for
/// a body that is not JSON; 200 with the instance as it now is, without its token.
pub(super) async fn configure_instance(node: &Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    use crate::frontends::instance::{InstanceUpdate, public_view};
    let principal = principal_of(&req);
    if !principal.is_authenticated() {
        return needs_token(
            node,
            "POST /api/events/websocket/{instance} needs the admin token in Authorization: Bearer, \
             the token header or ?token=",
        );
    }
    if !principal.is_admin() {
        return closing(json_error(StatusCode::FORBIDDEN, "only the admin token may configure instances"));
    }
    let name = crate::routes::RouteMatch::of(req.extensions())
        .and_then(|m| m.param("instance"))
        .unwrap_or("")
        .to_string();
    if !crate::config::valid_instance_name(&name) {
        return closing(json_error(
            StatusCode::BAD_REQUEST,
            "an instance name is 1 to 64 of A-Z a-z 0-9 _ -, and not \"rpc\"",
        ));
    }
    let body = match read_json(node, req, &INSTANCE_BODY).await {
        Ok(b) => b,
        Err(e) => return refusal(node, &INSTANCE_BODY, e),
    };
    let update: InstanceUpdate = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "the body must be {{\"enabled\":bool,\"events\":[..],\"mediaBase64\":bool,\"token\"?:string}}: {e}"
                ),
            );
        }
    };
    let instance = match update.apply(node.instances.get(&name)) {
        Ok(i) => i,
        Err(m) => return json_error(StatusCode::BAD_REQUEST, &m),
    };
    if let Err(e) = node.instances.set(&name, instance.clone()) {
        tracing::error!("{e}");
        return json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error: the instance could not be saved",
        );
    }
    tracing::info!(instance = %name, enabled = instance.enabled, "instance configured");
    json_response(StatusCode::OK, public_view(&name, &instance).to_string())
}
