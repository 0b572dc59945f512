//! `chat_publish`'s way out: the lines of an answer published one by one to the conversation's
//! channel through rpchub's `POST /api/publish`, in order, [`Config::pause`] apart.

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
                let sent = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await;
                let failure = match sent {
                    Ok(r) if r.status().is_success() => continue,
                    Ok(r) => {
                        let status = r.status();
                        format!("{status}: {}", r.text().await.unwrap_or_default())
                    }
                    Err(e) => e.to_string(),
                };
                eprintln!(
                    "chat-backend: publishing to {channel} through {url} failed ({failure}); answer stopped"
                );
                return;
            }
        });
    }
}
