//! The server's log, as the built binary writes it: one line when a WebSocket connection opens
//! and one when it closes (front door, remote address, principal, duration, bytes, close code
//! and reason), readable text by default and one JSON object per line with `--log-format json`;
//! never a token.

use crate::support::{self, ADMIN, call, serve_binary, stop_for_log, try_ws, ws};
use futures::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The JSON lines of `log` whose message is `message`.
fn lines_of(log: &str, message: &str) -> Vec<Value> {
    log.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .filter(|v| v["fields"]["message"] == message)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_logs_its_open_and_close_as_json() {
    let (child, addr) = serve_binary(&["--log-format", "json"], &[]).await;
    // An admin that calls and closes; an anonymous client the server closes (a binary frame
    // that is not UTF-8: 1003).
    let mut admin = ws(addr, Some(ADMIN)).await;
    let info = call(&mut admin, "info", json!([])).await;
    assert!(info["result"].is_object(), "{info}");
    admin.close(None).await.unwrap();
    while futures::StreamExt::next(&mut admin).await.is_some() {}
    let mut anonymous = ws(addr, None).await;
    anonymous.send(Message::binary(vec![0xff, 0xfe])).await.unwrap();
    assert_eq!(support::closed(&mut anonymous).await, Some(1003));
    // A refused upgrade opens no connection.
    assert_eq!(try_ws(addr, "/ws/rpc", Some("not-a-valid-token"), &[]).await.err(), Some(401));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = stop_for_log(child).await;

    let opened = lines_of(&log, "connection opened");
    let closed = lines_of(&log, "connection closed");
    assert_eq!((opened.len(), closed.len()), (2, 2), "one of each per connection:\n{log}");
    for v in opened.iter().chain(&closed) {
        assert_eq!(v["level"], "INFO", "{v}");
        assert!(v["timestamp"].is_string(), "{v}");
        assert_eq!(v["fields"]["door"], "jsonrpc", "{v}");
        assert!(v["fields"]["remote"].as_str().unwrap().starts_with("127.0.0.1:"), "{v}");
    }
    let by = |lines: &[Value], principal: &str| -> Value {
        lines
            .iter()
            .find(|v| v["fields"]["principal"] == principal)
            .cloned()
            .unwrap_or_else(|| panic!("{log}"))
    };
    let (admin_open, admin_closed) = (by(&opened, "admin"), by(&closed, "admin"));
    assert_eq!(admin_open["fields"]["session"], admin_closed["fields"]["session"], "one session, both lines");
    let f = &admin_closed["fields"];
    assert_eq!(f["reason"], "client", "the client closed first: {f}");
    assert!(f["close_code"].is_null(), "{f}");
    assert!(f["bytes_in"].as_u64().unwrap() > 40, "the call was read: {f}");
    assert!(f["bytes_out"].as_u64().unwrap() > info.to_string().len() as u64, "the answer was written: {f}");
    assert!(f["duration_ms"].is_u64(), "{f}");
    let f = &by(&closed, "anonymous")["fields"];
    assert_eq!((f["close_code"].as_u64(), f["reason"].as_str()), (Some(1003), Some("binary_message")), "{f}");
    assert!(!log.contains(ADMIN) && !log.contains("not-a-valid-token"), "a token in the log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_are_lines_with_key_value_fields() {
    let (child, addr) = serve_binary(&[], &[]).await;
    let w = ws(addr, None).await;
    drop(w);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = stop_for_log(child).await;
    let line = log.lines().find(|l| l.contains("connection closed")).unwrap_or_else(|| panic!("{log}"));
    for field in
        ["door=\"jsonrpc\"", "principal=\"anonymous\"", "reason=\"client\"", "bytes_in=", "duration_ms="]
    {
        assert!(line.contains(field), "{field} in {line}");
    }
    assert!(serde_json::from_str::<Value>(line).is_err(), "text by default: {line}");
}
