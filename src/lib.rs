//! rpchub: one real-time API for bots, browsers and generated clients. JSON-RPC 2.0 over
//! WebSocket at `/ws/rpc` (and over HTTP at `/rpc`), with channels that clients subscribe to and
//! backends publish to; every subscription starts with a snapshot and continues live with no gap
//! and no duplicate. The wire contract is `PROTOCOL.md`.
//!
//! # Crate map
//!
//! Data flows one way: socket -> [`gate`] -> [`rpc`] -> [`hub`] -> [`broker`], and back
//! [`hub`] -> subscriber's outbox ([`transport::outbox`]) -> socket.
//!
//! - [`config`], [`constants`]: what `rpchub serve` can be told, and every default.
//! - [`server`]: binds the port, routes HTTP, upgrades WebSockets, shuts down gracefully.
//! - [`shutdown`]: the one shutdown signal.
//! - [`gate`]: the tower layers run before an upgrade: route, origin, rate, capacity, token.
//! - [`auth`]: tokens (static keys, JWTs), principals, channel permission globs.
//! - [`rpc`]: the `#[rpc]` method definitions, their handlers, errors, and the dispatcher.
//! - [`hub`]: channels, subscribers, snapshot-then-live, fan-out.
//! - [`broker`]: the `Broker` trait (its doc is the contract) and the memory broker.
//! - [`transport`]: frames, the per-connection outbox, reader and writer tasks, the registry.
//! - [`metrics`]: the Prometheus registry.
//! - [`demo`]: the market simulator behind `serve --demo`.
//! - [`bench`](mod@bench): the load generator behind `rpchub bench` (fanout, rpc, idle, storm).

#![forbid(unsafe_op_in_unsafe_fn)]

pub mod auth;
pub mod bench;
pub mod broker;
pub mod config;
pub mod constants;
pub mod demo;
pub mod gate;
pub mod hub;
pub mod metrics;
pub mod rpc;
pub mod server;
pub mod shutdown;
pub mod transport;

pub use config::Config;
pub use server::{Running, StartError, start};
