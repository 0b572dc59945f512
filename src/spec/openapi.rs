//! The OpenAPI 3.1 document of every HTTP route the server answers, generated from the route
//! table ([`crate::routes`]: one path item per [`Route`], with an operation per method it
//! allows; the match below has an arm for every route, so a new route cannot be left out) and
//! from the same Rust types as the methods: the JSON-RPC bodies of `POST /rpc` are built from the
//! method descriptors, the bodies of `POST /api/publish` from [`crate::rpc::server_api`], and
//! every schema comes from the one generator of [`super::schema`], so the components are shared
//! with the OpenRPC document and shaped the same way.
//!
//! What no type says is written here: statuses, headers, and the error body of the HTTP routes
//! (`{"success":false,"error":{"message"}}`, docs/protocol.md 2.6).

use super::{openrpc, schema};
use crate::constants::MAX_PUBLISH_BATCH;
use crate::routes::Route;
use crate::rpc::describe::MethodDescriptor;
use crate::rpc::server_api::{PublishRequest, PublishResult};
use schemars::SchemaGenerator;
use serde_json::{Map, Value, json};

/// The OpenAPI version the document follows.
pub const OPENAPI_VERSION: &str = "3.1.0";

/// A reference to a component schema.
fn r(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// A reference to a component response.
fn resp(name: &str) -> Value {
    json!({"$ref": format!("#/components/responses/{name}")})
}

/// A JSON body of `schema`.
fn json_content(schema: Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

/// The document.
pub fn document() -> Value {
    let mut g = schema::generator();
    let mut paths = Map::new();
    for &route in Route::ALL {
        paths.insert(route.pattern().to_string(), Value::Object(path_item(route, &mut g)));
    }
    let own = own_schemas(&mut g);
    let mut schemas = schema::definitions(&mut g);
    for (name, s) in own {
        let clash = schemas.insert(name.into(), s);
        assert!(clash.is_none(), "{name} is the name of a type's schema too");
    }
    let mut sorted: Vec<(String, Value)> = schemas.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    json!({
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "rpchub HTTP API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every HTTP route of rpchub: the WebSocket upgrade of JSON-RPC 2.0 (`GET /ws/rpc`; \
                its messages are described by the OpenRPC document, `GET /openrpc.json`), JSON-RPC 2.0 over \
                HTTP (`POST /rpc`), the server API for backends (`POST /api/publish`), the instances' event \
                streams (`GET /ws/{instance}`, configured by `POST /api/events/websocket/{instance}`), liveness, metrics, \
                the generated documents and the browser console. Errors before a route's own answer are \
                `{\"success\":false,\"error\":{\"message\":...}}` with `Content-Type: application/json`; a \
                method a route does not take is 405 with `Allow`; an unknown path is 404. The wire contract \
                is docs/protocol.md.",
            "license": {"name": env!("CARGO_PKG_LICENSE"), "identifier": env!("CARGO_PKG_LICENSE")},
        },
        "servers": [{
            "url": "http://{host}",
            "description": "an rpchub node",
            "variables": {"host": {"default": "127.0.0.1:7410"}},
        }],
        "tags": [
            {"name": "json-rpc", "description": "JSON-RPC 2.0 over WebSocket and HTTP"},
            {"name": "compat", "description": "The dialects of clients written for other servers (`/ws`)"},
            {"name": "server-api", "description": "for backends that publish"},
            {"name": "instances", "description": "per-instance event streams (`/ws/{instance}`) and their configuration"},
            {"name": "node", "description": "liveness, metrics, documents, console"},
        ],
        "paths": paths,
        "components": {
            "schemas": sorted.into_iter().collect::<Map<String, Value>>(),
            "responses": responses(),
            "headers": {
                "Retry-After": {
                    "description": "seconds to wait before trying again",
                    "schema": {"type": "integer", "minimum": 0},
                },
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`Authorization: Bearer T`: the admin token, a static key from the config \
                        file, or a JWT (HS256/RS256/ES256)",
                },
                "tokenHeader": {"type": "apiKey", "in": "header", "name": "token", "description": "`token: T`"},
                "tokenQuery": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "token",
                    "description": "`?token=T`, for clients that cannot set headers (browsers' WebSocket, \
                        generated clients)",
                },
            },
        },
    })
}

/// Token schemes, any one of them.
fn token_required() -> Value {
    json!([{"bearer": []}, {"tokenHeader": []}, {"tokenQuery": []}])
}

