//! The OpenRPC 1.3 document of the JSON-RPC API, generated from the method descriptors
//! ([`crate::rpc::descriptors`]): each method's name, doc comment, params and result come from
//! its one definition in `rpc::api`. What a type cannot say is here, keyed by method name: the
//! errors a method can answer and its examples; [`extra`] has an entry for every method (a test
//! fails otherwise).
//!
//! Extensions, documented in `rpc-spec/README.md`:
//! - `x-notifications` on `subscribe`: the notification every event of a subscription arrives
//!   in (method `subscription`), and the JSON Schema of each event (`snapshot`, `publication`,
//!   `closed`), so that a reader or a generator can type them.
//!
//! `rpc.discover`, which answers this document, is served on every transport without a token
//! and not listed (its name has a dot, which generators turn into an invalid identifier).

use super::schema;
use crate::rpc::api;
use crate::rpc::describe::MethodDescriptor;
use crate::rpc::error::{
    BROKER_UNAVAILABLE, INVALID_PARAMS, MESSAGE_TOO_BIG, RATE_LIMITED, SUBSCRIPTION_FAILED, UNACCEPTABLE,
    UNAUTHORIZED,
};
use schemars::SchemaGenerator;
use serde_json::{Value, json};

/// The OpenRPC version the document follows.
pub const OPENRPC_VERSION: &str = "1.3.2";

/// An error a method can answer: code, message, `data.code`, and when.
#[derive(Debug)]
struct ErrorDoc {
    code: i32,
    message: &'static str,
    name: &'static str,
}

const E_UNAUTHORIZED: ErrorDoc =
    ErrorDoc { code: UNAUTHORIZED, message: "the caller may not do this", name: "unauthorized" };
const E_SUBSCRIPTION_FAILED: ErrorDoc = ErrorDoc {
    code: SUBSCRIPTION_FAILED,
    message: "the subscription (or the channel it needs) could not be made",
    name: "subscription_failed",
};
const E_RATE_LIMITED: ErrorDoc =
    ErrorDoc { code: RATE_LIMITED, message: "over the call rate; slow down", name: "rate_limited" };
const E_INVALID: ErrorDoc = ErrorDoc {
    code: UNACCEPTABLE,
    message: "well-formed but unacceptable input (a bad channel name, ...)",
    name: "invalid_request",
};
const E_TOO_BIG: ErrorDoc = ErrorDoc {
    code: MESSAGE_TOO_BIG,
    message: "the answer is over limits.max_response_bytes",
    name: "message_too_big",
};

const E_BROKER_UNAVAILABLE: ErrorDoc = ErrorDoc {
    code: BROKER_UNAVAILABLE,
    message: "the shared broker cannot be reached; retry once GET /health answers 200",
    name: "broker_unavailable",
};

/// An example: its name, the params by name, and the result.
type Example = (&'static str, Vec<(&'static str, Value)>, Value);

/// What the document says of a method beyond its types.
#[derive(Debug)]
pub struct Extra {
    /// The rpchub errors it can answer (besides -32602 for params of the wrong shape and
    /// -32603 for the server's own failures, which every method can).
    errors: &'static [ErrorDoc],
    /// Examples: a name, the params by name, and the result.
    examples: fn() -> Vec<Example>,
}

