//! Binds the port, routes requests, upgrades WebSockets and serves until shutdown.
//!
//! One port serves everything. Each TCP connection is an HTTP/1.1 connection (hyper) whose
//! requests pass the gate ([`crate::gate`]) and then the router below; a WebSocket upgrade hands
//! the raw TCP stream to [`crate::transport::ws`], after which hyper is out of the picture.
//!
//! Routes: `GET /health`, `GET /metrics`, `POST /rpc`, `GET /ws/rpc` (upgrade), `GET /ws/rpc/test`
//! (the browser console); anything else 404.

use crate::auth::{Authenticator, Principal};
use crate::config::Config;
use crate::constants::{HTTP_HEADER_TIMEOUT, LISTEN_BACKLOG, PING_SWEEP_PERIOD};
use crate::frontends::jsonrpc::{self, Dispatcher, JsonRpc};
use crate::gate::capacity::{CapacityCheck, SlotTicket};
use crate::gate::origin::OriginCheck;
use crate::gate::rate::UpgradeRate;
use crate::gate::route::RouteCheck;
use crate::gate::token::TokenCheck;
use crate::gate::{Body, ClientAddr, GateLayer, WsRoute, json_error, json_response, redacted_uri};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::rpc::{self, Handlers, NodeState};
use crate::session::{Session, Subscriptions};
use crate::shutdown::Shutdown;
use crate::transport::{self, ConnLimits, Link, Registry, frame, handshake};
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::net::{TcpListener, TcpStream};

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
    /// The bounds of every connection's reader.
    conn_limits: ConnLimits,
    /// The shutdown signal.
    pub shutdown: Shutdown,
    next_session: AtomicU64,
}

/// A started server.
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
    let config = Arc::new(config);
    let listener = listen(config.listen).map_err(|e| StartError::Bind(config.listen, e))?;
    let addr = listener.local_addr().map_err(|e| StartError::Bind(config.listen, e))?;
    let node_id = config.node_id.clone().unwrap_or_else(|| format!("node-{:08x}", rand::random::<u32>()));

    let metrics = Arc::new(Metrics::new());
    let hub = Hub::new(config.clone(), broker, metrics.clone());
    let subscriptions = Arc::new(Subscriptions::new(hub.clone(), config.clone(), Vec::new()));
    let auth = Arc::new(Authenticator::new(&config).map_err(StartError::Config)?);
    let state = Arc::new(NodeState {
        config: config.clone(),
        hub: hub.clone(),
        subscriptions: subscriptions.clone(),
        auth: auth.clone(),
        metrics: metrics.clone(),
        started: Instant::now(),
        node_id: node_id.clone(),
    });
    let dispatcher = Dispatcher::new(rpc::methods(Handlers(state)), metrics.clone());
    // Metrics are labelled by the method table's names, whatever it holds.
    metrics.label_methods(dispatcher.method_names());
    let registry = Registry::new(config.limits.max_connections);
    let limits = &config.limits;
    let conn_limits = ConnLimits {
        max_message: limits.max_message_bytes,
        pause_reading_at: (limits.outbound_queue_messages / 2).max(1),
        calls_in_flight: limits.calls_in_flight,
    };
    let node = Arc::new(Node {
        config: config.clone(),
        jsonrpc: JsonRpc::new(dispatcher, subscriptions, metrics.clone()),
        metrics,
        hub,
        registry,
        conn_limits,
        shutdown: Shutdown::new(),
        next_session: AtomicU64::new(1),
    });
    let gate = Gate {
        origin: OriginCheck::new(&config.allowed_origins),
        rate: UpgradeRate::new(config.limits.upgrades_per_minute),
        capacity: CapacityCheck::new(node.registry.clone()),
        token: TokenCheck::new(auth),
    };

    tracing::info!(%addr, node_id = %node_id, broker = node.hub.broker().name(), "rpchub listening");
    spawn_sweeper(&node);
    if config.demo {
        crate::demo::spawn(node.hub.clone(), node.shutdown.clone());
    }
    let done = tokio::spawn(accept_loop(listener, node.clone(), gate));
    Ok(Running { addr, node, done })
}

/// Binds with a deep accept queue: thousands of clients reconnecting at once (after a restart
/// or a network blip) must not overflow it, or each dropped SYN costs its client a second.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
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
                tracing::debug!(ended, "closed connections that stopped answering pings");
            }
        }
    });
}

/// The checks of the gate, built once.
#[derive(Clone)]
struct Gate {
    origin: OriginCheck,
    rate: UpgradeRate,
    capacity: CapacityCheck,
    token: TokenCheck,
}

async fn accept_loop(listener: TcpListener, node: Arc<Node>, gate: Gate) {
    let service = tower::ServiceBuilder::new()
        .layer(GateLayer(RouteCheck))
        .layer(GateLayer(gate.origin))
        .layer(GateLayer(gate.rate))
        .layer(GateLayer(gate.capacity))
        .layer(GateLayer(gate.token))
        .service(Router { node: node.clone() });
    loop {
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = node.shutdown.triggered() => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = tower::util::MapRequest::new(service.clone(), move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ClientAddr(remote));
            req
        });
        let shutdown = node.shutdown.clone();
        node.shutdown.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HTTP_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%remote, "HTTP connection ended: {e}") },
                _ = shutdown.triggered() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    shut_down(&node).await;
}

