//! rpchub: one real-time API for bots, browsers and generated clients. JSON-RPC 2.0 over
//! WebSocket at `/ws/rpc` (and over HTTP at `/rpc`), with channels that clients subscribe to and
//! backends publish to; every subscription starts with a snapshot and continues live with no gap
//! and no duplicate. The wire contract is `docs/protocol.md`.
//!
//! # Crate map
//!
//! Data flows one way: socket ([`transport`]) -> [`gate`] -> a front door ([`frontends`]) ->
//! [`session`] -> [`hub`] -> [`broker`], and back [`hub`] -> subscriber's outbox
//! ([`transport::Outbox`]) -> socket. A room imports only from rooms below it in that flow:
//! the transport knows no protocol, the hub no wire format, the broker no subscriber.
//!
//! - [`config`], [`constants`]: what `rpchub serve` can be told, and every default.
//! - [`server`]: binds the port, dispatches HTTP, upgrades WebSockets, shuts down gracefully.
//! - [`routes`]: the table of every route served, built once into a router; the one place a
//!   path becomes a route.
//! - [`shutdown`]: the one shutdown signal.
//! - [`gate`]: the checks run before the dispatch (route, Origin, upgrade rate, capacity,
//!   token or the backend's say on who connects), one tower layer each, sync or async; their order is written once, in its doc.
//! - [`auth`]: tokens (static keys, JWTs), principals, channel permission globs.
//! - [`frontends`]: the front doors; [`frontends::jsonrpc`] is JSON-RPC 2.0 (parsing, batches,
//!   call slots, notifications).
//! - [`rpc`]: the `#[rpc]` method definitions, their handlers, and their errors.
//! - [`backend`]: the application's HTTP backend (proxied methods, streamed replies,
//!   permission checks, lifecycle hooks) and an upstream JSON-RPC node; used by the gate, the
//!   front doors and the session, it uses nothing above them.
//! - [`session`]: a client's session and the subscription service every front door uses.
//! - [`hub`]: channels, subscribers, snapshot-then-live in two phases, fan-out by encoding.
//! - [`broker`]: the `Broker` trait (its doc is the contract), the memory broker, the Redis
//!   broker (one Redis or a Redis Cluster, shared by several nodes), a fault-injecting broker for
//!   tests.
//! - [`transport`]: frames, the per-connection outbox, shared frames, the connection loop and
//!   its [`transport::Conn`] seam, the registry.
//! - [`channel`]: channel names; [`bucket`]: the token bucket; [`metrics`]: the Prometheus
//!   registry; [`demo`]: the market simulator behind `serve --demo`.
//!
//! The load generator behind `rpchub bench` is its own crate, `rpchub-bench` (crates/bench).

#![forbid(unsafe_op_in_unsafe_fn)]

pub mod auth;
pub mod backend;
pub mod broker;
mod bucket;
pub mod channel;
pub mod client;
pub mod config;
pub mod constants;
mod demo;
pub mod frontends;
pub mod gate;
pub mod hub;
pub mod metrics;
mod routes;
pub mod rpc;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod spec;
pub mod transport;

pub use config::Config;
pub use server::{Running, StartError, start, start_with};
