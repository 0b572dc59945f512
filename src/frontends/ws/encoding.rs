//! Hub events in the `{type,data}` dialect: a publication as
//! `{"type":EVENT or "publication","channel":C,"offset":N,"ts":T,"event"?:E,"data":D}`, the
//! snapshot as `{"type":"snapshot","channel","epoch","offset","recovered","publications"}`, and
//! `{"type":"closed","channel","reason"}` and `{"type":"heartbeat","channel","offset"}`. No subscription id: a connection holds one
//! subscription per channel, so every subscriber of a channel gets the same bytes (no splice).

use crate::frontends::{write_heartbeat, write_skipped, write_snapshot};
use crate::hub::{Encoding, Event};
use crate::transport::FrameWriter;

/// The `{type,data}` encoding.
#[derive(Debug, Default)]
pub struct TypedEncoding;

impl Encoding for TypedEncoding {
    fn splice_len(&self) -> usize {
        0
    }

    fn cursor_json(&self, channel: &str, offset: u64) -> Option<String> {
        Some(serde_json::json!({"type": "cursor", "channel": channel, "offset": offset}).to_string())
    }

    fn encode(&self, event: &Event<'_>, w: &mut FrameWriter<'_>) {
        let out = w.out();
        match event {
            Event::Publication { channel, publication, skipped, checksum } => {
                out.extend_from_slice(br#"{"type":"#);
                out.extend_from_slice(publication.event_json().unwrap_or(r#""publication""#).as_bytes());
                out.extend_from_slice(br#","channel":""#);
                out.extend_from_slice(channel.as_bytes());
                out.extend_from_slice(b"\",");
                write_skipped(out, *skipped);
                crate::frontends::write_checksum(out, *checksum);
                out.extend_from_slice(publication.fields_and_close().as_bytes());
            }
            Event::Snapshot { channel, page, recovered, earliest, checksum } => {
                write_snapshot(out, channel, page, *recovered, *earliest, *checksum)
            }
            Event::Heartbeat { channel, offset } => write_heartbeat(out, channel, *offset),
            Event::Presence { channel, join, who } => {
                crate::frontends::write_presence(out, channel, *join, who)
            }
            Event::Gap { channel, from, to, reason } => {
                crate::frontends::write_gap(out, channel, *from, *to, reason)
            }
            Event::Closed { channel, reason } => {
                out.extend_from_slice(br#"{"type":"closed","channel":""#);
                out.extend_from_slice(channel.as_bytes());
                out.extend_from_slice(br#"","reason":"#);
                out.extend_from_slice(
                    serde_json::to_string(reason).expect("a str serializes; qed").as_bytes(),
                );
                out.push(b'}');
            }
        }
    }
}
