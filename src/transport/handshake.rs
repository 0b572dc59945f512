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

/// Checks a WebSocket upgrade request and returns the `Sec-WebSocket-Accept` value, or why the
/// handshake is invalid.
pub(crate) fn accept_key(headers: &HeaderMap) -> Result<HeaderValue, &'static str> {
    if headers.get("sec-websocket-version").and_then(|v| v.to_str().ok()).map(str::trim) != Some("13") {
        return Err("invalid WebSocket handshake: Sec-WebSocket-Version must be 13");
    }
    let key = headers
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .ok_or("invalid WebSocket handshake: Sec-WebSocket-Key is missing")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| "invalid WebSocket handshake: Sec-WebSocket-Key is not base64")?;
    if decoded.len() != 16 {
        return Err("invalid WebSocket handshake: Sec-WebSocket-Key must encode 16 bytes");
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
        let h =
            headers(&[("sec-websocket-version", "13"), ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")]);
        assert_eq!(accept_key(&h).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn bad_handshakes() {
        assert!(accept_key(&headers(&[("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")])).is_err());
        let v8 =
            headers(&[("sec-websocket-version", "8"), ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")]);
        assert!(accept_key(&v8).is_err());
        let short = headers(&[("sec-websocket-version", "13"), ("sec-websocket-key", "c2hvcnQ=")]);
        assert!(accept_key(&short).unwrap_err().contains("16 bytes"));
    }

    #[test]
    fn upgrade_tokens() {
        assert!(is_upgrade(&headers(&[("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")])));
        assert!(!is_upgrade(&headers(&[("connection", "keep-alive"), ("upgrade", "websocket")])));
        assert!(!is_upgrade(&headers(&[("connection", "upgrade")])));
    }
}