async fn shut_down(node: &Arc<Node>) {
    tracing::info!(connections = node.registry.len(), "shutting down: closing every connection with 1001");
    node.registry.close_all(frame::code::GOING_AWAY, "server shutting down");
    let grace = node.config.shutdown_grace;
    if tokio::time::timeout(grace, node.shutdown.wait_idle()).await.is_err() {
        tracing::warn!(
            remaining = node.registry.len(),
            "shutdown grace of {grace:?} ran out; exiting anyway"
        );
    }
    node.hub.broker().flush().await;
    tracing::info!("shut down");
}

/// The browser console served at `GET /ws/rpc/test`: connect, send JSON-RPC, watch
/// subscriptions. One self-contained page, no external resources.
const CONSOLE_HTML: &str = include_str!("console.html");

/// The router behind the gate.
#[derive(Clone)]
struct Router {
    node: Arc<Node>,
}

impl tower::Service<Request<Incoming>> for Router {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let node = self.node.clone();
        Box::pin(async move { Ok(route(node, req).await) })
    }
}

async fn route(node: Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    if let Some(WsRoute::Rpc) = req.extensions().get::<WsRoute>().copied() {
        return upgrade(&node, req);
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => json_response(StatusCode::OK, r#"{"status":"ok"}"#.into()),
        (&Method::GET, "/metrics") => Response::builder()
            .header(hyper::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(Body::from(node.metrics.render()))
            .expect("static header is valid; qed"),
        (&Method::POST, "/rpc") => http_rpc(&node, req).await,
        (&Method::GET, "/ws/rpc/test") => Response::builder()
            .header(hyper::header::CONTENT_TYPE, "text/html; charset=utf-8")
            .header(hyper::header::CACHE_CONTROL, "no-cache")
            .body(Body::from(CONSOLE_HTML))
            .expect("static headers are valid; qed"),
        (_, "/health" | "/metrics" | "/rpc") => {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        }
        _ => {
            tracing::debug!(path = %redacted_uri(req.uri()), "no route");
            json_error(StatusCode::NOT_FOUND, "not found")
        }
    }
}

fn client_addr<B>(req: &Request<B>) -> SocketAddr {
    req.extensions().get::<ClientAddr>().map(|c| c.0).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}

fn principal_of<B>(req: &Request<B>) -> Arc<Principal> {
    req.extensions().get::<Arc<Principal>>().cloned().unwrap_or_else(|| Arc::new(Principal::anonymous()))
}

/// Answers the upgrade with 101 and runs the connection once hyper hands the stream over.
fn upgrade(node: &Arc<Node>, mut req: Request<Incoming>) -> Response<Body> {
    let accept = match handshake::accept_key(req.headers()) {
        Ok(a) => a,
        Err(m) => return json_error(StatusCode::BAD_REQUEST, m),
    };
    let Some(slot) = req.extensions().get::<SlotTicket>().and_then(SlotTicket::take) else {
        return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error: no connection slot");
    };
    let remote = client_addr(&req);
    let principal = principal_of(&req);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let id = node.next_session.fetch_add(1, Ordering::Relaxed);
    let limits = &node.config.limits;
    let link = Arc::new(Link::new(id, limits.outbound_queue_messages, limits.outbound_queue_bytes));
    let session = Session::new(id, remote, jsonrpc::DOOR, principal, Some(link), limits.calls_per_second);
    let conn = node.jsonrpc.connect(Arc::new(session));
    let (registry, conn_limits) = (node.registry.clone(), node.conn_limits);
    node.shutdown.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => return tracing::debug!(%remote, "upgrade did not complete: {e}"),
        };
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let leftover = parts.read_buf.to_vec();
                drop(parts.read_buf);
                transport::run(conn, registry, conn_limits, parts.io.into_inner(), leftover, slot).await;
            }
            Err(_) => tracing::error!("upgraded connection is not a TCP stream"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::UPGRADE, "websocket")
        .header("sec-websocket-accept", accept)
        .body(Body::default())
        .expect("static headers are valid; qed")
}

/// JSON-RPC over HTTP: the same methods, no subscriptions.
async fn http_rpc(node: &Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let max = node.config.limits.max_message_bytes;
    let remote = client_addr(&req);
    let principal = principal_of(&req);
    let body = match Limited::new(req.into_body(), max).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            let err = jsonrpsee::types::ErrorObject::owned(
                rpc::error::MESSAGE_TOO_BIG,
                "Request is too big",
                Some(format!("the limit is {max} bytes (limits.max_message_bytes)")),
            );
            let body = jsonrpc::error_json(jsonrpsee::types::Id::Null, err);
            return json_response(StatusCode::PAYLOAD_TOO_LARGE, body);
        }
        Err(_) => return json_error(StatusCode::BAD_REQUEST, "could not read the request body"),
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        let body =
            jsonrpc::error_json(jsonrpsee::types::Id::Null, rpc::error::standard(rpc::error::PARSE_ERROR));
        return json_response(StatusCode::OK, body);
    };
    let id = node.next_session.fetch_add(1, Ordering::Relaxed);
    let session = Arc::new(Session::new(
        id,
        remote,
        jsonrpc::DOOR,
        principal,
        None,
        node.config.limits.calls_per_second,
    ));
    match node.jsonrpc.handle_http(&session, text).await {
        Some(json) => json_response(StatusCode::OK, json),
        None => {
            Response::builder().status(StatusCode::NO_CONTENT).body(Body::default()).expect("static; qed")
        }
    }
}