/// The errors and examples of `method`; `None` for a method the document does not know, which
/// a test rules out.
pub fn extra(method: &str) -> Option<Extra> {
    let e = match method {
        "subscribe" => Extra {
            errors: &[E_UNAUTHORIZED, E_SUBSCRIPTION_FAILED, E_RATE_LIMITED, E_INVALID, E_BROKER_UNAVAILABLE],
            examples: || {
                vec![
                    (
                        "newest",
                        vec![("channel", json!("trades:SOL")), ("limit", json!(2))],
                        json!("c66cb31949c70cfc"),
                    ),
                    (
                        "resume",
                        vec![
                            ("channel", json!("trades:SOL")),
                            ("since", json!({"epoch": "bc541b2435dd", "offset": 19})),
                        ],
                        json!("0f5b2a9d4c3e8a71"),
                    ),
                ]
            },
        },
        "subscribe_many" => Extra {
            errors: &[E_RATE_LIMITED],
            examples: || {
                vec![(
                    "two channels, one refused",
                    vec![(
                        "subscriptions",
                        json!([
                            {"channel": "trades:SOL", "since": {"epoch": "bc541b2435dd", "offset": 19}},
                            {"channel": "bad channel"}
                        ]),
                    )],
                    json!({
                        "results": [
                            {"channel": "trades:SOL", "subscription": "0f5b2a9d4c3e8a71"},
                            {"channel": "bad channel", "error": {"code": -32005,
                                "message": "invalid channel: channel name contains ' '; allowed are letters, digits and _.:@/=,+-",
                                "data": {"code": "invalid_request"}}}
                        ],
                        "limits": {"subscriptions_left": 1023, "calls_per_s": 200}
                    }),
                )]
            },
        },
        "unsubscribe" => Extra {
            errors: &[E_RATE_LIMITED],
            examples: || vec![("unknown", vec![("subscription", json!("c66cb31949c70cfc"))], json!(false))],
        },
        "publish" => Extra {
            errors: &[E_UNAUTHORIZED, E_SUBSCRIPTION_FAILED, E_RATE_LIMITED, E_INVALID, E_BROKER_UNAVAILABLE],
            examples: || {
                vec![(
                    "trade",
                    vec![
                        ("channel", json!("trades:SOL")),
                        ("data", json!({"px": "190.12", "sz": "1.5"})),
                        ("event", json!("trade")),
                    ],
                    json!({"epoch": "bc541b2435dd", "offset": 20}),
                )]
            },
        },
        "history" => Extra {
            errors: &[E_UNAUTHORIZED, E_RATE_LIMITED, E_INVALID, E_TOO_BIG, E_BROKER_UNAVAILABLE],
            examples: || {
                vec![(
                    "newest",
                    vec![("channel", json!("trades:SOL")), ("limit", json!(1))],
                    json!({
                        "epoch": "bc541b2435dd",
                        "offset": 20,
                        "publications": [{"offset": 20, "ts": 1795685883714u64, "event": "trade",
                            "data": {"coin": "SOL", "side": "B", "px": "190.12", "sz": "26.7431",
                                "time": 1795685883714u64, "tid": 17956858769194u64}}]
                    }),
                )]
            },
        },
        "presence" => Extra {
            errors: &[E_UNAUTHORIZED, E_RATE_LIMITED, E_INVALID, E_TOO_BIG, E_BROKER_UNAVAILABLE],
            examples: || {
                vec![(
                    "two users",
                    vec![("channel", json!("chat:room-1"))],
                    json!({"clients": [{"client": "node-1-7", "user": "alice"},
                        {"client": "node-2-3", "user": "bob"}], "count": 2}),
                )]
            },
        },
        "presence_stats" => Extra {
            errors: &[E_UNAUTHORIZED, E_RATE_LIMITED, E_INVALID, E_TOO_BIG, E_BROKER_UNAVAILABLE],
            examples: || {
                vec![(
                    "two users",
                    vec![("channel", json!("chat:room-1"))],
                    json!({"clients": 2, "users": 2}),
                )]
            },
        },
        "cursor_set" => Extra {
            errors: &[E_UNAUTHORIZED, E_RATE_LIMITED, E_INVALID, E_TOO_BIG, E_BROKER_UNAVAILABLE],
            examples: || {
                vec![(
                    "read up to 1",
                    vec![("channel", json!("trades:SOL")), ("offset", json!(1))],
                    json!({"offset": 1}),
                )]
            },
        },
        "cursor_get" => Extra {
            errors: &[E_UNAUTHORIZED, E_RATE_LIMITED, E_INVALID, E_TOO_BIG, E_BROKER_UNAVAILABLE],
            examples: || {
                vec![(
                    "two channels",
                    vec![("channels", json!(["trades:SOL", "chat:room-1"]))],
                    json!({"trades:SOL": 1, "chat:room-1": 0}),
                )]
            },
        },
        "unread" => Extra {
            errors: &[E_UNAUTHORIZED, E_RATE_LIMITED, E_INVALID, E_TOO_BIG, E_BROKER_UNAVAILABLE],
            examples: || {
                vec![(
                    "two channels",
                    vec![("channels", json!(["trades:SOL", "chat:room-1"]))],
                    json!({"trades:SOL": {"count": 100, "capped": true},
                        "chat:room-1": {"count": 0, "capped": false}}),
                )]
            },
        },
        "channels" => Extra {
            errors: &[E_UNAUTHORIZED, E_RATE_LIMITED, E_TOO_BIG],
            examples: || {
                vec![(
                    "by prefix",
                    vec![("prefix", json!("trades:"))],
                    json!([{"channel": "trades:SOL", "subscribers": 3, "offset": 20}]),
                )]
            },
        },
        "auth" => Extra {
            errors: &[E_UNAUTHORIZED, E_RATE_LIMITED],
            examples: || vec![("admin", vec![("token", json!("change-me-please"))], json!({"sub": "admin"}))],
        },
        "stream_cancel" => Extra {
            errors: &[E_RATE_LIMITED],
            examples: || vec![("running", vec![("stream", json!("17"))], json!(true))],
        },
        "ping" => Extra { errors: &[E_RATE_LIMITED], examples: || vec![("ping", vec![], json!("pong"))] },
        "info" => Extra {
            errors: &[E_RATE_LIMITED],
            examples: || {
                vec![(
                    "info",
                    vec![],
                    json!({"name": "rpchub", "version": env!("CARGO_PKG_VERSION"), "node_id": "node-1",
                        "uptime_s": 42, "connections": 3, "broker": "memory"}),
                )]
            },
        },
        _ => return None,
    };
    Some(e)
}

