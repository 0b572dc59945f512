//! CORS for `POST /rpc`: which pages of other origins may call it (`cors_origins`; default
//! none). Browsers send an `OPTIONS` preflight before a cross-origin POST of JSON; it is
//! answered with the `Access-Control-Allow-*` headers for an allowed origin and 403 for any
//! other, so the call never leaves the page. A POST whose `Origin` is neither the server's own
//! nor allowed is refused with 403 too, whatever its content type, and nothing is executed:
//! together with the JSON-only rule ([`super::http`]) no page of another origin can make a
//! browser run a call (the CSRF "simple request") or read an answer. Requests without `Origin`
//! (servers, bots, curl) are not affected.

use crate::gate::{Body, json_error, same_origin};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};

/// How long a browser may cache a preflight's answer, in seconds.
const PREFLIGHT_MAX_AGE: u32 = 600;

/// The configured policy.
#[derive(Debug, Clone)]
pub(super) struct Cors {
    /// Allowed origins, lower case, without a trailing `/`.
    origins: Vec<String>,
    any: bool,
}

/// What the policy says about a request.
#[derive(Debug, PartialEq)]
pub(super) enum Verdict {
    /// No `Origin`, or the server's own: nothing to add.
    SameOrigin,
    /// An allowed cross-origin request: answer with this `Access-Control-Allow-Origin`.
    Allowed(HeaderValue),
    /// A page of an origin that is not allowed.
    Refused,
}

impl Cors {
    /// A policy allowing `origins` (exact, compared case-insensitively; `*` for any).
    pub(super) fn new(origins: &[String]) -> Cors {
        let origins: Vec<String> =
            origins.iter().map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase()).collect();
        let any = origins.iter().any(|o| o == "*");
        Cors { origins, any }
    }

    /// The verdict on a request with these headers.
    pub(super) fn verdict(&self, headers: &HeaderMap) -> Verdict {
        let Some(raw) = headers.get(header::ORIGIN) else { return Verdict::SameOrigin };
        let Ok(origin) = raw.to_str() else { return Verdict::Refused };
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        if same_origin(origin, host) {
            return Verdict::SameOrigin;
        }
        if self.any {
            return Verdict::Allowed(HeaderValue::from_static("*"));
        }
        let wanted = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if self.origins.contains(&wanted) { Verdict::Allowed(raw.clone()) } else { Verdict::Refused }
    }

    /// The answer to `OPTIONS /rpc`: the preflight of an allowed origin gets the headers that
    /// let its POST of JSON through; any other origin 403; a request that is no preflight, the
    /// methods the route takes.
    pub(super) fn preflight(&self, headers: &HeaderMap) -> Response<Body> {
        let allow_origin = match self.verdict(headers) {
            Verdict::Refused => return refused(),
            Verdict::SameOrigin => None,
            Verdict::Allowed(v) => Some(v),
        };
        let mut r = Response::builder().status(StatusCode::NO_CONTENT).header(header::ALLOW, "POST, OPTIONS");
        if let Some(origin) = allow_origin {
            r = r
                .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin)
                .header(header::ACCESS_CONTROL_ALLOW_METHODS, "POST")
                .header(header::ACCESS_CONTROL_ALLOW_HEADERS, "content-type, authorization, token")
                .header(header::ACCESS_CONTROL_MAX_AGE, PREFLIGHT_MAX_AGE)
                .header(header::VARY, "Origin");
        }
        r.body(Body::default()).expect("static headers and a header value from the request; qed")
    }
}

/// 403 for a page of an origin that is not allowed.
pub(super) fn refused() -> Response<Body> {
    json_error(StatusCode::FORBIDDEN, "pages of this origin may not call this server (see cors_origins)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("api.example.com"));
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn no_origin_and_the_own_origin_pass_others_only_when_listed() {
        let none = Cors::new(&[]);
        assert_eq!(none.verdict(&headers(None)), Verdict::SameOrigin);
        assert_eq!(none.verdict(&headers(Some("https://api.example.com"))), Verdict::SameOrigin);
        assert_eq!(none.verdict(&headers(Some("https://evil.example"))), Verdict::Refused);
        let some = Cors::new(&["https://App.example.com/".into()]);
        assert_eq!(
            some.verdict(&headers(Some("https://app.example.com"))),
            Verdict::Allowed(HeaderValue::from_static("https://app.example.com"))
        );
        assert_eq!(some.verdict(&headers(Some("https://app.example.com.evil"))), Verdict::Refused);
        let any = Cors::new(&["*".into()]);
        assert_eq!(
            any.verdict(&headers(Some("https://x.example"))),
            Verdict::Allowed(HeaderValue::from_static("*"))
        );
    }
}
