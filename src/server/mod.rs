//! The server: starts a node, serves until shutdown, shuts down gracefully.
//!
//! One port serves everything. Each TCP connection is an HTTP/1.1 connection (hyper) whose
//! requests pass the gate ([`crate::gate`]) and then the dispatch; a WebSocket upgrade hands the
//! raw TCP stream to [`crate::transport`], after which hyper is out of the picture. The routes
//! are the table of [`crate::routes`]; anything else is 404.
//!
//! - this file: the [`Node`] every part shares, [`start`] / [`start_with`], [`Running`], the
//!   ping sweeper and the shutdown sequence;
//! - `accept`: the listening socket, the accept loop and the tower stack around the dispatch;
//! - `dispatch`: the service behind the gate, from a request's route to its handler, and the
//!   small handlers (`/health`, `/metrics`, the console);
//! - `upgrade`: `GET /ws/rpc`, the 101 and the connection it starts;
//! - `conns`: the node-wide and per-address limits every TCP connection is counted against;
//! - `io`: the TCP stream with the write timeout hyper serves HTTP on;
//! - `http`: `POST /rpc`, JSON-RPC over HTTP, and the body rules other routes share; `cors`: its
//!   cross-origin policy;
//! - `api`: `POST /api/publish`, the server API for backends, and
//!   `POST /api/events/websocket/{instance}`;
//! - `instance`: `GET /ws/{instance}`, the checks before its upgrade.

mod accept;
mod api;
mod conns;
mod cors;
mod dispatch;
mod http;
mod instance;
mod io;
mod upgrade;

use crate::auth::{Authenticator, Principal};
use crate::backend::hooks::Hooks;
use crate::config::Config;
use crate::constants::{ANSWER_SHARE_OF_OUTBOUND_QUEUE, PING_SWEEP_PERIOD};
use crate::frontends::jsonrpc::{Dispatcher, JsonRpc};
use crate::gate::token::TokenCheck;
use crate::gate::{CapacityCheck, Checks, ClientAddr, ConnectProxy, OriginCheck, RouteCheck, UpgradeRate};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::routes::Routes;
use crate::rpc::{self, Handlers, NodeState};
use crate::session::{Budgets, LifecycleHook, Subscriptions};
use crate::shutdown::Shutdown;
use crate::transport::{ConnLimits, Registry, frame};
use hyper::Request;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The configuration is unusable (keys, patterns).
    #[error("{0}")]
    Config(String),
    /// The broker could not be set up.
    #[error("broker: {0}")]
    Broker(#[from] crate::broker::BrokerError),
}

/// Everything a running node shares.
#[derive(Debug)]
pub struct Node {
    /// The configuration.
    pub config: Arc<Config>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Channels and fan-out.
    pub hub: Arc<Hub>,
    /// Open WebSocket connections.
    pub registry: Arc<Registry>,
    /// The JSON-RPC front door.
    jsonrpc: Arc<JsonRpc>,
    /// The `/ws` front door.
    compat: Arc<crate::frontends::ws::Compat>,
    /// The instances of `/ws/{instance}`.
    instances: Arc<crate::frontends::instance::Instances>,
    /// The bounds of every connection's reader.
    conn_limits: ConnLimits,
    /// The shutdown signal.
    pub shutdown: Shutdown,
    /// Session ids, unique in the process; shared with the gate's connect check, which
    /// allocates an upgrade's id before the upgrade.
    next_session: Arc<AtomicU64>,
    /// Every TCP connection's places.
    tcp: Arc<conns::TcpLimits>,
    /// The call budgets of `POST /rpc`.
    budgets: Budgets,
    /// Who may call `POST /rpc` from other origins.
    cors: cors::Cors,
    /// The OpenRPC document, as `GET /openrpc.json` serves it.
    openrpc: String,
    /// The OpenAPI document, as `GET /openapi.json` serves it.
    openapi: String,
    /// The method handlers, for `POST /api/publish`, which publishes under `publish`'s rules.
    publisher: Handlers,
    /// The application's backend, if one is configured.
    pub backend: Option<Arc<crate::backend::Backend>>,
    /// The lifecycle hooks, if the backend asks for any: flushed on shutdown.
    hooks: Option<Arc<Hooks>>,
}

impl Node {
    /// The JSON-RPC methods served, as the method table has them (sorted).
    pub fn method_names(&self) -> Vec<&'static str> {
        self.jsonrpc.dispatcher.method_names()
    }
}

/// A started server.
#[derive(Debug)]
pub struct Running {
    /// The address it listens on (with the real port when bound to port 0).
    pub addr: SocketAddr,
    /// The node, for in-process use (tests, the demo).
    pub node: Arc<Node>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts a graceful shutdown: no new connections, close 1001 to every client.
    pub fn shutdown(&self) {
        self.node.shutdown.trigger();
    }

