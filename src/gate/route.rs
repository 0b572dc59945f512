//! Layer 1: which WebSocket route a request is for, and whether it is a valid upgrade.
//!
//! `GET /ws/rpc` with a valid RFC 6455 handshake is marked [`WsRoute::Rpc`] for the layers
//! below; without an upgrade it answers 400 (JSON body), with a broken handshake 400 too. An
//! upgrade to any other path is 404. Everything else passes unmarked.

use super::{Body, Check, WsRoute, json_error};
use crate::transport::handshake;
use hyper::{Method, Request, Response, StatusCode};

/// The WebSocket routes served.
#[derive(Clone, Default)]
pub struct RouteCheck;

impl Check for RouteCheck {
    #[allow(clippy::result_large_err)]
    fn check<B>(&self, req: &mut Request<B>) -> Result<(), Response<Body>> {
        let upgrade = handshake::is_upgrade(req.headers());
        let route = match req.uri().path() {
            "/ws/rpc" => WsRoute::Rpc,
            _ if upgrade => {
                return Err(json_error(
                    StatusCode::NOT_FOUND,
                    "no WebSocket endpoint at this path; use /ws/rpc",
                ));
            }
            _ => return Ok(()),
        };
        if req.method() != Method::GET {
            return Err(json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "WebSocket routes take GET with an upgrade",
            ));
        }
        if !upgrade {
            return Err(json_error(
                StatusCode::BAD_REQUEST,
                "this route needs a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)",
            ));
        }
        if req.version() != hyper::Version::HTTP_11 {
            return Err(json_error(
                StatusCode::BAD_REQUEST,
                "invalid WebSocket handshake: HTTP/1.1 is required",
            ));
        }
        handshake::accept_key(req.headers()).map_err(|m| json_error(StatusCode::BAD_REQUEST, m))?;
        req.extensions_mut().insert(route);
        Ok(())
    }
}
