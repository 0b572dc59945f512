//! The WebSocket upgrade, once the gate has let it through, for whichever front door the route
//! names: the 101 answer, and the connection it starts when hyper hands the TCP stream over.

use super::conns::Admitted;
use super::io::TimedStream;
use super::{Node, client_addr, principal_of};
use crate::config::Compression;
use crate::frontends::Door;
use crate::gate::{Body, json_error};
use crate::gate::{SessionId, SlotTicket};
use crate::session::Session;
use crate::transport::{self, Ending, Link, handshake};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Answers the upgrade with 101 and runs the connection through `door` once hyper hands the
/// stream over.
pub(super) fn upgrade(node: &Arc<Node>, door: &dyn Door, mut req: Request<Incoming>) -> Response<Body> {
    let accept = match handshake::accept_key(req.headers()) {
        Ok(a) => a,
        Err(r) => return json_error(StatusCode::BAD_REQUEST, r.message),
    };
    let Some(slot) = req.extensions().get::<SlotTicket>().and_then(SlotTicket::take) else {
        return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error: no connection slot");
    };
    let Some(admitted) = req.extensions().get::<Arc<Admitted>>().cloned() else {
        return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error: no connection place");
    };
    let remote = client_addr(&req);
    let principal = principal_of(&req);
    let on_upgrade = hyper::upgrade::on(&mut req);
    // The id the connect check gave the backend, if it asked; the session keeps it.
    let id = match req.extensions().get::<SessionId>() {
        Some(SessionId(id)) => *id,
        None => node.next_session.fetch_add(1, Ordering::Relaxed),
    };
    let limits = &node.config.limits;
    // permessage-deflate when the client offers it in a form this server can honour.
    let deflate = node.config.compression == Compression::Auto && transport::deflate::accepts(req.headers());
    let link = Link::new(id, limits.outbound_queue_messages, limits.outbound_queue_bytes);
    let link = Arc::new(if deflate { link.deflating(node.config.compression_min_bytes) } else { link });
    let session = Session::new(id, remote, door.name(), principal, Some(link), limits.calls_per_second);
    let session = match &node.backend {
        Some(b) => session.with_backend(b.forwarded(req.headers())),
        None => session,
    };
    let conn = door.connect(Arc::new(session));
    let (registry, conn_limits, shutdown) = (node.registry.clone(), node.conn_limits, node.shutdown.clone());
    node.shutdown.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                // Told as every connection's end is: the door counted it and told the hooks.
                conn.on_end(Some(Ending::Gone));
                return tracing::debug!(%remote, "upgrade did not complete: {e}");
            }
        };
        // A WebSocket now, counted by the registry: its places are free for other requests.
        admitted.upgraded();
        drop(admitted);
        match upgraded.downcast::<TokioIo<TimedStream>>() {
            Ok(parts) => {
                let leftover = parts.read_buf.to_vec();
                drop(parts.read_buf);
                let stream = parts.io.into_inner().into_inner();
                // A task of its own: an idle connection holds the connection's state only, not
                // the upgrade's too.
                let stream = std::sync::Arc::new(stream);
                shutdown.spawn(transport::run(conn, registry, conn_limits, stream, leftover, slot));
            }
            Err(_) => {
                conn.on_end(Some(Ending::Gone));
                tracing::error!("upgraded connection is not a TCP stream");
            }
        }
    });
    let response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::UPGRADE, "websocket")
        .header("sec-websocket-accept", accept);
    let response = if deflate {
        response.header("sec-websocket-extensions", transport::deflate::ACCEPTED)
    } else {
        response
    };
    response.body(Body::default()).expect("static headers are valid; qed")
}
