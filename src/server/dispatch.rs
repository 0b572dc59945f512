//! The service behind the gate: from the route the gate's first layer matched to its handler.
//! No path is looked at here: a request without a [`RouteMatch`] is 404, one whose route does not
//! allow its method is 405, and the rest go to their route's handler. The small handlers live
//! here too: `/health`, `/metrics`, the generated documents and the browser console.

use super::{Node, api, http::http_rpc, instance, upgrade::upgrade};
use crate::broker::BrokerState;
use crate::gate::{Body, json_error, json_response, redacted_uri};
use crate::routes::{Route, RouteMatch};
use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;

/// The browser console served at `GET /ws/rpc/test`: connect, send JSON-RPC, watch
/// subscriptions. One self-contained page, no external resources.
const CONSOLE_HTML: &str = include_str!("../console.html");

/// The dispatch, the innermost service of the stack.
#[derive(Clone)]
pub(super) struct Dispatch {
    /// The node the handlers serve.
    pub(super) node: Arc<Node>,
}

impl tower::Service<Request<Incoming>> for Dispatch {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let node = self.node.clone();
        Box::pin(async move { Ok(dispatch(node, req).await) })
    }
}

/// The answer to `req`.
async fn dispatch(node: Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let Some(route) = RouteMatch::of(req.extensions()).map(|m| m.route) else {
        tracing::debug!(path = %redacted_uri(req.uri()), "no route");
        return json_error(StatusCode::NOT_FOUND, "not found");
    };
    if !route.allows(req.method()) {
        let mut r = json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here");
        let allow: Vec<&str> = route.methods().iter().map(|m| m.as_str()).collect();
        let allow = hyper::header::HeaderValue::from_str(&allow.join(", ")).expect("method names; qed");
        r.headers_mut().insert(hyper::header::ALLOW, allow);
        return r;
    }
    match route {
        Route::WsRpc => upgrade(&node, &*node.jsonrpc, req),
        Route::WsCompat => upgrade(&node, &*node.compat, req),
        Route::HttpRpc if req.method() == hyper::Method::OPTIONS => node.cors.preflight(req.headers()),
        Route::HttpRpc => http_rpc(&node, req).await,
        Route::Health => health(&node),
        Route::Metrics => Response::builder()
            .header(hyper::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(Body::from(node.metrics.render()))
            .expect("static header is valid; qed"),
        Route::OpenRpc => document(&node.openrpc),
        Route::OpenApi => document(&node.openapi),
        Route::ApiPublish => api::publish(&node, req).await,
        Route::WsInstance => instance::upgrade(&node, req).await,
        Route::ApiInstance => api::configure_instance(&node, req).await,
        Route::Console => Response::builder()
            .header(hyper::header::CONTENT_TYPE, "text/html; charset=utf-8")
            .header(hyper::header::CACHE_CONTROL, "no-cache")
            .body(Body::from(CONSOLE_HTML))
            .expect("static headers are valid; qed"),
    }
}

/// `GET /health`: 200 `{"status":"ok"}` while the node can serve; 503
/// `{"status":"degraded","broker_state":"down"}` while its shared broker cannot be reached
/// (publishes, subscribes and history reads fail then, and a load balancer may send clients
/// elsewhere).
fn health(node: &Node) -> Response<Body> {
    match node.hub.broker().state() {
        BrokerState::Up => json_response(StatusCode::OK, r#"{"status":"ok"}"#.into()),
        BrokerState::Down => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"status":"degraded","broker_state":"down"}"#.into(),
        ),
    }
}

/// A generated document (`/openrpc.json`, `/openapi.json`): JSON, readable by any page (tools
/// such as API explorers load it from other origins).
fn document(text: &str) -> Response<Body> {
    Response::builder()
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
        .body(Body::from(text.to_string()))
        .expect("static headers are valid; qed")
}
