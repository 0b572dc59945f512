//! JSON-RPC methods: the `#[rpc]` definitions (one trait per concern), their implementations
//! and the errors, mapped once. The JSON-RPC front door (`crate::frontends::jsonrpc`) parses
//! messages and dispatches into the method table built here.

pub mod api;
pub mod describe;
pub mod error;
mod handlers;
pub mod server_api;

pub use error::RpcError;
pub use handlers::{Handlers, NodeState};

use crate::session::{Deferred, Session};
use api::{ChannelApiServer, ConversationApiServer, NodeApiServer, StreamApiServer};
use jsonrpsee::core::server::{Methods, RpcModule};
use parking_lot::Mutex;
use serde_json::value::RawValue;
use std::sync::Arc;

/// The methods that change the connection's state, which run in the order a client sends them
/// (a subscribe then an unsubscribe; an auth then a subscribe). Every other call runs as soon as
/// it arrives.
pub const ORDERED_METHODS: &[&str] = &["subscribe", "subscribe_many", "unsubscribe", "auth"];

tokio::task_local! {
    /// The call being run, for its handler ([`CallCtx::scope`]).
    static CALL: Arc<CallCtx>;
}

/// What a method call sees of its caller. The front door runs the call's method inside
/// [`CallCtx::scope`] and the handler reads it with [`CallCtx::current`]: a task-local, where
/// jsonrpsee's request extensions would cost a map and a box per call, and copies of both in
/// the method's wrapper (six allocations of the 35 a `subscribe` makes).
#[derive(Debug)]
pub struct CallCtx {
    /// The caller's session.
    pub session: Arc<Session>,
    /// Subscriptions the call prepared, for the front door to take live behind the answer.
    pending: Mutex<Vec<Deferred>>,
}

impl CallCtx {
    /// A context for one call of `session`.
    pub fn new(session: Arc<Session>) -> CallCtx {
        CallCtx { session, pending: Mutex::new(Vec::new()) }
    }

    /// Runs `call` (a method's future, polled by the task that awaits this) with `ctx` as its
    /// [`CallCtx::current`].
    pub async fn scope<T>(ctx: Arc<CallCtx>, call: impl Future<Output = T>) -> T {
        CALL.scope(ctx, call).await
    }

    /// The same, for a method that runs at once.
    pub fn sync_scope<T>(ctx: Arc<CallCtx>, call: impl FnOnce() -> T) -> T {
        CALL.sync_scope(ctx, call)
    }

    /// The call being run by this task, if it runs one.
    pub fn current() -> Option<Arc<CallCtx>> {
        CALL.try_with(Arc::clone).ok()
    }

    /// Hands a prepared subscription to the front door, which queues the call's answer first.
    pub fn defer(&self, p: impl Into<Deferred>) {
        self.pending.lock().push(p.into());
    }

    /// The subscriptions the call prepared.
    pub fn take_pending(&self) -> Vec<Deferred> {
        std::mem::take(&mut *self.pending.lock())
    }
}

/// The descriptors of every method of the method table, in the order of their traits.
pub fn descriptors() -> Vec<describe::MethodDescriptor> {
    api::CHANNEL_METHODS
        .iter()
        .chain(api::CONVERSATION_METHODS)
        .chain(api::NODE_METHODS)
        .chain(api::STREAM_METHODS)
        .copied()
        .collect()
}

/// The method that answers the OpenRPC document, on every transport, without a token.
pub const DISCOVER: &str = "rpc.discover";

/// The method table of every `#[rpc]` trait, and `rpc.discover` answering `openrpc` (the
/// document [`crate::spec::openrpc::document`] generates, made once at start).
pub fn methods(handlers: Handlers, openrpc: Box<RawValue>) -> Methods {
    let mut m = RpcModule::new(());
    m.merge(ChannelApiServer::into_rpc(handlers.clone()))
        .expect("method names are unique across traits; qed");
    m.merge(ConversationApiServer::into_rpc(handlers.clone()))
        .expect("method names are unique across traits; qed");
    m.merge(NodeApiServer::into_rpc(handlers.clone())).expect("method names are unique across traits; qed");
    m.merge(StreamApiServer::into_rpc(handlers)).expect("method names are unique across traits; qed");
    let mut discover = RpcModule::new(openrpc);
    discover
        .register_method(DISCOVER, |_, doc, _| {
            let raw: &RawValue = doc;
            Ok::<_, jsonrpsee::types::ErrorObjectOwned>(raw.to_owned())
        })
        .expect("rpc.discover is registered once; qed");
    m.merge(discover).expect("rpc.discover is no trait's method; qed");
    m.into()
}
