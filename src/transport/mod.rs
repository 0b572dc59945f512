//! The connection's socket after the upgrade: RFC 6455 frames, the outgoing queue with its
//! slow-consumer rule, the reader and writer tasks, and the registry of open connections.
//! This replaces jsonrpsee's own WebSocket send path, which writes and flushes each message on
//! its own and never drops a slow client (see BENCHMARKS.md).

pub mod frame;
pub mod handshake;
pub mod outbox;
pub mod registry;
pub mod ws;
