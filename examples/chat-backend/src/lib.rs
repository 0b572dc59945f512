//! An example backend for rpchub: an AI chat whose "model" streams its answer word by word.
//!
//! rpchub keeps the clients' sockets; this backend keeps the application. rpchub POSTs each
//! call of a proxied method to `{backend.url}/rpc/{method}` with
//! `{"method","params","client":{"id","user"?,"remote"}}` (see rpchub's docs/backend.md). Two
//! methods are served, both with params `{"message","sessionId"}` (or `[message, sessionId]`):
//! - `chat` answers `application/x-ndjson`: one line per word, `{"type":"content","data":
//!   {"content":WORD,"done":false}}`, a pause ([`Config::pause`]) between lines, a
//!   `{"type":"tool","data":{"name","input","output"}}` line in the middle, and a last
//!   `{"type":"content","data":{"content":"","done":true}}`. rpchub relays each line to the
//!   client that called as it comes (on `/ws`, as it is written here).
//! - `chat_publish` answers `{"result":{"channel":"conversation:SESSION","accepted":true}}` at
//!   once, then publishes the same lines to that channel through rpchub's `POST /api/publish`,
//!   each as `{"channel","event":LINE_TYPE,"data":LINE_DATA}`: every tab subscribed to the
//!   conversation sees the answer, and a tab that reconnects mid-answer recovers what it missed
//!   by subscribing with `since`.
//!
//! Missing or wrong params are `{"error":{"code":"invalid_params","message"}}`, an unknown
//! method `{"error":{"code":"method_not_found","message"}}`.
//!
//! People write to each other too: a client's `publish` to `conversation:*` or `typing:*` (both
//! namespaces have `publish_proxy = true`) is first POSTed to `/publish`, and what is published
//! is what [`approve`] answers: `{"user","text"}` for a message, `{"user"}` for a typing
//! notification, the user always the connection's own (`client.user`), so that nobody can write
//! in another's name. A message that mentions `@bob` is also published to `notifications:#bob`
//! (a user channel, to which rpchub subscribes every connection of bob's: every device of his
//! hears of it) as `{"user","text","channel"}`, event `mention`.
//!
//! The answer is not a model's: [`answer`] derives it from the message, so that what a client
//! prints can be checked.

mod answer;
mod publish;

pub use answer::{answer, text};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The address the binary listens on by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";
/// rpchub's base URL by default (its default listen address).
pub const DEFAULT_RPCHUB: &str = "http://127.0.0.1:7410";
/// The publisher key of the example's `rpchub.toml`, the binary's default: for the demo only.
pub const DEMO_PUBLISH_TOKEN: &str = "chat-backend-demo-publish-key";
/// The pause between two lines of an answer by default: slow enough to watch the words come.
pub const DEFAULT_PAUSE: Duration = Duration::from_millis(60);
/// The namespace of the conversation channels `chat_publish` publishes to.
pub const NAMESPACE: &str = "conversation";
/// The longest `sessionId` taken (a channel name is at most 255 bytes).
pub const MAX_SESSION_ID: usize = 200;
/// The namespace of the typing notifications (`history_size = 0`: never kept).
pub const TYPING: &str = "typing";
/// The longest message a person may write, in characters.
pub const MAX_TEXT: usize = 2000;
/// The namespace of the users' own channels (`notifications:#USER`), where mentions go.
pub const NOTIFICATIONS: &str = "notifications";
/// The most people one message notifies.
pub const MAX_MENTIONS: usize = 5;

/// What the backend needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// rpchub's base URL, for `POST {rpchub}/api/publish`.
    pub rpchub: String,
    /// A token with publish rights on `conversation:*` and `notifications:*` (a static key of
    /// rpchub's config, or its admin token), sent as `Authorization: Bearer`.
    pub publish_token: String,
    /// The pause between two lines of an answer.
    pub pause: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rpchub: DEFAULT_RPCHUB.into(),
            publish_token: DEMO_PUBLISH_TOKEN.into(),
            pause: DEFAULT_PAUSE,
        }
    }
}

/// The state every request shares.
#[derive(Debug)]
struct App {
    config: Config,
    publisher: publish::Publisher,
}

