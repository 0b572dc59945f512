//! Notification frames, built once and shared by every subscriber.
//!
//! A notification is `{"jsonrpc":"2.0","method":"subscription","params":{"subscription":ID,
//! "result":EVENT}}`. Subscription ids all have the same length ([`SUB_ID_LEN`]), so every
//! subscriber's frame of one event has the same length and the same header: the frame is encoded
//! once as `head` (WebSocket header and everything before the id) and `tail` (everything after
//! it). A live delivery queues the shared frame and the id in the subscriber's outbox, whose
//! writer writes `head`, the id and `tail`; a snapshot copies the three into the outbox.

use crate::broker::{HistoryPage, Publication};
use crate::transport::frame;
use std::fmt::Write as _;

/// Length of every subscription id (hex digits).
pub const SUB_ID_LEN: usize = 16;

const NOTIF_PREFIX: &[u8] = br#"{"jsonrpc":"2.0","method":"subscription","params":{"subscription":""#;
const RESULT_MID: &[u8] = br#"","result":"#;
/// Room left in front of a frame for its header (the longest header has 10 bytes).
const HEADER_ROOM: usize = 10;

/// A subscription id: 16 hex digits, unique within this process.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubId(pub [u8; SUB_ID_LEN]);

impl SubId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ids are hex digits; qed")
    }

    /// Parses an id a client sent back.
    pub fn parse(s: &str) -> Option<SubId> {
        let bytes: [u8; SUB_ID_LEN] = s.as_bytes().try_into().ok()?;
        bytes.iter().all(u8::is_ascii_hexdigit).then_some(SubId(bytes))
    }
}

impl std::fmt::Debug for SubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Makes unique, unpredictable-looking ids: a counter passed through a bijection keyed at start.
pub struct SubIdGen {
    next: std::sync::atomic::AtomicU64,
    key: u64,
}

impl Default for SubIdGen {
    fn default() -> Self {
        SubIdGen { next: std::sync::atomic::AtomicU64::new(1), key: rand::random() }
    }
}

impl SubIdGen {
    /// A new id.
    pub fn next(&self) -> SubId {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // xor and multiplication by an odd constant are both bijections on u64: no repeats.
        let mixed = (n ^ self.key).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29) ^ self.key;
        let mut id = [0u8; SUB_ID_LEN];
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in id.iter_mut().enumerate() {
            *b = HEX[((mixed >> (60 - 4 * i)) & 0xf) as usize];
        }
        SubId(id)
    }
}

/// One event's notification frame, minus the subscription id.
#[derive(Default)]
pub struct SharedFrame {
    buf: Vec<u8>,
    start: usize,
    split: usize,
}

impl SharedFrame {
    /// An empty frame with room for `event_len` bytes of event.
    pub fn with_capacity(event_len: usize) -> SharedFrame {
        let buf = Vec::with_capacity(HEADER_ROOM + NOTIF_PREFIX.len() + RESULT_MID.len() + event_len + 2);
        SharedFrame { buf, start: 0, split: 0 }
    }

    /// Encodes a notification whose `result` is written by `event` (reusing the buffer).
    pub fn build(&mut self, event: impl FnOnce(&mut Vec<u8>)) -> &SharedFrame {
        let buf = &mut self.buf;
        buf.clear();
        buf.resize(HEADER_ROOM, 0);
        buf.extend_from_slice(NOTIF_PREFIX);
        self.split = buf.len();
        buf.extend_from_slice(RESULT_MID);
        event(buf);
        buf.extend_from_slice(b"}}");
        let payload = buf.len() - HEADER_ROOM + SUB_ID_LEN;
        let (header, len) = frame::header_bytes(frame::OP_TEXT, payload);
        self.start = HEADER_ROOM - len;
        buf[self.start..HEADER_ROOM].copy_from_slice(&header[..len]);
        self
    }

    /// The three parts of the frame for subscriber `id`.
    pub fn parts<'a>(&'a self, id: &'a SubId) -> [&'a [u8]; 3] {
        [&self.buf[self.start..self.split], &id.0, &self.buf[self.split..]]
    }

    /// Length of each subscriber's frame.
    pub fn frame_len(&self) -> usize {
        self.buf.len() - self.start + SUB_ID_LEN
    }
}

