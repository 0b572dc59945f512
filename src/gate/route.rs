//! Layer 1: which route a request is for, and on a WebSocket route, whether it is a valid upgrade.
//!
//! The path is looked up once in the route table ([`crate::routes`]); a request whose path is in
//! it leaves this layer with its [`RouteMatch`](crate::routes::RouteMatch) in the extensions,
//! for the layers below and the dispatch. On a WebSocket route the request must be a valid
//! RFC 6455 handshake: another method is 405, a plain request 400, a broken handshake 400 (all
//! three counted as `handshake`). An upgrade to any other path is 404 (`not_found`). Everything
//! else passes: the dispatch answers it (404 if unmatched, 405 for a method its route does not
//! allow).

use super::{Body, Check, json_error, refused};
use crate::metrics::{Metrics, Rejection};
use crate::routes::{Route, Routes};
use crate::transport::handshake;
use hyper::{Method, Request, Response, StatusCode};
use std::sync::Arc;

/// The route lookup.
#[derive(Debug, Clone)]
pub struct RouteCheck {
    routes: Arc<Routes>,
    metrics: Arc<Metrics>,
    /// The 404 message for an upgrade to a path that is no WebSocket route, naming those there are.
    not_found: Arc<str>,
}

impl RouteCheck {
    /// Looks requests up in `routes`; counts refusals in `metrics`.
    pub fn new(routes: Arc<Routes>, metrics: Arc<Metrics>) -> RouteCheck {
        let upgrades: Vec<&str> = Route::ALL.iter().filter(|r| r.is_upgrade()).map(|r| r.pattern()).collect();
        let not_found = format!("no WebSocket endpoint at this path; use {}", upgrades.join(" or "));
        RouteCheck { routes, metrics, not_found: not_found.into() }
    }

    #[allow(clippy::result_large_err)]
    fn refuse(&self, reason: Rejection, status: StatusCode, message: &str) -> Result<(), Response<Body>> {
        Err(refused(&self.metrics, reason, json_error(status, message)))
    }

    /// A request for a WebSocket route: `Ok` if it is a valid upgrade.
    #[allow(clippy::result_large_err)]
    fn check_upgrade<B>(&self, req: &Request<B>, upgrade: bool) -> Result<(), Response<Body>> {
        let bad = |message: &str| self.refuse(Rejection::Handshake, StatusCode::BAD_REQUEST, message);
        if req.method() != Method::GET {
            let mut r =
                json_error(StatusCode::METHOD_NOT_ALLOWED, "WebSocket routes take GET with an upgrade");
            r.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static("GET"));
            return Err(refused(&self.metrics, Rejection::Handshake, r));
        }
        if !upgrade {
            return bad("this route needs a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)");
        }
        if req.version() != hyper::Version::HTTP_11 {
            return bad("invalid WebSocket handshake: HTTP/1.1 is required");
        }
        match handshake::accept_key(req.headers()) {
            Ok(_) => Ok(()),
            Err(r) => {
                let mut resp = json_error(StatusCode::BAD_REQUEST, r.message);
                if r.offer_version {
                    resp.headers_mut()
                        .insert("sec-websocket-version", hyper::header::HeaderValue::from_static("13"));
                }
                Err(refused(&self.metrics, Rejection::Handshake, resp))
            }
        }
    }
}

impl Check for RouteCheck {
    #[allow(clippy::result_large_err)]
    fn check<B>(&self, req: &mut Request<B>) -> Result<(), Response<Body>> {
        let upgrade = handshake::is_upgrade(req.headers());
        let found = self.routes.find(req.uri().path());
        match &found {
            Some(m) if m.route.is_upgrade() => self.check_upgrade(req, upgrade)?,
            _ if upgrade => return self.refuse(Rejection::NotFound, StatusCode::NOT_FOUND, &self.not_found),
            _ => {}
        }
        if let Some(m) = found {
            req.extensions_mut().insert(m);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::RouteMatch;

    fn check(
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (Result<Option<Route>, u16>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let gate = RouteCheck::new(Arc::new(Routes::new()), metrics.clone());
        let mut b = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut req = b.body(()).unwrap();
        let r = gate
            .check(&mut req)
            .map(|()| RouteMatch::of(req.extensions()).map(|m| m.route))
            .map_err(|resp| resp.status().as_u16());
        (r, metrics)
    }

    const UPGRADE: [(&str, &str); 5] = [
        ("host", "example.com"),
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    fn rejected(m: &Metrics, reason: Rejection) -> bool {
        m.render().contains(&format!("rpchub_upgrades_rejected_total{{reason=\"{}\"}} 1", reason.label()))
    }

    #[test]
    fn matches_once_and_marks_the_request() {
        assert_eq!(check(Method::GET, "/ws/rpc", &UPGRADE).0, Ok(Some(Route::WsRpc)));
        assert_eq!(check(Method::GET, "/health", &[]).0, Ok(Some(Route::Health)));
        assert_eq!(check(Method::GET, "/rpc", &[]).0, Ok(Some(Route::HttpRpc)), "405 is the dispatch's");
        assert_eq!(check(Method::GET, "/nowhere", &[]).0, Ok(None), "404 is the dispatch's");
    }

    #[test]
    fn refusals_are_counted_by_reason() {
        for (method, path, headers, status, reason) in [
            (Method::GET, "/ws/rpc", &[][..], 400, Rejection::Handshake),
            (Method::POST, "/ws/rpc", &UPGRADE[..], 405, Rejection::Handshake),
            (Method::GET, "/ws/rpc", &UPGRADE[..3], 400, Rejection::Handshake),
            (Method::GET, "/ws/a/b", &UPGRADE[..], 404, Rejection::NotFound),
            (Method::GET, "/health", &UPGRADE[..], 404, Rejection::NotFound),
        ] {
            let (r, metrics) = check(method.clone(), path, headers);
            assert_eq!(r, Err(status), "{method} {path}");
            assert!(rejected(&metrics, reason), "{method} {path}: {}", metrics.render());
        }
    }
}
