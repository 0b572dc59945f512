//! The front doors: each translates one wire protocol onto the hub and the session layer.
//! A front door implements [`crate::transport::Conn`] for its connections (the reader hands it
//! each text message) and [`crate::hub::Encoding`] for its frames; it never reaches into the
//! broker. Adding a door is adding a room here and a route.
//!
//! - [`jsonrpc`]: JSON-RPC 2.0 on `/ws/rpc` and `POST /rpc`;
//! - [`ws`]: `/ws`, the dialects of clients written for other servers;
//! - [`instance`]: `/ws/{instance}`, per-instance event streams.

pub mod instance;
pub mod jsonrpc;
pub mod ws;

use crate::broker::HistoryPage;
use crate::session::Session;
use crate::transport::Conn;
use std::sync::Arc;

/// A front door as the server's upgrade sees it: a name for metrics and hooks, and a connection
/// for each upgraded session. The upgrade itself (handshake, slot, session, transport) is the
/// same for every door.
pub trait Door: Send + Sync + 'static {
    /// The door's label (`jsonrpc`, ...).
    fn name(&self) -> &'static str;

    /// The connection of a WebSocket `session` through this door.
    fn connect(&self, session: Arc<Session>) -> Arc<dyn Conn>;
}

/// Writes the snapshot object every door that sends one uses:
/// `{"type":"snapshot","channel","epoch","offset","recovered","publications":[...]}`, the
/// publications copied as they are kept (never re-encoded).
pub(crate) fn write_snapshot(
    out: &mut Vec<u8>,
    channel: &str,
    page: &HistoryPage,
    recovered: bool,
    earliest: Option<&crate::broker::StreamPosition>,
    checksum: Option<u32>,
) {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(128 + channel.len());
    write!(
        s,
        r#"{{"type":"snapshot","channel":"{channel}","epoch":"{}","offset":{},"recovered":{recovered},"#,
        page.epoch, page.offset
    )
    .expect("writing to a String; qed");
    if let Some(e) = earliest {
        write!(s, r#""earliest":{{"epoch":"{}","offset":{}}},"#, e.epoch, e.offset)
            .expect("writing to a String; qed");
    }
    if let Some(c) = checksum {
        write!(s, r#""checksum":{c},"#).expect("writing to a String; qed");
    }
    s.push_str(r#""publications":["#);
    out.extend_from_slice(s.as_bytes());
    for (i, p) in page.publications.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(p.json().as_bytes());
    }
    out.extend_from_slice(b"]}");
}

/// Writes `{"type":"gap","channel":C,"from":F,"to":T,"reason":R}`, as the JSON-RPC and
/// `{type,data}` doors send it.
pub(crate) fn write_gap(out: &mut Vec<u8>, channel: &str, from: u64, to: u64, reason: &str) {
    out.extend_from_slice(br#"{"type":"gap","channel":""#);
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(format!(r#"","from":{from},"to":{to},"reason":"{reason}"}}"#).as_bytes());
}

/// Writes `{"type":"heartbeat","channel":C,"offset":N}`, as the JSON-RPC and `{type,data}`
/// doors send it.
pub(crate) fn write_heartbeat(out: &mut Vec<u8>, channel: &str, offset: u64) {
    out.extend_from_slice(br#"{"type":"heartbeat","channel":""#);
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(br#"","offset":"#);
    out.extend_from_slice(offset.to_string().as_bytes());
    out.push(b'}');
}

/// Writes `{"type":"join"|"leave","channel","info":{"client","user"}}`.
pub(crate) fn write_presence(
    out: &mut Vec<u8>,
    channel: &str,
    join: bool,
    who: &crate::broker::PresenceClient,
) {
    out.extend_from_slice(if join {
        br#"{"type":"join","channel":""#
    } else {
        br#"{"type":"leave","channel":""#
    });
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(br#"","info":"#);
    out.extend_from_slice(serde_json::to_string(who).expect("a presence entry serializes; qed").as_bytes());
    out.push(b'}');
}

/// Writes `"checksum":N,` for a state subscriber that asked for it.
pub(crate) fn write_checksum(out: &mut Vec<u8>, checksum: Option<u32>) {
    if let Some(c) = checksum {
        out.extend_from_slice(format!(r#""checksum":{c},"#).as_bytes());
    }
}

/// Writes `"skipped":K,` when conflation folded K > 0 publications into this one.
pub(crate) fn write_skipped(out: &mut Vec<u8>, skipped: u64) {
    if skipped > 0 {
        out.extend_from_slice(br#""skipped":"#);
        out.extend_from_slice(skipped.to_string().as_bytes());
        out.push(b',');
    }
}