/// A token is optional: without one the caller is anonymous and the namespaces decide.
fn token_optional() -> Value {
    json!([{}, {"bearer": []}, {"tokenHeader": []}, {"tokenQuery": []}])
}

/// The path item of `route`: an operation for each method it allows.
fn path_item(route: Route, g: &mut SchemaGenerator) -> Map<String, Value> {
    let mut item = Map::new();
    let mut op = |method: &str, v: Value| {
        item.insert(method.to_ascii_lowercase(), v);
    };
    match route {
        Route::WsRpc => op("GET", ws_rpc()),
        Route::WsCompat => op("GET", ws_compat()),
        Route::HttpRpc => {
            op("POST", http_rpc());
            op("OPTIONS", preflight());
        }
        Route::Health => op(
            "GET",
            json!({
                "operationId": "health",
                "tags": ["node"],
                "summary": "Liveness",
                "description": "`{\"status\":\"ok\"}` once the node serves; 503 \
                    `{\"status\":\"degraded\",\"broker_state\":\"down\"}` while its shared broker \
                    cannot be reached (publish, subscribe and history fail with -32008 meanwhile).",
                "responses": {
                    "200": {"description": "serving", "content": json_content(r("Health"))},
                    "503": {"description": "degraded: the shared broker cannot be reached", "content": json_content(r("Health"))},
                },
            }),
        ),
        Route::Metrics => op(
            "GET",
            json!({
                "operationId": "metrics",
                "tags": ["node"],
                "summary": "Prometheus metrics",
                "description": "The metrics in the OpenMetrics text format.",
                "responses": {"200": {
                    "description": "the exposition",
                    "content": {"application/openmetrics-text": {"schema": {"type": "string"}}},
                }},
            }),
        ),
        Route::OpenRpc => op(
            "GET",
            document_op(
                "openrpc",
                "The OpenRPC document",
                "The JSON-RPC methods, as `rpc.discover` answers them (rpc-spec/openrpc.json).",
                "openrpc",
            ),
        ),
        Route::OpenApi => op(
            "GET",
            document_op("openapi", "This document", "The HTTP routes (openapi/openapi.json).", "openapi"),
        ),
        Route::Console => op(
            "GET",
            json!({
                "operationId": "console",
                "tags": ["node"],
                "summary": "The browser console",
                "description": "A self-contained HTML page: connect (with an optional token), subscribe, \
                    publish and send any JSON-RPC call while watching the notifications arrive.",
                "parameters": [{
                    "name": "channel",
                    "in": "query",
                    "required": false,
                    "description": "connect and subscribe to this channel at once",
                    "schema": {"type": "string"},
                }],
                "responses": {"200": {
                    "description": "the page",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }},
            }),
        ),
        Route::ApiPublish => op("POST", api_publish(g)),
        Route::WsInstance => op("GET", ws_instance()),
        Route::ApiInstance => op("POST", api_instance()),
    }
    item
}

/// `GET` of a generated document.
fn document_op(id: &str, summary: &str, description: &str, version_key: &str) -> Value {
    json!({
        "operationId": id,
        "tags": ["node"],
        "summary": summary,
        "description": format!("{description} Served with `Access-Control-Allow-Origin: *`."),
        "responses": {"200": {
            "description": "the document",
            "content": json_content(json!({"type": "object", "required": [version_key]})),
        }},
    })
}

/// `GET /ws/rpc`.
fn ws_rpc() -> Value {
    connect_proxied(ws_upgrade(
        "websocket",
        "json-rpc",
        "JSON-RPC 2.0 over WebSocket",
        "An RFC 6455 upgrade. Once upgraded, every method and subscriptions: the messages are \
            described by the OpenRPC document (`GET /openrpc.json`).",
    ))
}

/// `GET /ws`.
fn ws_compat() -> Value {
    connect_proxied(ws_upgrade(
        "websocketCompat",
        "compat",
        "The dialects of clients written for other servers, over WebSocket",
        "An RFC 6455 upgrade. Once upgraded, the first message fixes the dialect: `{type,data}` \
            messages (a first message with `type`) or the Hyperliquid style (a first message with \
            `method` and no `jsonrpc`), on the same channels as `/ws/rpc` (docs/protocol.md 8.9).",
    ))
}

