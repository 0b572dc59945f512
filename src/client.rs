//! The typed Rust client of the whole API, for applications: every method comes from the same
//! `#[rpc]` definitions the server registers (`rpc::api`), as jsonrpsee's client traits
//! [`ChannelApiClient`] and [`NodeApiClient`], and [`subscribe`] follows a channel with typed
//! events ([`Event`]). `examples/follow.rs` shows a client that resumes after every
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
    PublicationJson, SubscriptionEvent,
};
pub use jsonrpsee::core::client::{Error, Subscription};
pub use jsonrpsee::ws_client::WsClient;

use jsonrpsee::core::client::SubscriptionClientT;
use jsonrpsee::core::params::ObjectParams;
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
