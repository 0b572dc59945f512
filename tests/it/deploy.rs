//! What `deploy/` gives operators: the Prometheus alert rules, checked and unit-tested by
//! `promtool` (Debian's `prometheus` package, which `.ci/run` installs), and the Grafana
//! dashboard, checked as Grafana's import reads it (a data source input, unique panel ids, a
//! grid of 24 columns without overlaps, a query on every panel). Every metric the rules and the
//! panels name is one a running node exports.

use crate::support::{self, ADMIN, call, ws};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// `promtool`, or `None` (the test skips) when it is not installed.
fn promtool() -> Option<&'static str> {
    if Command::new("promtool").arg("--version").output().is_ok() {
        return Some("promtool");
    }
    support::skip_unless_required(
        "RPCHUB_PROMTOOL_TESTS",
        "promtool (Debian's prometheus package) is not installed",
    );
    None
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let dir = root().join("deploy/prometheus");
    for args in [&["check", "rules", "alerts.yml"][..], &["test", "rules", "alerts.test.yml"][..]] {
        let out = Command::new(promtool).args(args).current_dir(&dir).output().unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
    }
}

/// The metric names in a PromQL expression: identifiers of ours or of the process.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = expr[i..].starts_with("rpchub_") || expr[i..].starts_with("process_");
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts && boundary {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |e| i + e);
            names.insert(expr[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// The sample names a node exports after some traffic (so every labelled family has samples),
/// on Redis (which also gives the broker's latency) when redis-server is installed.
async fn exported() -> HashSet<String> {
    let mut config = support::config();
    if let Some(redis) = crate::redis_support::shared() {
        config.broker = redis.url();
    }
    let server = support::start(config).await;
    // The first ping of the broker, which its latency needs.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let mut w = ws(server.addr, Some(ADMIN)).await;
    call(&mut w, "ping", json!([])).await;
    call(&mut w, "publish", json!([support::channel("deploy"), 1])).await;
    let (_, text) = support::http(server.addr, "GET", "/metrics", &[], "").await;
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_imports_and_queries_only_exported_metrics() {
    let text = std::fs::read_to_string(root().join("deploy/grafana/rpchub.json")).unwrap();
    let d: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(d["__inputs"][0]["name"], "DS_PROMETHEUS", "a data source input, asked for at import");
    assert_eq!(d["__inputs"][0]["pluginId"], "prometheus");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36 && d["uid"].is_string() && d["title"] == "rpchub");
    let panels = d["panels"].as_array().unwrap();
    let mut ids = HashSet::new();
    let mut cells = HashSet::new();
    let mut queried = BTreeSet::new();
    for p in panels {
        let id = p["id"].as_u64().expect("a numeric id");
        assert!(ids.insert(id), "panel id {id} twice");
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(w > 0 && h > 0 && x + w <= 24, "panel {id} fits the 24 columns: {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "panel {id} overlaps another at ({cx}, {cy})");
            }
        }
        if p["type"] == "row" {
            continue;
        }
        assert!(["timeseries", "stat"].contains(&p["type"].as_str().unwrap()), "{}", p["type"]);
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {id} uses the imported data source");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {id} queries something");
        for t in targets {
            let names = metric_names(t["expr"].as_str().unwrap());
            assert!(!names.is_empty(), "panel {id}: {}", t["expr"]);
            queried.extend(names);
        }
    }
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap();
    // The `expr:` values (and the lines of a folded one), not the annotations' prose.
    let mut in_expr: Option<usize> = None;
    for line in rules.lines() {
        let indent = line.len() - line.trim_start().len();
        match line.trim_start().strip_prefix("expr:") {
            Some(rest) => {
                queried.extend(metric_names(rest));
                in_expr = Some(indent);
            }
            None if in_expr.is_some_and(|i| indent > i) => queried.extend(metric_names(line)),
            None => in_expr = None,
        }
    }
    let exported = exported().await;
    for name in &queried {
        // Only a shared broker has a latency (skipped above when redis-server is not installed).
        let shared_only = name == "rpchub_broker_latency_seconds" && crate::redis_support::shared().is_none();
        assert!(shared_only || exported.contains(name), "{name} is queried but no node exports it");
    }
    assert!(queried.contains("rpchub_call_duration_seconds_bucket") && queried.contains("rpchub_broker_up"));
    assert_eq!(metric_names("rate(rpchub_calls_total{x=\"y\"}[1m]) / process_max_fds"), {
        BTreeSet::from(["rpchub_calls_total".to_string(), "process_max_fds".to_string()])
    });
}
