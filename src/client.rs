//! The typed Rust client of the whole API, for applications: every method comes from the same
//! `#[rpc]` definitions the server registers (`rpc::api`), as jsonrpsee's client traits
//! [`ChannelApiClient`] and [`NodeApiClient`], and [`subscribe`] follows a channel with typed
//! events ([`Event`]); [`call_streamed`] calls a method of the application's backend that
//! streams its answer and yields its lines. `examples/follow.rs` shows a client that resumes after every
//! disconnect without losing a publication.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use rpchub::client::{self, Event, NodeApiClient};
//! let c = client::connect("ws://127.0.0.1:7410/ws/rpc", None).await?;
//! assert_eq!(c.ping().await?, "pong");
//! let mut sub = client::subscribe(&c, "trades:SOL", None, Some(10)).await?;
//! while let Some(event) = sub.next().await {
//!     if let Event::Publication { offset, data, .. } = event? {
//!         println!("{offset}: {data}");
//!     }
//! }
//! # Ok(()) }
//! ```

pub use crate::broker::StreamPosition;
pub use crate::rpc::api::{
    AuthResult, ChannelApiClient, Event, HistoryResult, JsonData, NodeApiClient, NodeInfo, Publication,
    PublicationJson, StreamApiClient, SubscriptionEvent,
};
pub use jsonrpsee::core::client::{Error, Subscription};
pub use jsonrpsee::ws_client::WsClient;

use jsonrpsee::core::client::{ClientT, SubscriptionClientT};
use jsonrpsee::core::params::ObjectParams;
use jsonrpsee::core::traits::ToRpcParams;
use jsonrpsee::ws_client::WsClientBuilder;

/// Connects to `url` (`ws://HOST:PORT/ws/rpc`), with `token` as `Authorization: Bearer`.
pub async fn connect(url: &str, token: Option<&str>) -> Result<WsClient, Error> {
    let mut headers = jsonrpsee::http_client::HeaderMap::new();
    if let Some(t) = token {
        let value = format!("Bearer {t}")
            .parse()
            .map_err(|e| Error::Custom(format!("the token cannot be sent as a header: {e}")))?;
        headers.insert("authorization", value);
    }
    WsClientBuilder::default().set_headers(headers).build(url).await
}

/// Subscribes to `channel` (from `since`, or the newest `limit` publications): the events
/// follow in order, the snapshot first. Dropping the subscription unsubscribes.
pub async fn subscribe(
    client: &WsClient,
    channel: &str,
    since: Option<StreamPosition>,
    limit: Option<usize>,
) -> Result<Subscription<Event>, Error> {
    let mut p = ObjectParams::new();
    p.insert("channel", channel)?;
    if let Some(s) = since {
        p.insert("since", s)?;
    }
    if let Some(l) = limit {
        p.insert("limit", l)?;
    }
    client.subscribe("subscribe", p, "unsubscribe").await
}

/// One notification of a streamed reply: `{"stream":ID,"result":LINE}`.
#[derive(Debug, serde::Deserialize)]
struct StreamNote {
    stream: String,
    result: serde_json::Value,
}

/// The lines of a streamed reply ([`call_streamed`]).
#[derive(Debug)]
pub struct Streamed {
    id: String,
    notes: Subscription<StreamNote>,
    done: bool,
}

impl Streamed {
    /// The stream's id, for `stream_cancel`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next line, in the order the backend wrote them; the last one has type `end` or
    /// `error`, and `None` follows it.
    pub async fn next(&mut self) -> Option<Result<serde_json::Value, Error>> {
        while !self.done {
            match self.notes.next().await? {
                Ok(n) if n.stream == self.id => {
                    self.done = matches!(n.result["type"].as_str(), Some("end" | "error"));
                    return Some(Ok(n.result));
                }
                Ok(_) => continue,
                Err(e) => return Some(Err(Error::ParseError(e))),
            }
        }
        None
    }
}

/// Calls `method`, a method of the application's backend that answers with a streamed reply
/// (`{"stream":ID}`), and returns its lines as they arrive. The lines' listener is registered
/// before the call, so none is missed. A client follows one streamed call at a time (jsonrpsee
/// has one listener per notification method): another fails until this one is dropped.
pub async fn call_streamed(
    client: &WsClient,
    method: &str,
    params: impl ToRpcParams + Send,
) -> Result<Streamed, Error> {
    #[derive(serde::Deserialize)]
    struct Started {
        stream: String,
    }
    let notes = client.subscribe_to_method::<StreamNote>("stream").await?;
    let started: Started = client.request(method, params).await?;
    Ok(Streamed { id: started.stream, notes, done: false })
}
