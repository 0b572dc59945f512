//! `backend.connect_proxy`: the backend says who connects, before the upgrade.
//!
//! The gate ([`crate::gate::token`]) asks when rpchub does not itself accept the request's
//! token (there is none, or it is not one rpchub knows): POST `{url}/connect` with
//! `{"client":{"id","remote"},"headers":{NAME:VALUE},"token"?:T}`. `headers` holds only the
//! upgrade request's headers that `backend.forward_headers` names (which also go on the POST
//! itself, as on every request to the backend); the token goes only in the body. The answer
//! `{"result":{"user","channels"?,"publish"?}}` becomes the connection's [`Principal`]: the
//! user, authenticated, with `channels` (subscribe, history) and `publish` glob lists as a JWT's
//! claims would give; an empty or missing `user` is an anonymous client. The client's `id` is
//! the one every later request about the connection carries ([`Backend::client_id`]).

use super::{Backend, BackendError};
use crate::auth::{Globs, Kind, Principal};
use hyper::HeaderMap;
use serde::Deserialize;
use std::net::SocketAddr;

/// The `result` of an answer to `/connect`.
/// Other keys are ignored, so a backend may add its own.
#[derive(Deserialize)]
struct Identity {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// Who is connecting, as the backend is told.
#[derive(Debug, Clone, Copy)]
pub struct Connecting<'a> {
    /// The id the session will have.
    pub session_id: u64,
    /// The client's address.
    pub remote: SocketAddr,
    /// The upgrade request's headers (only the forwarded ones are passed on).
    pub headers: &'a HeaderMap,
    /// The request's token, if it carried one that rpchub does not accept.
    pub token: Option<&'a str>,
}

impl Backend {
    /// Asks the backend who `c` is: the principal of the connection, or why not
    /// ([`BackendError::Refused`] with the backend's message, or unavailable), within
    /// `backend.timeout`.
    pub async fn connect(&self, c: Connecting<'_>) -> Result<Principal, BackendError> {
        let forwarded = self.forwarded(c.headers);
        let mut headers = serde_json::Map::new();
        for (name, value) in forwarded.iter() {
            let Ok(v) = value.to_str() else { continue };
            match headers.get_mut(name.as_str()) {
                // A header sent more than once, as HTTP joins them.
                Some(serde_json::Value::String(prev)) => *prev = format!("{prev}, {v}"),
                _ => drop(headers.insert(name.as_str().to_string(), v.into())),
            }
        }
        let mut body = serde_json::json!({
            "client": {"id": self.client_id_of(c.session_id), "remote": c.remote.to_string()},
            "headers": headers,
        });
        if let Some(t) = c.token {
            body["token"] = t.into();
        }
        let answer = self.post_json_with("/connect", &body, &forwarded).await.and_then(|r| identity(r.get()));
        self.metrics.backend.request("connect", answer.as_ref().map_or_else(BackendError::outcome, |_| "ok"));
        answer
    }
}

/// The principal a `/connect` result names.
fn identity(result: &str) -> Result<Principal, BackendError> {
    let malformed = |why: String| {
        BackendError::Unavailable(format!(
            "the backend's answer to /connect is not {{\"result\":{{\"user\",\"channels\"?,\"publish\"?}}}}: {why}"
        ))
    };
    // An object only: serde would also read a struct from an array.
    if !result.trim_start().starts_with('{') {
        return Err(malformed("not an object".into()));
    }
    let id: Identity = serde_json::from_str(result).map_err(|e| malformed(e.to_string()))?;
    let user = id.user.unwrap_or_default();
    if user.is_empty() {
        return Ok(Principal::anonymous());
    }
    Ok(Principal {
        kind: Kind::Backend,
        subject: user,
        channels: Globs::new(&id.channels).map_err(|e| malformed(format!("channels: {e}")))?,
        publish: Globs::new(&id.publish).map_err(|e| malformed(format!("publish: {e}")))?,
        rate: None,
        expires_at: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_is_a_user_with_rights_or_anonymous() {
        let p = identity(r#"{"user":"alice","channels":["chat:*"],"publish":["chat:alice"]}"#).unwrap();
        assert_eq!((p.kind, p.subject.as_str()), (Kind::Backend, "alice"));
        assert!(p.is_authenticated() && !p.is_admin());
        assert!(p.channels.matches("chat:x") && !p.channels.matches("news:x"));
        assert!(p.publish.matches("chat:alice") && !p.publish.matches("chat:bob"));
        let bare = identity(r#"{"user":"bob"}"#).unwrap();
        assert!(bare.is_authenticated() && bare.channels.patterns().is_empty());
        for anonymous in [r#"{}"#, r#"{"user":""}"#, r#"{"user":null}"#] {
            assert!(!identity(anonymous).unwrap().is_authenticated(), "{anonymous}");
        }
        for bad in
            [r#"[]"#, r#"{"user":5}"#, r#"{"user":"a","channels":"x"}"#, r#"{"user":"a","channels":[""]}"#]
        {
            assert!(matches!(identity(bad), Err(BackendError::Unavailable(_))), "{bad}");
        }
    }
}
