//! Integration tests: real servers on port 0, real WebSocket clients (tokio-tungstenite for
//! exact wire JSON, jsonrpsee's client as applications use it).

mod support;

mod backpressure;
mod bench;
mod broker_contract;
mod browser;
mod channel_slots;
mod channels;
mod hardening;
mod jsonrpc;
mod limits;
mod openapi;
mod publish_api;
mod security;
mod server;
mod slots;
mod spec;
