//! State channels (`mode = "state"`): the snapshot is the latest publication of each key with the
//! CRC-32 checksum of the state, `data: null` deletes a key, and `checksum: true` puts the state's
//! checksum on every publication event; a client that rebuilds the state from them gets the same
//! checksum. The checksum is recomputed here from its definition, independently of the server.

use crate::support::{self, ADMIN, call, event, recv, send, subscribe, ws};
use rpchub::config::{Mode, NamespaceConfig};
use serde_json::{Value, json};
use std::collections::BTreeMap;

async fn server() -> rpchub::Running {
    let mut c = support::config();
    c.namespaces
        .insert("book".into(), NamespaceConfig { mode: Mode::State, history_size: 3, ..Default::default() });
    support::start(c).await
}

fn channel() -> String {
    format!("book:{}", support::channel("s").replace(':', "-"))
}

/// The state a client rebuilds: each key's data as published (its JSON text).
#[derive(Default, Debug)]
struct State(BTreeMap<String, String>);

impl State {
    /// Applies a publication object (`{"key"?,"data",...}`), given with the raw text of its data.
    fn apply(&mut self, key: Option<&str>, data_text: &str) {
        let key = key.unwrap_or("").to_string();
        if data_text == "null" {
            self.0.remove(&key);
        } else {
            self.0.insert(key, data_text.to_string());
        }
    }

    /// CRC-32 of `[[key,data],...]` sorted by key bytewise, written out here from the definition.
    fn checksum(&self) -> u32 {
        let pairs: Vec<String> =
            self.0.iter().map(|(k, d)| format!("[{},{d}]", serde_json::to_string(k).unwrap())).collect();
        crc32fast::hash(format!("[{}]", pairs.join(",")).as_bytes())
    }
}

