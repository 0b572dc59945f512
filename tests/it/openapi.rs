//! The OpenAPI document (`openapi/openapi.json`): served, in step with the routes the server
//! answers, valid for two independent validators (openapi-spec-validator, swagger-parser), and
//! not contradicted by the live server under schemathesis. `.ci/run` installs the tools
//! (tests/openapi-tools/README.md) and sets `RPCHUB_OPENAPI_TESTS=required`; elsewhere the tool
//! tests say they were skipped when a tool is missing.

use crate::support::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn committed() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("openapi/openapi.json")).unwrap()).unwrap()
}

/// The documented operations: (path, method).
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            ops.push((path.clone(), method.to_ascii_uppercase()));
        }
    }
    ops
}

/// `Err(why)` when the tool is missing: a failure under CI, a skip elsewhere.
fn tool_or_skip(ready: Result<PathBuf, String>) -> Option<PathBuf> {
    match ready {
        Ok(p) => Some(p),
        Err(why) => {
            skip_unless_required("RPCHUB_OPENAPI_TESTS", &why);
            None
        }
    }
}

/// The virtual environment's program `name` (`RPCHUB_OPENAPI_VENV`, default target/openapi-venv).
fn venv_tool(name: &str) -> Result<PathBuf, String> {
    let venv = std::env::var("RPCHUB_OPENAPI_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target/openapi-venv"));
    let bin = venv.join("bin").join(name);
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "no {} (python3 -m venv {venv} && {venv}/bin/pip install -r tests/openapi-tools/requirements.txt)",
            bin.display(),
            venv = venv.display()
        ))
    }
}

fn output_text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn get_openapi_json_serves_the_committed_document() {
    let (status, body) = http(shared(), "GET", "/openapi.json", &[], "").await;
    assert_eq!(status, 200);
    assert!(serde_json::from_str::<Value>(&body).unwrap() == committed(), "GET /openapi.json");
}

/// Each documented operation is served: the live server answers it with neither 404 nor 405
/// (the drift test in src/spec/openapi.rs checks the document against the route table).
#[tokio::test]
async fn every_documented_operation_is_served() {
    let addr = shared();
    for (path, method) in operations(&committed()) {
        let (status, _) = http(addr, &method, &path, &[], "").await;
        assert!(status != 0 && status != 404 && status != 405, "{method} {path}: {status}");
    }
    let (status, _) = http(addr, "GET", "/nowhere", &[], "").await;
    assert_eq!(status, 404);
}

/// Sends `body` with `headers` to `method path` and reads the answer, tolerating a server that
/// answers and closes before it has read all of the body.
async fn send_raw(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let (mut rd, mut wr) = s.split();
    let write = async {
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(body).await;
    };
    let mut out = Vec::new();
    let read = rd.read_to_end(&mut out);
    let (_, read) =
        tokio::time::timeout(WAIT, async { tokio::join!(write, read) }).await.expect("an answer, no hang");
    let _ = read;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// Every documented operation, sent a malformed body and an oversized one (as JSON and as
/// text): never a 5xx, never a hang; a 4xx of a route that takes a body carries the JSON error
/// body (`POST /rpc`'s 413 a JSON-RPC error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_bodies_are_4xx_with_the_error_body() {
    let server = start(config()).await;
    let addr = server.addr;
    let auth = format!("Bearer {ADMIN}");
    let oversized = vec![b'['; 5 << 20];
    for (path, method) in operations(&committed()) {
        if path == "/ws/rpc" {
            continue; // a GET upgrade; its refusals are tests/it/security.rs's
        }
        for body in [&b"{\"jsonrpc\":"[..], b"\xff\xfe not json", &oversized] {
            for ct in ["application/json", "text/plain"] {
                let headers = [("content-type", ct), ("authorization", auth.as_str())];
                let (status, text) = send_raw(addr, &method, &path, &headers, body).await;
                assert!(
                    (200..500).contains(&status),
                    "{method} {path} ({ct}, {} bytes): {status}",
                    body.len()
                );
                if status >= 400 && method == "POST" {
                    let v: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|_| panic!("{method} {path}: {status} without JSON: {text:?}"));
                    let error_body = v["success"] == false && v["error"]["message"].is_string();
                    let jsonrpc_error = v["jsonrpc"] == "2.0" && v["error"]["code"].is_i64();
                    assert!(error_body || jsonrpc_error, "{method} {path}: {status} {v}");
                }
            }
        }
    }
    server.shutdown();
}

#[test]
fn openapi_spec_validator_accepts_the_document() {
    let Some(bin) = tool_or_skip(venv_tool("openapi-spec-validator")) else { return };
    let out = Command::new(bin).arg(root().join("openapi/openapi.json")).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
}

#[test]
fn swagger_parser_accepts_the_document() {
    let dir = root().join("tests/openapi-tools");
    let ready = if !dir.join("node_modules/@apidevtools/swagger-parser").exists() {
        Err(format!("run `npm ci` in {}", dir.display()))
    } else {
        Command::new("node").arg("--version").output().map(|_| dir.clone()).map_err(|e| format!("node: {e}"))
    };
    let Some(dir) = tool_or_skip(ready) else { return };
    let out = Command::new("node")
        .arg(dir.join("validate.mjs"))
        .arg(root().join("openapi/openapi.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
}

/// A short schemathesis run (few examples per operation, a time limit) against a live server
/// with the admin token: no 5xx, and no status, header, content type or body the document does
/// not allow. The WebSocket upgrade is left out (schemathesis speaks plain HTTP; its refusals
/// are tests/it/security.rs's); `/metrics` is checked for its status and type, its text has no
/// schema to check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_contradiction() {
    let Some(st) = tool_or_skip(venv_tool("st")) else { return };
    let server = start(config()).await;
    let url = format!("http://{}/openapi.json", server.addr);
    let dir = root().join("tests/openapi-tools");
    let run = tokio::task::spawn_blocking(move || {
        Command::new(st)
            .current_dir(&dir)
            .args(["--config-file", "schemathesis.toml", "run", &url])
            .args(["--header", &format!("Authorization: Bearer {ADMIN}")])
            .args(["--exclude-operation-id", "websocket", "--exclude-operation-id", "websocketCompat"])
            .args(["--exclude-operation-id", "websocketInstance"])
            .args(["--max-examples", "5", "--max-time", "30", "--workers", "1", "--seed", "1"])
            .args(["--request-timeout", "10", "--no-color"])
            .env("SCHEMATHESIS_HOOKS", "")
            .output()
    });
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("schemathesis ends")
        .unwrap()
        .unwrap();
    server.shutdown();
    let text = output_text(&out);
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    assert!(text.contains("No issues found") || only_the_instance_routes_warning(&text), "{text}");
}

/// True when schemathesis's one warning is the validation mismatch of the instance route, whose
/// bodies for a new instance need a token and for an existing one do not (which no schema can
/// say: tests/openapi-tools/schemathesis.toml): one warning, of one operation, that one.
fn only_the_instance_routes_warning(text: &str) -> bool {
    let warnings = text.lines().filter(|l| l.trim_start().starts_with("⚠️")).count();
    warnings == 1
        && text.contains("Schema validation mismatch: 1 operation mostly rejected generated data")
        && text.contains("- POST /api/events/websocket/{instance}")
        && text.contains("1 warning in")
        && !text.contains("FAILURES")
}
