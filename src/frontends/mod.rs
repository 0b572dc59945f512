//! The front doors: each translates one wire protocol onto the hub and the session layer.
//! A front door implements [`crate::transport::Conn`] for its connections (the reader hands it
//! each text message) and [`crate::hub::Encoding`] for its frames; it never reaches into the
//! broker. Adding a door is adding a room here and a route.
//!
//! - [`jsonrpc`]: JSON-RPC 2.0 on `/ws/rpc` and `POST /rpc`.

pub mod jsonrpc;
