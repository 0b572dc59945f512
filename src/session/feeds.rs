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
    lists: Mutex<Lists>,
    /// The node's id, the first part of its client ids.
    node: String,
}

/// Each user's connections by session id, and the user each connection is listed under, so
/// that a connection's end takes it off in constant time (a node may hold 10,000 connections
/// of one user, and all of them may end at once).
#[derive(Debug, Default)]
struct Lists {
    users: HashMap<Arc<str>, HashMap<u64, Weak<Session>>>,
    under: HashMap<u64, Arc<str>>,
}

impl CursorFeeds {
    pub(crate) fn new(node: &str) -> CursorFeeds {
        CursorFeeds { lists: Mutex::default(), node: node.to_string() }
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
            let mut lists = self.lists.lock();
            let user = match lists.users.get_key_value(p.subject.as_str()) {
                Some((user, _)) => user.clone(),
                None => Arc::from(p.subject.as_str()),
            };
            lists.users.entry(user.clone()).or_default().insert(session.id, Arc::downgrade(session));
            lists.under.insert(session.id, user);
        }
    }

    /// `session` ended: taken off its user's list.
    pub(crate) fn unregister(&self, session: &Session) {
        if session.cursor_feed.get().is_none() {
            return;
        }
        let mut lists = self.lists.lock();
        let Some(user) = lists.under.remove(&session.id) else { return };
        if let Some(list) = lists.users.get_mut(&user) {
            list.remove(&session.id);
            if list.is_empty() {
                lists.users.remove(&user);
            }
        }
    }

    /// Tells the user's connections but the origin of `m`.
    pub(crate) fn tell(&self, m: &CursorMove) {
        let sessions: Vec<Arc<Session>> = {
            let lists = self.lists.lock();
            let Some(list) = lists.users.get(m.user.as_str()) else { return };
            list.values().filter_map(Weak::upgrade).collect()
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
