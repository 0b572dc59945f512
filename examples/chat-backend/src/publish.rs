//! The backend's way out, rpchub's `POST /api/publish`: `chat_publish`'s answer, its lines
//! published one by one to the conversation's channel in order, [`Config::pause`] apart; and
//! the notifications of a mention, to the user channel of whoever is mentioned.

use crate::Config;
use serde_json::{Value, json};
use std::time::Duration;

/// Publishes answers; one HTTP client (a connection pool) for all of them.
#[derive(Debug)]
pub(crate) struct Publisher {
    http: reqwest::Client,
    url: String,
    token: String,
    pause: Duration,
}

impl Publisher {
    pub(crate) fn new(config: &Config) -> Publisher {
        Publisher {
            http: reqwest::Client::new(),
            url: format!("{}/api/publish", config.rpchub.trim_end_matches('/')),
            token: config.publish_token.clone(),
            pause: config.pause,
        }
    }

    /// Publishes `lines` to `channel` from a task of their own, each after the one before has
    /// been taken (so the channel's offsets follow the answer's order), each as
    /// `{"channel","event":LINE_TYPE,"data":LINE_DATA}`. A failure stops the answer and is
    /// logged: the client that asked has had its `accepted` already.
    pub(crate) fn publish_all(&self, channel: String, lines: Vec<Value>) {
        let (http, url, token, pause) = (self.http.clone(), self.url.clone(), self.token.clone(), self.pause);
        tokio::spawn(async move {
            for line in lines {
                // The pause comes first too: the call's answer goes out before the first chunk.
                tokio::time::sleep(pause).await;
                let body = json!({"channel": channel, "event": line["type"], "data": line["data"]});
                if let Err(failure) = post(&http, &url, &token, body).await {
                    eprintln!(
                        "chat-backend: publishing to {channel} through {url} failed ({failure}); answer stopped"
                    );
                    return;
                }
            }
        });
    }

    /// Publishes one `event` with `data` to `channel` from a task of its own; a failure is
    /// logged.
    pub(crate) fn publish_one(&self, channel: String, event: &'static str, data: Value) {
        let (http, url, token) = (self.http.clone(), self.url.clone(), self.token.clone());
        tokio::spawn(async move {
            let body = json!({"channel": channel, "event": event, "data": data});
            if let Err(failure) = post(&http, &url, &token, body).await {
                eprintln!("chat-backend: publishing to {channel} through {url} failed ({failure})");
            }
        });
    }
}

/// One `POST /api/publish`: `Err` says why it was not taken.
async fn post(http: &reqwest::Client, url: &str, token: &str, body: Value) -> Result<(), String> {
    let sent = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            let status = r.status();
            Err(format!("{status}: {}", r.text().await.unwrap_or_default()))
        }
        Err(e) => Err(e.to_string()),
    }
}