/// The document.
pub fn document() -> Value {
    let mut g = schema::generator();
    let methods: Vec<Value> = crate::rpc::descriptors().iter().map(|d| method(d, &mut g)).collect();
    let schemas = schema::definitions(&mut g);
    json!({
        "openrpc": OPENRPC_VERSION,
        "info": {
            "title": "rpchub",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "One real-time API for bots, browsers and generated clients: JSON-RPC 2.0 over \
                WebSocket (all methods and subscriptions) and over HTTP (the same methods, no \
                subscriptions). Channels are subscribed to with a snapshot first, then every \
                publication with no gap and no duplicate; a reconnecting client resumes with `since`. \
                Every method takes its params by position or by name. Tokens: an `Authorization: \
                Bearer` or `token` header, `?token=` in the URL, or the `auth` method.",
            "license": {"name": env!("CARGO_PKG_LICENSE")},
        },
        "servers": [
            {
                "name": "WebSocket",
                "url": "ws://{host}/ws/rpc",
                "summary": "every method and subscriptions",
                "variables": {"host": {"default": "127.0.0.1:7410"}},
            },
            {
                "name": "HTTP",
                "url": "http://{host}/rpc",
                "summary": "every method, no subscriptions",
                "variables": {"host": {"default": "127.0.0.1:7410"}},
            },
        ],
        "methods": methods,
        "components": {"schemas": schemas},
    })
}

/// One method's entry.
fn method(d: &MethodDescriptor, g: &mut SchemaGenerator) -> Value {
    let extra = extra(d.name).unwrap_or_else(|| panic!("the OpenRPC document has no entry for {}", d.name));
    let params: Vec<Value> = d
        .params
        .iter()
        .map(|p| {
            let schema = schema::shaped((p.schema)(g));
            let required = !accepts_null(&schema, g);
            json!({"name": p.name, "required": required, "schema": schema})
        })
        .collect();
    let mut errors: Vec<Value> = extra
        .errors
        .iter()
        .map(|e| json!({"code": e.code, "message": e.message, "data": {"code": e.name}}))
        .collect();
    errors.push(json!({"code": INVALID_PARAMS, "message": "Invalid params"}));
    let examples: Vec<Value> = (extra.examples)()
        .into_iter()
        .map(|(name, params, result)| {
            json!({"name": name, "params": example_params(d, &params), "result": {"name": "result", "value": result}})
        })
        .collect();
    let mut m = json!({
        "name": d.name,
        "summary": d.summary(),
        "description": d.description(),
        "paramStructure": "either",
        "params": params,
        "result": {"name": "result", "schema": schema::shaped((d.result)(g))},
        "errors": errors,
        "examples": examples,
    });
    if d.name == "subscribe" || d.name == "subscribe_many" {
        m["x-notifications"] = notifications(g);
    }
    if d.name == "stream_cancel" {
        m["x-notifications"] = stream_notifications();
    }
    m
}

/// `x-notifications` of streamed replies: the envelope of each line.
fn stream_notifications() -> Value {
    json!([{
        "name": "stream",
        "summary": "every line of a streamed reply, as a JSON-RPC notification",
        "description": "A proxied method whose backend streams its answer returns `{\"stream\":ID}`; \
            each line the backend writes follows as it arrives, in order, and the last one has type \
            `end` or `error` (`{\"type\":\"error\",\"data\":{\"code\",\"message\"}}`).",
        "params": [{
            "name": "params",
            "required": true,
            "schema": {
                "type": "object",
                "required": ["stream", "result"],
                "properties": {
                    "stream": {"type": "string", "description": "the id the call answered"},
                    "result": {"type": "object", "description": "one line of the backend's reply"},
                },
            },
        }],
    }])
}

