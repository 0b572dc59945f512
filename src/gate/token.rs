//! Layer 5: the token, from header `token`, `Authorization: Bearer`, or query `?token=`.
//!
//! On the routes that take one (WebSocket upgrades and the HTTP API, `POST /rpc`; see
//! [`Route::takes_token`](crate::routes::Route::takes_token)): a token that is present but
//! invalid is 401 before anything else happens (counted as `auth` on an upgrade); a valid one
//! becomes the request's [`Principal`] (in its extensions); no token at all is an anonymous
//! principal, whose rights the namespaces decide. The token itself is never logged or echoed.
//!
//! This is the gate's [`AsyncCheck`]. With `backend.connect_proxy` on, an upgrade whose token
//! rpchub does not accept (none, or one it does not know) is not refused here: the
//! application's backend is asked who connects ([`super::connect`]), after the cheap checks and
//! with the slot held. `POST /rpc` and the server API are never asked about: an unknown token
//! there is 401 as always.

use super::connect::ConnectProxy;
use super::{AsyncCheck, Body, json_error, refused};
use crate::auth::{AuthError, Authenticator, Principal};
use crate::metrics::{Metrics, Rejection};
use crate::routes::RouteMatch;
use futures_util::future::BoxFuture;
use hyper::header::HeaderMap;
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode, Uri};
use std::sync::Arc;

/// The token check.
#[derive(Debug, Clone)]
pub struct TokenCheck {
    auth: Arc<Authenticator>,
    anonymous: Arc<Principal>,
    metrics: Arc<Metrics>,
    /// The backend that decides the upgrades rpchub's tokens do not (`backend.connect_proxy`).
    connect: Option<ConnectProxy>,
}

impl TokenCheck {
    /// Checks tokens with `auth`; refusals of upgrades are counted in `metrics`.
    pub fn new(auth: Arc<Authenticator>, metrics: Arc<Metrics>) -> TokenCheck {
        TokenCheck { auth, anonymous: Arc::new(Principal::anonymous()), metrics, connect: None }
    }

    /// The check with `connect` deciding the upgrades whose token rpchub does not accept.
    pub fn with_connect_proxy(self, connect: ConnectProxy) -> TokenCheck {
        TokenCheck { connect: Some(connect), ..self }
    }

    /// An upgrade's principal when the backend decides who connects: the token's, if rpchub
    /// accepts it; else the backend's. A JWT rpchub knows but refuses (expired, not yet valid)
    /// is 401 without asking.
    async fn decide_or_ask(&self, connect: &ConnectProxy, parts: &mut Parts) -> Result<(), Response<Body>> {
        // A malformed token source (`Authorization: Basic`, say) is no token of rpchub's: the
        // backend sees the headers it is forwarded and judges.
        let token = from_parts(&parts.headers, &parts.uri).ok().flatten();
        if let Some(t) = &token {
            match self.auth.authenticate(t) {
                Ok(principal) => {
                    parts.extensions.insert(principal);
                    return Ok(());
                }
                Err(AuthError::Invalid(_)) => {}
                Err(e) => {
                    let resp = json_error(StatusCode::UNAUTHORIZED, &e.to_string());
                    return Err(refused(&self.metrics, Rejection::Auth, resp));
                }
            }
        }
        let principal = connect.ask(parts, token.as_deref(), &self.metrics).await?;
        parts.extensions.insert(principal);
        Ok(())
    }

    /// The principal of a request for `parts`' route, or its 401.
    #[allow(clippy::result_large_err)]
    fn decide(&self, parts: &Parts) -> Result<Arc<Principal>, Response<Body>> {
        let token =
            from_parts(&parts.headers, &parts.uri).map_err(|m| json_error(StatusCode::UNAUTHORIZED, m))?;
        match token {
            None => Ok(self.anonymous.clone()),
            Some(t) => self.auth.authenticate(&t).map_err(|e| {
                let m = match e {
                    AuthError::Invalid(m) => m,
                    e => e.to_string(),
                };
                json_error(StatusCode::UNAUTHORIZED, &m)
            }),
        }
    }
}

/// The token a request carries, if any: header `token`, then `Authorization: Bearer`, then
/// the `token` query parameter.
pub fn extract<B>(req: &Request<B>) -> Result<Option<String>, &'static str> {
    from_parts(req.headers(), req.uri())
}

/// [`extract`], from a request's headers and URI.
fn from_parts(h: &HeaderMap, uri: &Uri) -> Result<Option<String>, &'static str> {
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
    if let Some(q) = uri.query() {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            if k == "token" && !v.is_empty() {
                return Ok(Some(v.into_owned()));
            }
        }
    }
    Ok(None)
}

