//! The HTTP side and the process: routes, error bodies, metrics, the binary's shutdown.

use crate::support::*;
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

#[tokio::test]
async fn routes_and_their_json_errors() {
    let addr = shared();
    let (status, body) = http(addr, "GET", "/health", &[], "").await;
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()), (200, json!({"status": "ok"})));
    let (status, body) = http(addr, "GET", "/ws/rpc", &[], "").await;
    assert_eq!(status, 400);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["success"], false);
    assert!(v["error"]["message"].as_str().unwrap().contains("WebSocket"), "{v}");
    let (status, body) = http(addr, "GET", "/nowhere", &[], "").await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()["success"].clone()),
        (404, json!(false))
    );
    assert_eq!(try_ws(addr, "/ws/other", None, &[]).await.err(), Some(404));
    let (status, _) = http(addr, "GET", "/rpc", &[], "").await;
    assert_eq!(status, 405);
    // A broken handshake is refused before anything is upgraded.
    let headers = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "8"),
        ("sec-websocket-key", "x"),
    ];
    let (status, body) = http(addr, "GET", "/ws/rpc", &headers, "").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Sec-WebSocket-Version"), "{body}");
}

#[tokio::test]
async fn metrics_count_what_happens() {
    let server = start(config()).await;
    let mut w = ws(server.addr, None).await;
    subscribe(&mut w, json!(["m:a"])).await;
    publish(server.addr, "m:a", json!(1)).await;
    event(&mut w).await;
    let (status, text) = http(server.addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    for line in [
        "rpchub_subscriptions 1",
        "rpchub_publications_total 1",
        "rpchub_deliveries_total 1",
        r#"rpchub_calls_total{method="subscribe",result="ok"} 1"#,
        r#"rpchub_calls_total{method="publish",result="ok"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    assert!(text.contains("rpchub_connections "), "{text}");
}

#[tokio::test]
async fn info_reports_the_node() {
    let mut c = config();
    c.node_id = Some("n-test".into());
    let server = start(c).await;
    let mut w = ws(server.addr, None).await;
    let r = call(&mut w, "info", json!([])).await;
    let info = &r["result"];
    assert_eq!(
        (info["name"].clone(), info["node_id"].clone(), info["broker"].clone()),
        (json!("rpchub"), json!("n-test"), json!("memory"))
    );
    assert_eq!(info["connections"], 1);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert!(info["uptime_s"].as_u64().is_some());
}

/// SIGTERM: every subscription is told `closed` `shutdown` as its last event, every client gets
/// close code 1001, and the process exits 0.
#[tokio::test]
async fn the_binary_shuts_down_gracefully_on_sigterm() {
    let (mut child, addr) = serve_binary(&["--set", "shutdown_grace=5s"], &[]).await;
    let mut a = ws(addr, None).await;
    let mut b = ws(addr, None).await;
    subscribe(&mut a, json!(["x"])).await;
    // SAFETY: sending a signal to our own child process.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM)
    };
    let last = event(&mut a).await;
    assert_eq!(
        (last["type"].as_str(), last["reason"].as_str()),
        (Some("closed"), Some("shutdown")),
        "{last}"
    );
    assert_eq!(closed(&mut a).await, Some(1001));
    assert_eq!(closed(&mut b).await, Some(1001));
    let status = tokio::task::spawn_blocking(move || {
        let t0 = std::time::Instant::now();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "the server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn bad_configuration_exits_non_zero_with_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_rpchub"))
        .args(["serve", "--set", "limits.pong_timeout=1s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("pong_timeout"), "{err}");
}

/// Metrics labels come from the method table: every method served has its counters, shown in
/// `/metrics` from the start, and a call is counted under its own name.
#[tokio::test]
async fn every_method_of_the_table_has_its_metrics_labels() {
    let server = start(config()).await;
    let names = server.node.method_names();
    assert!(names.contains(&"subscribe") && names.contains(&"ping") && names.len() >= 8, "{names:?}");
    let (_, text) = http(server.addr, "GET", "/metrics", &[], "").await;
    for name in &names {
        for result in ["ok", "error"] {
            let line = format!("rpchub_calls_total{{method=\"{name}\",result=\"{result}\"}} 0");
            assert!(text.contains(&line), "{line} missing from /metrics");
        }
    }
    let mut ws = ws(server.addr, None).await;
    call(&mut ws, "info", json!([])).await;
    let (_, text) = http(server.addr, "GET", "/metrics", &[], "").await;
    assert!(text.contains("rpchub_calls_total{method=\"info\",result=\"ok\"} 1"), "{text}");
}