/// The document as a node with `backend` serves it: [`document`] plus the proxied methods of
/// `backend.methods` that are plain names (not patterns), described by their
/// `backend.schemas` file if they have one, as free-form otherwise. A schema file is a JSON
/// object with optional `summary`, `description`, `params` (a JSON Schema of the params
/// object: its properties become the params, by name), `result` (a JSON Schema of the result)
/// and `stream` (a JSON Schema of one line of a streamed reply, for a method that streams).
pub fn document_with(backend: &crate::config::BackendConfig) -> Result<Value, String> {
    let mut doc = document();
    if !backend.is_on() {
        return Ok(doc);
    }
    let is_pattern = |m: &str| m.contains(['*', '?', '[', '{']);
    let own: Vec<&str> = crate::rpc::descriptors().iter().map(|d| d.name).collect();
    let names = backend.methods.iter().filter(|m| !is_pattern(m) && !own.contains(&m.as_str()));
    let mut proxied = Vec::new();
    for name in names {
        let file = match backend.schemas.get(name) {
            None => Value::Null,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("backend.schemas.{name}: {}: {e}", path.display()))?;
                let v: Value = serde_json::from_str(&text)
                    .map_err(|e| format!("backend.schemas.{name}: {}: not JSON: {e}", path.display()))?;
                if !v.is_object() {
                    return Err(format!("backend.schemas.{name}: {}: must be a JSON object", path.display()));
                }
                v
            }
        };
        proxied.push(proxied_method(name, &file).map_err(|e| format!("backend.schemas.{name}: {e}"))?);
    }
    if let Some(methods) = doc["methods"].as_array_mut() {
        methods.extend(proxied);
    }
    Ok(doc)
}

/// A proxied method's entry from its schema file (`Null`: none).
fn proxied_method(name: &str, file: &Value) -> Result<Value, String> {
    let free = file.is_null();
    let summary = file["summary"].as_str().unwrap_or("Served by the application's backend");
    let mut description = file["description"].as_str().unwrap_or("").to_string();
    if free {
        description = "Proxied to the application's backend, which has published no schema: params \
            are passed as the client gives them (by name or by position) and the result is the \
            backend's."
            .into();
    }
    let mut params = Vec::new();
    if let Some(schema) = file.get("params") {
        let props =
            schema["properties"].as_object().ok_or("params must be an object schema with properties")?;
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for (p, s) in props {
            params.push(json!({"name": p, "required": required.contains(&p.as_str()), "schema": s}));
        }
    }
    let streams = file.get("stream").is_some();
    let result = match (streams, file.get("result")) {
        (true, _) => json!({
            "type": "object",
            "required": ["stream"],
            "properties": {"stream": {"type": "string", "description": "the id of the streamed reply"}},
        }),
        (false, Some(r)) => r.clone(),
        (false, None) => json!({}),
    };
    let errors = json!([
        {"code": crate::rpc::error::BACKEND_ERROR, "message": "the backend refused the call", "data": {"code": "the backend's code"}},
        {"code": crate::rpc::error::BACKEND_UNAVAILABLE, "message": "the backend gave no usable answer", "data": {"code": "backend_unavailable"}},
        {"code": RATE_LIMITED, "message": "over the call rate, or backend.max_in_flight calls in flight", "data": {"code": "rate_limited"}},
    ]);
    let mut m = json!({
        "name": name,
        "summary": summary,
        "description": description,
        "paramStructure": if free { "either" } else { "by-name" },
        "params": params,
        "result": {"name": "result", "schema": result},
        "errors": errors,
        "x-proxied": true,
    });
    if let Some(line) = file.get("stream") {
        let mut n = stream_notifications();
        n[0]["params"][0]["schema"]["properties"]["result"] = line.clone();
        m["x-notifications"] = n;
    }
    Ok(m)
}

/// An example's params as the document lists them: in the method's positional order up to the
/// last one given, an optional param left out before it as `null`, so that the list reads the
/// same by name and by position (tools such as `@open-rpc/test-coverage` send an example's values
/// by position when `paramStructure` allows it, and a generated client sends `null` for a
/// skipped optional param).
fn example_params(d: &MethodDescriptor, given: &[(&str, Value)]) -> Vec<Value> {
    let value = |name: &str| given.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
    let len = d.params.iter().rposition(|p| value(p.name).is_some()).map_or(0, |i| i + 1);
    d.params[..len]
        .iter()
        .map(|p| json!({"name": p.name, "value": value(p.name).unwrap_or(Value::Null)}))
        .collect()
}

