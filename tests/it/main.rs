//! Integration tests: real servers on port 0, real WebSocket clients (tokio-tungstenite for
//! exact wire JSON, jsonrpsee's client as applications use it), and tools in node: headless
//! Chromium, the generated TypeScript client and the OpenRPC tools.

mod redis_support;
mod support;

mod backend_checks;
mod backpressure;
mod bench;
mod bot_options;
mod broker_contract;
mod broker_down;
mod browser;
mod channel_slots;
mod channels;
mod chat_example;
mod cli;
mod clients;
mod compat;
mod compression;
mod conversations;
mod deploy;
mod dialects;
mod follow;
mod hardening;
mod hooks;
mod instances;
mod invariant;
mod jsonrpc;
mod limits;
mod logs;
mod metrics;
mod openapi;
mod patterns;
mod proxy;
mod publish_api;
mod redis_broker;
mod redis_nodes;
mod security;
mod server;
mod slots;
mod spec;
mod state_channels;
mod subscribe_many;
mod upstream;
