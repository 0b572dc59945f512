//! Where a user's read cursor moves go: every connection of the user on this node that
//! subscribed to something (its front door's [`crate::hub::Encoding::cursor_json`] writes the
//! notification), except the one that moved it. The broker tells every node of each move
//! ([`crate::broker::Listener::cursor_moved`]); each node tells its own connections.
//!
//! A connection is listed under the user it had when it first subscribed, and told only while
//! it is still that user's (a later `auth` as someone else stops the pushes: another user's
//! cursors never reach it). Entries go when their connection ends, so the list is bounded by
//! the node's connections.

use super::Session;
use crate::broker::CursorMove;
use crate::transport::frame;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

/// The node's connections of each user that take cursor moves.
#[derive(Debug, Default)]
pub(crate) struct CursorFeeds {
    users: Mutex<HashMap<String, Vec<Weak<Session>>>>,
    /// The node's id, the first part of its client ids.
    node: String,
}

impl CursorFeeds {
    pub(crate) fn new(node: &str) -> CursorFeeds {
        CursorFeeds { users: Mutex::default(), node: node.to_string() }
    }

    /// `session` subscribed through a door writing `encoding`: listed under its user, once.
    pub(crate) fn register(&self, session: &Arc<Session>, encoding: &Arc<dyn crate::hub::Encoding>) {
        if session.cursor_feed.get().is_some() {
            return;
        }
        let p = session.principal();
        if !p.is_authenticated() || encoding.cursor_json("", 0).is_none() {
            return;
        }
        if session.cursor_feed.set(encoding.clone()).is_ok() {
            self.users.lock().entry(p.subject.clone()).or_default().push(Arc::downgrade(session));
        }
    }

    /// `session` ended: taken off its user's list.
    pub(crate) fn unregister(&self, session: &Session) {
        if session.cursor_feed.get().is_none() {
            return;
        }
        let mut users = self.users.lock();
        users.retain(|_, list| {
            list.retain(|w| w.upgrade().is_some_and(|s| s.id != session.id));
            !list.is_empty()
        });
    }

    /// Tells the user's connections but the origin of `m`.
    pub(crate) fn tell(&self, m: &CursorMove) {
        let sessions: Vec<Arc<Session>> = {
            let mut users = self.users.lock();
            let Some(list) = users.get_mut(&m.user) else { return };
            list.retain(|w| w.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        for s in sessions {
            if super::client_id(&self.node, s.id) == m.origin || s.principal().subject != m.user {
                continue;
            }
            let (Some(encoding), Some(link)) = (s.cursor_feed.get(), s.link()) else { continue };
            let Some(json) = encoding.cursor_json(&m.channel, m.offset) else { continue };
            let (h, n) = frame::header_bytes(frame::OP_TEXT, json.len());
            // Counted like any event: a connection that does not read is dropped by its rules.
            let _ = link.outbox.push(&[&h[..n], json.as_bytes()]);
        }
    }
}