impl AsyncCheck for TokenCheck {
    fn check<'a>(&'a self, parts: &'a mut Parts) -> BoxFuture<'a, Result<(), Response<Body>>> {
        let Some(route) = RouteMatch::of(&parts.extensions).map(|m| m.route).filter(|r| r.takes_token())
        else {
            return Box::pin(std::future::ready(Ok(())));
        };
        if let Some(connect) = self.connect.as_ref().filter(|_| route.is_upgrade()) {
            return Box::pin(self.decide_or_ask(connect, parts));
        }
        let decided = match self.decide(parts) {
            Ok(principal) => {
                parts.extensions.insert(principal);
                Ok(())
            }
            Err(resp) if route.is_upgrade() => Err(refused(&self.metrics, Rejection::Auth, resp)),
            Err(resp) => Err(resp),
        };
        Box::pin(std::future::ready(decided))
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

    /// What the check does to a request for `path` with `headers`: the principal's subject, or
    /// the refusal's status.
    async fn checked(gate: &TokenCheck, path: &str, headers: &[(&str, &str)]) -> Result<Option<String>, u16> {
        let (mut parts, ()) = req(path, headers).into_parts();
        if let Some(m) = crate::routes::Routes::new().find(parts.uri.path()) {
            parts.extensions.insert(m);
        }
        gate.check(&mut parts).await.map_err(|r| r.status().as_u16())?;
        Ok(parts.extensions.get::<Arc<Principal>>().map(|p| p.subject.clone()))
    }

    #[tokio::test]
    async fn runs_on_routes_that_take_a_token_and_counts_refused_upgrades() {
        let config = crate::Config {
            admin_token: Some(crate::config::Secret("the-admin".into())),
            ..crate::Config::default()
        };
        let metrics = Arc::new(Metrics::new());
        let gate = TokenCheck::new(Arc::new(Authenticator::new(&config).unwrap()), metrics.clone());
        let auth_refusals = || {
            let text = metrics.render();
            let line =
                text.lines().find(|l| l.starts_with(r#"rpchub_upgrades_rejected_total{reason="auth"}"#));
            line.and_then(|l| l.rsplit(' ').next()).unwrap().parse::<u64>().unwrap()
        };
        let admin = [("token", "the-admin")];
        assert_eq!(checked(&gate, "/ws/rpc", &admin).await, Ok(Some("admin".into())));
        assert_eq!(checked(&gate, "/rpc", &[]).await, Ok(Some(String::new())), "anonymous");
        assert_eq!(checked(&gate, "/health", &admin).await, Ok(None), "no token on /health");
        assert_eq!(checked(&gate, "/health", &[("token", "wrong")]).await, Ok(None));
        assert_eq!(checked(&gate, "/rpc", &[("token", "wrong")]).await, Err(401));
        assert_eq!(auth_refusals(), 0, "POST /rpc is no upgrade");
        assert_eq!(checked(&gate, "/ws/rpc?token=wrong", &[]).await, Err(401));
        assert_eq!(auth_refusals(), 1);
    }
}

/// Properties of [`extract`] over generated requests (the fuzz target `token` explores further).
#[cfg(test)]
mod props {
    use super::*;
    use hyper::header::HeaderValue;
    use proptest::prelude::*;

    /// A request with whichever of the three sources are given; a header value or query that
    /// `http` itself would refuse is left out (no client can send it).
    fn request(token: Option<&[u8]>, authorization: Option<&[u8]>, query: Option<&str>) -> Request<()> {
        let uri = query
            .and_then(|q| format!("/ws/rpc?{q}").parse::<hyper::Uri>().ok())
            .unwrap_or_else(|| hyper::Uri::from_static("/ws/rpc"));
        let mut req = Request::builder().uri(uri).body(()).unwrap();
        for (name, value) in [("token", token), ("authorization", authorization)] {
            if let Some(v) = value.and_then(|v| HeaderValue::from_bytes(v).ok()) {
                req.headers_mut().insert(name, v);
            }
        }
        req
    }

    /// A token as a client could send it in a header: visible ASCII, spaces inside only.
    fn header_token() -> impl Strategy<Value = String> {
        "[!-~]([ -~]{0,62}[!-~])?"
    }

    /// Other query parameters, none named `token`.
    fn other_params() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec((".{0,8}".prop_filter("not token", |k| k != "token"), ".{0,8}"), 0..4)
    }

    fn query(params: &[(String, String)]) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in params {
            q.append_pair(k, v);
        }
        q.finish()
    }

    proptest! {
        #[test]
        fn arbitrary_sources_never_panic(
            token in prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
            authorization in prop::option::of(prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                "(?i:bearer)[ \t]{0,3}[ -~]{0,40}".prop_map(String::into_bytes),
            ]),
            query in prop::option::of(prop_oneof![".{0,64}", "([a-z%=&+]|token){0,20}"]),
        ) {
            let req = request(token.as_deref(), authorization.as_deref(), query.as_deref());
            if let Ok(Some(t)) = extract(&req) {
                prop_assert!(!t.is_empty());
            }
        }

        #[test]
        fn a_token_header_comes_back_trimmed(
            t in header_token(),
            pad in "[ \t]{0,3}",
            others in other_params(),
        ) {
            let value = format!("{pad}{t}{pad}");
            let req = request(Some(value.as_bytes()), Some(b"Basic ignored"), Some(&query(&others)));
            prop_assert_eq!(extract(&req), Ok(Some(t)));
        }

        #[test]
        fn a_bearer_token_comes_back(
            t in header_token(),
            scheme in "(?i:bearer)",
            gap in "[ \t]{0,3}",
            others in other_params(),
        ) {
            let value = format!("{scheme} {gap}{t}{gap}");
            let mut params = others;
            params.push(("token".into(), "from-the-query".into()));
            let req = request(None, Some(value.as_bytes()), Some(&query(&params)));
            prop_assert_eq!(extract(&req), Ok(Some(t)));
        }

        #[test]
        fn a_query_token_comes_back(t in ".{1,64}", before in other_params(), after in other_params()) {
            let mut params = before;
            params.push(("token".into(), t.clone()));
            params.extend(after);
            let req = request(None, None, Some(&query(&params)));
            prop_assert_eq!(extract(&req), Ok(Some(t)));
        }
    }
}
