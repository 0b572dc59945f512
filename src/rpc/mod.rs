//! JSON-RPC: the method definitions (`#[rpc]` traits), their implementations, the errors, the
//! per-connection session, and the dispatcher that runs calls on rpchub's own transport.

pub mod api;
pub mod dispatch;
pub mod error;
mod handlers;
mod session;

pub use dispatch::Dispatcher;
pub use error::RpcError;
pub use handlers::{Handlers, NodeState};
pub use session::{RateLimiter, Session, Verdict};

use api::{ChannelApiServer, NodeApiServer};
use jsonrpsee::core::server::{Methods, RpcModule};

/// The method table of every `#[rpc]` trait.
pub fn methods(handlers: Handlers) -> Methods {
    let mut m = RpcModule::new(());
    m.merge(ChannelApiServer::into_rpc(handlers.clone()))
        .expect("method names are unique across traits; qed");
    m.merge(NodeApiServer::into_rpc(handlers)).expect("method names are unique across traits; qed");
    m.into()
}

/// The names of every method served (for metrics labels and the specs).
pub fn method_names() -> Vec<&'static str> {
    let mut v = vec!["subscribe", "unsubscribe", "publish", "history", "channels", "ping", "info", "auth"];
    v.sort_unstable();
    v
}
