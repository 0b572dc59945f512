//! `rpchub bench`: the built binary loads a real server (in this process) and reports JSON.

use crate::support::{self, ADMIN};
use rpchub::config::NamespaceConfig;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

/// Runs `rpchub bench ARGS --url ws://addr/ws/rpc --token ADMIN --json`; returns the exit
/// status's success, the JSON it printed and its stderr.
async fn bench(addr: SocketAddr, args: &[&str]) -> (bool, Value, String) {
    let url = format!("ws://{addr}/ws/rpc");
    let pid = std::process::id().to_string();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rpchub"))
        .arg("bench")
        .args(args)
        .args(["--url", &url, "--token", ADMIN, "--json", "--server-pid", &pid])
        .env_remove("RPCHUB_TOKEN")
        .kill_on_drop(true)
        .output();
    let out =
        tokio::time::timeout(Duration::from_secs(30), out).await.expect("bench ends").expect("bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout} / {stderr}"));
    (out.status.success(), v, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_everything_in_order() {
    let server = support::start(support::config()).await;
    let args = ["fanout", "--subscribers", "20", "--rate", "200", "--seconds", "1", "--drain-seconds", "3"];
    let (ok, v, stderr) = bench(server.addr, &args).await;
    assert!(ok, "{v} {stderr}");
    assert_eq!(v["scenario"], "fanout");
    assert_eq!(v["ready"], 20, "{v}");
    assert!(v["published"].as_u64().unwrap() > 50, "{v}");
    assert!(v["deliveries_per_s"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["received"], v["expected"], "{v}");
    for zero in ["lost", "gaps", "dups", "invalid", "disconnected", "other_messages", "publish_errors"] {
        assert_eq!(v[zero], 0, "{zero}: {v}");
    }
    assert!(v["latency_us"]["p99"].as_u64().unwrap() > 0, "{v}");
    assert!(v["server_cpu_pct"].is_number(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_with_compression_checks_every_delivery_and_counts_the_wire_bytes() {
    let server = support::start(support::config()).await;
    let common = ["fanout", "--subscribers", "10", "--rate", "100", "--seconds", "1", "--drain-seconds", "3"];
    let book = ["--payload", "book", "--payload-bytes", "2000"];
    let mut wire = Vec::new();
    for compress in [false, true] {
        let mut args: Vec<&str> = common.iter().chain(&book).copied().collect();
        if compress {
            args.push("--compress");
        }
        let (ok, v, stderr) = bench(server.addr, &args).await;
        assert!(ok, "{v} {stderr}");
        assert_eq!((v["compress"].clone(), v["payload"].clone()), (compress.into(), "book".into()), "{v}");
        assert_eq!(v["payload_bytes"], 2000, "{v}");
        assert_eq!(v["received"], v["expected"], "{v}");
        for zero in ["lost", "gaps", "dups", "invalid", "disconnected", "other_messages"] {
            assert_eq!(v[zero], 0, "{zero}: {v}");
        }
        wire.push(v["wire_bytes_per_delivery"].as_f64().unwrap());
    }
    // A 2,000-byte book in a ~2,150-byte frame uncompressed; compressed, well under a third.
    assert!(wire[0] > 2000.0, "{wire:?}");
    assert!(wire[1] < wire[0] * 0.35, "{wire:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn market_accounts_every_subscription_of_every_connection() {
    let server = support::start(support::config()).await;
    let prefix = support::channel("mkt").replace(':', "-");
    for zipf in [None, Some("1.1")] {
        let mut args = vec!["market", "--channels", "8", "--connections", "30", "--subs-per-conn", "3"];
        args.extend(["--publishers", "2", "--rate", "300", "--seconds", "1", "--drain-seconds", "3"]);
        args.extend(["--validate-every", "0", "--channel-prefix", &prefix]);
        if let Some(s) = zipf {
            args.extend(["--zipf", s]);
        }
        let (ok, v, stderr) = bench(server.addr, &args).await;
        assert!(ok, "{v} {stderr}");
        assert_eq!((v["scenario"].clone(), v["ready"].clone()), ("market".into(), 30.into()), "{v}");
        assert_eq!(v["publishers_ready"], 2, "{v}");
        assert!(v["published"].as_u64().unwrap() > 200, "{v}");
        assert_eq!(v["received"], v["expected"], "{v}");
        assert!(v["received"].as_u64().unwrap() > v["published"].as_u64().unwrap(), "{v}");
        for zero in ["lost", "gaps", "dups", "invalid", "disconnected", "other_messages", "publish_errors"] {
            assert_eq!(v[zero], 0, "{zero}: {v}");
        }
        assert!(v["server_bytes_per_conn"].is_number(), "{v}");
        let per = &v["subscribers_per_channel"];
        assert!(
            per["max"].as_u64().unwrap() <= 30
                && per["min"].as_u64().unwrap() <= per["max"].as_u64().unwrap()
        );
        match zipf {
            // In turn: every channel gets publications; 90 subscriptions over 8 channels.
            None => {
                assert_eq!(v["channels_published"], 8, "{v}");
                let d = v["deliveries_per_publication"].as_f64().unwrap();
                assert!((d - 90.0 / 8.0).abs() < 1.0, "{v}");
            }
            // Weighted: channel 0 is the most subscribed, on more than half the connections.
            Some(_) => {
                assert!(per["channel_0"].as_u64().unwrap() > 15 && per["channel_0"] == per["max"], "{v}")
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_counts_answered_calls() {
    let server = support::start(support::config()).await;
    let args = ["rpc", "--connections", "4", "--seconds", "0.5", "--warmup-seconds", "0.2"];
    let (ok, v, stderr) = bench(server.addr, &args).await;
    assert!(ok, "{v} {stderr}");
    assert_eq!(v["scenario"], "rpc");
    assert_eq!(v["ready"], 4, "{v}");
    assert!(v["calls"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert!(v["calls_per_s"].as_f64().unwrap() > 0.0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_connects_and_leaves() {
    let server = support::start(support::config()).await;
    let (ok, v, stderr) = bench(server.addr, &["storm", "--clients", "50", "--concurrency", "8"]).await;
    assert!(ok, "{v} {stderr}");
    assert_eq!(v["completed"], 50, "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    assert!(v["connects_per_s"].as_f64().unwrap() > 0.0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_recovers_every_missed_publication_or_says_it_could_not() {
    let mut config = support::config();
    config.namespaces.insert("short".into(), NamespaceConfig { history_size: 5, ..Default::default() });
    let server = support::start(config).await;
    let storm = |channel: String, away: &'static str| async move {
        let args =
            ["storm", "--since", "--clients", "40", "--concurrency", "16", "--missed", "12", "--away-ms"];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.extend([away.to_string(), "--channel".to_string(), channel]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bench(server.addr, &args).await
    };
    // Back at once, while the missed publications go out: each from history or live.
    let (ok, v, stderr) = storm(support::channel("storm"), "0").await;
    assert!(ok, "{v} {stderr}");
    assert_eq!(
        (v["since"].clone(), v["ready"].clone(), v["back"].clone()),
        (true.into(), 40.into(), 40.into()),
        "{v}"
    );
    assert_eq!(v["published"], 12, "{v}");
    assert_eq!(v["expected"], 40 * 12, "{v}");
    assert_eq!(v["received"], v["expected"], "{v}");
    for zero in ["not_recovered", "lost", "gaps", "dups", "failed", "not_back"] {
        assert_eq!(v[zero], 0, "{zero}: {v}");
    }
    assert!(v["storm_s"].as_f64().unwrap() > 0.0 && v["latency_us"]["p99"].as_u64().unwrap() > 0, "{v}");

    // Back after the 12 are out, and history holds 5 of them: every snapshot says recovered:
    // false, and the bench fails saying so instead of counting the clients back.
    let (ok, v, _) = storm(support::channel("short"), "500").await;
    assert!(!ok, "{v}");
    assert_eq!((v["back"].clone(), v["not_recovered"].clone()), (0.into(), 40.into()), "{v}");
    assert_eq!(v["failure_reasons"]["snapshot with recovered: false"], 40, "{v}");
    assert!(v["lost"].as_u64().unwrap() >= 40 * 7, "{v}");
    assert!(v["error"].as_str().unwrap().contains("no client came back"), "{v}");
}

#[tokio::test]
async fn refuses_a_remote_server() {
    let addr: SocketAddr = "192.0.2.1:7410".parse().unwrap();
    let (ok, v, stderr) = bench(addr, &["rpc", "--seconds", "1"]).await;
    assert!(!ok);
    assert!(v["error"].as_str().unwrap().contains("--allow-remote"), "{v}");
    assert!(stderr.contains("not a loopback address"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_publishes_on_one_node_and_counts_deliveries_on_another() {
    let Some(redis) = crate::redis_support::shared() else { return };
    let node = || {
        let mut c = support::config();
        c.broker = redis.url();
        support::start(c)
    };
    let (subscribers_node, publishers_node) = (node().await, node().await);
    let publish_url = format!("ws://{}/ws/rpc", publishers_node.addr);
    let channel = support::channel("bench-nodes");
    let also = format!("redis={}", redis.pid());
    let args = [
        "fanout",
        "--subscribers",
        "10",
        "--rate",
        "200",
        "--seconds",
        "1",
        "--drain-seconds",
        "3",
        "--channel",
        &channel,
        "--publish-url",
        &publish_url,
        "--also-pid",
        &also,
    ];
    let (ok, v, stderr) = bench(subscribers_node.addr, &args).await;
    assert!(ok, "{v} {stderr}");
    assert_eq!(v["publish_url"], publish_url.as_str(), "{v}");
    assert!(v["published"].as_u64().unwrap() > 50, "{v}");
    assert_eq!(v["received"], v["expected"], "every publication crossed to the other node: {v}");
    for zero in ["lost", "gaps", "dups", "invalid"] {
        assert_eq!(v[zero], 0, "{zero}: {v}");
    }
    let redis_cpu = &v["also_cpu"]["redis"];
    assert!(redis_cpu["cpu_s"].as_f64().unwrap() > 0.0, "Redis worked: {v}");
    assert!(redis_cpu["cpu_us_per_publication"].as_f64().unwrap() > 0.0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_spreads_its_calls_over_channels() {
    let server = support::start(support::config()).await;
    let prefix = support::channel("spread");
    let params = format!(r#"["{prefix}-{{conn}}", {{"n": 1}}]"#);
    let args = [
        "rpc",
        "--connections",
        "4",
        "--seconds",
        "0.3",
        "--warmup-seconds",
        "0",
        "--method",
        "publish",
        "--params",
        &params,
        "--spread",
        "2",
    ];
    let (ok, v, stderr) = bench(server.addr, &args).await;
    assert!(ok, "{v} {stderr}");
    assert_eq!((v["errors"].as_u64(), v["spread"].as_u64()), (Some(0), Some(2)), "{v}");
    // The next publication's offset says how many each channel took.
    let next = |n: u32| {
        let channel = format!("{prefix}-{n}");
        async move { support::publish(server.addr, &channel, serde_json::json!(0)).await["offset"].as_u64() }
    };
    assert!(next(0).await.unwrap() > 1 && next(1).await.unwrap() > 1, "connections 0, 2 and 1, 3 published");
    assert_eq!(next(2).await, Some(1), "nothing went to a third channel");
}