/// Length of the event [`publication_event`] writes.
pub fn publication_event_len(channel: &str, p: &Publication) -> usize {
    PUBLICATION_PREFIX.len() + channel.len() + 2 + p.fields_and_close().len()
}

const PUBLICATION_PREFIX: &[u8] = br#"{"type":"publication","channel":""#;

/// Writes a live publication event: `{"type":"publication","channel":C,"offset",..}`.
pub fn publication_event(out: &mut Vec<u8>, channel: &str, p: &Publication) {
    out.extend_from_slice(PUBLICATION_PREFIX);
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(b"\",");
    out.extend_from_slice(p.fields_and_close().as_bytes());
}

/// Writes the event that ends a subscription the server closed: `{"type":"closed","reason":R}`.
pub fn closed_event(out: &mut Vec<u8>, reason: &str) {
    out.extend_from_slice(br#"{"type":"closed","reason":"#);
    out.extend_from_slice(serde_json::to_string(reason).expect("a str serializes; qed").as_bytes());
    out.push(b'}');
}

/// Writes the snapshot event that starts every subscription.
pub fn snapshot_event(out: &mut Vec<u8>, channel: &str, page: &HistoryPage, recovered: bool) {
    let mut s = String::with_capacity(96 + channel.len());
    write!(
        s,
        r#"{{"type":"snapshot","channel":"{channel}","epoch":"{}","offset":{},"recovered":{recovered},"publications":["#,
        page.epoch, page.offset
    )
    .expect("writing to a String; qed");
    out.extend_from_slice(s.as_bytes());
    for (i, p) in page.publications.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(p.json().as_bytes());
    }
    out.extend_from_slice(b"]}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;
    use std::sync::Arc;

    fn whole(f: &SharedFrame, id: &SubId) -> Vec<u8> {
        f.parts(id).concat()
    }

    #[test]
    fn a_shared_frame_is_a_valid_notification_for_each_id() {
        let data = RawValue::from_string(r#"{"coin":"SOL"}"#.into()).unwrap();
        let p = Publication::new(3, 99, Some("trade"), &data, None);
        let ids = SubIdGen::default();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        for size in [10usize, 200, 70_000] {
            let data = RawValue::from_string(format!("\"{}\"", "x".repeat(size))).unwrap();
            let p2 = Publication::new(4, 99, None, &data, None);
            let mut f = SharedFrame::default();
            f.build(|out| publication_event(out, "trades:SOL", &p2));
            for id in [&a, &b] {
                let bytes = whole(&f, id);
                let h = match bytes[1] {
                    126 => 4,
                    127 => 10,
                    _ => 2,
                };
                let v: serde_json::Value = serde_json::from_slice(&bytes[h..]).unwrap();
                assert_eq!(v["params"]["subscription"], id.as_str());
                assert_eq!(v["params"]["result"]["offset"], 4);
            }
        }
        let mut f = SharedFrame::default();
        f.build(|out| publication_event(out, "trades:SOL", &p));
        let bytes = whole(&f, &a);
        assert_eq!(bytes[0], 0x81);
        let (len, h) = match bytes[1] {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            n => (n as usize, 2),
        };
        assert_eq!(len, bytes.len() - h);
        let v: serde_json::Value = serde_json::from_slice(&bytes[h..]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"jsonrpc":"2.0","method":"subscription","params":{"subscription":a.as_str(),
                "result":{"type":"publication","channel":"trades:SOL","offset":3,"ts":99,"event":"trade",
                "data":{"coin":"SOL"}}}})
        );
        let page = HistoryPage { epoch: "e1".into(), offset: 3, publications: vec![Arc::new(p)] };
        let mut out = Vec::new();
        snapshot_event(&mut out, "trades:SOL", &page, true);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "snapshot");
        assert_eq!(v["recovered"], true);
        assert_eq!(v["publications"][0]["data"]["coin"], "SOL");
    }

    #[test]
    fn ids_parse_back() {
        let id = SubIdGen::default().next();
        assert_eq!(SubId::parse(id.as_str()), Some(id));
        assert_eq!(SubId::parse("xyz"), None);
        assert_eq!(SubId::parse("zzzzzzzzzzzzzzzz"), None);
    }
}