/// True when `schema` (or the definition it refers to) accepts `null`: an optional param.
pub(super) fn accepts_null(schema: &Value, g: &SchemaGenerator) -> bool {
    if schema["type"] == "null" {
        return true;
    }
    if let Some(r) = schema["$ref"].as_str().and_then(|r| r.rsplit('/').next()) {
        return g.definitions().get(r).is_some_and(|d| {
            let mut d = d.clone();
            schema::shape(&mut d);
            accepts_null(&d, g)
        });
    }
    schema["anyOf"].as_array().is_some_and(|alts| alts.iter().any(|a| accepts_null(a, g)))
}

/// `x-notifications`: the envelope of a subscription's events and each event's schema.
fn notifications(g: &mut SchemaGenerator) -> Value {
    let event = schema::shaped(g.subschema_for::<api::SubscriptionEvent>());
    json!([{
        "name": "subscription",
        "summary": "every event of a subscription, as a JSON-RPC notification",
        "description": "Sent after the answer to `subscribe`: first a `snapshot`, then a `publication` \
            per live publication in offset order with no gap and no duplicate, and `closed` last when \
            the server ends the subscription. Ignore event types you do not know.",
        "params": [{
            "name": "params",
            "required": true,
            "schema": {
                "type": "object",
                "required": ["subscription", "result"],
                "properties": {
                    "subscription": {"type": "string", "description": "the id `subscribe` answered"},
                    "result": event,
                },
            },
        }],
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_its_errors_and_examples_and_they_fit_its_types() {
        for d in crate::rpc::descriptors() {
            let e = extra(d.name).unwrap_or_else(|| panic!("{} has no entry", d.name));
            let examples = (e.examples)();
            assert!(!examples.is_empty(), "{} has no example", d.name);
            for (name, params, result) in examples {
                for (p, v) in &params {
                    let param = d
                        .params
                        .iter()
                        .find(|x| x.name == *p)
                        .unwrap_or_else(|| panic!("{}: no param {p}", d.name));
                    (param.check)(v).unwrap_or_else(|err| panic!("{} {name}: {p}: {err}", d.name));
                }
                (d.check_result)(&result).unwrap_or_else(|err| panic!("{} {name}: result: {err}", d.name));
            }
        }
        assert!(extra("nope").is_none());
    }

    #[test]
    fn example_params_are_positional_with_null_for_a_skipped_optional_one() {
        let doc = document();
        for m in doc["methods"].as_array().unwrap() {
            let declared = m["params"].as_array().unwrap();
            for ex in m["examples"].as_array().unwrap() {
                let given = ex["params"].as_array().unwrap();
                assert!(given.len() <= declared.len(), "{}", m["name"]);
                for (g, p) in given.iter().zip(declared) {
                    assert_eq!(g["name"], p["name"], "{} {}: in positional order", m["name"], ex["name"]);
                    assert!(
                        !g["value"].is_null() || p["required"] == false,
                        "{}: null only if optional",
                        m["name"]
                    );
                }
                assert!(
                    given.last().is_none_or(|g| !g["value"].is_null()),
                    "{}: no trailing null",
                    m["name"]
                );
            }
        }
        let subscribe = &doc["methods"][0]["examples"][0]["params"];
        assert_eq!(
            subscribe,
            &json!([{"name": "channel", "value": "trades:SOL"}, {"name": "since", "value": null}, {"name": "limit", "value": 2}])
        );
    }

    #[test]
    fn params_are_required_exactly_when_their_type_has_no_null() {
        let doc = document();
        let subscribe = &doc["methods"][0];
        assert_eq!(subscribe["name"], "subscribe");
        let required: Vec<bool> = subscribe["params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["required"].as_bool().unwrap())
            .collect();
        assert_eq!(
            required,
            [true, false, false, false, false],
            "channel, since?, limit?, conflate_ms?, checksum?"
        );
        assert!(
            subscribe["x-notifications"][0]["params"][0]["schema"]["properties"]["result"]["$ref"]
                .is_string()
        );
        let text = doc.to_string();
        assert!(
            !text.contains("uint") && !text.contains("\"type\":[\""),
            "no non-standard formats, no type arrays"
        );
    }
}
