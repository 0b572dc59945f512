//! A request built from fuzz bytes (a `token` header, an `Authorization` header, a query
//! string) through `rpchub::gate::token::extract`.
//!
//! Checks, besides "no panic": a token found is non-empty and has no surrounding whitespace
//! when it came from a header.

#![no_main]

use http::{HeaderValue, Request, Uri};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Three fields separated by 0xff (a byte no header value or URI may hold); the first byte's
    // bits say which of them are present, so every combination of sources is explored.
    let [flags, rest @ ..] = data else { return };
    let mut fields = rest.split(|&b| b == 0xff);
    let (token, authorization, query) = (fields.next(), fields.next(), fields.next());
    let uri = query
        .filter(|_| flags & 4 != 0)
        .and_then(|q| std::str::from_utf8(q).ok())
        .and_then(|q| format!("/ws/rpc?{q}").parse::<Uri>().ok())
        .unwrap_or_else(|| Uri::from_static("/ws/rpc"));
    let mut req = Request::builder().uri(uri).body(()).expect("a valid URI; qed");
    for (bit, name, value) in [(1, "token", token), (2, "authorization", authorization)] {
        if let Some(v) = value.filter(|_| flags & bit != 0).and_then(|v| HeaderValue::from_bytes(v).ok()) {
            req.headers_mut().insert(name, v);
        }
    }
    if let Ok(Some(t)) = rpchub::gate::token::extract(&req) {
        assert!(!t.is_empty(), "an empty token");
        if req.headers().contains_key("token") || req.headers().contains_key("authorization") {
            assert_eq!(t, t.trim(), "a header token is trimmed");
        }
    }
});
