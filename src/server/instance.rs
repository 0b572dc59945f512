//! `GET /ws/{instance}` before its upgrade: the instance (404 unknown), its token (401), whether
//! it is enabled (400), `?since=` (400), then the upgrade of [`super::upgrade`] through the
//! instance's [`Opening`], with the principal that may read its channel. The 101 is sent once
//! the connection's subscription is live.

use super::{Node, upgrade};
use crate::frontends::instance::{Instances, Opening, since_of};
use crate::gate::{Body, json_error};
use crate::metrics::Rejection;
use crate::routes::RouteMatch;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use std::sync::Arc;

/// The answer to an upgrade to `/ws/{instance}`.
pub(super) async fn upgrade(node: &Arc<Node>, mut req: Request<Incoming>) -> Response<Body> {
    let name = RouteMatch::of(req.extensions()).and_then(|m| m.param("instance")).unwrap_or("").to_string();
    let Some(instance) = node.instances.get(&name) else {
        node.metrics.upgrade_rejected(Rejection::NotFound);
        return json_error(StatusCode::NOT_FOUND, "unknown instance");
    };
    let unauthorized = |m: &str| {
        node.metrics.upgrade_rejected(Rejection::Auth);
        let mut r = json_error(StatusCode::UNAUTHORIZED, m);
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    };
    match crate::gate::token::extract(&req) {
        Err(m) => return unauthorized(m),
        Ok(None) => {
            return unauthorized(
                "this instance needs its token (or the admin token) in the token header, \
                 Authorization: Bearer or ?token=",
            );
        }
        Ok(Some(t)) if !node.instances.token_opens(&instance, &t) => {
            return unauthorized("invalid token for this instance");
        }
        Ok(Some(_)) => {}
    }
    if !instance.enabled {
        return json_error(
            StatusCode::BAD_REQUEST,
            "instance not enabled: enable it with POST /api/events/websocket/{instance} {\"enabled\":true}",
        );
    }
    let since = match since_of(req.uri().query()) {
        Ok(s) => s,
        Err(m) => return json_error(StatusCode::BAD_REQUEST, &m),
    };
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string);
    let base_url = format!("http://{}", host.unwrap_or_else(|| node.config.listen.to_string()));
    req.extensions_mut().insert(Arc::new(Instances::principal(&name)));
    let (tx, live) = tokio::sync::oneshot::channel();
    let opening = Opening {
        instances: node.instances.clone(),
        name,
        base_url,
        since,
        live: parking_lot::Mutex::new(Some(tx)),
    };
    let response = upgrade::upgrade(node, &opening, req);
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The subscription is made before the 101 goes out (its history read, live from then on).
        let _ = tokio::time::timeout(crate::constants::INSTANCE_LIVE_WAIT, live).await;
    }
    response
}
