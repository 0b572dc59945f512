//! Reading what Redis answers: fan-out messages, stream entries, history pages.

use super::*;

/// `EPOCH OFFSET TS DATA_AT JSON`.
/// A presence message's JSON after its `!`: `{"t":"join"|"leave","c":CLIENT,"u":USER}`.
pub(super) fn parse_signal(json: &[u8]) -> Option<PresenceSignal> {
    #[derive(serde::Deserialize)]
    struct Wire {
        t: String,
        c: String,
        #[serde(default)]
        u: String,
    }
    let w: Wire = serde_json::from_slice(json).ok()?;
    let join = match w.t.as_str() {
        "join" => true,
        "leave" => false,
        _ => return None,
    };
    Some(PresenceSignal { join, client: PresenceClient { client: w.c, user: w.u } })
}

pub(super) fn parse_message(payload: &[u8]) -> Option<(&str, u64, u64, u32, &str)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(5, ' ');
    let epoch = parts.next()?;
    let offset = parts.next()?.parse().ok()?;
    let ts = parts.next()?.parse().ok()?;
    let data_at = parts.next()?.parse().ok()?;
    Some((epoch, offset, ts, data_at, parts.next()?))
}

/// `OFFSET TS DATA_AT JSON`, a state hash's entry, as a publication of a state channel.
pub(super) fn state_entry(entry: &str) -> Option<Publication> {
    let mut parts = entry.splitn(4, ' ');
    let offset = parts.next()?.parse().ok()?;
    let ts = parts.next()?.parse().ok()?;
    let data_at = parts.next()?.parse().ok()?;
    Publication::from_encoded(offset, ts, parts.next()?.into(), data_at).map(|p| p.in_state(true))
}

/// Reads `state.lua`'s answer: the state in offset order.
pub(super) fn state_page(v: &Value) -> Option<HistoryPage> {
    let Value::Array(parts) = v else { return None };
    if parts.is_empty() {
        return Some(HistoryPage { epoch: NO_EPOCH.into(), offset: 0, publications: Vec::new() });
    }
    let [epoch, offset, Value::Array(pairs)] = parts.as_slice() else { return None };
    let mut publications = Vec::with_capacity(pairs.len() / 2);
    for pair in pairs.chunks(2) {
        let [_, entry] = pair else { return None };
        publications.push(Arc::new(state_entry(text(entry)?)?));
    }
    publications.sort_by_key(|p| p.offset);
    Some(HistoryPage { epoch: text(epoch)?.into(), offset: number(offset)?, publications })
}

fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// A stream entry `{id, {field, value, ...}}` as a publication.
pub(super) fn entry(v: &Value) -> Option<Publication> {
    let Value::Array(parts) = v else { return None };
    let [Value::BulkString(id), Value::Array(fields)] = parts.as_slice() else { return None };
    let offset = std::str::from_utf8(id).ok()?.split('-').next()?.parse().ok()?;
    let (mut ts, mut data_at, mut json) = (None, None, None);
    for pair in fields.chunks(2) {
        let [Value::BulkString(f), Value::BulkString(v)] = pair else { continue };
        let v = std::str::from_utf8(v).ok()?;
        match f.as_slice() {
            b"t" => ts = v.parse().ok(),
            b"a" => data_at = v.parse().ok(),
            b"j" => json = Some(v),
            _ => {}
        }
    }
    Publication::from_encoded(offset, ts?, json?.into(), data_at?)
}

pub(super) fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// Reads `history.lua`'s answer (of a state channel: `in_state`).
pub(super) fn page(v: &Value, in_state: bool) -> Option<HistoryPage> {
    let Value::Array(parts) = v else { return None };
    if parts.is_empty() {
        return Some(HistoryPage { epoch: NO_EPOCH.into(), offset: 0, publications: Vec::new() });
    }
    let [epoch, offset, Value::Array(entries)] = parts.as_slice() else { return None };
    let publications = entries
        .iter()
        .map(|e| entry(e).map(|p| Arc::new(p.in_state(in_state))))
        .collect::<Option<Vec<_>>>()?;
    Some(HistoryPage { epoch: text(epoch)?.into(), offset: number(offset)?, publications })
}
