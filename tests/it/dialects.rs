//! The front doors with the clients written for them: on `/ws`, the official Hyperliquid SDK,
//! unmodified, and plain Python WebSocket clients that disconnect and resume with `since` in
//! each dialect, against a server with the demo feed; on `/ws/{instance}`, a Python client of
//! the instance style. They run in a virtual environment
//! (`target/dialects-venv`, from `tests/dialects/requirements.txt`) that `.ci/run` makes, and it
//! sets `RPCHUB_DIALECT_TESTS=required`; elsewhere these tests say they were skipped when it is
//! missing.

use crate::support::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The venv's python, or why there is none (a failure under CI, else a skip). The web3.py test
/// of `upstream.rs` runs in it too.
pub(crate) fn python() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/dialects-venv/bin/python");
    if python.exists() {
        return Some(python);
    }
    let why = format!(
        "no {} (python3 -m venv target/dialects-venv && target/dialects-venv/bin/pip install -r \
         tests/dialects/requirements.txt)",
        python.display()
    );
    skip_unless_required("RPCHUB_DIALECT_TESTS", &why);
    None
}

/// Runs `tests/dialects/SCRIPT ARGS` (at most a minute) and returns its exit status and the
/// JSON it printed.
async fn run(python: PathBuf, script: &str, args: Vec<String>) -> (bool, Value, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dialects").join(script);
    let child = tokio::process::Command::new(python).arg(path).args(args).kill_on_drop(true).output();
    let out = tokio::time::timeout(Duration::from_secs(60), child).await.expect("the script ends").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let printed = stdout.lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null);
    (out.status.success(), printed, format!("{stdout}\n{stderr}"))
}

/// A server with the demo feed.
async fn demo() -> rpchub::Running {
    let mut c = config();
    c.demo = true;
    start(c.with_demo_namespaces()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_hyperliquid_sdk_receives_trades_and_books() {
    let Some(python) = python() else { return };
    let server = demo().await;
    // The SDK skips a snapshot with no trades in it: wait for the demo's first SOL trade.
    let mut w = ws(server.addr, None).await;
    let deadline = std::time::Instant::now() + WAIT;
    while call(&mut w, "history", json!({"channel": "trades:SOL", "limit": 1})).await["result"]["offset"] == 0
    {
        assert!(std::time::Instant::now() < deadline, "the demo publishes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, got, output) = run(python, "hl_sdk.py", vec![format!("http://{}", server.addr)]).await;
    assert!(ok, "{output}");
    let trades = got["trades"].as_array().unwrap();
    assert!(trades.len() >= 3, "{got}");
    for t in trades {
        assert_eq!(
            (t["channel"].clone(), t["data"][0]["coin"].clone()),
            (json!("trades"), json!("SOL")),
            "{t}"
        );
    }
    assert_eq!(trades[0]["isSnapshot"], true, "the first message is the snapshot: {}", trades[0]);
    let books = got["books"].as_array().unwrap();
    for b in books {
        assert_eq!((b["channel"].clone(), b["data"]["coin"].clone()), (json!("l2Book"), json!("BTC")), "{b}");
        assert_eq!(b["data"]["levels"].as_array().map(Vec::len), Some(2), "bids and asks: {b}");
    }
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_dialect_resumes_with_exactly_what_it_missed() {
    let Some(python) = python() else { return };
    let server = demo().await;
    for dialect in ["typed", "hyperliquid"] {
        let url = format!("ws://{}/ws", server.addr);
        let (ok, got, output) = run(python.clone(), "resume.py", vec![url, dialect.into()]).await;
        assert!(ok, "{dialect}: {output}");
        assert_eq!(got["ok"], true, "{dialect}: {got}");
        assert!(got["missed"].as_u64().unwrap() >= 1, "{dialect}: {got}");
    }
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_style_client_receives_its_events_and_nothing_else() {
    let Some(python) = python() else { return };
    let mut c = config();
    let token = "python-instance-token-42";
    c.instances.insert(
        "py".into(),
        rpchub::config::InstanceConfig {
            token: rpchub::config::Secret(token.into()),
            enabled: true,
            events: vec!["order".into()],
            media_base64: false,
        },
    );
    let server = start(c).await;
    let url = format!("ws://{}/ws/py?token={token}", server.addr);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dialects/instance.py");
    let mut child = tokio::process::Command::new(python)
        .arg(path)
        .args([url, "2".into()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(WAIT, lines.next_line()).await.expect("the client connects").unwrap();
    assert_eq!(ready.as_deref(), Some(r#"{"ready": true}"#));
    // One event the filter drops, two it admits.
    let auth = format!("Bearer {ADMIN}");
    let headers = [("content-type", "application/json"), ("authorization", auth.as_str())];
    for (event, n) in [("refund", 0), ("order", 1), ("order", 2)] {
        let body = json!({"channel": "instance:py", "event": event, "data": {"n": n}}).to_string();
        assert_eq!(http(server.addr, "POST", "/api/publish", &headers, &body).await.0, 200);
    }
    let last = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the frames")
        .unwrap()
        .unwrap();
    let got: Value = serde_json::from_str(&last).unwrap();
    let frames = got["frames"].as_array().unwrap();
    let datas: Vec<Value> = frames.iter().map(|f| f["data"].clone()).collect();
    assert_eq!(datas, [json!({"n": 1}), json!({"n": 2})], "only the admitted events, in order: {got}");
    for f in frames {
        assert_eq!(
            (f["event"].clone(), f["instanceData"]["instance"].clone()),
            (json!("order"), json!("py")),
            "{f}"
        );
        assert!(!f.to_string().contains(token), "the token is never echoed: {f}");
    }
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websockets_negotiates_deflate_and_reads_and_writes_compressed_messages() {
    let Some(python) = python() else { return };
    let server = start(config()).await;
    let ch = channel("zlib");
    // History for the snapshots, compressible: it is compressed with them.
    let earlier = json!({"trades": (0..80).map(|i| json!({"px": format!("142.{i:02}"), "sz": "3.5", "side": "B"})).collect::<Vec<_>>()});
    publish(server.addr, &ch, earlier.clone()).await;
    let args = vec![format!("ws://{}", server.addr), ch.clone(), ADMIN.into()];
    let (ok, got, output) = run(python, "compressed.py", args).await;
    server.shutdown();
    assert!(ok, "{output}");
    let rpc = &got["rpc"];
    assert_eq!(rpc["extensions"], json!(["permessage-deflate"]), "{got:#}");
    assert_eq!(
        rpc["response_header"], "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        "{got:#}"
    );
    assert_eq!(rpc["snapshot"], json!([earlier]), "{got:#}");
    assert_eq!(rpc["live_is_the_book"], true, "{got:#}");
    assert_eq!(rpc["published"]["offset"], 2, "{got:#}");
    assert_eq!(rpc["big_call"], json!({"jsonrpc": "2.0", "id": 3, "result": "pong"}), "{got:#}");
    let typed = &got["typed"];
    assert_eq!(typed["extensions"], json!(["permessage-deflate"]), "{got:#}");
    assert_eq!(typed["snapshot"], json!([earlier, got["book"]]), "{got:#}");
}
