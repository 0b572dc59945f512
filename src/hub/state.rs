//! State channels (`mode = "state"`): each publication sets a key (`""`: the whole value) or,
//! with `data: null`, deletes it; the snapshot is the latest publication of each key, and the
//! state's `checksum` lets a client check that it rebuilt the same state.
//!
//! The checksum is CRC-32 (IEEE, as zlib's `crc32`) of the UTF-8 bytes of the JSON array
//! `[[key, data], ...]` sorted by key bytewise, each `data` as published (its raw JSON text),
//! with no whitespace added: `[["a",{"x":1}],["b",2]]`. A state channel with subscribers keeps
//! its state here, applied in offset order as it is delivered, from its first subscriber's
//! snapshot on, so that a subscriber that asks for a checksum with every event at any time gets
//! the current one; the checksum itself is computed only when such a subscriber is served.

use crate::broker::{HistoryPage, Publication};
use std::collections::BTreeMap;

/// A state channel's state: each key's data as published.
#[derive(Debug, Default)]
pub(super) struct KeyedState {
    entries: BTreeMap<Box<str>, Box<str>>,
}

impl KeyedState {
    /// The state a snapshot holds.
    pub(super) fn from_page(page: &HistoryPage) -> KeyedState {
        let mut s = KeyedState::default();
        for p in &page.publications {
            s.apply(p);
        }
        s
    }

    /// Applies the next publication.
    pub(super) fn apply(&mut self, p: &Publication) {
        let key = p.state_key().unwrap_or("");
        if p.is_deletion() {
            self.entries.remove(key);
        } else {
            self.entries.insert(key.into(), p.data().into());
        }
    }

    /// The checksum of the state.
    pub(super) fn checksum(&self) -> u32 {
        checksum(self.entries.iter().map(|(k, d)| (&**k, &**d)))
    }
}

/// CRC-32 of `[[key,data],...]` for `entries` sorted by key bytewise (`str`'s order is the
/// bytes' order).
fn checksum<'a>(entries: impl Iterator<Item = (&'a str, &'a str)>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(b"[");
    for (i, (k, d)) in entries.enumerate() {
        if i > 0 {
            h.update(b",");
        }
        h.update(b"[");
        h.update(serde_json::to_string(k).expect("a str serializes; qed").as_bytes());
        h.update(b",");
        h.update(d.as_bytes());
        h.update(b"]");
    }
    h.update(b"]");
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn publication(offset: u64, key: &str, data: &str) -> Publication {
        let raw = RawValue::from_string(data.into()).unwrap();
        Publication::keyed(offset, 1, Some(key), None, &raw, None)
    }

    #[test]
    fn the_checksum_is_crc32_of_the_sorted_pairs_as_published() {
        let mut s = KeyedState::default();
        s.apply(&publication(1, "b", "2"));
        s.apply(&publication(2, "a", r#"{"x":1}"#));
        s.apply(&publication(3, "c", "3"));
        s.apply(&publication(4, "c", "null"));
        // zlib.crc32(b'[["a",{"x":1}],["b",2]]') and zlib.crc32(b'[]'), computed with Python.
        assert_eq!(s.checksum(), 3_153_918_732);
        assert_eq!(KeyedState::default().checksum(), 223_132_457);
        // Keys are JSON strings, escaped; the whole value's key is "".
        let mut w = KeyedState::default();
        w.apply(&publication(1, "", "[1, 2]"));
        w.apply(&publication(2, "q\"", "true"));
        assert_eq!(w.checksum(), crc32fast::hash(br#"[["",[1, 2]],["q\"",true]]"#));
    }
}
