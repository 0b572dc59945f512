//! Layer 2: the Origin allowlist for WebSocket upgrades.
//!
//! Browsers send `Origin` on every WebSocket; a page from an origin not allowed gets 403 with an
//! empty body and the server logs `WebSocket upgrade blocked from origin <origin> (host
//! <host>)`. With no allowlist configured only same-origin pages may connect (the Origin's host
//! and port equal the Host header). Requests without Origin (bots, servers) are accepted. An
//! entry `*` allows every origin.

use super::{Body, Check, WsRoute};
use hyper::{Request, Response, StatusCode};
use std::sync::Arc;

/// The configured allowlist.
#[derive(Clone, Default)]
pub struct OriginCheck {
    allowed: Arc<Vec<String>>,
}

impl OriginCheck {
    /// An allowlist of exact origins (`https://app.example.com`), compared case-insensitively.
    pub fn new(allowed: &[String]) -> OriginCheck {
        let allowed = allowed.iter().map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase()).collect();
        OriginCheck { allowed: Arc::new(allowed) }
    }

    /// True if a page from `origin` may connect to a server reached as `host`.
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if !self.allowed.is_empty() {
            return self.allowed.iter().any(|a| a == "*" || *a == origin);
        }
        // Same origin: scheme://HOST[:PORT] against the Host header.
        let Some(host) = host else { return false };
        let Some((_, origin_host)) = origin.split_once("://") else { return false };
        origin_host.eq_ignore_ascii_case(host.trim())
    }
}

impl Check for OriginCheck {
    #[allow(clippy::result_large_err)]
    fn check<B>(&self, req: &mut Request<B>) -> Result<(), Response<Body>> {
        if req.extensions().get::<WsRoute>().is_none() {
            return Ok(());
        }
        let Some(origin) = req.headers().get(hyper::header::ORIGIN) else { return Ok(()) };
        let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
        let host = req.headers().get(hyper::header::HOST).and_then(|h| h.to_str().ok());
        if self.allows(&origin, host) {
            return Ok(());
        }
        tracing::warn!("WebSocket upgrade blocked from origin {} (host {})", origin, host.unwrap_or("-"));
        Err(Response::builder()
            .status(StatusCode::FORBIDDEN)
            .body(Body::default())
            .expect("static status is valid; qed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_by_default() {
        let c = OriginCheck::new(&[]);
        assert!(c.allows("http://127.0.0.1:7410", Some("127.0.0.1:7410")));
        assert!(c.allows("https://Example.com", Some("example.com")));
        assert!(!c.allows("http://evil.example", Some("127.0.0.1:7410")));
        assert!(!c.allows("null", Some("127.0.0.1:7410")));
        assert!(!c.allows("http://127.0.0.1:7410", None));
    }

    #[test]
    fn allowlist() {
        let c = OriginCheck::new(&["https://app.example.com/".into()]);
        assert!(c.allows("https://APP.example.com", Some("api.example.com")));
        assert!(
            !c.allows("https://api.example.com", Some("api.example.com")),
            "the list replaces same-origin"
        );
        assert!(OriginCheck::new(&["*".into()]).allows("http://anything", None));
    }
}