/// Publishes `data` (JSON text, as it should be kept) under `key`.
async fn set(admin: &mut support::Ws, ch: &str, key: Option<&str>, data: &str) -> Value {
    let data: Value = serde_json::from_str(data).unwrap();
    let r = call(admin, "publish", json!({"channel": ch, "data": data, "key": key})).await;
    assert!(r["result"]["offset"].is_u64(), "{r}");
    r["result"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_is_the_latest_of_each_key_with_its_checksum() {
    let server = server().await;
    let addr = server.addr;
    let ch = channel();
    let mut admin = ws(addr, Some(ADMIN)).await;
    // More publications than history keeps (3): the state still has every key's latest.
    set(&mut admin, &ch, Some("190.10"), r#"{"sz":"5"}"#).await;
    set(&mut admin, &ch, Some("190.20"), r#"{"sz":"7"}"#).await;
    set(&mut admin, &ch, Some("190.30"), r#"{"sz":"1"}"#).await;
    set(&mut admin, &ch, Some("190.10"), r#"{"sz":"6"}"#).await;
    set(&mut admin, &ch, Some("190.30"), "null").await;
    let pos = set(&mut admin, &ch, Some("190.40"), r#"{"sz":"2"}"#).await;

    let mut c = ws(addr, None).await;
    let (_, snap) = subscribe(&mut c, json!([ch])).await;
    assert_eq!(snap["offset"], 6);
    let keys: Vec<(&str, u64)> = snap["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["key"].as_str().unwrap(), p["offset"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        keys,
        [("190.20", 2), ("190.10", 4), ("190.40", 6)],
        "each key's latest, in offset order, the deleted one gone"
    );
    let mut state = State::default();
    for p in snap["publications"].as_array().unwrap() {
        state.apply(p["key"].as_str(), &p["data"].to_string());
    }
    assert_eq!(snap["checksum"], state.checksum(), "{snap}");
    assert_eq!(snap["recovered"], false);
    // With since in its epoch: the whole state again, recovered (of the same stream).
    let (_, again) = subscribe(&mut c, json!({"channel": ch, "since": pos})).await;
    assert_eq!(
        (again["recovered"].clone(), again["checksum"].clone()),
        (json!(true), json!(state.checksum()))
    );
    // A whole-value publication (no key) is key "", written without `key`.
    set(&mut admin, &ch, None, "[1,2]").await;
    let e = event(&mut c).await;
    assert!(e.get("key").is_none() && e["data"] == json!([1, 2]), "{e}");
    assert!(e.get("checksum").is_none(), "no checksum unless asked: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_checksum_every_event_says_the_state_a_client_rebuilds() {
    let server = server().await;
    let addr = server.addr;
    let ch = channel();
    let mut admin = ws(addr, Some(ADMIN)).await;
    set(&mut admin, &ch, Some("a"), r#"{"x":1}"#).await;
    set(&mut admin, &ch, Some("b"), "2").await;

    let mut c = ws(addr, None).await;
    let (_, snap) = subscribe(&mut c, json!({"channel": ch, "checksum": true})).await;
    let mut state = State::default();
    for p in snap["publications"].as_array().unwrap() {
        state.apply(p["key"].as_str(), &p["data"].to_string());
    }
    // zlib.crc32(b'[["a",{"x":1}],["b",2]]'), as the protocol's example.
    assert_eq!(snap["checksum"], 3_153_918_732u32);
    assert_eq!(state.checksum(), 3_153_918_732);
    let updates =
        [(Some("c"), r#""three""#), (Some("a"), "null"), (None, r#"{"all":true}"#), (Some("b"), "[2,3]")];
    for (key, data) in updates {
        set(&mut admin, &ch, key, data).await;
        let e = event(&mut c).await;
        assert_eq!(e["key"].as_str(), key, "{e}");
        state.apply(key, &e["data"].to_string());
        assert_eq!(e["checksum"], state.checksum(), "after {key:?} = {data}: {e}");
    }
    // The {type,data} dialect takes the same, in its shape.
    let mut t = support::try_ws(addr, "/ws", None, &[]).await.unwrap();
    send(&mut t, json!({"type": "subscribe", "data": {"channel": ch, "checksum": true}})).await;
    let snap = recv(&mut t).await;
    assert_eq!(
        (snap["type"].as_str(), snap["checksum"].clone()),
        (Some("snapshot"), json!(state.checksum())),
        "{snap}"
    );
    set(&mut admin, &ch, Some("d"), "4").await;
    state.apply(Some("d"), "4");
    let e = recv(&mut t).await;
    assert_eq!(e["checksum"], state.checksum(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_options_where_they_do_not_apply_are_refused_and_change_nothing() {
    let server = server().await;
    let addr = server.addr;
    let ch = channel();
    let plain = support::channel("plain");
    let mut admin = ws(addr, Some(ADMIN)).await;
    for (params, code, says) in [
        (json!({"channel": plain, "data": 1, "key": "a"}), -32005, "state channels"),
        (json!({"channel": ch, "data": 1, "key": "k".repeat(256)}), -32005, "255"),
    ] {
        let r = call(&mut admin, "publish", params.clone()).await;
        assert_eq!(r["error"]["code"], code, "{params}: {r}");
        assert!(r["error"]["message"].as_str().unwrap().contains(says), "{r}");
    }
    let r = call(&mut admin, "history", json!([plain])).await;
    assert_eq!(r["result"]["offset"], 0, "nothing was published: {r}");
    let mut c = ws(addr, None).await;
    for (params, says) in [
        (json!({"channel": plain, "checksum": true}), "state channels"),
        (json!({"channel": ch, "conflate_ms": 100}), "not conflated"),
    ] {
        let r = call(&mut c, "subscribe", params.clone()).await;
        assert_eq!(r["error"]["code"], -32005, "{params}: {r}");
        assert!(r["error"]["message"].as_str().unwrap().contains(says), "{r}");
    }
    // The connection holds nothing, and subscribes as before.
    let (_, snap) = subscribe(&mut c, json!([ch])).await;
    assert_eq!(snap["checksum"], 223_132_457u32, "the empty state's checksum (of []): {snap}");
}
