//! `GET /metrics` as Prometheus reads it: parsed by prometheus_client's strict OpenMetrics
//! parser (Python, `tests/dialects/openmetrics_parse.py`, in the venv of the dialect tests)
//! before and after known traffic, and the differences checked: calls by method and result, the
//! call latency histogram, the publish-to-write histogram, bytes in and out, upgrade rejections and server closes by reason,
//! connections by door, process figures; names follow Prometheus's rules and no label carries a
//! channel name or a user.

use crate::support::{self, ADMIN, call, http, subscribe, try_ws, ws};
use futures::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The node's metrics, parsed: family name -> its JSON (`type`, `unit`, `samples`).
async fn scrape(addr: std::net::SocketAddr, python: &std::path::Path) -> Value {
    let (status, text) = http(addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dialects/openmetrics_parse.py");
    let mut child = tokio::process::Command::new(python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    child.stdin.take().unwrap().write_all(text.as_bytes()).await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{}\n{text}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of sample `name` with exactly `labels` (0 when absent).
fn sample(m: &Value, family: &str, name: &str, labels: Value) -> f64 {
    m[family]["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s[0] == name && s[1] == labels)
        .and_then(|s| s[2].as_f64())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_strictly_and_count_known_traffic() {
    let Some(python) = crate::dialects::python() else { return };
    let server = support::start(support::config()).await;
    let addr = server.addr;
    let before = scrape(addr, &python).await;

    // Known traffic: 5 pings and one unknown method, a subscription and 3 publications, three
    // refused upgrades, one connection the server closes (a binary frame that is not UTF-8).
    let ch = support::channel("metrics-secret-channel");
    let mut w = ws(addr, Some(ADMIN)).await;
    for _ in 0..5 {
        call(&mut w, "ping", json!([])).await;
    }
    call(&mut w, "no_such_method", json!([])).await;
    let mut sub = ws(addr, None).await;
    subscribe(&mut sub, json!([ch])).await;
    for n in 0..3 {
        call(&mut w, "publish", json!([ch, {"n": n}])).await;
    }
    for n in 0..3 {
        assert_eq!(support::event(&mut sub).await["data"]["n"], n, "the subscriber reads each publication");
    }
    assert_eq!(try_ws(addr, "/ws/rpc", Some("not-a-valid-token"), &[]).await.err(), Some(401));
    assert_eq!(try_ws(addr, "/ws/nowhere/at/all", None, &[]).await.err(), Some(404));
    assert_eq!(try_ws(addr, "/ws/rpc", None, &[("origin", "http://evil.example")]).await.err(), Some(403));
    let mut closed = ws(addr, None).await;
    closed.send(Message::binary(vec![0xff])).await.unwrap();
    assert_eq!(support::closed(&mut closed).await, Some(1003));
    let after = scrape(addr, &python).await;

    let delta = |family: &str, name: &str, labels: Value| {
        sample(&after, family, name, labels.clone()) - sample(&before, family, name, labels)
    };
    assert_eq!(delta("rpchub_calls", "rpchub_calls_total", json!({"method": "ping", "result": "ok"})), 5.0);
    assert_eq!(
        delta("rpchub_calls", "rpchub_calls_total", json!({"method": "unknown", "result": "error"})),
        1.0
    );
    let latency = "rpchub_call_duration_seconds";
    assert_eq!(after[latency]["type"], "histogram");
    assert_eq!(after[latency]["unit"], "seconds");
    assert_eq!(delta(latency, &format!("{latency}_count"), json!({"method": "ping"})), 5.0);
    assert_eq!(
        delta(latency, &format!("{latency}_bucket"), json!({"method": "ping", "le": "+Inf"})),
        5.0,
        "every call in the +Inf bucket"
    );
    assert_eq!(delta(latency, &format!("{latency}_count"), json!({"method": "publish"})), 3.0);
    for reason in ["auth", "not_found", "origin"] {
        let d =
            delta("rpchub_upgrades_rejected", "rpchub_upgrades_rejected_total", json!({"reason": reason}));
        assert_eq!(d, 1.0, "{reason}");
    }
    let closes = "rpchub_connections_closed";
    assert_eq!(delta(closes, &format!("{closes}_total"), json!({"reason": "binary_message"})), 1.0);
    assert_eq!(delta("rpchub_publications", "rpchub_publications_total", json!({})), 3.0);
    // The channel's namespace is not configured: counted under _default, never by its name.
    let ns = json!({"namespace": "_default"});
    assert_eq!(
        delta("rpchub_namespace_publications", "rpchub_namespace_publications_total", ns.clone()),
        3.0
    );
    assert!(delta("rpchub_namespace_deliveries", "rpchub_namespace_deliveries_total", ns) >= 3.0);
    let broker = "rpchub_broker_duration_seconds";
    assert_eq!(delta(broker, &format!("{broker}_count"), json!({"op": "publish"})), 3.0);
    assert_eq!(delta(broker, &format!("{broker}_count"), json!({"op": "subscribe"})), 1.0);
    assert!(
        delta(broker, &format!("{broker}_count"), json!({"op": "history"})) >= 1.0,
        "the snapshot's read"
    );
    assert!(delta("rpchub_deliveries", "rpchub_deliveries_total", json!({})) >= 3.0);
    // Publish to write: one observation per delivery written (the subscriber read all three),
    // each well under the last finite bucket (about 1.3 s).
    let p2w = "rpchub_publish_to_write_seconds";
    assert_eq!(after[p2w]["type"], "histogram");
    assert_eq!(after[p2w]["unit"], "seconds");
    assert_eq!(delta(p2w, &format!("{p2w}_count"), json!({})), 3.0);
    assert_eq!(delta(p2w, &format!("{p2w}_bucket"), json!({"le": "1.31072"})), 3.0);
    assert!(delta(p2w, &format!("{p2w}_sum"), json!({})) > 0.0);
    assert_eq!(sample(&after, "rpchub_connections", "rpchub_connections", json!({"door": "jsonrpc"})), 2.0);
    // At least the frames sent: 9 calls and a subscribe, each 40+ bytes; 9 answers, the
    // subscription's snapshot and 3 publications.
    assert!(delta("rpchub_received_bytes", "rpchub_received_bytes_total", json!({})) > 400.0);
    assert!(delta("rpchub_sent_bytes", "rpchub_sent_bytes_total", json!({})) > 600.0);
    assert_eq!(after["rpchub_sent_bytes"]["unit"], "bytes");
    assert!(
        sample(&after, "process_resident_memory_bytes", "process_resident_memory_bytes", json!({})) > 1e6
    );
    assert!(sample(&after, "process_open_fds", "process_open_fds", json!({})) >= 3.0);
    assert!(sample(&after, "process_cpu_seconds", "process_cpu_seconds_total", json!({})) > 0.0);
    let start = sample(&after, "process_start_time_seconds", "process_start_time_seconds", json!({}));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - 3600.0..=now + 5.0).contains(&start), "started within the hour: {start}");

    // Names and labels: our prefix or Prometheus's process names; no channel, no user.
    for (name, family) in after.as_object().unwrap() {
        assert!(name.starts_with("rpchub_") || name.starts_with("process_"), "{name}");
        for s in family["samples"].as_array().unwrap() {
            let labels = s[1].to_string();
            assert!(!labels.contains("metrics-secret-channel") && !labels.contains(ADMIN), "{name} {labels}");
        }
    }
}
