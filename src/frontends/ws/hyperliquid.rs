//! The Hyperliquid dialect of `/ws`: subscription objects mapped to channels, the
//! `subscriptionResponse` acknowledgement, `{"channel":TYPE,"data":...}` frames, `post` requests
//! onto the JSON-RPC methods, `{"channel":"pong"}` and `{"channel":"error","data":"..."}`, as
//! the API of that name sends them; plus `since` in a subscription object, and `epoch`, `offset`
//! and `recovered` on snapshot frames, which that API does not have (its clients ignore them).

use crate::hub::{Encoding, Event};
use crate::transport::FrameWriter;
use serde_json::{Map, Value};
use std::fmt::Write as _;

/// Subscription types whose channel is `TYPE:COIN`.
const BY_COIN: &[&str] = &["trades", "l2Book", "bbo", "candle", "activeAssetCtx"];
/// Subscription types whose channel is `TYPE:USER`.
const BY_USER: &[&str] = &[
    "userFills",
    "userEvents",
    "orderUpdates",
    "userFundings",
    "userNonFundingLedgerUpdates",
    "webData2",
    "notification",
    "userTwapSliceFills",
    "userTwapHistory",
];
/// Subscription types with both: `TYPE:USER:COIN`.
const BY_USER_AND_COIN: &[&str] = &["activeAssetData"];
/// Subscription types with neither.
const BARE: &[&str] = &["allMids"];

/// The channel a subscription object names: its `type`, then `user` and `coin` where the type
/// has them, then the other values in the order of their keys (`nSigFigs`, `interval`, ...),
/// `:`-joined; `since` and `conflate_ms` are not part of it. `Err` says what is wrong, for the error frame.
pub fn channel_of(sub: &Map<String, Value>) -> Result<String, String> {
    let Some(kind) = sub.get("type").and_then(Value::as_str) else {
        return Err("the subscription has no \"type\"".into());
    };
    let text = |key: &str| -> Result<String, String> {
        match sub.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(_) => Err(format!("\"{key}\" of a {kind} subscription must be a non-empty string")),
            None => Err(format!("a {kind} subscription needs \"{key}\"")),
        }
    };
    let mut parts = vec![kind.to_string()];
    if BY_COIN.contains(&kind) {
        parts.push(text("coin")?);
    } else if BY_USER.contains(&kind) {
        parts.push(text("user")?);
    } else if BY_USER_AND_COIN.contains(&kind) {
        parts.push(text("user")?);
        parts.push(text("coin")?);
    } else if !BARE.contains(&kind) {
        return Err(format!("unknown subscription type {kind:?}"));
    }
    let mut rest: Vec<(&String, &Value)> = sub
        .iter()
        .filter(|(k, _)| {
            !matches!(k.as_str(), "type" | "coin" | "user" | "since" | "conflate_ms" | "checksum")
        })
        .collect();
    rest.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in rest {
        match v {
            Value::Null => {}
            Value::String(s) => parts.push(s.clone()),
            Value::Number(n) => parts.push(n.to_string()),
            Value::Bool(b) => parts.push(b.to_string()),
            _ => return Err(format!("\"{k}\" must be a string, a number or a boolean")),
        }
    }
    Ok(parts.join(":"))
}

/// Hub events as Hyperliquid frames. The frame's `channel` is the subscription type (the
/// channel name's namespace); live `data` is what the publisher published; the snapshot's is
/// the retained publications' data joined into one list when they are lists (trades), else the
/// latest one (a book), `[]` when none is retained.
#[derive(Debug, Default)]
pub struct HyperliquidEncoding;

fn kind(channel: &str) -> &str {
    channel.split(':').next().unwrap_or(channel)
}

impl Encoding for HyperliquidEncoding {
    fn splice_len(&self) -> usize {
        0
    }

