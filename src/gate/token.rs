//! Layer 5: the token, from header `token`, `Authorization: Bearer`, or query `?token=`.
//!
//! On WebSocket upgrades and on the HTTP API (`POST /rpc`, `/api/*`): a token that is present
//! but invalid is 401 before anything else happens; a valid one becomes the request's
//! [`Principal`] (in its extensions); no token at all is an anonymous principal, whose rights
//! the namespaces decide. The token itself is never logged or echoed.

use super::{Body, Check, WsRoute, json_error};
use crate::auth::{AuthError, Authenticator, Principal};
use hyper::{Request, Response, StatusCode};
use std::sync::Arc;

/// The token check.
#[derive(Clone)]
pub struct TokenCheck {
    auth: Arc<Authenticator>,
    anonymous: Arc<Principal>,
}

impl TokenCheck {
    /// Checks tokens with `auth`.
    pub fn new(auth: Arc<Authenticator>) -> TokenCheck {
        TokenCheck { auth, anonymous: Arc::new(Principal::anonymous()) }
    }
}

/// The token a request carries, if any: header `token`, then `Authorization: Bearer`, then
/// the `token` query parameter.
pub fn extract<B>(req: &Request<B>) -> Result<Option<String>, &'static str> {
    let h = req.headers();
    if let Some(v) = h.get("token") {
        let t = v.to_str().map_err(|_| "the token header is not text")?.trim();
        return Ok((!t.is_empty()).then(|| t.to_string()));
    }
    if let Some(v) = h.get(hyper::header::AUTHORIZATION) {
        let v = v.to_str().map_err(|_| "the Authorization header is not text")?.trim();
        let (scheme, t) = v.split_once(' ').ok_or("Authorization must be \"Bearer <token>\"")?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err("Authorization must be \"Bearer <token>\"");
        }
        let t = t.trim();
        return Ok((!t.is_empty()).then(|| t.to_string()));
    }
    if let Some(q) = req.uri().query() {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            if k == "token" && !v.is_empty() {
                return Ok(Some(v.into_owned()));
            }
        }
    }
    Ok(None)
}

fn applies<B>(req: &Request<B>) -> bool {
    req.extensions().get::<WsRoute>().is_some() || req.uri().path() == "/rpc" || req.uri().path().starts_with("/api/")
}

impl Check for TokenCheck {
    fn check<B>(&self, req: &mut Request<B>) -> Result<(), Response<Body>> {
        if !applies(req) {
            return Ok(());
        }
        let principal = match extract(req).map_err(|m| json_error(StatusCode::UNAUTHORIZED, m))? {
            None => self.anonymous.clone(),
            Some(t) => self.auth.authenticate(&t).map_err(|e| {
                let m = match e {
                    AuthError::Invalid(m) => m,
                    e => e.to_string(),
                };
                json_error(StatusCode::UNAUTHORIZED, &m)
            })?,
        };
        req.extensions_mut().insert(principal);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn every_source_in_order() {
        assert_eq!(extract(&req("/ws/rpc", &[("token", "a")])), Ok(Some("a".into())));
        assert_eq!(extract(&req("/ws/rpc", &[("authorization", "Bearer b")])), Ok(Some("b".into())));
        assert_eq!(extract(&req("/ws/rpc", &[("authorization", "bearer  b2 ")])), Ok(Some("b2".into())));
        assert_eq!(extract(&req("/ws/rpc?x=1&token=c%2Bd", &[])), Ok(Some("c+d".into())));
        assert_eq!(extract(&req("/ws/rpc?token=q", &[("token", "h")])), Ok(Some("h".into())));
        assert_eq!(extract(&req("/ws/rpc", &[])), Ok(None));
        assert!(extract(&req("/ws/rpc", &[("authorization", "Basic eA==")])).is_err());
        assert!(extract(&req("/ws/rpc", &[("authorization", "Bearer")])).is_err());
    }
}
