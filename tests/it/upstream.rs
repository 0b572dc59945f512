//! `[upstream]`: an HTTP-only JSON-RPC node behind rpchub. The node here is a real HTTP server
//! (axum on port 0) answering like an Ethereum node, recording every request it gets.

use crate::support::*;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use futures::StreamExt;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// A block as the node writes it: odd spacing and key order, which must reach the client as is.
const BLOCK: &str = r#"{ "number" : "0x10",   "hash":"0xabc" ,"transactions" :[ ],"baseFeePerGas":"0x7"  }"#;

/// What the node was sent: each request's headers and body.
#[derive(Default)]
struct Seen(Mutex<Vec<(HeaderMap, String)>>);

impl Seen {
    fn bodies(&self) -> Vec<Value> {
        self.0.lock().unwrap().iter().map(|(_, b)| serde_json::from_str(b).unwrap()).collect()
    }
}

/// A JSON-RPC node on port 0. `POST /` answers each call; `/5xx` answers 502 with a text page;
/// `/500json` answers 500 with a JSON-RPC error; `/malformed` answers 200 with HTML; `/partial`
/// leaves the last call out of a batch's answer.
async fn node() -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = axum::Router::new()
        .route("/", axum::routing::post(answer))
        .route("/5xx", axum::routing::post(|| async { (StatusCode::BAD_GATEWAY, "Bad Gateway") }))
        .route("/malformed", axum::routing::post(|| async { "<html>a proxy's page</html>" }))
        .route("/partial", axum::routing::post(partial))
        .route(
            "/500json",
            axum::routing::post(|| async {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"header not found"}}"#,
                )
            }),
        )
        // The application's backend, on the same server: its proxied method `chat`.
        .route(
            "/rpc/chat",
            axum::routing::post(|| async { axum::Json(json!({"result": "from the backend"})) }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

async fn answer(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let text = String::from_utf8(body.to_vec()).unwrap();
    seen.0.lock().unwrap().push((headers, text.clone()));
    let body = match serde_json::from_str::<Value>(&text).unwrap() {
        Value::Array(calls) => {
            let mut out = Vec::new();
            for c in &calls {
                if let Some(a) = one(c).await {
                    out.push(a);
                }
            }
            format!("[{}]", out.join(" ,\n "))
        }
        c => one(&c).await.unwrap_or_default(),
    };
    ([("content-type", "application/json")], body)
}

/// Answers a batch but for its last call.
async fn partial(State(seen): State<Arc<Seen>>, body: Bytes) -> impl IntoResponse {
    let text = String::from_utf8(body.to_vec()).unwrap();
    seen.0.lock().unwrap().push((HeaderMap::new(), text.clone()));
    let calls: Vec<Value> = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for c in &calls[..calls.len() - 1] {
        out.extend(one(c).await);
    }
    format!("[{}]", out.join(","))
}

/// The node's answer to one call, written by hand (keys in the node's order), or none for a
/// notification.
async fn one(call: &Value) -> Option<String> {
    let id = call.get("id")?.to_string();
    let result = |r: &str| format!(r#"{{"id":{id},"jsonrpc":"2.0","result":{r}}}"#);
    let error = |e: &str| format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{e}}}"#);
    Some(match call["method"].as_str().unwrap() {
        "eth_blockNumber" => result(r#""0x10""#),
        "eth_chainId" => result(r#""0x539""#),
        "net_version" => result(r#""1337""#),
        // Each address has its own balance, so answers cannot be swapped unseen.
        "eth_getBalance" => {
            let addr = call["params"][0].as_str().unwrap().to_lowercase();
            result(&format!(r#""0x{}""#, &addr[addr.len() - 4..]))
        }
        "eth_getBlockByNumber" => result(BLOCK),
        "eth_getLogs" => result(&format!(r#"["{}"]"#, "0".repeat(8000))),
        "eth_call" => error(r#"{"code":3,"message":"execution reverted","data":"0x08c379a0"}"#),
        "slow_method" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            result("1")
        }
        m => {
            error(&format!(r#"{{"code":-32601,"message":"the method {m} does not exist/is not available"}}"#))
        }
    })
}

/// A server whose upstream is `url`, with `methods` globs and a 2 s timeout.
async fn hub(url: String, methods: &[&str]) -> rpchub::Running {
    let mut c = config();
    c.upstream.url = url;
    c.upstream.methods = methods.iter().map(|m| m.to_string()).collect();
    c.upstream.timeout = Duration::from_secs(2);
    start(c).await
}

fn req(id: Value, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// Sends `v` and returns the next text message as it came.
async fn exchange(w: &mut Ws, v: Value) -> String {
    send(w, v).await;
    loop {
        let m = tokio::time::timeout(WAIT, w.next()).await.expect("an answer").expect("open").unwrap();
        if let Message::Text(t) = m {
            return t.to_string();
        }
    }
}

/// The header of a JSON body.
const JSON: [(&str, &str); 1] = [("content-type", "application/json")];

async fn post_rpc(addr: SocketAddr, body: &Value) -> Value {
    let (status, body) =
        http(addr, "POST", "/rpc", &[("content-type", "application/json")], &body.to_string()).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn unavailable(v: &Value) -> String {
    assert_eq!(v["error"]["code"], -32021, "{v}");
    assert_eq!(v["error"]["data"]["code"], "backend_unavailable", "{v}");
    v["error"]["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn calls_reach_the_node_with_their_ids_rewritten_and_come_back_with_the_clients() {
    let (node_addr, seen) = node().await;
    let server = hub(format!("http://{node_addr}/"), &[]).await;
    let mut w = ws(server.addr, None).await;
    let a = exchange(&mut w, req(json!("block-1"), "eth_blockNumber", json!([]))).await;
    assert_eq!(a, r#"{"jsonrpc":"2.0","id":"block-1","result":"0x10"}"#);
    let address = "0x00000000000000000000000000000000000012aB";
    let v: Value = serde_json::from_str(
        &exchange(&mut w, req(json!(7), "eth_getBalance", json!([address, "latest"]))).await,
    )
    .unwrap();
    assert_eq!(v, json!({"jsonrpc": "2.0", "id": 7, "result": "0x12ab"}));
    let v: Value =
        serde_json::from_str(&exchange(&mut w, req(Value::Null, "eth_chainId", json!([]))).await).unwrap();
    assert_eq!(v, json!({"jsonrpc": "2.0", "id": null, "result": "0x539"}));

    // The same over POST /rpc, and a method the node does not know: its own -32601.
    let v = post_rpc(server.addr, &req(json!("n"), "net_version", json!([]))).await;
    assert_eq!(v, json!({"jsonrpc": "2.0", "id": "n", "result": "1337"}));
    let v = post_rpc(server.addr, &req(json!(1), "eth_mining", json!([]))).await;
    assert_eq!(v["error"]["code"], -32601, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("eth_mining"), "the node's message: {v}");

    // The node saw numeric ids of its own, the params as written, and rpchub's methods never.
    let bodies = seen.bodies();
    assert_eq!(bodies.len(), 5, "{bodies:?}");
    let ids: Vec<u64> = bodies.iter().map(|b| b["id"].as_u64().expect("a numeric id")).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "ids unique: {ids:?}");
    assert_eq!(bodies[1]["params"], json!([address, "latest"]));
    assert!(bodies.iter().all(|b| b["jsonrpc"] == "2.0"));

    // A notification goes up as one and is not answered; ping stays rpchub's.
    send(&mut w, json!({"jsonrpc": "2.0", "method": "eth_blockNumber"})).await;
    assert_eq!(call(&mut w, "ping", json!([])).await["result"], "pong");
    let deadline = std::time::Instant::now() + WAIT;
    while seen.bodies().len() < 6 {
        assert!(std::time::Instant::now() < deadline, "the notification arrives");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let note = &seen.bodies()[5];
    assert_eq!(note, &json!({"jsonrpc": "2.0", "method": "eth_blockNumber"}));
    assert_eq!(seen.bodies().len(), 6, "ping was not forwarded");
    server.shutdown();
}

#[tokio::test]
async fn a_batch_goes_up_as_one_batch_and_answers_come_back_in_request_order() {
    let (node_addr, seen) = node().await;
    let server = hub(format!("http://{node_addr}"), &[]).await;
    let batch = json!([
        req(json!(1), "eth_blockNumber", json!([])),
        req(json!(2), "ping", json!([])),
        {"jsonrpc": "2.0", "method": "net_version"},
        req(json!(1), "eth_call", json!([{"to": "0x01"}, "latest"])),
        req(json!("x"), "eth_chainId", json!([])),
        req(json!(3), "info", json!([])),
    ]);
    let check = |v: &Value| {
        let a = v.as_array().unwrap_or_else(|| panic!("an array: {v}"));
        assert_eq!(a.len(), 5, "{v}");
        assert_eq!(a[0], json!({"jsonrpc": "2.0", "id": 1, "result": "0x10"}));
        assert_eq!(a[1]["result"], "pong");
        assert_eq!(
            a[2],
            json!({"jsonrpc": "2.0", "id": 1, "error":
                {"code": 3, "message": "execution reverted", "data": "0x08c379a0"}})
        );
        assert_eq!(a[3], json!({"jsonrpc": "2.0", "id": "x", "result": "0x539"}));
        assert_eq!(a[4]["id"], 3);
        assert_eq!(a[4]["result"]["name"], "rpchub");
    };
    let mut w = ws(server.addr, None).await;
    check(&serde_json::from_str(&exchange(&mut w, batch.clone()).await).unwrap());
    check(&post_rpc(server.addr, &batch).await);

    let bodies = seen.bodies();
    assert_eq!(bodies.len(), 2, "one request per batch: {bodies:?}");
    for b in &bodies {
        let up = b.as_array().expect("a batch goes up as a batch");
        let methods: Vec<_> = up.iter().map(|c| c["method"].as_str().unwrap()).collect();
        assert_eq!(methods, ["eth_blockNumber", "net_version", "eth_call", "eth_chainId"]);
        assert!(up[1].get("id").is_none(), "the notification stays one: {b}");
        let ids: Vec<_> = [0, 2, 3].iter().map(|&i| up[i]["id"].as_u64().unwrap()).collect();
        assert!(
            ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
            "two client ids 1 go up apart: {b}"
        );
    }
    // A batch of notifications only: forwarded, no answer.
    send(&mut w, json!([{"jsonrpc": "2.0", "method": "eth_blockNumber"}])).await;
    assert_eq!(call(&mut w, "ping", json!([])).await["result"], "pong");
    server.shutdown();
}

#[tokio::test]
async fn two_clients_using_the_same_id_at_once_each_get_their_own_answer() {
    let (node_addr, _) = node().await;
    let server = hub(format!("http://{node_addr}"), &[]).await;
    let (mut a, mut b) = (ws(server.addr, None).await, ws(server.addr, None).await);
    for round in 0..20u32 {
        let (x, y) = (format!("0x{:040x}", 0xa000 + round), format!("0x{:040x}", 0xb000 + round));
        let (ra, rb) = tokio::join!(
            exchange(&mut a, req(json!(1), "eth_getBalance", json!([x, "latest"]))),
            exchange(&mut b, req(json!(1), "eth_getBalance", json!([y, "latest"]))),
        );
        assert_eq!(ra, format!(r#"{{"jsonrpc":"2.0","id":1,"result":"0x{:04x}"}}"#, 0xa000 + round));
        assert_eq!(rb, format!(r#"{{"jsonrpc":"2.0","id":1,"result":"0x{:04x}"}}"#, 0xb000 + round));
    }
    server.shutdown();
}

#[tokio::test]
async fn results_are_relayed_byte_for_byte() {
    let (node_addr, _) = node().await;
    let server = hub(format!("http://{node_addr}"), &[]).await;
    let mut w = ws(server.addr, None).await;
    let a = exchange(&mut w, req(json!("b"), "eth_getBlockByNumber", json!(["0x10", false]))).await;
    assert_eq!(a, format!(r#"{{"jsonrpc":"2.0","id":"b","result":{BLOCK}}}"#));
    let batch = json!([
        req(json!(1), "eth_getBlockByNumber", json!(["0x10", false])),
        req(json!(2), "ping", json!([]))
    ]);
    let a = exchange(&mut w, batch.clone()).await;
    assert!(a.starts_with(&format!(r#"[{{"jsonrpc":"2.0","id":1,"result":{BLOCK}}},"#)), "{a}");
    let (_, body) = http(
        server.addr,
        "POST",
        "/rpc",
        &JSON,
        &req(json!(3), "eth_getBlockByNumber", json!([])).to_string(),
    )
    .await;
    assert_eq!(body, format!(r#"{{"jsonrpc":"2.0","id":3,"result":{BLOCK}}}"#));
    server.shutdown();
}

#[tokio::test]
async fn a_node_down_slow_failing_or_malformed_is_32021_per_call_and_the_connection_stays_open() {
    let (node_addr, _) = node().await;
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cases = [
        (format!("http://user:hunter2@{down}/"), "connect"),
        (format!("http://user:hunter2@{node_addr}/5xx"), "HTTP 502"),
        (format!("http://{node_addr}/malformed"), "not a JSON-RPC"),
        (format!("http://{node_addr}/"), "upstream.timeout"),
    ];
    for (url, why) in cases {
        let mut c = config();
        c.upstream.url = url.clone();
        c.upstream.timeout = Duration::from_millis(300);
        let server = start(c).await;
        let method = if why == "upstream.timeout" { "slow_method" } else { "eth_blockNumber" };
        let mut w = ws(server.addr, None).await;
        let v: Value =
            serde_json::from_str(&exchange(&mut w, req(json!(1), method, json!([]))).await).unwrap();
        let m = unavailable(&v);
        assert!(m.contains(why), "{url}: {m}");
        assert!(!m.contains("hunter2") && !m.contains("127.0.0.1"), "no URL in {m}");
        // In a batch: each forwarded call gets it, rpchub's own are answered.
        let batch = json!([
            req(json!(1), method, json!([])),
            req(json!(2), "ping", json!([])),
            req(json!(3), method, json!([]))
        ]);
        let v: Value = serde_json::from_str(&exchange(&mut w, batch).await).unwrap();
        unavailable(&v[0]);
        assert_eq!(v[1]["result"], "pong");
        unavailable(&v[2]);
        assert_eq!(v[2]["id"], 3);
        assert_eq!(
            call(&mut w, "ping", json!([])).await["result"],
            "pong",
            "{url}: the connection stays open"
        );
        let v = post_rpc(server.addr, &req(json!(9), method, json!([]))).await;
        unavailable(&v);
        server.shutdown();
    }
}

#[tokio::test]
async fn an_error_status_with_a_json_rpc_body_is_the_nodes_answer() {
    let (node_addr, _) = node().await;
    let server = hub(format!("http://{node_addr}/500json"), &[]).await;
    let mut w = ws(server.addr, None).await;
    let a = exchange(&mut w, req(json!("q"), "eth_getBalance", json!(["0x01", "0x99999"]))).await;
    assert_eq!(a, r#"{"jsonrpc":"2.0","id":"q","error":{"code":-32000,"message":"header not found"}}"#);
    server.shutdown();
}

#[tokio::test]
async fn a_call_missing_from_the_nodes_batch_answer_is_32021() {
    let (node_addr, _) = node().await;
    let server = hub(format!("http://{node_addr}/partial"), &[]).await;
    let mut w = ws(server.addr, None).await;
    let batch = json!([req(json!(1), "eth_blockNumber", json!([])), req(json!(2), "eth_chainId", json!([]))]);
    let v: Value = serde_json::from_str(&exchange(&mut w, batch).await).unwrap();
    assert_eq!(v[0]["result"], "0x10");
    assert!(unavailable(&v[1]).contains("no answer for this call"), "{v}");
    server.shutdown();
}

#[tokio::test]
async fn methods_globs_choose_what_goes_up_and_rpchubs_own_never_do() {
    let (node_addr, seen) = node().await;
    let server = hub(format!("http://{node_addr}"), &["eth_*", "ping", "subscri*"]).await;
    let mut w = ws(server.addr, None).await;
    assert_eq!(call(&mut w, "eth_chainId", json!([])).await["result"], "0x539");
    let v = call(&mut w, "net_version", json!([])).await;
    assert_eq!(v["error"]["code"], -32601, "{v}");
    assert_eq!(v["error"]["message"], "Method not found", "rpchub's own -32601: {v}");
    assert_eq!(call(&mut w, "ping", json!([])).await["result"], "pong");
    let batch = json!([req(json!(1), "net_version", json!([])), req(json!(2), "eth_blockNumber", json!([]))]);
    let v: Value = serde_json::from_str(&exchange(&mut w, batch).await).unwrap();
    assert_eq!(v[0]["error"]["code"], -32601);
    assert_eq!(v[1]["result"], "0x10");
    let methods = seen.bodies();
    assert_eq!(methods.len(), 2, "{methods:?}");
    assert_eq!(methods[1][0]["method"], "eth_blockNumber");
    assert_eq!(methods[1].as_array().unwrap().len(), 1);
    server.shutdown();
}

#[tokio::test]
async fn nothing_of_the_clients_request_but_the_call_reaches_the_node() {
    let (node_addr, seen) = node().await;
    let server = hub(format!("http://{node_addr}"), &[]).await;
    let path = format!("/ws/rpc?token={ADMIN}");
    let mut w = try_ws(server.addr, &path, None, &[("cookie", "s=cookie-secret")]).await.unwrap();
    assert_eq!(call(&mut w, "eth_blockNumber", json!([])).await["result"], "0x10");
    http(
        server.addr,
        "POST",
        "/rpc",
        &[
            ("content-type", "application/json"),
            ("authorization", &format!("Bearer {ADMIN}")),
            ("x-tenant", "tenant-secret"),
        ],
        &req(json!(1), "eth_blockNumber", json!([])).to_string(),
    )
    .await;
    let seen = seen.0.lock().unwrap();
    assert_eq!(seen.len(), 2);
    for (headers, body) in seen.iter() {
        let all = format!("{headers:?} {body}");
        for secret in [ADMIN, "cookie-secret", "tenant-secret"] {
            assert!(!all.contains(secret), "{secret} leaked: {all}");
        }
        assert!(headers.get("authorization").is_none() && headers.get("token").is_none(), "{headers:?}");
        assert_eq!(headers["content-type"], "application/json");
    }
}

#[tokio::test]
async fn hyperliquid_post_requests_reach_the_node_too() {
    let (node_addr, _) = node().await;
    let server = hub(format!("http://{node_addr}"), &[]).await;
    let mut w = try_ws(server.addr, "/ws", None, &[]).await.unwrap();
    send(&mut w, json!({"method": "post", "id": 5, "request": {"type": "eth_blockNumber"}})).await;
    let v = recv(&mut w).await;
    assert_eq!(
        v,
        json!({"channel": "post", "data": {"id": 5, "response": {"type": "info", "payload": "0x10"}}})
    );
    server.shutdown();
}

#[tokio::test]
async fn forwarded_calls_are_counted() {
    let (node_addr, _) = node().await;
    let server = hub(format!("http://{node_addr}"), &[]).await;
    let mut w = ws(server.addr, None).await;
    call(&mut w, "eth_blockNumber", json!([])).await;
    call(&mut w, "eth_call", json!([])).await;
    let (_, metrics) = http(server.addr, "GET", "/metrics", &[], "").await;
    for (outcome, n) in [("ok", 1), ("refused", 1), ("unavailable", 0)] {
        let line = format!(r#"rpchub_backend_requests_total{{kind="upstream",outcome="{outcome}"}} {n}"#);
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web3_py_reads_the_node_and_an_rpchub_channel_over_one_socket() {
    let Some(python) = crate::dialects::python() else { return };
    let (node_addr, seen) = node().await;
    let server = hub(format!("http://{node_addr}"), &[]).await;
    let ch = channel("chain");
    let address = "0x000000000000000000000000000000000000beef";
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dialects/web3_upstream.py");
    let mut child = tokio::process::Command::new(python)
        .arg(script)
        .args([format!("ws://{}/ws/rpc", server.addr), address.into(), ch.clone()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("web3.py connects and subscribes")
        .unwrap()
        .expect("a line");
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    publish(server.addr, &ch, json!({"block": 16})).await;
    let last = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the publication")
        .unwrap()
        .expect("a line");
    let got: Value = serde_json::from_str(&last).unwrap();
    assert_eq!(
        (got["block"].clone(), got["balance"].clone(), got["chain"].clone()),
        (json!(16), json!(0xbeef), json!(1337)),
        "{got}"
    );
    assert_eq!(got["batched"], json!([16, 0xbeef]), "{got}");
    assert_eq!(got["snapshot"]["result"]["type"], "snapshot", "{got}");
    assert_eq!(got["publication"]["subscription"], got["subscription"], "{got}");
    assert_eq!(got["publication"]["result"]["type"], "publication", "{got}");
    assert_eq!(got["publication"]["result"]["data"], json!({"block": 16}), "{got}");
    assert_eq!(got["after"], 16);
    let status = tokio::time::timeout(WAIT, child.wait()).await.expect("the script ends").unwrap();
    assert!(status.success());
    // web3.py's batch went up as one batch; rpchub's subscribe never went up.
    let bodies = seen.bodies();
    assert!(bodies.iter().any(|b| b.as_array().is_some_and(|a| a.len() == 2)), "{bodies:?}");
    assert!(!bodies.iter().any(|b| b.to_string().contains("subscribe")), "{bodies:?}");
    server.shutdown();
}

#[tokio::test]
async fn forwarded_calls_are_charged_and_their_answers_bounded() {
    let (node_addr, _) = node().await;
    let mut c = config();
    c.upstream.url = format!("http://{node_addr}");
    c.limits.max_response_bytes = 4096;
    c.limits.calls_per_second = 5;
    let server = start(c).await;
    let mut w = ws(server.addr, None).await;
    // An answer of the node over limits.max_response_bytes: -32007, the connection kept.
    let v: Value =
        serde_json::from_str(&exchange(&mut w, req(json!(1), "eth_getLogs", json!([{}]))).await).unwrap();
    assert_eq!(v["error"]["code"], -32007, "{v}");
    assert_eq!(v["error"]["data"]["code"], "message_too_big", "{v}");
    assert!(v["error"]["data"]["detail"].as_str().unwrap().contains("limits.max_response_bytes"), "{v}");
    // Every forwarded call of a batch is charged: past the rate, -32003 for each one left.
    let batch: Vec<Value> = (0..12).map(|i| req(json!(i), "eth_blockNumber", json!([]))).collect();
    let v: Value = serde_json::from_str(&exchange(&mut w, Value::Array(batch)).await).unwrap();
    let a = v.as_array().unwrap();
    assert_eq!(a.len(), 12);
    assert!(a.iter().any(|x| x["result"] == "0x10"), "{v}");
    assert!(a.iter().any(|x| x["error"]["code"] == -32003), "{v}");
    for (i, x) in a.iter().enumerate() {
        assert_eq!(x["id"], i, "in request order: {v}");
    }
    server.shutdown();
}

#[tokio::test]
async fn the_backends_methods_stay_the_backends() {
    let (node_addr, seen) = node().await;
    let mut c = config();
    c.upstream.url = format!("http://{node_addr}/");
    c.backend.url = format!("http://{node_addr}");
    c.backend.methods = vec!["chat".into()];
    let server = start(c).await;
    let mut w = ws(server.addr, None).await;
    assert_eq!(call(&mut w, "chat", json!({"text": "hi"})).await["result"], "from the backend");
    let batch = json!([req(json!(1), "chat", json!({})), req(json!(2), "eth_chainId", json!([]))]);
    let v: Value = serde_json::from_str(&exchange(&mut w, batch).await).unwrap();
    assert_eq!(
        (v[0]["result"].clone(), v[1]["result"].clone()),
        (json!("from the backend"), json!("0x539")),
        "{v}"
    );
    let bodies = seen.bodies();
    assert_eq!(
        bodies,
        [json!([{"jsonrpc": "2.0", "id": bodies[0][0]["id"], "method": "eth_chainId", "params": []}])]
    );
    server.shutdown();
}