    /// Waits until the server has shut down.
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Binds `config.listen` and starts serving on the current tokio runtime, with the broker
/// `config.broker` names.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let broker = crate::broker::connect(&config).await?;
    start_with(config, broker).await
}

/// Like [`start`], over a broker made by the caller (an embedding application's own, or a
/// test's fault-injecting one).
pub async fn start_with(
    config: Config,
    broker: Arc<dyn crate::broker::Broker>,
) -> Result<Running, StartError> {
    let mut config = within_descriptors(config);
    let node_id = config.node_id.clone().unwrap_or_else(|| format!("node-{:08x}", rand::random::<u32>()));
    // Every part of the node names it alike (client ids in presence, hooks, the backend).
    config.node_id = Some(node_id.clone());
    let config = Arc::new(config);
    let listener = accept::listen(config.listen).map_err(|e| StartError::Bind(config.listen, e))?;
    let addr = listener.local_addr().map_err(|e| StartError::Bind(config.listen, e))?;

    let metrics = Arc::new(Metrics::new());
    let backend =
        crate::backend::Backend::new(&config, &node_id, metrics.clone()).map_err(StartError::Config)?;
    let hub = Hub::new(config.clone(), broker, metrics.clone());
    let hooks = backend.as_ref().and_then(Hooks::start);
    let lifecycle = hooks.iter().map(|h| h.clone() as Arc<dyn LifecycleHook>).collect();
    let subscriptions = Arc::new(Subscriptions::new(hub.clone(), config.clone(), backend.clone(), lifecycle));
    let auth = Arc::new(Authenticator::new(&config).map_err(StartError::Config)?);
    let state = Arc::new(NodeState {
        config: config.clone(),
        hub: hub.clone(),
        subscriptions: subscriptions.clone(),
        auth: auth.clone(),
        metrics: metrics.clone(),
        started: Instant::now(),
        node_id: node_id.clone(),
        backend: backend.clone(),
    });
    let openrpc = crate::spec::pretty(
        &crate::spec::openrpc::document_with(&config.backend).map_err(StartError::Config)?,
    );
    let openrpc_raw = serde_json::value::RawValue::from_string(openrpc.clone())
        .map_err(|e| StartError::Config(format!("the OpenRPC document: {e}")))?;
    let publisher = Handlers(state.clone());
    let upstream =
        crate::backend::upstream::Upstream::new(&config, metrics.clone()).map_err(StartError::Config)?;
    let dispatcher = Dispatcher::new(
        rpc::methods(Handlers(state), openrpc_raw),
        metrics.clone(),
        config.limits.max_response_bytes,
        backend.clone(),
        upstream,
    );
    // Metrics are labelled by the method table's names, whatever it holds.
    metrics.label_methods(dispatcher.method_names());
    let registry = Registry::new(config.limits.max_connections);
    // A weak reference: the metrics outlive no node, and keep none alive.
    let counted = Arc::downgrade(&registry);
    metrics.read_bytes_with(move || counted.upgrade().map_or((0, 0), |r| r.bytes()));
    let limits = &config.limits;
    let conn_limits = ConnLimits {
        max_message: limits.max_message_bytes,
        pause_reading_at: (limits.outbound_queue_messages / 2).max(1),
        pause_reading_bytes: (limits.outbound_queue_bytes / ANSWER_SHARE_OF_OUTBOUND_QUEUE).max(1),
        calls_in_flight: limits.calls_in_flight,
    };
    let jsonrpc =
        JsonRpc::new(dispatcher, subscriptions.clone(), metrics.clone(), config.compression_min_bytes);
    let instances = crate::frontends::instance::Instances::new(
        &config,
        subscriptions.clone(),
        auth.clone(),
        metrics.clone(),
    )
    .map_err(StartError::Config)?;
    let node = Arc::new(Node {
        config: config.clone(),
        jsonrpc: jsonrpc.clone(),
        instances,
        compat: crate::frontends::ws::Compat::new(
            subscriptions,
            auth.clone(),
            jsonrpc,
            metrics.clone(),
            config.limits.calls_per_second,
            backend.clone(),
            config.compression_min_bytes,
        ),
        metrics: metrics.clone(),
        hub,
        registry,
        conn_limits,
        shutdown: Shutdown::new(),
        next_session: Arc::new(AtomicU64::new(1)),
        tcp: conns::TcpLimits::new(
            limits.max_http_connections,
            limits.http_connections_per_address,
            metrics.http_connections.clone(),
        ),
        budgets: Budgets::new(limits.calls_per_second),
        cors: cors::Cors::new(&config.cors_origins),
        openrpc,
        openapi: crate::spec::pretty(&crate::spec::openapi::document()),
        publisher,
        backend,
        hooks,
    });
    let metrics = &node.metrics;
    let checks = Checks {
        route: RouteCheck::new(Arc::new(Routes::new()), metrics.clone()),
        origin: OriginCheck::new(&config.allowed_origins, metrics.clone()),
        rate: UpgradeRate::new(config.limits.upgrades_per_minute, metrics.clone()),
        capacity: CapacityCheck::new(node.registry.clone(), metrics.clone()),
        token: match node.backend.clone().filter(|b| b.config().connect_proxy) {
            Some(b) => TokenCheck::new(auth, metrics.clone())
                .with_connect_proxy(ConnectProxy::new(b, node.next_session.clone())),
            None => TokenCheck::new(auth, metrics.clone()),
        },
    };

    tracing::info!(%addr, node_id = %node_id, broker = node.hub.broker().name(), "rpchub listening");
    spawn_sweeper(&node);
    spawn_heartbeats(&node);
    if config.demo {
        crate::demo::spawn(node.hub.clone(), node.shutdown.clone());
    }
    let done = tokio::spawn(accept::accept_loop(listener, node.clone(), checks));
    Ok(Running { addr, node, done })
}

