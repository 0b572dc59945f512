//! The listening socket, the accept loop, and the tower stack each HTTP connection is served by:
//! the gate's checks ([`Checks::around`], where their order is written) around the dispatch.

use super::{Node, dispatch::Dispatch, io::TimedStream, shut_down};
use crate::constants::LISTEN_BACKLOG;
use crate::gate::log::{Suppressed, Throttle};
use crate::gate::{Checks, ClientAddr};
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Binds with a deep accept queue: thousands of clients reconnecting at once (after a restart
/// or a network blip) must not overflow it, or each dropped SYN costs its client a second.
pub(super) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections until shutdown, serving each with the gate and the dispatch; then shuts
/// the node down. A connection over the node's limit or its address's cap ([`super::conns`])
/// is closed at once, before hyper reads a byte.
pub(super) async fn accept_loop(listener: TcpListener, node: Arc<Node>, checks: Checks) {
    let service = checks.around(Dispatch { node: node.clone() });
    // Failures and refusals at accept come in floods: their lines are rate-limited.
    let (failed, refused) = (Throttle::default(), Throttle::default());
    loop {
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    if let Some(left_out) = failed.admit() {
                        tracing::warn!("accept failed: {e}{}", Suppressed(left_out));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = node.shutdown.triggered() => break,
        };
        let admitted = match node.tcp.admit(remote.ip()) {
            Ok(a) => a,
            Err(refusal) => {
                node.metrics.connection_refused(refusal.label());
                if let Some(left_out) = refused.admit() {
                    tracing::debug!(%remote, reason = refusal.label(), "connection closed at accept{}", Suppressed(left_out));
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let limits = &node.config.limits;
        let io = TimedStream::new(stream, limits.write_timeout);
        let held = admitted.clone();
        let svc = tower::util::MapRequest::new(service.clone(), move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ClientAddr(remote));
            req.extensions_mut().insert(held.clone());
            req
        });
        let (shutdown, metrics) = (node.shutdown.clone(), node.metrics.clone());
        let header_timeout = limits.request_timeout;
        node.shutdown.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(io), TowerToHyperService::new(svc))
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    if e.is_timeout() {
                        metrics.http_refused("request_timeout");
                    } else if timed_out_writing(&e) {
                        metrics.closed("write_timeout");
                    }
                    tracing::debug!(%remote, "HTTP connection ended: {e}");
                },
                _ = shutdown.triggered() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(admitted);
        });
    }
    drop(listener);
    shut_down(&node).await;
}

/// True if hyper's error is the write timeout of [`TimedStream`].
fn timed_out_writing(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return true;
        }
        source = s.source();
    }
    false
}
