//! Layer 2: the Origin allowlist for WebSocket upgrades.
//!
//! Browsers send `Origin` on every WebSocket; a page from an origin not allowed gets 403 with an
//! empty body and the server logs `WebSocket upgrade blocked from origin <origin> (host
//! <host>)`. With no allowlist configured only same-origin pages may connect (the Origin's host
//! and port equal the Host header). Requests without Origin (bots, servers) are accepted. An
//! entry `*` allows every origin. Refusals count as `origin`; their log line shows at most 256
//! bytes of each header and is written at most ten times a second ([`super::log`]).

use super::log::{Logged, Suppressed, Throttle};
use super::{Body, Check, refused, upgrade_match};
use crate::metrics::{Metrics, Rejection};
use hyper::{Request, Response, StatusCode};
use std::sync::Arc;

/// The configured allowlist.
#[derive(Debug, Clone)]
pub struct OriginCheck {
    allowed: Arc<Vec<String>>,
    metrics: Arc<Metrics>,
    /// The refusal's log line is bounded in size and rate.
    log: Arc<Throttle>,
}

impl OriginCheck {
    /// An allowlist of exact origins (`https://app.example.com`), compared case-insensitively;
    /// refusals are counted in `metrics`.
    pub fn new(allowed: &[String], metrics: Arc<Metrics>) -> OriginCheck {
        let allowed = allowed.iter().map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase()).collect();
        OriginCheck { allowed: Arc::new(allowed), metrics, log: Arc::default() }
    }

    /// True if a page from `origin` may connect to a server reached as `host`.
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if !self.allowed.is_empty() {
            return self.allowed.iter().any(|a| a == "*" || *a == origin);
        }
        same_origin(&origin, host)
    }
}

/// True if `origin` (`scheme://HOST[:PORT]`) names the server reached as `host` (the Host
/// header): a page of the server's own origin.
pub fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let Some((_, origin_host)) = origin.trim().split_once("://") else { return false };
    origin_host.trim_end_matches('/').eq_ignore_ascii_case(host.trim())
}

impl Check for OriginCheck {
    #[allow(clippy::result_large_err)]
    fn check<B>(&self, req: &mut Request<B>) -> Result<(), Response<Body>> {
        if upgrade_match(req.extensions()).is_none() {
            return Ok(());
        }
        let Some(raw) = req.headers().get(hyper::header::ORIGIN) else { return Ok(()) };
        let origin = String::from_utf8_lossy(raw.as_bytes()).into_owned();
        let host = req.headers().get(hyper::header::HOST);
        if self.allows(&origin, host.and_then(|h| h.to_str().ok())) {
            return Ok(());
        }
        if let Some(left_out) = self.log.admit() {
            tracing::warn!(
                "WebSocket upgrade blocked from origin {} (host {}){}",
                Logged(raw.as_bytes()),
                Logged(host.map_or(b"-".as_slice(), |h| h.as_bytes())),
                Suppressed(left_out)
            );
        }
        let forbidden = Response::builder()
            .status(StatusCode::FORBIDDEN)
            .body(Body::default())
            .expect("static status is valid; qed");
        Err(refused(&self.metrics, Rejection::Origin, forbidden))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(allowed: &[String]) -> OriginCheck {
        OriginCheck::new(allowed, Arc::new(Metrics::new()))
    }

    #[test]
    fn same_origin_by_default() {
        let c = check(&[]);
        assert!(c.allows("http://127.0.0.1:7410", Some("127.0.0.1:7410")));
        assert!(c.allows("https://Example.com", Some("example.com")));
        assert!(!c.allows("http://evil.example", Some("127.0.0.1:7410")));
        assert!(!c.allows("null", Some("127.0.0.1:7410")));
        assert!(!c.allows("http://127.0.0.1:7410", None));
    }

    #[test]
    fn allowlist() {
        let c = check(&["https://app.example.com/".into()]);
        assert!(c.allows("https://APP.example.com", Some("api.example.com")));
        assert!(
            !c.allows("https://api.example.com", Some("api.example.com")),
            "the list replaces same-origin"
        );
        assert!(check(&["*".into()]).allows("http://anything", None));
    }
}