    fn encode(&self, event: &Event<'_>, w: &mut FrameWriter<'_>) {
        let out = w.out();
        match event {
            Event::Publication { channel, publication, skipped, checksum } => {
                out.extend_from_slice(br#"{"channel":""#);
                out.extend_from_slice(kind(channel).as_bytes());
                out.extend_from_slice(br#"","data":"#);
                out.extend_from_slice(publication.data().as_bytes());
                if *skipped > 0 {
                    out.extend_from_slice(format!(r#","skipped":{skipped}"#).as_bytes());
                }
                if let Some(c) = checksum {
                    out.extend_from_slice(format!(r#","checksum":{c}"#).as_bytes());
                }
                out.push(b'}');
            }
            Event::Gap { channel, from, to, reason } => {
                out.extend_from_slice(br#"{"channel":"gap","data":{"channel":""#);
                out.extend_from_slice(channel.as_bytes());
                out.extend_from_slice(
                    format!(r#"","from":{from},"to":{to},"reason":"{reason}"}}}}"#).as_bytes(),
                );
            }
            Event::Presence { channel, join, who } => {
                out.extend_from_slice(if *join {
                    br#"{"channel":"join","data":"#
                } else {
                    br#"{"channel":"leave","data":"#
                });
                crate::frontends::write_presence(out, channel, *join, who);
                out.push(b'}');
            }
            Event::Heartbeat { channel, offset } => {
                out.extend_from_slice(br#"{"channel":"heartbeat","data":{"channel":""#);
                out.extend_from_slice(channel.as_bytes());
                out.extend_from_slice(br#"","offset":"#);
                out.extend_from_slice(offset.to_string().as_bytes());
                out.extend_from_slice(b"}}");
            }
            Event::Snapshot { channel, page, recovered, earliest, checksum } => {
                out.extend_from_slice(br#"{"channel":""#);
                out.extend_from_slice(kind(channel).as_bytes());
                out.extend_from_slice(br#"","data":"#);
                let datas: Vec<&str> = page.publications.iter().map(|p| p.data().trim()).collect();
                if datas.is_empty() {
                    out.extend_from_slice(b"[]");
                } else if datas.iter().all(|d| d.starts_with('[')) {
                    out.push(b'[');
                    let mut first = true;
                    for d in datas {
                        let inner = d[1..d.len() - 1].trim();
                        if inner.is_empty() {
                            continue;
                        }
                        if !first {
                            out.push(b',');
                        }
                        out.extend_from_slice(inner.as_bytes());
                        first = false;
                    }
                    out.push(b']');
                } else {
                    out.extend_from_slice(datas[datas.len() - 1].as_bytes());
                }
                let mut s = String::new();
                write!(
                    s,
                    r#","isSnapshot":true,"epoch":"{}","offset":{},"recovered":{recovered}"#,
                    page.epoch, page.offset
                )
                .expect("writing to a String; qed");
                if let Some(e) = earliest {
                    write!(s, r#","earliest":{{"epoch":"{}","offset":{}}}"#, e.epoch, e.offset)
                        .expect("writing to a String; qed");
                }
                if let Some(c) = checksum {
                    // A state channel: its state as `{key: data}` beside `data`, and its checksum.
                    write!(s, r#","checksum":{c},"state":{{"#).expect("writing to a String; qed");
                    for (i, p) in page.publications.iter().enumerate() {
                        let key = serde_json::to_string(p.state_key().unwrap_or(""))
                            .expect("a str serializes; qed");
                        write!(s, "{}{key}:{}", if i > 0 { "," } else { "" }, p.data())
                            .expect("writing to a String; qed");
                    }
                    s.push('}');
                }
                s.push('}');
                out.extend_from_slice(s.as_bytes());
            }
            Event::Closed { channel, reason } => {
                let text = format!("the subscription to {channel} ended: {reason}");
                out.extend_from_slice(br#"{"channel":"error","data":"#);
                out.extend_from_slice(
                    serde_json::to_string(&text).expect("a str serializes; qed").as_bytes(),
                );
                out.push(b'}');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn of(v: Value) -> Result<String, String> {
        channel_of(v.as_object().unwrap())
    }

    #[test]
    fn a_state_channels_snapshot_carries_its_state_and_checksum() {
        use crate::broker::{HistoryPage, Publication};
        use serde_json::value::RawValue;
        let p = |o, k: &str, d: &str| {
            std::sync::Arc::new(Publication::keyed(
                o,
                1,
                Some(k),
                None,
                &RawValue::from_string(d.into()).unwrap(),
                None,
            ))
        };
        let page = HistoryPage {
            epoch: "e".into(),
            offset: 3,
            publications: vec![p(2, "b", "2"), p(3, "a", r#"{"x":1}"#)],
        };
        let event = Event::Snapshot {
            channel: "l2Book:BTC",
            page: &page,
            recovered: false,
            earliest: None,
            checksum: Some(7),
        };
        let mut f = crate::transport::SharedFrame::with_capacity(256);
        f.build(0, |w| HyperliquidEncoding.encode(&event, w));
        let bytes = f.parts(&crate::transport::Splice::new(&[]).unwrap()).concat();
        let v: Value =
            serde_json::from_slice(&bytes[bytes.iter().position(|&b| b == b'{').unwrap()..]).unwrap();
        assert_eq!(v["checksum"], 7);
        assert_eq!(v["state"], json!({"b": 2, "a": {"x": 1}}));
        assert_eq!((v["channel"].as_str(), v["isSnapshot"].as_bool()), (Some("l2Book"), Some(true)));
    }

    #[test]
    fn subscription_objects_map_to_channels_in_a_stable_order() {
        assert_eq!(of(json!({"type": "trades", "coin": "SOL"})).unwrap(), "trades:SOL");
        assert_eq!(of(json!({"type": "l2Book", "coin": "BTC"})).unwrap(), "l2Book:BTC");
        assert_eq!(
            of(json!({"type": "l2Book", "nSigFigs": 5, "coin": "BTC", "mantissa": null})).unwrap(),
            "l2Book:BTC:5"
        );
        assert_eq!(of(json!({"type": "userFills", "user": "0xabc"})).unwrap(), "userFills:0xabc");
        assert_eq!(of(json!({"type": "candle", "interval": "1m", "coin": "ETH"})).unwrap(), "candle:ETH:1m");
        assert_eq!(of(json!({"type": "allMids"})).unwrap(), "allMids");
        assert_eq!(
            of(json!({"type": "trades", "coin": "SOL", "since": {"epoch": "e", "offset": 1}})).unwrap(),
            "trades:SOL"
        );
        assert!(of(json!({"type": "trades"})).unwrap_err().contains("needs \"coin\""));
        assert!(
            of(json!({"type": "teleport", "coin": "SOL"})).unwrap_err().contains("unknown subscription type")
        );
        assert!(of(json!({"coin": "SOL"})).is_err());
        assert!(of(json!({"type": "trades", "coin": 5})).is_err());
    }
}