/// An upgrade route whose token check may ask the application's backend who connects
/// (`backend.connect_proxy`): its 401 and 503.
fn connect_proxied(mut op: Value) -> Value {
    let description = op["description"].as_str().expect("an operation's description; qed").to_string();
    op["description"] = json!(format!(
        "{description} With `backend.connect_proxy`, when rpchub does not accept the token (none, or \
            one it does not know), the application's backend says who connects: its refusal is 401 with \
            its message, no usable answer from it 503."
    ));
    op["responses"]["401"] = json!({
        "description": "a token is present but invalid, expired or not yet valid, or a malformed \
            `Authorization` header; with `backend.connect_proxy`, the backend refused the connection \
            (its message)",
        "content": json_content(r("ErrorBody")),
    });
    op["responses"]["503"] = json!({
        "description": "with `backend.connect_proxy`: the application's backend gave no usable answer \
            within `backend.timeout`",
        "headers": {"Retry-After": {"$ref": "#/components/headers/Retry-After"}},
        "content": json_content(r("ErrorBody")),
    });
    op
}

/// The `instance` path parameter.
fn instance_param() -> Value {
    json!({
        "name": "instance",
        "in": "path",
        "required": true,
        "description": "the instance's name: 1 to 64 of `A-Z a-z 0-9 _ -`, not `rpc`",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
    })
}

/// `GET /ws/{instance}`.
fn ws_instance() -> Value {
    let mut op = ws_upgrade(
        "websocketInstance",
        "instances",
        "An instance's event stream, server-push only",
        "An RFC 6455 upgrade. Once upgraded, every publication to channel `instance:{instance}` whose \
            `event` the instance's `events` filter admits arrives as \
            `{\"event\":E,\"data\":D,\"instanceData\":{\"baseUrl\":B,\"instance\":NAME,\"epoch\",\"offset\"}}` \
            (B is `http://` and the request's `Host`); `?since=EPOCH:OFFSET` resumes with exactly the \
            publications missed, or begins with a `resync` frame when they are gone. Client messages are \
            ignored (docs/protocol.md 8.10). The token must be the instance's own or the admin token.",
    );
    op["security"] = token_required();
    let params = op["parameters"].as_array_mut().expect("the upgrade's parameters; qed");
    params.insert(0, instance_param());
    params.push(json!({
        "name": "since",
        "in": "query",
        "required": false,
        "description": "`EPOCH:OFFSET` of the last frame received (its `instanceData`): resume after it",
        "schema": {"type": "string"},
    }));
    let responses = &mut op["responses"];
    responses["400"]["description"] = json!(
        "no upgrade (a plain GET), an invalid handshake, a malformed `since`, or the instance is not \
            enabled"
    );
    responses["401"] = json!({
        "description": "no token, or one that is neither the instance's nor the admin token",
        "content": json_content(r("ErrorBody")),
    });
    responses["404"] = json!({
        "description": "no instance of that name (`unknown instance`)",
        "content": json_content(r("ErrorBody")),
    });
    op
}

/// `POST /api/events/websocket/{instance}`.
fn api_instance() -> Value {
    let events = json!({"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 255}, "maxItems": 1024});
    json!({
        "operationId": "configureInstance",
        "tags": ["instances"],
        "summary": "Create or change an instance",
        "description": "With the admin token. Each field is optional: a missing one (or `null`) keeps the \
            instance's value, or its default for a new instance (`enabled` true, `events` empty: every event, \
            `mediaBase64` false), which needs `token`. The instance is saved in `instances_file` (written \
            atomically) and survives restarts; it is in use at once (a disabled instance's connected \
            clients receive nothing more, new upgrades are 400). The answer never holds the token.",
        "security": token_required(),
        "parameters": [instance_param()],
        "requestBody": {
            "required": true,
            "content": json_content(json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "enabled": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
                    "events": {"anyOf": [events.clone(), {"type": "null"}]},
                    "mediaBase64": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
                    "token": {"anyOf": [{"type": "string", "minLength": 1, "maxLength": 1024}, {"type": "null"}],
                        "description": "the token the instance's clients connect with"},
                },
            })),
        },
        "responses": {
            "200": {
                "description": "the instance as it now is, without its token",
                "content": json_content(json!({
                    "type": "object",
                    "required": ["instance", "enabled", "events", "mediaBase64"],
                    "properties": {
                        "instance": {"type": "string"},
                        "enabled": {"type": "boolean"},
                        "events": events,
                        "mediaBase64": {"type": "boolean"},
                    },
                })),
            },
            "400": {
                "description": "a bad instance name, a body that is not such an object, or a new instance \
                    without `token`",
                "content": json_content(r("ErrorBody")),
            },
            "401": resp("Unauthorized"),
            "403": {"description": "a valid token that is not the admin's", "content": json_content(r("ErrorBody"))},
            "408": resp("RequestTimeout"),
            "413": {
                "description": "the body is over `limits.max_message_bytes` (at least 16 KiB); the connection is \
                    closed",
                "content": json_content(r("ErrorBody")),
            },
            "415": resp("UnsupportedMediaType"),
            "500": {"description": "the instances file could not be written; nothing changed",
                "content": json_content(r("ErrorBody"))},
        },
    })
}

