//! JSON-RPC 2.0 conformance: the specification's examples (section 7) with rpchub's methods, over
//! WebSocket and over HTTP.

use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;

const INVALID_REQUEST: i64 = -32600;

/// Sends raw text and returns the one answer (or `None` if nothing comes within 300 ms).
async fn exchange(ws: &mut Ws, text: &str) -> Option<Value> {
    send(ws, text).await;
    tokio::time::timeout(Duration::from_millis(300), recv(ws)).await.ok()
}

fn error_code(v: &Value) -> i64 {
    v["error"]["code"].as_i64().unwrap_or_else(|| panic!("not an error: {v}"))
}

#[tokio::test]
async fn specification_examples_over_websocket() {
    let addr = shared();
    let mut ws = ws(addr, None).await;

    // Positional and named parameters.
    let r = exchange(&mut ws, r#"{"jsonrpc":"2.0","method":"ping","params":[],"id":1}"#).await.unwrap();
    assert_eq!(r, json!({"jsonrpc":"2.0","id":1,"result":"pong"}));
    let r = exchange(&mut ws, r#"{"jsonrpc":"2.0","method":"ping","id":"abc"}"#).await.unwrap();
    assert_eq!(r, json!({"jsonrpc":"2.0","id":"abc","result":"pong"}), "string ids are echoed");
    let r = exchange(&mut ws, r#"{"jsonrpc":"2.0","method":"ping","id":null}"#).await.unwrap();
    assert_eq!(r["id"], Value::Null, "a null id is still a request");

    // A notification is executed but not answered.
    assert_eq!(exchange(&mut ws, r#"{"jsonrpc":"2.0","method":"ping"}"#).await, None);
    assert_eq!(exchange(&mut ws, r#"{"jsonrpc":"2.0","method":"nope"}"#).await, None);

    // Non-existent method.
    let r = exchange(&mut ws, r#"{"jsonrpc":"2.0","method":"foobar","id":"1"}"#).await.unwrap();
    assert_eq!(r, json!({"jsonrpc":"2.0","id":"1","error":{"code":-32601,"message":"Method not found"}}));

    // Invalid JSON.
    let r = exchange(&mut ws, r#"{"jsonrpc":"2.0","method":"foobar,"params":"bar","baz]"#).await.unwrap();
    assert_eq!(r, json!({"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}));

    // Invalid request object.
    let r = exchange(&mut ws, r#"{"jsonrpc":"2.0","method":1,"params":"bar"}"#).await.unwrap();
    assert_eq!(
        (error_code(&r), r["id"].clone(), r["error"]["message"].clone()),
        (INVALID_REQUEST, Value::Null, json!("Invalid Request"))
    );
    for bad in [
        r#"{"jsonrpc":"1.0","method":"ping","id":2}"#,
        r#"{"method":"ping","id":2}"#,
        r#"{"jsonrpc":"2.0","method":"ping","params":"bar","id":2}"#,
        r#"{"jsonrpc":"2.0","method":"ping","params":5,"id":2}"#,
        r#"{"jsonrpc":"2.0","id":2}"#,
        r#"1"#,
        r#""text""#,
    ] {
        let r = exchange(&mut ws, bad).await.unwrap_or_else(|| panic!("no answer to {bad}"));
        assert_eq!(error_code(&r), INVALID_REQUEST, "{bad}: {r}");
    }

    // Batch with invalid JSON.
    let r = exchange(&mut ws, r#"[{"jsonrpc":"2.0","method":"ping","id":"1"},{"jsonrpc":"2.0","method"]"#)
        .await
        .unwrap();
    assert_eq!(r, json!({"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}));

    // Empty array.
    let r = exchange(&mut ws, "[]").await.unwrap();
    assert_eq!((error_code(&r), r["id"].clone()), (INVALID_REQUEST, Value::Null));
    assert!(r.is_object(), "an empty batch gets a single error, not an array");

    // Invalid batch, but not empty; and an invalid batch.
    let r = exchange(&mut ws, "[1]").await.unwrap();
    assert_eq!(r.as_array().unwrap().len(), 1);
    assert_eq!((error_code(&r[0]), r[0]["id"].clone()), (INVALID_REQUEST, Value::Null));
    let r = exchange(&mut ws, "[1,2,3]").await.unwrap();
    assert_eq!(r.as_array().unwrap().iter().map(error_code).collect::<Vec<_>>(), vec![INVALID_REQUEST; 3]);

    // Mixed batch: answers for requests only, in order; notifications run unanswered.
    let r = exchange(
        &mut ws,
        r#"[
            {"jsonrpc":"2.0","method":"ping","params":[],"id":"1"},
            {"jsonrpc":"2.0","method":"ping"},
            {"jsonrpc":"2.0","method":"info","id":"2"},
            {"foo":"boo"},
            {"jsonrpc":"2.0","method":"foo.get","params":{"name":"myself"},"id":"5"},
            {"jsonrpc":"2.0","method":"history","params":{"channel":"bad name"},"id":"9"}
        ]"#,
    )
    .await
    .unwrap();
    let r = r.as_array().unwrap();
    assert_eq!(r.len(), 5, "{r:?}");
    assert_eq!(r[0], json!({"jsonrpc":"2.0","id":"1","result":"pong"}));
    assert_eq!(r[1]["result"]["name"], "rpchub");
    assert_eq!((error_code(&r[2]), r[2]["id"].clone()), (INVALID_REQUEST, Value::Null));
    assert_eq!((error_code(&r[3]), r[3]["id"].clone()), (-32601, json!("5")));
    assert_eq!(
        (error_code(&r[4]), r[4]["error"]["data"]["code"].clone()),
        (-32005, json!("invalid_request"))
    );

    // Batch of notifications only: nothing at all.
    assert_eq!(
        exchange(&mut ws, r#"[{"jsonrpc":"2.0","method":"ping"},{"jsonrpc":"2.0","method":"ping"}]"#).await,
        None
    );

    // Wrong params.
    for bad in [
        r#"{"jsonrpc":"2.0","method":"subscribe","params":[],"id":3}"#,
        r#"{"jsonrpc":"2.0","method":"subscribe","params":[42],"id":3}"#,
        r#"{"jsonrpc":"2.0","method":"subscribe","params":{"chan":"x"},"id":3}"#,
        r#"{"jsonrpc":"2.0","method":"history","params":["x",{"epoch":1}],"id":3}"#,
        r#"{"jsonrpc":"2.0","method":"history","params":{"channel":"x","limit":-1},"id":3}"#,
        r#"{"jsonrpc":"2.0","method":"publish","params":["x"],"id":3}"#,
    ] {
        let r = exchange(&mut ws, bad).await.unwrap();
        assert_eq!(
            (error_code(&r), r["id"].clone(), r["error"]["message"].clone()),
            (-32602, json!(3), json!("Invalid params")),
            "{bad}: {r}"
        );
    }

    // The connection survived all of it.
    assert_eq!(call(&mut ws, "ping", json!([])).await["result"], "pong");
}

#[tokio::test]
async fn the_same_rules_over_http() {
    let addr = shared();
    let post = |body: &'static str| async move {
        http(addr, "POST", "/rpc", &[("content-type", "application/json")], body).await
    };
    let (status, body) = post(r#"{"jsonrpc":"2.0","method":"ping","id":1}"#).await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (200, json!({"jsonrpc":"2.0","id":1,"result":"pong"}))
    );
    let (status, body) = post(r#"{"jsonrpc":"2.0","method":"ping"}"#).await;
    assert_eq!((status, body.as_str()), (204, ""), "a notification gets no body");
    let (_, body) = post("[]").await;
    assert_eq!(error_code(&serde_json::from_str(&body).unwrap()), INVALID_REQUEST);
    let (_, body) = post("{").await;
    assert_eq!(error_code(&serde_json::from_str(&body).unwrap()), -32700);
    let (_, body) =
        post(r#"[{"jsonrpc":"2.0","method":"ping","id":1},{"jsonrpc":"2.0","method":"nope","id":2}]"#).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v[0]["result"].clone(), error_code(&v[1])), (json!("pong"), -32601));
    // Subscriptions need a WebSocket.
    let (_, body) = post(r#"{"jsonrpc":"2.0","method":"subscribe","params":["a"],"id":1}"#).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error_code(&v), -32005);
    assert!(v["error"]["message"].as_str().unwrap().contains("/ws/rpc"));
    // Too big.
    let big = format!(r#"{{"jsonrpc":"2.0","method":"ping","id":1,"pad":"{}"}}"#, "x".repeat(5000));
    let (status, body) = http(addr, "POST", "/rpc", &[("content-type", "application/json")], &big).await;
    assert_eq!((status, error_code(&serde_json::from_str(&body).unwrap())), (413, -32007));
    // Publishing with the admin token works over HTTP too.
    let auth = format!("Bearer {ADMIN}");
    let (_, body) = http(
        addr,
        "POST",
        "/rpc",
        &[("authorization", &auth), ("content-type", "application/json")],
        r#"{"jsonrpc":"2.0","method":"publish","params":["http:x",{"a":1}],"id":1}"#,
    )
    .await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["result"]["offset"], 1);
}

#[tokio::test]
async fn generated_jsonrpsee_client_calls_every_method() {
    use jsonrpsee::core::client::SubscriptionClientT;
    use jsonrpsee::rpc_params;
    use jsonrpsee::ws_client::{HeaderMap, WsClientBuilder};
    use rpchub::rpc::api::{ChannelApiClient, NodeApiClient};

    let addr = shared();
    let mut headers = HeaderMap::new();
    headers.insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
    let client =
        WsClientBuilder::default().set_headers(headers).build(format!("ws://{addr}/ws/rpc")).await.unwrap();
    assert_eq!(client.ping().await.unwrap(), "pong");
    let info = client.info().await.unwrap();
    assert_eq!((info.name.as_str(), info.broker.as_str()), ("rpchub", "memory"));
    let ch = channel("client");
    let data = rpchub::rpc::api::JsonData::of(&json!({"px": "1.0"})).unwrap();
    let pos = client.publish(ch.clone(), data, Some("trade".into()), None, None).await.unwrap();
    assert_eq!(pos.offset, 1);
    let h = client.history(ch.clone(), None, None).await.unwrap();
    assert_eq!((h.offset, h.publications.len()), (1, 1));

    // jsonrpsee's subscription machinery follows our notifications by subscription id.
    let mut sub =
        client.subscribe::<Value, _>("subscribe", rpc_params![ch.clone()], "unsubscribe").await.unwrap();
    let snap = sub.next().await.unwrap().unwrap();
    assert_eq!((snap["type"].clone(), snap["offset"].clone()), (json!("snapshot"), json!(1)));
    let data = rpchub::rpc::api::JsonData::of(&json!(2)).unwrap();
    client.publish(ch.clone(), data, None, None, None).await.unwrap();
    let live = sub.next().await.unwrap().unwrap();
    assert_eq!(
        (live["type"].clone(), live["offset"].clone(), live["data"].clone()),
        (json!("publication"), json!(2), json!(2))
    );
    sub.unsubscribe().await.unwrap();
    assert!(!client.channels(None).await.unwrap().iter().any(|c| c.channel == ch));
}
