//! `POST /rpc`: JSON-RPC over HTTP. The same methods as over WebSocket, in a session of one
//! request, so without subscriptions; the body is bounded by `limits.max_message_bytes`.

use super::{Node, client_addr, principal_of};
use crate::frontends::jsonrpc;
use crate::gate::{Body, json_error, json_response};
use crate::rpc;
use crate::session::Session;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// JSON-RPC over HTTP: the same methods, no subscriptions.
pub(super) async fn http_rpc(node: &Arc<Node>, req: Request<Incoming>) -> Response<Body> {
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