/// A WebSocket upgrade route: its checks and answers are the same whatever it speaks.
fn ws_upgrade(id: &str, tag: &str, summary: &str, what: &str) -> Value {
    let header = |name: &str, required: bool, description: &str, schema: Value| json!({"name": name, "in": "header", "required": required, "description": description, "schema": schema});
    json!({
        "operationId": id,
        "tags": [tag],
        "summary": summary,
        "description": format!("{what} Checked before the upgrade, in order: \
            the handshake (400), the `Origin` (403: `allowed_origins`, or the same origin when empty; no \
            `Origin` is always accepted), the upgrade rate of the client's address and the node's capacity \
            (429), the token (401)."),
        "security": token_optional(),
        "parameters": [
            header("Connection", true, "`Upgrade`", json!({"type": "string"})),
            header("Upgrade", true, "`websocket`", json!({"type": "string", "enum": ["websocket"]})),
            header("Sec-WebSocket-Key", true, "base64 of 16 random bytes", json!({"type": "string"})),
            header("Sec-WebSocket-Version", true, "`13`", json!({"type": "string", "enum": ["13"]})),
            header("Origin", false, "the page's origin, sent by browsers", json!({"type": "string"})),
        ],
        "responses": {
            "101": {
                "description": "upgraded: the connection speaks WebSocket from here on",
                "headers": {
                    "Connection": {"schema": {"type": "string", "enum": ["Upgrade"]}},
                    "Upgrade": {"schema": {"type": "string", "enum": ["websocket"]}},
                    "Sec-WebSocket-Accept": {
                        "description": "base64 of the SHA-1 of the key and the RFC 6455 GUID",
                        "schema": {"type": "string"},
                    },
                },
            },
            "400": {
                "description": "no upgrade (a plain GET), or an invalid handshake; a bad version is answered \
                    with `Sec-WebSocket-Version: 13`",
                "headers": {"Sec-WebSocket-Version": {
                    "description": "the version the server speaks, on a version mismatch",
                    "schema": {"type": "string", "enum": ["13"]},
                }},
                "content": json_content(r("ErrorBody")),
            },
            "401": resp("Unauthorized"),
            "403": {"description": "the `Origin` is not allowed (empty body; logged)"},
            "404": {
                "description": "an upgrade to a path that has no WebSocket endpoint (this route's is \
                    `/ws/rpc`)",
                "content": json_content(r("ErrorBody")),
            },
            "429": resp("TooManyRequests"),
        },
    })
}

/// `POST /rpc`.
fn http_rpc() -> Value {
    let body = json!({"anyOf": [r("JsonRpcRequest"), r("JsonRpcBatch")]});
    json!({
        "operationId": "jsonrpc",
        "tags": ["json-rpc"],
        "summary": "JSON-RPC 2.0 over HTTP",
        "description": "The same methods as over WebSocket, without subscriptions (`subscribe` is -32005): \
            one request or a batch (an array). The answer is 200 with the JSON-RPC answer, errors \
            included (an invalid request is a JSON-RPC error, not an HTTP one), or 204 when the body held \
            only notifications. Calls are charged to the caller's budget (per token, or per address \
            without one): -32003 over the rate. Pages of other origins may call only when `cors_origins` \
            lists them (403 otherwise, nothing executed).",
        "security": token_optional(),
        "requestBody": {
            "required": true,
            "description": "A request or a batch, at most `limits.max_message_bytes` (4096) bytes.",
            "content": {
                "application/json": {"schema": body.clone()},
                "application/json-rpc": {"schema": body},
            },
        },
        "responses": {
            "200": {
                "description": "the JSON-RPC answer: one response, or an array of them for a batch",
                "content": json_content(json!({"anyOf": [r("JsonRpcResponse"), r("JsonRpcBatchResponse")]})),
            },
            "204": {"description": "the body held only notifications"},
            "400": resp("Unreadable"),
            "401": resp("Unauthorized"),
            "403": {
                "description": "a page of an origin `cors_origins` does not allow; nothing is executed",
                "content": json_content(r("ErrorBody")),
            },
            "408": resp("RequestTimeout"),
            "413": {
                "description": "over `limits.max_message_bytes`: JSON-RPC error -32007 with `id` null; the \
                    connection is closed",
                "content": json_content(r("JsonRpcResponse")),
            },
            "415": resp("UnsupportedMediaType"),
            "429": {
                "description": "far over the call rate for too long: JSON-RPC error -32003 with `id` null; the \
                    connection is closed",
                "headers": {"Retry-After": {"$ref": "#/components/headers/Retry-After"}},
                "content": json_content(r("JsonRpcResponse")),
            },
        },
    })
}

