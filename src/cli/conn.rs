//! One JSON-RPC connection over a WebSocket, spoken as plain JSON values, for the client
//! commands: `subscribe` and `repl` print what the server sends as it sent it, so they read
//! messages themselves instead of through a typed client. A refused upgrade keeps the server's
//! reason (the JSON body of a 401), which a typed client drops.

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The server refused the WebSocket upgrade with an HTTP status.
#[derive(Debug, thiserror::Error)]
#[error("{url}: HTTP {status}: {message}")]
pub(crate) struct Refused {
    /// The URL that was refused.
    pub url: String,
    /// The HTTP status, e.g. 401.
    pub status: u16,
    /// The server's `error.message`, or the status's reason when the body has none.
    pub message: String,
}

impl Refused {
    /// True when trying again later may succeed (rate limited, or a server error); any other
    /// refusal (a bad token, a forbidden origin, a wrong path) stays a refusal.
    pub(crate) fn is_temporary(&self) -> bool {
        self.status == 429 || self.status >= 500
    }
}

/// An open connection: requests go out as text frames, messages come back as JSON values.
#[derive(Debug)]
pub(crate) struct Conn {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// The server's close frame, once one came: `1001 going away` and the like.
    close: Option<String>,
}

impl Conn {
    /// Connects to `url` (`ws://HOST:PORT/ws/rpc`), with `token` as `Authorization: Bearer`.
    /// A refused upgrade is a [`Refused`] error.
    pub(crate) async fn connect(url: &str, token: Option<&str>) -> Result<Conn> {
        if url.starts_with("wss://") {
            bail!("{url}: this command speaks ws:// only (no TLS here); use a ws:// URL or `rpchub call`");
        }
        if !url.starts_with("ws://") {
            bail!("{url}: use ws://HOST:PORT/ws/rpc");
        }
        let mut req = url.into_client_request().with_context(|| format!("{url}: not a WebSocket URL"))?;
        if let Some(t) = token {
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().context("the token is not a valid header value")?,
            );
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(Conn { ws, next_id: 1, close: None }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status();
                let message = resp
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                    .unwrap_or_else(|| status.canonical_reason().unwrap_or("refused").to_string());
                Err(Refused { url: url.to_string(), status: status.as_u16(), message }.into())
            }
            Err(e) => Err(anyhow!("{url}: {e}")),
        }
    }

    /// Sends `method` with `params` and returns the id it used.
    pub(crate) async fn send_request(&mut self, method: &str, params: Option<Value>) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = json!({"jsonrpc": "2.0", "id": id, "method": method});
        if let Some(p) = params {
            req["params"] = p;
        }
        self.send(&req).await?;
        Ok(id)
    }

    /// Sends one JSON message as a text frame.
    pub(crate) async fn send(&mut self, v: &Value) -> Result<()> {
        self.ws.send(Message::text(v.to_string())).await.context("sending")
    }

    /// The next message as JSON; `None` once the connection has ended. Pings are answered by
    /// the WebSocket library as messages are read.
    pub(crate) async fn next(&mut self) -> Result<Option<Value>> {
        loop {
            let bytes = match self.ws.next().await {
                None => return Ok(None),
                Some(Ok(Message::Close(frame))) => {
                    self.close = Some(match frame {
                        Some(f) if f.reason.is_empty() => format!("close code {}", u16::from(f.code)),
                        Some(f) => format!("close code {}: {}", u16::from(f.code), f.reason),
                        None => "no close code".into(),
                    });
                    return Ok(None);
                }
                Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                Some(Ok(Message::Binary(b))) => b.to_vec(),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(anyhow!("connection lost: {e}")),
            };
            return serde_json::from_slice(&bytes)
                .context("the server sent a message that is not JSON")
                .map(Some);
        }
    }

    /// How the server ended the connection: "the server closed the connection (close code
    /// 1001: ...)".
    pub(crate) fn ended(&self) -> String {
        match &self.close {
            Some(c) => format!("the server closed the connection ({c})"),
            None => "the server closed the connection".into(),
        }
    }

    /// Calls `method` and waits for its answer, the whole response object; notifications that
    /// arrive first go to `on_note`.
    pub(crate) async fn call(
        &mut self,
        method: &str,
        params: Option<Value>,
        mut on_note: impl FnMut(Value),
    ) -> Result<Value> {
        let id = self.send_request(method, params).await?;
        loop {
            match self.next().await? {
                Some(v) if v.get("id") == Some(&json!(id)) => return Ok(v),
                Some(v) => on_note(v),
                None => bail!("{} before answering {method}", self.ended()),
            }
        }
    }
}

/// A JSON-RPC error object as one line: `error CODE: MESSAGE` and its data, if any.
pub(crate) fn error_line(error: &Value) -> String {
    let code = &error["code"];
    let message = error["message"].as_str().unwrap_or("(no message)");
    match error.get("data") {
        Some(d) if !d.is_null() => format!("error {code}: {message} (data: {d})"),
        _ => format!("error {code}: {message}"),
    }
}

/// The params of a call from the command line's words: no word, no params; one word that is
/// JSON: that value (an array or object as it is, anything else as the only positional
/// param); otherwise `KEY=VALUE` words make an object, each value taken as JSON when it parses
/// and as a string when it does not (`n=5` is the number 5, `s=abc` the string "abc").
pub(crate) fn params_from_words<S: AsRef<str>>(words: &[S]) -> Result<Option<Value>> {
    match words {
        [] => return Ok(None),
        [one] => {
            if let Ok(v) = serde_json::from_str::<Value>(one.as_ref()) {
                return Ok(Some(match v {
                    Value::Array(_) | Value::Object(_) => v,
                    other => Value::Array(vec![other]),
                }));
            }
        }
        _ => {}
    }
    let mut map = serde_json::Map::new();
    for w in words {
        let w = w.as_ref();
        let (k, v) = w.split_once('=').ok_or_else(|| {
            anyhow!("{w}: params are one JSON value (an array or an object) or KEY=VALUE words")
        })?;
        if k.is_empty() {
            bail!("{w}: the key before `=` is empty");
        }
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        map.insert(k.to_string(), value);
    }
    Ok(Some(Value::Object(map)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_json_or_key_value_words() {
        assert_eq!(params_from_words::<&str>(&[]).unwrap(), None);
        assert_eq!(params_from_words(&[r#"{"a":1}"#]).unwrap(), Some(json!({"a": 1})));
        assert_eq!(params_from_words(&["[1,2]"]).unwrap(), Some(json!([1, 2])));
        assert_eq!(params_from_words(&["\"x\""]).unwrap(), Some(json!(["x"])));
        assert_eq!(
            params_from_words(&["channel=trades:SOL", "limit=5", "data={\"px\":1}", "ok=true"]).unwrap(),
            Some(json!({"channel": "trades:SOL", "limit": 5, "data": {"px": 1}, "ok": true}))
        );
        assert!(params_from_words(&["nope"]).is_err());
        assert!(params_from_words(&["=1"]).is_err());
    }

    #[test]
    fn an_error_line_has_code_message_and_data() {
        assert_eq!(
            error_line(&json!({"code": -32601, "message": "Method not found"})),
            "error -32601: Method not found"
        );
        assert_eq!(
            error_line(&json!({"code": -32005, "message": "bad", "data": {"code": "invalid_request"}})),
            r#"error -32005: bad (data: {"code":"invalid_request"})"#
        );
    }
}