/// The backend's routes: `POST /rpc/{method}` for `chat` and `chat_publish`, `POST /publish`
/// for the clients' own publications.
pub fn app(config: Config) -> Router {
    let publisher = publish::Publisher::new(&config);
    let state = Arc::new(App { config, publisher });
    Router::new()
        .route("/rpc/{method}", axum::routing::post(rpc))
        .route("/publish", axum::routing::post(publish_check))
        .with_state(state)
}

/// rpchub's question before a client's publish (`publish_proxy`):
/// `{"channel","client":{"id","user"?,"remote"},"data"}`.
async fn publish_check(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let ask: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let user = ask["client"]["user"].as_str().unwrap_or_default();
    let channel = ask["channel"].as_str().unwrap_or_default();
    match approve(channel, user, &ask["data"]) {
        Ok(data) => {
            let text = data["text"].as_str().unwrap_or_default();
            for who in mentions(text, user) {
                let note = json!({"user": user, "text": text, "channel": channel});
                app.publisher.publish_one(format!("{NOTIFICATIONS}:#{who}"), "mention", note);
            }
            axum::Json(json!({"result": {"data": data}})).into_response()
        }
        Err(m) => error(StatusCode::OK, "forbidden", &m),
    }
}

/// The users `text` mentions (`@name` at the start of a word, a name of A-Z a-z 0-9 _ . -),
/// each once, never the writer, at most [`MAX_MENTIONS`].
pub fn mentions(text: &str, writer: &str) -> Vec<String> {
    let name = |c: &char| c.is_ascii_alphanumeric() || "_.-".contains(*c);
    let mut out: Vec<String> = Vec::new();
    let mut before = ' ';
    for (i, c) in text.char_indices() {
        if c == '@' && before.is_whitespace() && out.len() < MAX_MENTIONS {
            let who: String = text[i + 1..].chars().take_while(name).collect();
            let who = who.trim_end_matches('.').to_string();
            if !who.is_empty() && who.len() <= 64 && who != writer && !out.contains(&who) {
                out.push(who);
            }
        }
        before = c;
    }
    out
}

/// What `user` may publish to `channel` with `data`: a message in a conversation is
/// `{"text"}` (1 to [`MAX_TEXT`] characters, not blank) and is published as
/// `{"user","text"}`; a typing notification is published as `{"user"}` whatever was sent.
/// Anyone without a user, and any other channel, is refused.
pub fn approve(channel: &str, user: &str, data: &Value) -> Result<Value, String> {
    if user.is_empty() {
        return Err("sign in to write in a conversation".into());
    }
    match channel.split_once(':') {
        Some((NAMESPACE, _)) => match data["text"].as_str() {
            Some(t) if !t.trim().is_empty() && t.chars().count() <= MAX_TEXT => {
                Ok(json!({"user": user, "text": t}))
            }
            _ => Err(format!("a message is {{\"text\": 1 to {MAX_TEXT} characters}}")),
        },
        Some((TYPING, _)) => Ok(json!({"user": user})),
        _ => Err(format!("this backend takes publications to {NAMESPACE}:* and {TYPING}:* only")),
    }
}

/// Serves [`app`] on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, config: Config) -> std::io::Result<()> {
    axum::serve(listener, app(config)).await
}

/// One proxied call.
async fn rpc(State(app): State<Arc<App>>, Path(method): Path<String>, body: Bytes) -> Response {
    let call: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (message, session) = match method.as_str() {
        "chat" | "chat_publish" => match params(&call["params"]) {
            Ok(p) => p,
            Err(m) => return error(StatusCode::OK, "invalid_params", &m),
        },
        _ => {
            let m = format!("no method {method:?}: this backend serves chat and chat_publish");
            return error(StatusCode::NOT_FOUND, "method_not_found", &m);
        }
    };
    let lines = answer(&message);
    if method == "chat" {
        return stream(lines, app.config.pause);
    }
    let channel = format!("{NAMESPACE}:{session}");
    app.publisher.publish_all(channel.clone(), lines);
    axum::Json(json!({"result": {"channel": channel, "accepted": true}})).into_response()
}