/// `OPTIONS /rpc`.
fn preflight() -> Value {
    let h = |description: &str| json!({"description": description, "schema": {"type": "string"}});
    json!({
        "operationId": "jsonrpcPreflight",
        "tags": ["json-rpc"],
        "summary": "CORS preflight of POST /rpc",
        "description": "For an origin `cors_origins` allows (or the server's own), 204 with the headers that \
            let the page's POST of JSON through; for any other origin 403.",
        "parameters": [
            {"name": "Origin", "in": "header", "required": false, "schema": {"type": "string"}},
            {"name": "Access-Control-Request-Method", "in": "header", "required": false,
                "schema": {"type": "string"}},
            {"name": "Access-Control-Request-Headers", "in": "header", "required": false,
                "schema": {"type": "string"}},
        ],
        "responses": {
            "204": {
                "description": "allowed; the `Access-Control-*` headers only for another origin that is allowed",
                "headers": {
                    "Allow": h("`POST, OPTIONS`"),
                    "Access-Control-Allow-Origin": h("the origin, or `*`"),
                    "Access-Control-Allow-Methods": h("`POST`"),
                    "Access-Control-Allow-Headers": h("`content-type, authorization, token`"),
                    "Access-Control-Max-Age": {"description": "seconds", "schema": {"type": "integer"}},
                },
            },
            "403": {
                "description": "an origin `cors_origins` does not allow",
                "content": json_content(r("ErrorBody")),
            },
        },
    })
}

/// `POST /api/publish`.
fn api_publish(g: &mut SchemaGenerator) -> Value {
    let one = schema::shaped(g.subschema_for::<PublishRequest>());
    let result = schema::shaped(g.subschema_for::<PublishResult>());
    let position = schema::shaped(g.subschema_for::<crate::broker::StreamPosition>());
    let batch = json!({"type": "array", "items": one, "minItems": 1, "maxItems": MAX_PUBLISH_BATCH});
    json!({
        "operationId": "publish",
        "tags": ["server-api"],
        "summary": "Publish, for backends",
        "description": format!("One publication, or a batch of 1 to {MAX_PUBLISH_BATCH} (to one or several channels) \
            published in order, under the rules of the `publish` method: the admin token, or a token whose \
            rights admit publishing to the channel. Each publication is charged one call to the token's \
            budget (`limits.calls_per_second`, or the key's `rate`; the admin token is unlimited). A single \
            publication's failure is its status (400, 403, 429, 503); in a batch each publication has its \
            own result, the position or `{{\"error\":{{\"code\",\"message\"}}}}`, and one that fails fails \
            only itself: the batch is 200. The body is at most `limits.max_publish_body_bytes` (4 MiB) and \
            must arrive within `limits.request_timeout` plus a second per `limits.request_min_rate` bytes. \
            Not for browsers: no CORS."),
        "security": token_required(),
        "requestBody": {
            "required": true,
            "content": json_content(json!({"anyOf": [one, batch]})),
        },
        "responses": {
            "200": {
                "description": "published: the position of a single publication, or the results of a batch in \
                    order",
                "content": json_content(json!({"anyOf": [position, {"type": "array", "items": result}]})),
            },
            "400": {
                "description": "the body is not JSON, not a publication or an array of 1 to 1,000 of them; a \
                    single publication's channel name, `event` or `idempotency_key` is invalid",
                "content": json_content(r("ErrorBody")),
            },
            "401": resp("Unauthorized"),
            "403": {
                "description": "the token may not publish to the channel (single publication)",
                "content": json_content(r("ErrorBody")),
            },
            "408": resp("RequestTimeout"),
            "413": {
                "description": "the body is over `limits.max_publish_body_bytes`; the connection is closed",
                "content": json_content(r("ErrorBody")),
            },
            "415": resp("UnsupportedMediaType"),
            "429": resp("TooManyRequests"),
            "503": {
                "description": "the node holds `limits.max_channels` channels and this one is new, or the \
                    shared broker cannot be reached (single publication; a batch item says \
                    `broker_unavailable`)",
                "content": json_content(r("ErrorBody")),
            },
        },
    })
}

