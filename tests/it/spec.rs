//! The generated API documents: committed, served, and in step with the code.

use crate::support::*;
use serde_json::{Value, json};

/// The committed OpenRPC document.
fn committed_openrpc() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/rpc-spec/openrpc.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_committed_documents_are_what_the_code_generates() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Err(e) = rpchub::spec::check(root) {
        panic!("{e}");
    }
}

#[tokio::test]
async fn rpc_discover_and_get_openrpc_json_serve_the_committed_document_without_a_token() {
    let addr = shared();
    let committed = committed_openrpc();
    let mut w = ws(addr, None).await;
    let r = call(&mut w, "rpc.discover", json!([])).await;
    assert!(r["result"] == committed, "rpc.discover over WebSocket is not the committed document");
    let (status, body) = http(
        addr,
        "POST",
        "/rpc",
        &[("content-type", "application/json")],
        r#"{"jsonrpc":"2.0","method":"rpc.discover","id":1}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["result"] == committed, "rpc.discover over HTTP");
    let (status, body) = http(addr, "GET", "/openrpc.json", &[], "").await;
    assert_eq!(status, 200);
    assert!(serde_json::from_str::<Value>(&body).unwrap() == committed, "GET /openrpc.json");
}

#[tokio::test]
async fn every_method_served_is_documented_and_every_documented_method_is_served() {
    let server = start(config()).await;
    let mut served: Vec<&str> = server.node.method_names();
    served.retain(|m| *m != "rpc.discover");
    served.sort_unstable();
    let doc = committed_openrpc();
    let mut documented: Vec<&str> =
        doc["methods"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    documented.sort_unstable();
    assert_eq!(served, documented);
    server.shutdown();
}

#[test]
fn spec_check_names_the_first_difference_of_an_edited_copy() {
    let dir = std::env::temp_dir().join(format!("rpchub-spec-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("rpc-spec")).unwrap();
    let bin = env!("CARGO_BIN_EXE_rpchub");
    let run =
        |args: &[&str]| std::process::Command::new(bin).args(args).arg("--root").arg(&dir).output().unwrap();
    let wrote = run(&["spec"]);
    assert!(wrote.status.success(), "{}", String::from_utf8_lossy(&wrote.stderr));
    assert!(run(&["spec", "--check"]).status.success(), "a fresh copy checks");
    let path = dir.join("rpc-spec/openrpc.json");
    let edited =
        std::fs::read_to_string(&path).unwrap().replacen("\"name\": \"ping\"", "\"name\": \"pong\"", 1);
    std::fs::write(&path, edited).unwrap();
    let checked = run(&["spec", "--check"]);
    assert!(!checked.status.success(), "an edited document fails the check");
    let err = String::from_utf8_lossy(&checked.stderr);
    assert!(err.contains("openrpc.json differs") && err.contains("\"name\": \"pong\""), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every example of the document, called as written (params by name) against a live server
/// with the demo feed: the call succeeds and its result has the example's type.
#[tokio::test]
async fn every_example_works_against_a_live_server() {
    let mut c = config();
    c.admin_token = Some(rpchub::config::Secret("change-me-please".into()));
    c.demo = true;
    let server = start(c.with_demo_namespaces()).await;
    let mut w = ws(server.addr, Some("change-me-please")).await;
    // The demo publishes a trade a few times a second: wait for the first.
    let deadline = std::time::Instant::now() + WAIT;
    while call(&mut w, "history", json!({"channel": "trades:SOL", "limit": 1})).await["result"]["offset"] == 0
    {
        assert!(std::time::Instant::now() < deadline, "the demo publishes");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let doc = committed_openrpc();
    let descriptors = rpchub::rpc::descriptors();
    for m in doc["methods"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let d = descriptors.iter().find(|d| d.name == name).unwrap();
        for ex in m["examples"].as_array().unwrap() {
            let mut params = serde_json::Map::new();
            for p in ex["params"].as_array().unwrap() {
                params.insert(p["name"].as_str().unwrap().into(), p["value"].clone());
            }
            let r = call(&mut w, name, Value::Object(params)).await;
            let result = r.get("result").unwrap_or_else(|| panic!("{name} {}: {r}", ex["name"]));
            (d.check_result)(result).unwrap_or_else(|e| panic!("{name}: the result is not its type: {e}"));
            (d.check_result)(&ex["result"]["value"])
                .unwrap_or_else(|e| panic!("{name}: the example's result: {e}"));
        }
    }
    server.shutdown();
}