/// `config` with `limits.max_connections` and `limits.max_http_connections` lowered to what the
/// descriptor limit allows, with a log line saying so: past it, `accept` would fail with EMFILE
/// and lock every client out.
fn within_descriptors(mut config: Config) -> Config {
    let l = &mut config.limits;
    let Some(nofile) = conns::descriptor_limit() else { return config };
    let (ws, http) = conns::within_descriptors(l.max_connections, l.max_http_connections, nofile);
    if (ws, http) != (l.max_connections, l.max_http_connections) {
        tracing::warn!(
            "limits.max_connections ({}) and limits.max_http_connections ({}) are more than the \
             descriptor limit (ulimit -n: {nofile}, {} of them kept for the process) allows: \
             serving at most {ws} WebSocket connections and {http} other ones; raise the limit \
             (LimitNOFILE= in systemd, ulimit -n) to serve more",
            l.max_connections,
            l.max_http_connections,
            crate::constants::DESCRIPTOR_RESERVE
        );
        (l.max_connections, l.max_http_connections) = (ws, http);
    }
    config
}

/// The namespaces' heartbeats, when any namespace has one.
fn spawn_heartbeats(node: &Arc<Node>) {
    let Some(every) = node.hub.heartbeat_tick() else { return };
    let node = node.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = node.shutdown.triggered() => return,
            }
            node.hub.send_heartbeats(std::time::Instant::now());
        }
    });
}

/// Pings, silence checks.
fn spawn_sweeper(node: &Arc<Node>) {
    let node = node.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PING_SWEEP_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let limits = &node.config.limits;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = node.shutdown.triggered() => return,
            }
            let ended = node.registry.sweep(limits.ping_interval, limits.pong_timeout);
            if ended > 0 {
                tracing::debug!(ended, "closed connections that stopped answering pings or reading");
            }
        }
    });
}

/// Closes every connection with 1001, waits for them (up to `shutdown_grace`), posts the
/// lifecycle hook events waiting (their `disconnect`s among them) within what is left of the
/// grace, flushes the broker.
async fn shut_down(node: &Arc<Node>) {
    // Every subscription's last event, queued before each connection's close frame.
    let told = node.hub.close_for_shutdown();
    tracing::info!(
        connections = node.registry.len(),
        subscriptions = told,
        "shutting down: closing every subscription (closed shutdown) and every connection with 1001"
    );
    node.registry.close_all(frame::code::GOING_AWAY, "server shutting down");
    let grace = node.config.shutdown_grace;
    let started = Instant::now();
    if tokio::time::timeout(grace, node.shutdown.wait_idle()).await.is_err() {
        tracing::warn!(
            remaining = node.registry.len(),
            "shutdown grace of {grace:?} ran out; exiting anyway"
        );
    }
    if let Some(hooks) = &node.hooks {
        if !hooks.flush(grace.saturating_sub(started.elapsed())).await {
            tracing::warn!(
                lost = hooks.queued(),
                "the backend did not take every lifecycle hook event within the shutdown grace \
                 of {grace:?}"
            );
        }
        hooks.stop();
    }
    node.hub.broker().flush().await;
    tracing::info!("shut down");
}

/// The client's address (from the accept loop; unspecified if absent).
fn client_addr<B>(req: &Request<B>) -> SocketAddr {
    req.extensions().get::<ClientAddr>().map(|c| c.0).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// The principal the token check decided on (anonymous if none ran).
fn principal_of<B>(req: &Request<B>) -> Arc<Principal> {
    req.extensions().get::<Arc<Principal>>().cloned().unwrap_or_else(|| Arc::new(Principal::anonymous()))
}