/// The responses several operations share.
fn responses() -> Value {
    json!({
        "Unauthorized": {
            "description": "a token is present but invalid, expired or not yet valid, or a malformed \
                `Authorization` header; on `POST /api/publish` also no token at all",
            "content": json_content(r("ErrorBody")),
        },
        "TooManyRequests": {
            "description": "over a rate: upgrades of the client's address, the node's connections, or a \
                token's publications",
            "headers": {"Retry-After": {"$ref": "#/components/headers/Retry-After"}},
            "content": json_content(r("ErrorBody")),
        },
        "Unreadable": {
            "description": "the body could not be read; the connection is closed",
            "content": json_content(r("ErrorBody")),
        },
        "RequestTimeout": {
            "description": "the body did not arrive within `limits.request_timeout` plus a second per \
                `limits.request_min_rate` bytes; the connection is closed",
            "content": json_content(r("ErrorBody")),
        },
        "UnsupportedMediaType": {
            "description": "the body is not sent as JSON (`Content-Type: application/json`); nothing is read \
                or executed",
            "headers": {"Accept-Post": {"description": "the media types taken", "schema": {"type": "string"}}},
            "content": json_content(r("ErrorBody")),
        },
    })
}

/// The schemas no Rust type has: the HTTP error body, `/health`'s answer, and the JSON-RPC 2.0
/// envelopes, whose params and results are the methods' own types.
fn own_schemas(g: &mut SchemaGenerator) -> Vec<(&'static str, Value)> {
    let descriptors = crate::rpc::descriptors();
    let mut requests: Vec<Value> = descriptors.iter().map(|d| request_of(d, g)).collect();
    requests.push(json!({
        "type": "object",
        "description": "`rpc.discover`: the OpenRPC document",
        "required": ["jsonrpc", "method"],
        "properties": {
            "jsonrpc": {"const": "2.0"},
            "method": {"const": "rpc.discover"},
            "params": {"type": "array", "maxItems": 0},
            "id": r("JsonRpcId"),
        },
    }));
    let mut results: Vec<Value> = descriptors.iter().map(|d| schema::shaped((d.result)(g))).collect();
    results.push(json!({"type": "object", "description": "the OpenRPC document (`rpc.discover`)"}));
    vec![
        (
            "ErrorBody",
            json!({
                "type": "object",
                "description": "An HTTP error: `message` says what to change.",
                "required": ["success", "error"],
                "properties": {
                    "success": {"const": false},
                    "error": {
                        "type": "object",
                        "required": ["message"],
                        "properties": {"message": {"type": "string"}},
                    },
                },
            }),
        ),
        (
            "Health",
            json!({
                "type": "object",
                "description": "`ok`, or `degraded` with what is down.",
                "required": ["status"],
                "properties": {
                    "status": {"enum": ["ok", "degraded"]},
                    "broker_state": {"const": "down", "description": "present while the shared broker cannot be reached"},
                },
            }),
        ),
        (
            "JsonRpcId",
            json!({
                "description": "The request's id, echoed by its answer; without one the request is a \
                    notification and is not answered.",
                "anyOf": [{"type": "string"}, {"type": "integer", "minimum": 0}, {"type": "null"}],
            }),
        ),
        (
            "JsonRpcRequest",
            json!({
                "description": "A JSON-RPC 2.0 request of one of the methods, params by name or by position \
                    (the methods are documented in the OpenRPC document, `GET /openrpc.json`).",
                "anyOf": requests,
            }),
        ),
        (
            "JsonRpcBatch",
            json!({"type": "array", "description": "A batch, answered in order with an array of the answers \
                to its requests (none for notifications). An empty batch is answered with a single -32600 \
                error, as JSON-RPC 2.0 says.", "items": r("JsonRpcRequest")}),
        ),
        (
            "JsonRpcError",
            json!({
                "type": "object",
                "description": "A JSON-RPC 2.0 error: the standard codes, and rpchub's own with `data.code` \
                    a stable name (-32001 `unauthorized`, -32002 `subscription_failed`, -32003 \
                    `rate_limited`, -32004 `not_found`, -32005 `invalid_request`, -32007 \
                    `message_too_big`).",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "integer"},
                    "message": {"type": "string"},
                    "data": {},
                },
            }),
        ),
        (
            "JsonRpcResponse",
            json!({
                "type": "object",
                "description": "The answer to one request: its `result` (one of the methods' result types) or \
                    an `error`.",
                "required": ["jsonrpc", "id"],
                "properties": {
                    "jsonrpc": {"const": "2.0"},
                    "id": r("JsonRpcId"),
                    "result": {"anyOf": results},
                    "error": r("JsonRpcError"),
                },
                "oneOf": [{"required": ["result"]}, {"required": ["error"]}],
            }),
        ),
        (
            "JsonRpcBatchResponse",
            json!({"type": "array", "description": "The answers to a batch's requests, in order",
                "items": r("JsonRpcResponse")}),
        ),
    ]
}

