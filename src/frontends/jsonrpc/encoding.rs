//! Hub events as JSON-RPC notifications:
//! `{"jsonrpc":"2.0","method":"subscription","params":{"subscription":ID,"result":EVENT}}`.
//! The subscription id is each subscriber's splice, so one frame per publication serves every
//! JSON-RPC subscriber of a channel.

use crate::frontends::{write_heartbeat, write_skipped, write_snapshot};
use crate::hub::{Encoding, Event, SUB_ID_LEN, SubId};
use crate::transport::{FrameWriter, Splice};

const NOTIF_PREFIX: &[u8] = br#"{"jsonrpc":"2.0","method":"subscription","params":{"subscription":""#;
const RESULT_MID: &[u8] = br#"","result":"#;
const PUBLICATION_PREFIX: &[u8] = br#"{"type":"publication","channel":""#;

/// The JSON-RPC notification encoding.
#[derive(Debug, Default)]
pub struct JsonRpcEncoding;

/// A subscriber's splice: its id.
pub fn splice(id: SubId) -> Splice {
    Splice::new(&id.0).expect("an id fits a splice; qed")
}

impl Encoding for JsonRpcEncoding {
    fn splice_len(&self) -> usize {
        SUB_ID_LEN
    }

    fn cursor_json(&self, channel: &str, offset: u64) -> Option<String> {
        Some(
            serde_json::json!({"jsonrpc": "2.0", "method": "cursor", "params": {"channel": channel, "offset": offset}})
                .to_string(),
        )
    }

    fn encode(&self, event: &Event<'_>, w: &mut FrameWriter<'_>) {
        w.put(NOTIF_PREFIX);
        w.splice_here();
        w.put(RESULT_MID);
        write_event(w.out(), event);
        w.put(b"}}");
    }
}

/// Writes an event object: the `result` of a notification.
fn write_event(out: &mut Vec<u8>, event: &Event<'_>) {
    match event {
        Event::Publication { channel, publication, skipped, checksum } => {
            out.extend_from_slice(PUBLICATION_PREFIX);
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
        Event::Presence { channel, join, who } => crate::frontends::write_presence(out, channel, *join, who),
        Event::Gap { channel, from, to, reason } => {
            crate::frontends::write_gap(out, channel, *from, *to, reason)
        }
        Event::Closed { channel, reason } => {
            out.extend_from_slice(br#"{"type":"closed","channel":""#);
            out.extend_from_slice(channel.as_bytes());
            out.extend_from_slice(br#"","reason":"#);
            out.extend_from_slice(serde_json::to_string(reason).expect("a str serializes; qed").as_bytes());
            out.push(b'}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{HistoryPage, Publication};
    use crate::hub::SubIdGen;
    use crate::transport::SharedFrame;
    use serde_json::value::RawValue;
    use std::sync::Arc;

    fn frame(event: &Event<'_>) -> SharedFrame {
        let mut f = SharedFrame::default();
        f.build(JsonRpcEncoding.splice_len(), |w| JsonRpcEncoding.encode(event, w));
        f
    }

    fn payload(bytes: &[u8]) -> serde_json::Value {
        let h = match bytes[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        serde_json::from_slice(&bytes[h..]).unwrap()
    }

    #[test]
    fn one_frame_is_a_valid_notification_for_each_subscriber() {
        let ids = SubIdGen::default();
        let (a, b) = (ids.next(), ids.next());
        for size in [10usize, 200, 70_000] {
            let data = RawValue::from_string(format!("\"{}\"", "x".repeat(size))).unwrap();
            let p = Publication::new(4, 99, None, &data, None);
            let f = frame(&Event::Publication {
                channel: "trades:SOL",
                publication: &p,
                skipped: 0,
                checksum: None,
            });
            for id in [a, b] {
                let v = payload(&f.parts(&splice(id)).concat());
                assert_eq!(v["params"]["subscription"], id.as_str());
                assert_eq!(v["params"]["result"]["offset"], 4);
            }
        }
        let data = RawValue::from_string(r#"{"coin":"SOL"}"#.into()).unwrap();
        let p = Publication::new(3, 99, Some("trade"), &data, None);
        let f =
            frame(&Event::Publication { channel: "trades:SOL", publication: &p, skipped: 0, checksum: None });
        assert_eq!(
            payload(&f.parts(&splice(a)).concat()),
            serde_json::json!({"jsonrpc":"2.0","method":"subscription","params":{"subscription":a.as_str(),
                "result":{"type":"publication","channel":"trades:SOL","offset":3,"ts":99,"event":"trade",
                "data":{"coin":"SOL"}}}})
        );
        let page = HistoryPage { epoch: "e1".into(), offset: 3, publications: vec![Arc::new(p)] };
        let f = frame(&Event::Snapshot {
            channel: "trades:SOL",
            page: &page,
            recovered: true,
            earliest: None,
            checksum: None,
        });
        let v = payload(&f.parts(&splice(a)).concat());
        assert_eq!(v["params"]["result"]["type"], "snapshot");
        assert_eq!(v["params"]["result"]["recovered"], true);
        assert_eq!(v["params"]["result"]["publications"][0]["data"]["coin"], "SOL");
        let f = frame(&Event::Closed { channel: "trades:SOL", reason: "token_expired" });
        assert_eq!(
            payload(&f.parts(&splice(b)).concat())["params"]["result"],
            serde_json::json!({"type":"closed","channel":"trades:SOL","reason":"token_expired"})
        );
        let f = frame(&Event::Gap { channel: "trades:SOL", from: 4, to: 9, reason: "broker_lost" });
        assert_eq!(
            payload(&f.parts(&splice(b)).concat())["params"]["result"],
            serde_json::json!({"type":"gap","channel":"trades:SOL","from":4,"to":9,"reason":"broker_lost"})
        );
    }
}
