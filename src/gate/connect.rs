//! Part of layer 5 when `backend.connect_proxy` is on: the application's backend says who
//! connects, on the WebSocket upgrades that take a token (`/ws/rpc`, `/ws`).
//!
//! The token check ([`super::token`]) decides first: a token rpchub accepts (the admin token, a
//! static key, a JWT) stands and the backend is not asked; a JWT rpchub knows but refuses
//! (expired, not yet valid) is its 401. Otherwise (no token, or one rpchub does not know) the
//! request waits here for the backend ([`Backend::connect`]), holding the connection slot
//! reserved by layer 4, for at most `backend.timeout`:
//! - an identity: the request's principal, as the token's would have been;
//! - a refusal: 401 with the backend's message (counted as `auth`);
//! - no usable answer: 503 with `Retry-After: 1` (counted as `backend`); the reason is logged,
//!   not told to the client.
//!
//! The session id is allocated here, before the request, and left in the extensions
//! ([`SessionId`]) for the upgrade: the client id the backend is told at connect is the one of
//! every later request about the connection.

use super::{Body, ClientAddr, json_error, refused};
use crate::auth::Principal;
use crate::backend::connect::Connecting;
use crate::backend::{Backend, BackendError};
use crate::metrics::{Metrics, Rejection};
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The id of the session an upgrade will make, allocated before the upgrade (by the connect
/// check); the upgrade allocates one itself when absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionId(pub u64);

/// The backend's say on who connects.
#[derive(Debug, Clone)]
pub struct ConnectProxy {
    backend: Arc<Backend>,
    /// The node's session ids: the same counter every session takes its id from.
    ids: Arc<AtomicU64>,
}

impl ConnectProxy {
    /// Asks `backend`, allocating session ids from `ids`.
    pub fn new(backend: Arc<Backend>, ids: Arc<AtomicU64>) -> ConnectProxy {
        ConnectProxy { backend, ids }
    }

    /// The principal the backend gives the upgrade of `parts`, which carried `token` (one
    /// rpchub does not accept), or the refusal to answer; leaves the [`SessionId`] in the
    /// extensions.
    pub(super) async fn ask(
        &self,
        parts: &mut Parts,
        token: Option<&str>,
        metrics: &Metrics,
    ) -> Result<Arc<Principal>, Response<Body>> {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        parts.extensions.insert(SessionId(id));
        let remote = parts
            .extensions
            .get::<ClientAddr>()
            .map(|c| c.0)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let c = Connecting { session_id: id, remote, headers: &parts.headers, token };
        match self.backend.connect(c).await {
            Ok(p) => Ok(Arc::new(p)),
            Err(BackendError::Refused { message, .. }) => {
                Err(refused(metrics, Rejection::Auth, json_error(StatusCode::UNAUTHORIZED, &message)))
            }
            Err(BackendError::Unavailable(why)) => {
                tracing::warn!(%remote, "connect_proxy: refused an upgrade, the backend gave no answer: {why}");
                let mut r = json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the application's backend could not say who connects (backend.connect_proxy); \
                     retry in a moment",
                );
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                Err(refused(metrics, Rejection::Backend, r))
            }
        }
    }
}