/// The `message` and `sessionId` of `params`, by name or by position.
fn params(params: &Value) -> Result<(String, String), String> {
    let (message, session) = match params {
        Value::Object(p) => (p.get("message"), p.get("sessionId")),
        Value::Array(p) => (p.first(), p.get(1)),
        _ => return Err("params must be {\"message\",\"sessionId\"}".into()),
    };
    let message = match message.and_then(Value::as_str) {
        Some(m) if !m.trim().is_empty() => m.to_string(),
        _ => return Err("params need \"message\": a string with a word in it".into()),
    };
    let Some(session) = session.and_then(Value::as_str) else {
        return Err("params need \"sessionId\": a string".into());
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_.@/=,+-".contains(c);
    if session.is_empty() || session.len() > MAX_SESSION_ID || !session.chars().all(allowed) {
        return Err(format!(
            "\"sessionId\" must be 1 to {MAX_SESSION_ID} of A-Z a-z 0-9 _ . @ / = , + - (it names the \
             channel {NAMESPACE}:SESSION)"
        ));
    }
    Ok((message, session.to_string()))
}

/// `{"error":{"code","message"}}`.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

/// An NDJSON answer writing `lines` one after another, `pause` apart. When rpchub lets go of
/// the response (its client left, or cancelled the stream), the next write fails and the
/// answer stops.
fn stream(lines: Vec<Value>, pause: Duration) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    tokio::spawn(async move {
        for (i, line) in lines.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(pause).await;
            }
            if tx.send(Bytes::from(wire(&line))).await.is_err() {
                return;
            }
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, std::convert::Infallible>(line), rx))
    });
    ([("content-type", "application/x-ndjson")], Body::from_stream(body)).into_response()
}

/// A line as it goes on the wire: `{"type":..,"data":..}` (in that order, for the people who
/// read it) and its newline.
fn wire(line: &Value) -> String {
    format!("{{\"type\":{},\"data\":{}}}\n", line["type"], line["data"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_come_by_name_or_by_position_and_are_checked() {
        let ok = Ok(("hi there".to_string(), "s-1".to_string()));
        assert_eq!(params(&json!({"message": "hi there", "sessionId": "s-1"})), ok);
        assert_eq!(params(&json!(["hi there", "s-1"])), ok);
        assert!(params(&json!({"sessionId": "s-1"})).unwrap_err().contains("message"));
        assert!(params(&json!({"message": "  ", "sessionId": "s-1"})).unwrap_err().contains("message"));
        assert!(params(&json!({"message": "hi"})).unwrap_err().contains("sessionId"));
        assert!(params(&json!({"message": "hi", "sessionId": "a b"})).unwrap_err().contains("sessionId"));
        assert!(params(&Value::Null).is_err());
    }

    #[test]
    fn a_publication_is_written_in_its_senders_name_only() {
        let said = approve("conversation:c-1", "bob", &json!({"text": "hi", "user": "alice"}));
        assert_eq!(said, Ok(json!({"user": "bob", "text": "hi"})));
        assert_eq!(approve("typing:c-1", "bob", &json!({"user": "alice"})), Ok(json!({"user": "bob"})));
        assert!(approve("conversation:c-1", "", &json!({"text": "hi"})).unwrap_err().contains("sign in"));
        for bad in
            [json!({"text": " "}), json!({"text": 5}), json!("hi"), json!({"text": "x".repeat(MAX_TEXT + 1)})]
        {
            assert!(approve("conversation:c-1", "bob", &bad).unwrap_err().contains("text"), "{bad}");
        }
        assert!(approve("trades:SOL", "bob", &json!({})).is_err());
    }

    #[test]
    fn mentions_are_named_once_never_the_writer_and_capped() {
        assert_eq!(mentions("@bob see you, @carol. And @bob again", "alice"), ["bob", "carol"]);
        assert_eq!(mentions("note to @alice and me@, mail bob@example.com", "alice"), Vec::<String>::new());
        assert_eq!(mentions("no mention here", "alice"), Vec::<String>::new());
        assert_eq!(mentions("@a @b @c @d @e @f @g", "z").len(), MAX_MENTIONS);
    }

    #[test]
    fn a_line_says_its_type_first() {
        let line = json!({"data": {"content": "Hi", "done": false}, "type": "content"});
        assert_eq!(wire(&line), "{\"type\":\"content\",\"data\":{\"content\":\"Hi\",\"done\":false}}\n");
    }
}
