//! Everything checked before a WebSocket exists, as a stack of tower layers, one concern a file.
//!
//! The order, outermost first (the stack is built in `server::accept_loop`):
//! 1. [`route`]: is this a WebSocket route, and an upgrade? (plain GET: 400; marks the request)
//! 2. [`origin`]: is the page's Origin allowed? (403, empty body, one log line)
//! 3. [`rate`]: has this client IP upgraded too often? (429 with Retry-After)
//! 4. [`capacity`]: is there room for another connection? (429; reserves a slot)
//! 5. [`token`]: is the token (header, bearer or query) valid? (401; also for `POST /rpc`)
//!
//! A rejected request gets its HTTP error and never becomes a WebSocket. Layers 2 to 4 only
//! look at requests that layer 1 marked as WebSocket upgrades; everything else passes through to
//! the router untouched. Each check is a [`Check`], wrapped in the one generic [`Gate`] service.

pub mod capacity;
pub mod origin;
pub mod rate;
pub mod route;
pub mod token;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};

/// The body of every response the server makes.
pub type Body = Full<Bytes>;

/// The client's address, put into every request's extensions by the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// Put into the extensions of a WebSocket upgrade request by [`route`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsRoute {
    /// `/ws/rpc`: JSON-RPC.
    Rpc,
}

/// An error response before the upgrade: `{"success":false,"error":{"message":...}}`.
pub fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({"success": false, "error": {"message": message}}).to_string();
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("static status and header are valid; qed")
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("static status and header are valid; qed")
}

/// The request's path and query with any `token` parameter's value hidden, for logs.
pub fn redacted_uri(uri: &hyper::Uri) -> String {
    let path = uri.path();
    let Some(q) = uri.query() else { return path.to_string() };
    let redacted: Vec<String> = q
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("token") => format!("{k}=[redacted]"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{path}?{}", redacted.join("&"))
}

/// One check made before the router: passes the request on (possibly adding extensions) or
/// answers it.
pub trait Check: Clone + Send + Sync + 'static {
    /// `Err(response)` stops the request with that response. (The response is returned by
    /// value: refusals are the rare path and boxing them would buy nothing.)
    #[allow(clippy::result_large_err)]
    fn check<B>(&self, req: &mut Request<B>) -> Result<(), Response<Body>>;
}

/// The layer of a [`Check`].
#[derive(Clone)]
pub struct GateLayer<C>(pub C);

impl<S, C: Check> tower::Layer<S> for GateLayer<C> {
    type Service = Gate<S, C>;
    fn layer(&self, inner: S) -> Gate<S, C> {
        Gate { inner, check: self.0.clone() }
    }
}

/// The service of a [`Check`].
#[derive(Clone)]
pub struct Gate<S, C> {
    inner: S,
    check: C,
}

impl<S, C, B> tower::Service<Request<B>> for Gate<S, C>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
    C: Check,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match self.check.check(&mut req) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(resp) => Box::pin(std::future::ready(Ok(resp))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_hidden_from_logged_uris() {
        let u: hyper::Uri = "/ws/rpc?a=1&token=s3cret&TOKEN=x&b=2".parse().unwrap();
        let r = redacted_uri(&u);
        assert!(!r.contains("s3cret") && !r.contains("=x"), "{r}");
        assert_eq!(r, "/ws/rpc?a=1&token=[redacted]&TOKEN=[redacted]&b=2");
    }
}
