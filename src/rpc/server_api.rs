//! The server API for backends, `POST /api/publish`: its wire types (the OpenAPI document's
//! schemas come from them), the parsing of a body into one publication or a batch, and the one
//! mapping from an [`RpcError`] to the HTTP status of a single publication and the `code` of a
//! batch item. The rules of a publication are the `publish` method's
//! ([`Handlers::publish_as`](super::Handlers::publish_as)); the HTTP side (content type, body
//! size and deadline, the token) is `crate::server`'s.
//!
//! A batch is answered `200` with one result per publication, in order: the position, or
//! `{"error":{"code","message"}}` with `code` one of the names the JSON-RPC errors carry in
//! `data.code` (`invalid_request`, `unauthorized`, `rate_limited`, `subscription_failed`,
//! `broker_unavailable`, `internal_error`). One bad item fails only itself.

use super::RpcError;
use super::api::JsonData;
use crate::broker::StreamPosition;
use crate::constants::MAX_PUBLISH_BATCH;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// One publication: what the `publish` method takes, by name.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// The channel (`namespace:rest`, 1 to 255 bytes of `[A-Za-z0-9_.:@/=,+-]`).
    #[schemars(length(min = 1, max = 255), pattern(r"^[A-Za-z0-9_.:@/=,+-]+$"))]
    pub channel: String,
    /// What to publish: any JSON, delivered to subscribers as sent.
    pub data: JsonData,
    /// An event name subscribers can switch on (1 to 255 bytes).
    #[serde(default)]
    #[schemars(length(min = 1, max = 255))]
    pub event: Option<String>,
    /// A publish repeating the key of a publication still in the channel's history publishes
    /// nothing and answers that publication's position (1 to 255 bytes).
    #[serde(default)]
    #[schemars(length(min = 1, max = 255))]
    pub idempotency_key: Option<String>,
    /// On a state channel (`mode = "state"`): the key it sets (absent: the whole value; `data`
    /// `null` deletes it), 255 bytes at most. Refused on other channels.
    #[serde(default)]
    #[schemars(length(max = 255))]
    pub key: Option<String>,
}

/// Why one publication of a batch failed.
#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct PublishFailure {
    /// `invalid_request`, `unauthorized`, `rate_limited`, `subscription_failed`,
    /// `broker_unavailable` or `internal_error`: the names of the JSON-RPC errors' `data.code`.
    pub code: String,
    /// What to change.
    pub message: String,
}

/// The result of one publication of a batch: its position, or why it failed.
#[derive(Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum PublishResult {
    /// Published (or already published with the same `idempotency_key`).
    Published(StreamPosition),
    /// Not published.
    Failed {
        /// Why.
        error: PublishFailure,
    },
}

impl PublishResult {
    /// The result of a publication that ended with `r`.
    pub fn of(r: Result<StreamPosition, RpcError>) -> PublishResult {
        match r {
            Ok(p) => PublishResult::Published(p),
            Err(e) => PublishResult::Failed {
                error: PublishFailure { code: e.code().1.to_string(), message: e.to_string() },
            },
        }
    }
}

/// The body of `POST /api/publish`: one publication, or a batch of them.
#[derive(Debug)]
pub enum PublishBody {
    /// A JSON object.
    One(PublishRequest),
    /// A JSON array of 1 to [`MAX_PUBLISH_BATCH`] items, each parsed on its own: one that is not
    /// a publication is an error of its own.
    Batch(Vec<Result<PublishRequest, RpcError>>),
}

/// The body `bytes` as a publication or a batch; `Err` (a 400) says what is wrong with it as a
/// whole.
pub fn parse(bytes: &[u8]) -> Result<PublishBody, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the body is not UTF-8".to_string())?;
    if !text.trim_start().starts_with('[') {
        return serde_json::from_str(text).map(PublishBody::One).map_err(|e| {
            if text.trim().is_empty() {
                "the body is empty: send a publication {\"channel\",\"data\",...} or an array of them"
                    .to_string()
            } else {
                format!("the body is not a publication {{\"channel\",\"data\",\"event\"?,\"idempotency_key\"?,\"key\"?}}: {e}")
            }
        });
    }
    let items: Vec<Box<RawValue>> =
        serde_json::from_str(text).map_err(|e| format!("the body is not a JSON array: {e}"))?;
    if items.is_empty() || items.len() > MAX_PUBLISH_BATCH {
        return Err(format!(
            "a batch holds 1 to {MAX_PUBLISH_BATCH} publications; this one holds {}",
            items.len()
        ));
    }
    let parsed = items
        .iter()
        .map(|item| {
            serde_json::from_str::<PublishRequest>(item.get())
                .map_err(|e| RpcError::Unacceptable(format!("not a publication: {e}")))
        })
        .collect();
    Ok(PublishBody::Batch(parsed))
}

/// The HTTP status of a single publication that failed with `e`: 400 for unacceptable input,
/// 403 for missing rights, 429 over the rate, 503 when the node's channel table is full or the
/// shared broker cannot be reached, 500 for the server's own failures.
pub fn status_of(e: &RpcError) -> u16 {
    match e {
        RpcError::Unacceptable(_) | RpcError::NotFound(_) | RpcError::InvalidParams(_) => 400,
        RpcError::Unauthorized(_) => 403,
        RpcError::RateLimited(_) => 429,
        RpcError::SubscriptionFailed(_)
        | RpcError::BackendUnavailable(_)
        | RpcError::BrokerUnavailable(_) => 503,
        RpcError::Internal(_) => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_a_batch_or_what_is_wrong() {
        assert!(
            matches!(parse(br#"{"channel":"a:b","data":1}"#), Ok(PublishBody::One(p)) if p.channel == "a:b")
        );
        let Ok(PublishBody::Batch(items)) =
            parse(br#" [{"channel":"a:b","data":{"x":1}}, 7, {"channel":"c"}]"#)
        else {
            panic!("a batch")
        };
        assert!(items[0].is_ok() && items[1].is_err() && items[2].is_err());
        assert_eq!(items[0].as_ref().unwrap().data.0.get(), r#"{"x":1}"#, "data as sent");
        for bad in [&b""[..], b"{", b"[]", b"7", br#"{"channel":"a","data":1,"extra":2}"#, b"\xff"] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let too_many =
            serde_json::to_vec(&vec![json!({"channel": "a", "data": 1}); MAX_PUBLISH_BATCH + 1]).unwrap();
        assert!(parse(&too_many).unwrap_err().contains("1 to 1000"));
    }

    #[test]
    fn results_are_a_position_or_a_named_error() {
        let ok = PublishResult::of(Ok(StreamPosition { epoch: "e".into(), offset: 3 }));
        assert_eq!(serde_json::to_value(&ok).unwrap(), json!({"epoch": "e", "offset": 3}));
        let failed = PublishResult::of(Err(RpcError::Unauthorized("no".into())));
        assert_eq!(
            serde_json::to_value(&failed).unwrap(),
            json!({"error": {"code": "unauthorized", "message": "no"}})
        );
    }
}
