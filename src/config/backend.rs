//! `[backend]` (the application's HTTP backend: proxied methods, permission checks, lifecycle
//! hooks) and `[upstream]` (an HTTP-only JSON-RPC node whose methods rpchub forwards).

use crate::constants::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// `[backend]`: where the application's own logic lives. Off while `url` is empty.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BackendConfig {
    /// The backend's base URL (`http://HOST:PORT[/PATH]`); empty: no backend.
    pub url: String,
    /// Longest wait for a JSON answer, or for the first byte of a streamed one.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Longest a streamed reply may run, from the call to its last line.
    #[serde(with = "humantime_serde")]
    pub stream_timeout: Duration,
    /// Upgrade-request (or `POST /rpc` request) headers passed on to the backend, by name;
    /// nothing else of the client's request reaches it.
    pub forward_headers: Vec<String>,
    /// Proxied calls (and streamed replies running) per connection at once.
    pub max_in_flight: usize,
    /// Methods (glob patterns) served by the backend, from every front door.
    pub methods: Vec<String>,
    /// JSON Schema files of proxied methods, by method name, for the OpenRPC document.
    pub schemas: BTreeMap<String, PathBuf>,
    /// Ask the backend who connects, on every WebSocket upgrade.
    pub connect_proxy: bool,
    /// Lifecycle events posted to `{url}/hooks`: `connect`, `disconnect`, `subscribe`,
    /// `unsubscribe`.
    pub hooks: Vec<String>,
    /// How often the node posts a `presence` event with every client and subscription it holds.
    #[serde(with = "humantime_serde")]
    pub hooks_reconcile: Duration,
    /// Hook events kept waiting while the backend does not take them (oldest dropped beyond).
    pub hooks_queue: usize,
    /// Largest JSON answer, or line of a streamed one, taken from the backend.
    pub max_body_bytes: usize,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            url: String::new(),
            timeout: DEFAULT_BACKEND_TIMEOUT,
            stream_timeout: DEFAULT_BACKEND_STREAM_TIMEOUT,
            forward_headers: Vec::new(),
            max_in_flight: DEFAULT_BACKEND_MAX_IN_FLIGHT,
            methods: Vec::new(),
            schemas: BTreeMap::new(),
            connect_proxy: false,
            hooks: Vec::new(),
            hooks_reconcile: DEFAULT_HOOKS_RECONCILE,
            hooks_queue: DEFAULT_HOOKS_QUEUE,
            max_body_bytes: DEFAULT_BACKEND_MAX_BODY_BYTES,
        }
    }
}

/// The lifecycle events a backend may ask for.
pub const HOOK_EVENTS: &[&str] = &["connect", "disconnect", "subscribe", "unsubscribe"];

impl BackendConfig {
    /// True when a backend is configured.
    pub fn is_on(&self) -> bool {
        !self.url.is_empty()
    }

    /// True when the backend asked for lifecycle event `event`.
    pub fn hooks(&self, event: &str) -> bool {
        self.is_on() && self.hooks.iter().any(|h| h == event)
    }
}

/// `[upstream]`: an HTTP-only JSON-RPC node behind rpchub. Off while `url` is empty.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The node's JSON-RPC URL (`http://HOST:PORT[/PATH]`); empty: none.
    pub url: String,
    /// Methods (glob patterns) forwarded; empty: every method rpchub does not define (nor the
    /// backend serves).
    pub methods: Vec<String>,
    /// Longest wait for the node's answer.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig { url: String::new(), methods: Vec::new(), timeout: DEFAULT_UPSTREAM_TIMEOUT }
    }
}

impl UpstreamConfig {
    /// True when an upstream node is configured.
    pub fn is_on(&self) -> bool {
        !self.url.is_empty()
    }
}

/// Checks a backend or upstream URL: `http://` with a host. (rpchub speaks plain HTTP to the
/// services next to it; a TLS-terminating proxy on the same host fronts a remote one.)
pub(super) fn check_url(key: &str, url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!(
            "{key} is {url:?}; it must be an http:// URL (http://HOST:PORT[/PATH]); for an https \
             service, run a TLS-terminating proxy next to rpchub and point {key} at it"
        ));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || url.contains(['?', '#']) || url.chars().any(char::is_whitespace) {
        return Err(format!("{key} is {url:?}; write it as http://HOST:PORT[/PATH], without query"));
    }
    Ok(())
}
