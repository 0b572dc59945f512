//! The JSON-RPC front door: JSON-RPC 2.0 over WebSocket at `/ws/rpc` and over HTTP at
//! `POST /rpc`, onto the method table of [`crate::rpc`].
//!
//! Files: [`dispatch`] parses messages and runs calls; [`encoding`] writes hub events as
//! notifications; this one is the door and its connections.

mod dispatch;
mod encoding;

pub use dispatch::{Answer, Dispatcher, Lane, error_json};
pub use encoding::{JsonRpcEncoding, splice};

use super::Door;
use crate::backend::proxy::Flavor;
use crate::hub::{Encodings, Sink};
use crate::metrics::Metrics;
use crate::session::{Session, Subscriptions};
use crate::transport::{Conn, Ending, Handled, Link, Outbox, frame};
use std::sync::Arc;

/// The label of this door in metrics and hooks.
pub const DOOR: &str = "jsonrpc";

/// What every JSON-RPC connection of the node shares.
#[derive(Debug)]
pub struct JsonRpc {
    /// The method table and its dispatch.
    pub dispatcher: Dispatcher,
    /// Where subscriptions are made and ended.
    pub subscriptions: Arc<Subscriptions>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The notifications' encoding, plain and compressed.
    encodings: Encodings,
    /// For the connections, which hold the door.
    me: std::sync::Weak<JsonRpc>,
}

impl JsonRpc {
    /// The door over `dispatcher`; on connections with permessage-deflate, notifications of at
    /// least `compression_min_bytes` are compressed.
    pub fn new(
        dispatcher: Dispatcher,
        subscriptions: Arc<Subscriptions>,
        metrics: Arc<Metrics>,
        compression_min_bytes: usize,
    ) -> Arc<JsonRpc> {
        Arc::new_cyclic(|me| JsonRpc {
            dispatcher,
            subscriptions,
            metrics,
            encodings: Encodings::new(Arc::new(JsonRpcEncoding), compression_min_bytes),
            me: me.clone(),
        })
    }

    /// Handles one JSON-RPC message over HTTP: the answer's JSON, if it has one, and whether
    /// its sender floods.
    pub async fn handle_http(&self, session: &Arc<Session>, text: &str) -> Answer {
        self.dispatcher.handle(session, None, text).await
    }
}

impl Door for JsonRpc {
    fn name(&self) -> &'static str {
        DOOR
    }

    fn connect(&self, session: Arc<Session>) -> Arc<dyn Conn> {
        let door = self.me.upgrade().expect("a door in use is alive; qed");
        self.metrics.connection_opened(DOOR);
        self.subscriptions.connected(&session);
        if self.subscriptions.has_auto_subscribe() && session.principal().is_authenticated() {
            let outbox = &session.link().expect("a WebSocket session has a link; qed").outbox;
            let encoding = self.encodings.of(outbox).clone();
            let (subs, s) = (self.subscriptions.clone(), session.clone());
            tokio::spawn(async move { subs.auto_subscribe(&s, &encoding, encoding::splice).await });
        }
        Arc::new_cyclic(|me| WsConn { door, session, lane: Lane::default(), me: me.clone() })
    }
}

/// One JSON-RPC WebSocket connection.
#[derive(Debug)]
pub struct WsConn {
    door: Arc<JsonRpc>,
    session: Arc<Session>,
    lane: Lane,
    /// Handed to the work of each message.
    me: std::sync::Weak<WsConn>,
}

impl WsConn {
    fn outbox(&self) -> &Arc<Outbox> {
        &self.session.link().expect("a WebSocket session has a link; qed").outbox
    }

    /// Runs one message and queues its answer (through the first prepared subscription, if a
    /// call prepared one, so that the answer goes out before any snapshot).
    async fn run(self: Arc<Self>, text: String) {
        let answer = self.door.dispatcher.handle(&self.session, Some(&self.lane), &text).await;
        let out = self.outbox();
        let json = answer.json.as_deref().unwrap_or("");
        let (h, n) = frame::header_bytes(frame::OP_TEXT, json.len());
        let frame: [&[u8]; 2] = [&h[..n], json.as_bytes()];
        let mut first: &[&[u8]] = if answer.json.is_some() { &frame } else { &[] };
        for p in answer.pending {
            let sink = Sink::new(out.clone(), self.door.encodings.of(out).clone(), encoding::splice(p.id()));
            // Fails only when the connection is closing: nothing more goes out then anyway.
            let _ = p.go_live(sink, first);
            first = &[];
        }
        if !first.is_empty() {
            // An overflow fails the connection; it is counted when the connection ends.
            let _ = out.push_answer(first);
        }
        // Behind the answer that named them.
        for stream in answer.streams {
            tokio::spawn(stream.relay(out.clone(), Flavor::JsonRpc));
        }
        if answer.flood {
            out.end(Ending::Close(frame::code::POLICY, "rate limit exceeded"));
        }
    }
}

impl Conn for WsConn {
    fn link(&self) -> &Link {
        self.session.link().expect("a WebSocket session has a link; qed")
    }

    fn on_text(&self, text: &str) -> Handled {
        let me = self.me.upgrade().expect("the transport holds the connection while it reads; qed");
        Handled::Later(Box::pin(me.run(text.to_owned())))
    }

    fn tick(&self) {
        self.door.subscriptions.tick(&self.session);
    }

    fn on_end(&self, ending: Option<Ending>) {
        self.door.metrics.connection_closed(DOOR, ending.and_then(|e| e.label()));
        if let Some(calls) = self.session.calls() {
            calls.cancel_all();
        }
        self.door.subscriptions.disconnected(&self.session, ending);
    }
}