/// The request schema of method `d`: params by name (an object) or by position (an array).
fn request_of(d: &MethodDescriptor, g: &mut SchemaGenerator) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    let mut positional = Vec::new();
    for p in d.params {
        let s = schema::shaped((p.schema)(g));
        if !openrpc::accepts_null(&s, g) {
            required.push(p.name);
        }
        properties.insert(p.name.into(), s.clone());
        positional.push(s);
    }
    let by_name = json!({"type": "object", "properties": properties, "required": required});
    let by_position = json!({
        "type": "array",
        "prefixItems": positional,
        "minItems": required.len(),
        "maxItems": d.params.len(),
    });
    let params = if d.params.is_empty() {
        json!({"anyOf": [{"type": "array", "maxItems": 0}, {"type": "object", "maxProperties": 0}]})
    } else {
        json!({"anyOf": [by_name, by_position]})
    };
    let mut top_required = vec!["jsonrpc", "method"];
    if !required.is_empty() {
        top_required.push("params");
    }
    json!({
        "type": "object",
        "description": format!("`{}`: {}", d.name, d.summary()),
        "required": top_required,
        "properties": {
            "jsonrpc": {"const": "2.0"},
            "method": {"const": d.name},
            "params": params,
            "id": r("JsonRpcId"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::Routes;

    /// The drift test: every route of the table is a path of the document with exactly the
    /// methods it allows, and every documented path is a route the server serves, as itself.
    #[test]
    fn every_route_is_documented_with_its_methods_and_nothing_else_is() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        let routes = Routes::new();
        for &route in Route::ALL {
            let item = paths.get(route.pattern()).unwrap_or_else(|| panic!("{route:?} is not documented"));
            let mut documented: Vec<String> = item.as_object().unwrap().keys().cloned().collect();
            let mut allowed: Vec<String> =
                route.methods().iter().map(|m| m.as_str().to_ascii_lowercase()).collect();
            documented.sort();
            allowed.sort();
            assert_eq!(documented, allowed, "{route:?}: the methods documented are the methods allowed");
        }
        for path in paths.keys() {
            let m = routes.find(path).unwrap_or_else(|| panic!("{path} is documented and not served"));
            assert_eq!(m.route.pattern(), path, "{path} is another route's");
        }
        assert_eq!(paths.len(), Route::ALL.len());
    }

    #[test]
    fn references_resolve_and_the_schemas_are_shaped() {
        let doc = document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("\"$ref\":\"").skip(1) {
            let target = &part[..part.find('"').unwrap()];
            let (kind, name) = target.trim_start_matches("#/components/").split_once('/').unwrap();
            assert!(doc["components"][kind].get(name).is_some(), "{target} does not resolve");
        }
        for shared in ["StreamPosition", "PublishRequest", "JsonRpcRequest", "NodeInfo", "ErrorBody"] {
            assert!(schemas.contains_key(shared), "{shared}");
        }
        assert!(!text.contains("uint") && !text.contains("\"type\":[\""), "shaped as the OpenRPC document");
    }
}
