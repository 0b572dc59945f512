//! Layer 4: room for one more WebSocket connection (`limits.max_connections`).
//!
//! Reserves a slot in the connection registry for the upgrade; the slot travels in the request
//! extensions to the connection, which holds it until it ends. Full: 429, counted as
//! `capacity`.

use super::{Body, Check, json_error, refused, upgrade_match};
use crate::metrics::{Metrics, Rejection};
use crate::transport::{Registry, Slot};
use hyper::{Request, Response, StatusCode};
use parking_lot::Mutex;
use std::sync::Arc;

/// A reserved slot, handed from this layer to the connection (extensions must be `Clone`).
#[derive(Debug, Clone)]
pub struct SlotTicket(Arc<Mutex<Option<Slot>>>);

impl SlotTicket {
    /// Takes the slot out (once).
    pub fn take(&self) -> Option<Slot> {
        self.0.lock().take()
    }
}

/// The connection limit.
#[derive(Debug, Clone)]
pub struct CapacityCheck {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
}

impl CapacityCheck {
    /// Checks against `registry`'s limit; refusals are counted in `metrics`.
    pub fn new(registry: Arc<Registry>, metrics: Arc<Metrics>) -> CapacityCheck {
        CapacityCheck { registry, metrics }
    }
}

impl Check for CapacityCheck {
    #[allow(clippy::result_large_err)]
    fn check<B>(&self, req: &mut Request<B>) -> Result<(), Response<Body>> {
        if upgrade_match(req.extensions()).is_none() {
            return Ok(());
        }
        let slot = self.registry.reserve().ok_or_else(|| {
            let mut r = json_error(
                StatusCode::TOO_MANY_REQUESTS,
                "the server holds its maximum of connections; retry later",
            );
            r.headers_mut().insert(hyper::header::RETRY_AFTER, 5.into());
            refused(&self.metrics, Rejection::Capacity, r)
        })?;
        req.extensions_mut().insert(SlotTicket(Arc::new(Mutex::new(Some(slot)))));
        Ok(())
    }
}
