//! The browser console (`GET /ws/rpc/test`) in a real browser: headless Chromium driven by
//! `tests/browser/console.mjs` (playwright-core). `.ci/run` installs Chromium and the script's
//! packages and sets `RPCHUB_BROWSER_TESTS=required`; elsewhere the test says it was skipped
//! when no browser is installed.

use crate::support::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn browser_ready(script_dir: &Path) -> Result<(), String> {
    if !Path::new(&std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())).exists() {
        return Err("no Chromium at /usr/bin/chromium (set CHROMIUM)".into());
    }
    if !script_dir.join("node_modules/playwright-core").exists() {
        return Err(format!("run `npm ci` in {}", script_dir.display()));
    }
    Command::new("node").arg("--version").output().map(|_| ()).map_err(|e| format!("node: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_page_subscribes_and_calls_in_a_real_browser() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if let Err(why) = browser_ready(&dir) {
        skip_unless_required("RPCHUB_BROWSER_TESTS", &why);
        return;
    }
    let server = start(config()).await;
    let addr = server.addr;
    // The page itself is served with the HTML type.
    let (status, body) = http(addr, "GET", "/ws/rpc/test", &[], "").await;
    assert_eq!(status, 200);
    assert!(body.contains("<title>rpchub console</title>"));

    let ch = channel("browser");
    publish(addr, &ch, json!({"before": true})).await;
    let script = dir.join("console.mjs");
    let page_channel = ch.clone();
    let browser = tokio::task::spawn_blocking(move || {
        Command::new("node").arg(script).arg(format!("http://{addr}")).arg(page_channel).output()
    });
    // Publish until the page has had time to subscribe and see one live publication.
    let publisher = tokio::spawn(async move {
        let mut w = ws(addr, Some(ADMIN)).await;
        for i in 0..300 {
            call(&mut w, "publish", json!({"channel": ch, "data": {"live": i}})).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let out = tokio::time::timeout(Duration::from_secs(60), browser)
        .await
        .expect("the browser finishes")
        .unwrap()
        .unwrap();
    publisher.abort();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!("browser script output: {stdout}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    assert!(out.status.success(), "{seen}");
    assert_eq!(
        (seen["snapshot"].clone(), seen["publication"].clone(), seen["pong"].clone()),
        (json!(true), json!(true), json!(true)),
        "{seen}"
    );
    assert_eq!(seen["state"], "open");
    // What the browser received is the same wire format as every other client gets.
    let first: Value = serde_json::from_str(seen["frames"][0].as_str().unwrap()).unwrap();
    assert_eq!(first["id"], 1);
    let snap: Value = serde_json::from_str(seen["frames"][1].as_str().unwrap()).unwrap();
    assert_eq!(snap["params"]["result"]["publications"][0]["data"], json!({"before": true}));
}
