//! The browser console (`GET /ws/rpc/test`) in a real browser: headless Chromium driven by
//! `tests/browser/console.mjs` (playwright-core) against `rpchub serve --demo`, killed and started
//! again on the same port while the page watches. `.ci/run` installs Chromium and the script's
//! packages and sets `RPCHUB_BROWSER_TESTS=required`; elsewhere the test says it was skipped
//! when no browser is installed. The screenshots go to `target/browser-artifacts/`.

use crate::support::*;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Starts the built binary with `--demo` on `port` (the same port each time, so the page
/// reconnects to the new process at the address it knows); returns once it accepts connections.
async fn serve_demo_on(port: u16) -> ServerProcess {
    serve_binary_on(port, &["--demo"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_follows_a_demo_channel_across_a_server_restart_in_a_real_browser() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if let Err(why) = browser_ready(&dir) {
        skip_unless_required("RPCHUB_BROWSER_TESTS", &why);
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut server = Some(serve_demo_on(port).await);
    // The page itself is served with the HTML type.
    let (status, body) = http(addr, "GET", "/ws/rpc/test", &[], "").await;
    assert_eq!(status, 200);
    assert!(body.contains("<title>rpchub console</title>"));
    // The demo channel has some history before the page subscribes, so its snapshot has rows.
    let ch = "trades:SOL";
    let mut w = ws(addr, None).await;
    let deadline = std::time::Instant::now() + WAIT;
    while call(&mut w, "history", json!({"channel": ch})).await["result"]["offset"].as_u64() < Some(3) {
        assert!(std::time::Instant::now() < deadline, "the demo publishes to {ch}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(w);

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-artifacts");
    let mut node = tokio::process::Command::new("node")
        .arg(dir.join("console.mjs"))
        .arg(format!("http://{addr}"))
        .arg(ch)
        .arg(&artifacts)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut to_node = node.stdin.take().unwrap();
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    // The script asks for the server to be killed, then started again; its last line is what it
    // saw.
    let mut other = Vec::new();
    let seen: Value = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            match line.as_str() {
                "kill" => {
                    drop(server.take());
                    to_node.write_all(b"killed\n").await.unwrap();
                }
                "start" => {
                    server = Some(serve_demo_on(port).await);
                    to_node.write_all(b"started\n").await.unwrap();
                }
                _ if line.starts_with('{') => return serde_json::from_str(&line).unwrap(),
                _ => other.push(line),
            }
        }
        json!({"error": "the script ended without a report", "output": other})
    })
    .await
    .expect("the browser script finishes");
    let out = node.wait_with_output().await.unwrap();
    drop(server);
    assert!(out.status.success(), "{seen:#}\n{}", String::from_utf8_lossy(&out.stderr));
    for shot in seen["screenshots"].as_array().unwrap() {
        println!("screenshot: {}", shot.as_str().unwrap());
    }

    // Before the restart: the snapshot's rows, then live rows newest first, a rate, no gap.
    let first = &seen["first"];
    assert!(first["snapRows"].as_u64() >= Some(1), "{seen:#}");
    assert_eq!((first["status"].as_str(), &first["gap"]), (Some("live"), &Value::Null), "{seen:#}");
    assert!(first["rate"].as_str().unwrap().ends_with("/s"), "{seen:#}");
    assert_eq!(first["spark"].as_str().unwrap().split(' ').count(), 60, "{seen:#}");
    assert_eq!(seen["newestFirst"], true, "{seen:#}");
    // A row's data opens pretty-printed: the demo's trade list, one field a line.
    assert!(seen["pretty"].as_str().unwrap().contains("\n    \"coin\": \"SOL\""), "{seen:#}");

    // The method forms were built from the params' schemas and called the server.
    let form = seen["historyForm"].as_array().unwrap();
    assert!(form.contains(&json!(["channel", "input", "text"])), "{seen:#}");
    assert!(form.contains(&json!(["limit", "input", "number"])), "{seen:#}");
    assert!(form.contains(&json!(["since", "textarea", "textarea"])), "{seen:#}");
    assert_eq!(seen["historyAnswer"]["publications"].as_array().map(Vec::len), Some(2), "{seen:#}");
    assert_eq!(seen["pingAnswer"], "pong");

    // Disconnect and Connect: resubscribed with since in the same epoch, the snapshot recovered
    // what was published meanwhile, and the table holds every offset once.
    let resumed = &seen["resumed"];
    assert_eq!(
        (resumed["recovered"].as_str(), &resumed["gap"], &resumed["epoch"]),
        (Some("true"), &Value::Null, &first["epoch"]),
        "{seen:#}"
    );
    assert_eq!(resumed["everyOffsetOnce"], true, "{seen:#}");
    let since = json!({"epoch": first["epoch"], "offset": seen["resumedFrom"]});
    let sent: Vec<Value> = seen["sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| serde_json::from_str(f.as_str().unwrap()).unwrap())
        .collect();
    assert!(sent.iter().any(|m| m["method"] == "subscribe" && m["params"]["since"] == since), "{seen:#}");

    // After the restart: the page said it was reconnecting, resubscribed with since = the last
    // position it had seen, warned that the new epoch could not recover it, and went on.
    assert!(seen["reconnecting"].as_str().unwrap().starts_with("reconnecting"), "{seen:#}");
    let before = &seen["beforeRestart"];
    assert_eq!(
        seen["resubscribe"]["params"],
        json!({"channel": ch, "since": {"epoch": before["epoch"], "offset": before["offset"]}}),
        "{seen:#}"
    );
    let after = &seen["after"];
    assert_ne!(after["epoch"], before["epoch"], "{seen:#}");
    assert_eq!(
        (after["status"].as_str(), after["recovered"].as_str()),
        (Some("live"), Some("false")),
        "{seen:#}"
    );
    assert_eq!(seen["bannerVisible"], true, "{seen:#}");
    assert!(after["banner"].as_str().unwrap().contains("the epoch changed"), "{seen:#}");
    assert_eq!(seen["channelListWarns"], true, "{seen:#}");
    assert_eq!(seen["state"], "open");
    assert_eq!(seen["rawSince"], true, "{seen:#}");
    // A publication whose offset jumps adds to the banner.
    assert_eq!(seen["jump"]["gap"], "2", "{seen:#}");
    assert!(seen["jump"]["banner"].as_str().unwrap().contains("were never received (3 missed)"), "{seen:#}");
    // What the browser received is the same wire format as every other client gets.
    let snapshot = seen["received"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| serde_json::from_str::<Value>(f.as_str().unwrap()).unwrap())
        .find(|m| m["params"]["result"]["type"] == "snapshot")
        .expect("a snapshot among the first frames");
    assert_eq!(snapshot["params"]["result"]["channel"], ch);
    assert_eq!(snapshot["params"]["result"]["publications"][0]["event"], "trade");
}
