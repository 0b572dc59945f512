//! `examples/follow.rs` as a user runs it: through a connection that breaks, it prints every
//! publication once, in order, resuming with `since` after each reconnect.

use crate::support::*;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;

/// A TCP relay to `to` whose connections can all be cut at once.
struct Relay {
    addr: SocketAddr,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let held = tasks.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let t = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                held.lock().unwrap().push(t);
            }
        });
        Relay { addr, tasks }
    }

    /// Drops every relayed connection (both sides see it end).
    fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// The example's binary, built by `cargo test` next to the test binaries.
fn follow_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("examples").join("follow");
    assert!(bin.exists(), "{} is missing: `cargo test` builds the examples", bin.display());
    bin
}

#[tokio::test]
async fn follow_resumes_after_a_broken_connection_without_a_gap_or_a_duplicate() {
    let server = start(config()).await;
    let relay = Relay::start(server.addr).await;
    let ch = channel("follow");
    for i in 1..=3 {
        publish(server.addr, &ch, json!(i)).await;
    }
    let mut child = tokio::process::Command::new(follow_binary())
        .args([format!("ws://{}/ws/rpc", relay.addr), ch.clone()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> Value {
        let line =
            tokio::time::timeout(WAIT, lines.next_line()).await.expect("a line in time").unwrap().unwrap();
        serde_json::from_str(&line).unwrap()
    };
    // Every offset printed, from snapshots and live events.
    let mut printed = Vec::new();
    let take = |event: &Value, printed: &mut Vec<u64>| match event["type"].as_str().unwrap() {
        "snapshot" => printed
            .extend(event["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap())),
        "publication" => printed.push(event["offset"].as_u64().unwrap()),
        other => panic!("unexpected event {other}"),
    };
    let snapshot = next().await;
    assert_eq!((snapshot["type"].clone(), snapshot["recovered"].clone()), (json!("snapshot"), json!(false)));
    take(&snapshot, &mut printed);
    publish(server.addr, &ch, json!(4)).await;
    take(&next().await, &mut printed);
    // The connection breaks; two publications happen while the client is away.
    relay.cut();
    publish(server.addr, &ch, json!(5)).await;
    publish(server.addr, &ch, json!(6)).await;
    let resumed = next().await;
    assert_eq!(
        (resumed["type"].clone(), resumed["recovered"].clone()),
        (json!("snapshot"), json!(true)),
        "{resumed}"
    );
    take(&resumed, &mut printed);
    publish(server.addr, &ch, json!(7)).await;
    take(&next().await, &mut printed);
    assert_eq!(printed, (1..=7).collect::<Vec<u64>>(), "every publication once, in order");
    child.kill().await.unwrap();
    let mut err = String::new();
    use tokio::io::AsyncReadExt;
    child.stderr.take().unwrap().read_to_string(&mut err).await.unwrap();
    assert!(err.contains("reconnecting") && !err.contains("warning"), "{err}");
    server.shutdown();
}
