//! The connection's socket after the upgrade: RFC 6455 frames, the outgoing queue with its
//! slow-consumer rule, the reader and writer tasks, and the registry of open connections.
//! This replaces jsonrpsee's own WebSocket send path, which writes and flushes each message on
//! its own and never drops a slow client (see BENCHMARKS.md).
//!
//! The transport carries bytes and knows no protocol above WebSocket framing: a front door
//! (JSON-RPC, the `/ws` dialects, instance streams) implements [`Conn`] for its connections,
//! and the reader hands it each text message; the hub fills the [`Outbox`] with frames built
//! once per publication ([`SharedFrame`]).

mod conn;
pub mod deflate;
pub mod frame;
pub(crate) mod handshake;
mod link;
mod outbox;
mod registry;
mod shared;

pub use conn::{Conn, ConnLimits, Handled, run};
pub use link::Link;
pub use outbox::{Batch, Ending, Outbox, Push, Take};
pub use registry::{Registry, Slot};
pub use shared::{FrameWriter, SPLICE_MAX, SharedFrame, Splice};
