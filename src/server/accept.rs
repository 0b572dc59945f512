//! The listening socket, the accept loop, and the tower stack each HTTP connection is served by:
//! the gate's checks ([`Checks::around`], where their order is written) around the dispatch.

use super::{Node, dispatch::Dispatch, shut_down};
use crate::constants::{HTTP_HEADER_TIMEOUT, LISTEN_BACKLOG};
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
/// the node down.
pub(super) async fn accept_loop(listener: TcpListener, node: Arc<Node>, checks: Checks) {
    let service = checks.around(Dispatch { node: node.clone() });
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
