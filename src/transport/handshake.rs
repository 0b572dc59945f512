//! The server side of the RFC 6455 opening handshake, checked before anything is upgraded.
//!
//! The checks are ours (their messages say what to change); the `Sec-WebSocket-Accept` value
//! itself is tungstenite's [`derive_accept_key`], so the SHA-1 and the GUID live in one place.

use base64::Engine;
use hyper::header::{CONNECTION, HeaderMap, HeaderValue, UPGRADE};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// True when the request asks for a WebSocket (`Connection: upgrade` and `Upgrade: websocket`).
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    header_has_token(headers, CONNECTION, "upgrade") && header_has_token(headers, UPGRADE, "websocket")
}

fn header_has_token(headers: &HeaderMap, name: hyper::header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Why a handshake is refused: a message that says what to change, and whether the answer must
/// name the version this server speaks (RFC 6455 4.4: `Sec-WebSocket-Version: 13`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) message: &'static str,
    pub(crate) offer_version: bool,
}

fn refuse(message: &'static str) -> Refusal {
    Refusal { message, offer_version: false }
}

/// The one value of a header that must appear exactly once (RFC 6455 4.1, RFC 9112 3.2), or
/// `None` when it is missing, repeated or not text.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, usize> {
    let mut all = headers.get_all(name).iter();
    match (all.next(), all.next()) {
        (Some(v), None) => v.to_str().map(str::trim).map_err(|_| 1),
        (None, _) => Err(0),
        (Some(_), Some(_)) => Err(2),
    }
}

/// Checks a WebSocket upgrade request and returns the `Sec-WebSocket-Accept` value, or why the
/// handshake is invalid. Exactly one `Host`, one `Sec-WebSocket-Key` (base64 of 16 bytes) and
/// one `Sec-WebSocket-Version` (13) are required; anything ambiguous is refused.
pub(crate) fn accept_key(headers: &HeaderMap) -> Result<HeaderValue, Refusal> {
    match single(headers, "host") {
        Ok(h) if !h.is_empty() => {}
        Err(2) => return Err(refuse("invalid request: more than one Host header")),
        _ => return Err(refuse("invalid request: the Host header is missing")),
    }
    match single(headers, "sec-websocket-version") {
        Ok("13") => {}
        Ok(v) if v.contains(',') => {
            return Err(Refusal {
                message: "invalid WebSocket handshake: one Sec-WebSocket-Version, 13, is required",
                offer_version: true,
            });
        }
        Err(2) => {
            return Err(Refusal {
                message: "invalid WebSocket handshake: one Sec-WebSocket-Version, 13, is required",
                offer_version: true,
            });
        }
        _ => {
            return Err(Refusal {
                message: "invalid WebSocket handshake: Sec-WebSocket-Version must be 13",
                offer_version: true,
            });
        }
    }
    let key = match single(headers, "sec-websocket-key") {
        Ok(k) => k,
        Err(2) => return Err(refuse("invalid WebSocket handshake: more than one Sec-WebSocket-Key")),
        Err(_) => return Err(refuse("invalid WebSocket handshake: Sec-WebSocket-Key is missing")),
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| refuse("invalid WebSocket handshake: Sec-WebSocket-Key is not base64"))?;
    if decoded.len() != 16 {
        return Err(refuse("invalid WebSocket handshake: Sec-WebSocket-Key must encode 16 bytes"));
    }
    let accept = derive_accept_key(key.as_bytes());
    Ok(HeaderValue::from_str(&accept).expect("base64 is a valid header value; qed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn rfc_example_key() {
        // RFC 6455 section 1.3.
        let h = headers(&[
            ("host", "example.com"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert_eq!(accept_key(&h).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    const KEY: (&str, &str) = ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    const HOST: (&str, &str) = ("host", "example.com");
    const V13: (&str, &str) = ("sec-websocket-version", "13");

    #[test]
    fn bad_handshakes() {
        let refused = |pairs: &[(&'static str, &'static str)]| accept_key(&headers(pairs)).unwrap_err();
        assert!(refused(&[HOST, KEY]).offer_version, "no version: say which");
        let v8 = refused(&[HOST, KEY, ("sec-websocket-version", "8")]);
        assert!(v8.offer_version && v8.message.contains("13"), "{v8:?}");
        assert!(refused(&[HOST, KEY, V13, ("sec-websocket-version", "8")]).offer_version, "two versions");
        assert!(
            refused(&[HOST, KEY, ("sec-websocket-version", "13, 8")]).offer_version,
            "a list of versions"
        );
        assert!(refused(&[HOST, V13, ("sec-websocket-key", "c2hvcnQ=")]).message.contains("16 bytes"));
        assert!(refused(&[HOST, V13]).message.contains("missing"));
        assert!(refused(&[HOST, V13, KEY, KEY]).message.contains("more than one Sec-WebSocket-Key"));
        assert!(refused(&[V13, KEY]).message.contains("Host header is missing"));
        assert!(refused(&[HOST, HOST, V13, KEY]).message.contains("more than one Host"));
        assert!(!refused(&[HOST, HOST, V13, KEY]).offer_version);
    }

    #[test]
    fn upgrade_tokens() {
        assert!(is_upgrade(&headers(&[("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")])));
        assert!(!is_upgrade(&headers(&[("connection", "keep-alive"), ("upgrade", "websocket")])));
        assert!(!is_upgrade(&headers(&[("connection", "upgrade")])));
    }
}
