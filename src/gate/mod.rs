//! Everything checked before a WebSocket exists, as a stack of tower layers, one concern a file.
//!
//! The order, outermost first ([`Checks::around`] builds the stack in it; nothing else says it):
//! 1. [`route`]: which route is this (looked up once in [`crate::routes`]), and on a WebSocket
//!    route, is it a valid upgrade? (404 for an upgrade to another path; 405, 400 for a bad one;
//!    leaves the [`RouteMatch`] in the extensions)
//! 2. [`origin`]: is the page's Origin allowed? (403, empty body, one log line)
//! 3. [`rate`]: has this client IP upgraded too often? (429 with Retry-After)
//! 4. [`capacity`]: is there room for another connection? (429; reserves a slot)
//! 5. [`token`]: is the token (header, bearer or query) valid? (401; also for `POST /rpc`) With
//!    `backend.connect_proxy`, an upgrade whose token rpchub does not accept waits for the
//!    backend to say who connects ([`connect`]: 401 refused, 503 no answer)
//!
//! A rejected request gets its HTTP error and never becomes a WebSocket; every refusal of an
//! upgrade is counted in `rpchub_upgrades_rejected_total` by its [`Rejection`] (each check holds
//! the [`Metrics`]). Layers 2 to 4 only look at requests that layer 1 matched to a WebSocket
//! route (which, past layer 1, are valid upgrades); layer 5 at those of routes that take a token.
//! Everything else passes through to the server's dispatch untouched, which answers from the
//! [`RouteMatch`] (404 without one, 405 for a method the route does not allow).
//!
//! A check is one of two kinds:
//! - a [`Check`] decides at once, on the request itself, and runs in the generic [`Gate`]
//!   service (route, origin, rate, capacity);
//! - an [`AsyncCheck`] may wait (on a backend that decides who connects, say) and is given the
//!   request's [`Parts`]: it reads the headers and the URI and may add extensions. It runs in the
//!   generic [`AsyncGate`] service (the token check, with the backend's `connect` in it).
//!
//! Both answer `Err(response)` to stop the request with that response.

mod capacity;
pub mod connect;
pub(crate) mod log;
mod origin;
mod rate;
mod route;
pub mod token;

pub use capacity::{CapacityCheck, SlotTicket};
pub use connect::{ConnectProxy, SessionId};
pub use origin::{OriginCheck, same_origin};
pub use rate::{UpgradeRate, address_key};
pub use route::RouteCheck;

use crate::metrics::{Metrics, Rejection};
use crate::routes::RouteMatch;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::Full;
use hyper::http::Extensions;
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};

/// The body of every response the server makes.
pub type Body = Full<Bytes>;

/// The client's address, put into every request's extensions by the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// The match of a request that layer 1 let through as a WebSocket upgrade, if it is one.
pub fn upgrade_match(extensions: &Extensions) -> Option<&RouteMatch> {
    RouteMatch::of(extensions).filter(|m| m.route.is_upgrade())
}

/// The checks of the gate, built once at start.
#[derive(Debug, Clone)]
pub struct Checks {
    /// Layer 1.
    pub route: route::RouteCheck,
    /// Layer 2.
    pub origin: origin::OriginCheck,
    /// Layer 3.
    pub rate: rate::UpgradeRate,
    /// Layer 4.
    pub capacity: capacity::CapacityCheck,
    /// Layer 5.
    pub token: token::TokenCheck,
}

impl Checks {
    /// The gate around `inner` (the server's dispatch), in the order of the module doc.
    pub fn around<S, B>(
        self,
        inner: S,
    ) -> impl tower::Service<
        Request<B>,
        Response = Response<Body>,
        Error = Infallible,
        Future = BoxFuture<'static, Result<Response<Body>, Infallible>>,
    > + Clone
    where
        S: tower::Service<Request<B>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: Send + 'static,
    {
        tower::ServiceBuilder::new()
            .layer(GateLayer(self.route))
            .layer(GateLayer(self.origin))
            .layer(GateLayer(self.rate))
            .layer(GateLayer(self.capacity))
            .layer(AsyncGateLayer(self.token))
            .service(inner)
    }
}

/// Counts `reason` and passes `response` on: every refusal of an upgrade goes through here.
fn refused(metrics: &Metrics, reason: Rejection, response: Response<Body>) -> Response<Body> {
    metrics.upgrade_rejected(reason);
    response
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
    // Keys are compared as the token check reads them, decoded (`tok%65n` is `token`), and
    // without regard to case, so no spelling the server takes as a token is logged.
    let is_token = |k: &str| {
        form_urlencoded::parse(k.as_bytes()).next().is_some_and(|(k, _)| k.eq_ignore_ascii_case("token"))
    };
    let redacted: Vec<String> = q
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if is_token(k) => format!("{k}=[redacted]"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{path}?{}", redacted.join("&"))
}

/// One check made before the dispatch, at once: passes the request on (possibly adding
/// extensions) or answers it.
pub trait Check: Clone + Send + Sync + 'static {
    /// `Err(response)` stops the request with that response. (The response is returned by
    /// value: refusals are the rare path and boxing them would buy nothing.)
    #[allow(clippy::result_large_err)]
    fn check<B>(&self, req: &mut Request<B>) -> Result<(), Response<Body>>;
}

/// The layer of a [`Check`].
#[derive(Debug, Clone)]
pub struct GateLayer<C>(pub C);

impl<S, C: Check> tower::Layer<S> for GateLayer<C> {
    type Service = Gate<S, C>;
    fn layer(&self, inner: S) -> Gate<S, C> {
        Gate { inner, check: self.0.clone() }
    }
}

/// The service of a [`Check`].
#[derive(Debug, Clone)]
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

/// One check made before the dispatch that may wait: on a backend's answer, say (a proxied
/// `connect` that POSTs the request's headers to the application and takes its verdict).
///
/// It is given the request without its body: it may read everything else and add extensions
/// (the principal it decided on, say) for the layers below and the dispatch. The request waits
/// until the future ends, holding whatever the layers above reserved for it (a connection slot),
/// so an implementation must bound its wait (a timeout on its backend call) and answer a
/// refusal itself when the wait runs out.
pub trait AsyncCheck: Clone + Send + Sync + 'static {
    /// `Err(response)` stops the request with that response.
    fn check<'a>(&'a self, parts: &'a mut Parts) -> BoxFuture<'a, Result<(), Response<Body>>>;
}

/// The layer of an [`AsyncCheck`].
#[derive(Debug, Clone)]
pub struct AsyncGateLayer<C>(pub C);

impl<S, C: AsyncCheck> tower::Layer<S> for AsyncGateLayer<C> {
    type Service = AsyncGate<S, C>;
    fn layer(&self, inner: S) -> AsyncGate<S, C> {
        AsyncGate { inner, check: self.0.clone() }
    }
}

/// The service of an [`AsyncCheck`].
#[derive(Debug, Clone)]
pub struct AsyncGate<S, C> {
    inner: S,
    check: C,
}

impl<S, C, B> tower::Service<Request<B>> for AsyncGate<S, C>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    C: AsyncCheck,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The future calls the inner service later: it takes the one made ready by poll_ready
        // and leaves a fresh clone in its place (tower's contract for services that wait).
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let check = self.check.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            if let Err(refusal) = check.check(&mut parts).await {
                return Ok(refusal);
            }
            inner.call(Request::from_parts(parts, body)).await
        })
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
        // Every spelling that decodes to `token`, as the token check decodes it.
        for spelled in ["tok%65n", "%74oken", "to%6Ben", "tok%45N"] {
            let u: hyper::Uri = format!("/x?{spelled}=s3cret").parse().unwrap();
            assert_eq!(redacted_uri(&u), format!("/x?{spelled}=[redacted]"));
        }
    }

    /// Waits once, then refuses requests with a `deny` header and marks the others.
    #[derive(Clone)]
    struct Slow;

    #[derive(Clone, Debug, PartialEq)]
    struct Marked;

    impl AsyncCheck for Slow {
        fn check<'a>(&'a self, parts: &'a mut Parts) -> BoxFuture<'a, Result<(), Response<Body>>> {
            Box::pin(async move {
                tokio::task::yield_now().await;
                if parts.headers.contains_key("deny") {
                    return Err(json_error(StatusCode::FORBIDDEN, "denied"));
                }
                parts.extensions.insert(Marked);
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn an_async_check_waits_then_passes_or_answers() {
        use tower::ServiceExt;
        let inner = tower::service_fn(|req: Request<()>| async move {
            let marked = req.extensions().get::<Marked>().is_some();
            Ok::<_, Infallible>(json_response(StatusCode::OK, marked.to_string()))
        });
        let svc = tower::ServiceBuilder::new().layer(AsyncGateLayer(Slow)).service(inner);
        use http_body_util::BodyExt;
        let passed = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(passed.status(), StatusCode::OK);
        assert_eq!(passed.into_body().collect().await.unwrap().to_bytes(), "true", "the check's extension");
        let denied = Request::builder().header("deny", "1").body(()).unwrap();
        assert_eq!(svc.oneshot(denied).await.unwrap().status(), StatusCode::FORBIDDEN);
    }
}
