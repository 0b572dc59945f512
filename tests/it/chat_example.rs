//! The AI chat example (`examples/chat-backend`) as its README runs it: the example backend in
//! process on port 0 behind a node loaded from the example's own `rpchub.toml`; a `{type,data}`
//! chat client (tokio-tungstenite) streaming an answer word by word; `chat_publish` reaching
//! every tab of the conversation, and a tab back from a drop recovering with `since` exactly
//! what it missed; and the example's Python script (websocket-client, in the dialects venv) in
//! each of its modes; and two people in a conversation in the browser console (headless
//! Chromium, `tests/browser/chat.mjs`): presence, join and leave, typing, read cursors and
//! unread counts across two tabs of one user.

use crate::support::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A node started from the example's config, and the example backend behind it.
struct Example {
    hub: rpchub::Running,
    /// The demo user's token (the config's `alice` key).
    user: String,
    /// The other demo user's token (`bob`).
    bob: String,
}

impl Drop for Example {
    fn drop(&mut self) {
        self.hub.shutdown();
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The key named `name` in `config`.
fn key(config: &rpchub::Config, name: &str) -> String {
    let t = config.tokens.iter().find(|t| t.name == name);
    t.unwrap_or_else(|| panic!("rpchub.toml has a key {name:?}")).token.expose().to_string()
}

/// Starts the example: the node from `examples/chat-backend/rpchub.toml` (on port 0, pointed
/// at the backend's port) and the backend (publishing with the config's `chat-backend` key),
/// `pause` between two lines of an answer.
async fn example(pause: Duration) -> Example {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let instances =
        std::env::temp_dir().join(format!("rpchub-it-chat-instances-{}.json", std::process::id()));
    let overrides = [
        ("listen", "127.0.0.1:0".to_string()),
        ("backend.url", format!("http://{backend}")),
        ("instances_file", instances.display().to_string()),
    ]
    .map(|(k, v)| (k.to_string(), v));
    let path = root().join("examples/chat-backend/rpchub.toml");
    let config = rpchub::Config::load(Some(&path), &overrides).expect("the example's rpchub.toml loads");
    assert_eq!(config.backend.methods, ["chat", "chat_publish"]);
    let (user, bob, publisher) = (key(&config, "alice"), key(&config, "bob"), key(&config, "chat-backend"));
    assert_eq!(publisher, chat_backend::DEMO_PUBLISH_TOKEN, "the backend's default key is the config's");
    let hub = start(config).await;
    let config =
        chat_backend::Config { rpchub: format!("http://{}", hub.addr), publish_token: publisher, pause };
    tokio::spawn(chat_backend::serve(listener, config));
    Example { hub, user, bob }
}

/// A `{type,data}` client on `/ws`, authenticated with `token` as the script does.
async fn tab(ex: &Example) -> Ws {
    let mut w = try_ws(ex.hub.addr, "/ws", None, &[]).await.expect("upgrade");
    send(&mut w, json!({"type": "auth", "token": ex.user})).await;
    let reply = next(&mut w).await;
    assert_eq!(
        (reply["type"].clone(), reply["data"]["sub"].clone()),
        (json!("auth"), json!("alice")),
        "{reply}"
    );
    // Then the server subscribes the connection to alice's own channel (auto_subscribe).
    let inbox = next(&mut w).await;
    assert_eq!(
        (inbox["type"].clone(), inbox["channel"].clone()),
        (json!("snapshot"), json!("notifications:#alice")),
        "{inbox}"
    );
    w
}

/// The next message but the server's text pings and the conversation's joins and leaves (the
/// namespace has `join_leave`; the browser test looks at those).
async fn next(w: &mut Ws) -> Value {
    loop {
        let v = recv(w).await;
        if !["ping", "join", "leave"].contains(&v["type"].as_str().unwrap_or_default()) {
            return v;
        }
    }
}

/// Subscribes to `channel` (from `since`, or with none of its history); returns the snapshot.
async fn subscribe_tab(w: &mut Ws, channel: &str, since: Option<Value>) -> Value {
    let data = match since {
        Some(since) => json!({"channel": channel, "since": since}),
        None => json!({"channel": channel, "limit": 0}),
    };
    send(w, json!({"type": "subscribe", "data": data})).await;
    let snap = next(w).await;
    assert_eq!(
        (snap["type"].clone(), snap["channel"].clone()),
        (json!("snapshot"), json!(channel)),
        "{snap}"
    );
    snap
}

/// An answer's lines as a conversation's publications carry them: `(event, data)`.
fn published(lines: &[Value]) -> Vec<(Value, Value)> {
    lines.iter().map(|l| (l["type"].clone(), l["data"].clone())).collect()
}

/// Reads a conversation's publications until the answer is done (or `n` of them arrived):
/// `(offset, event, data)` each, checking every event is written as a chat client reads it.
async fn read_answer(w: &mut Ws, channel: &str, n: usize) -> Vec<(u64, Value, Value)> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = next(w).await;
        assert_eq!(v["channel"], channel, "{v}");
        assert_eq!(v["type"], v["event"], "the event's type is the line's: {v}");
        let done = v["data"]["done"] == true;
        out.push((v["offset"].as_u64().expect("an offset"), v["event"].clone(), v["data"].clone()));
        if done {
            break;
        }
    }
    out
}

#[tokio::test]
async fn a_chat_client_receives_the_answer_word_by_word_with_the_tool_call_in_the_middle() {
    let ex = example(Duration::from_millis(5)).await;
    let mut w = tab(&ex).await;
    let message = "what is the capital of France";
    send(&mut w, json!({"type": "chat", "data": {"message": message, "sessionId": "conv-1"}})).await;
    let mut got = Vec::new();
    loop {
        let v = next(&mut w).await;
        let done = v["data"]["done"] == true;
        got.push(v);
        if done {
            break;
        }
    }
    let want = chat_backend::answer(message);
    assert_eq!(got, want, "every line as the backend wrote it, in order");
    let tool = got.iter().position(|l| l["type"] == "tool").expect("a tool line");
    assert!(tool > 0 && tool < got.len() - 1, "the tool line is in the middle");
    assert_eq!(got[tool]["data"]["output"], json!({"words": 6}));
    assert!(chat_backend::text(&got).starts_with("You wrote \"what is the capital of France\"."));

    // Bad params come back as the chat client's error, on a connection that goes on.
    send(&mut w, json!({"type": "chat", "data": {"sessionId": "conv-1"}})).await;
    let e = next(&mut w).await;
    assert_eq!(
        (e["type"].clone(), e["data"]["code"].clone()),
        (json!("error"), json!("invalid_params")),
        "{e}"
    );
    send(&mut w, json!({"type": "chat_publish", "id": 7, "data": {"message": "hi"}})).await;
    let e = next(&mut w).await;
    assert_eq!((e["id"].clone(), e["data"]["code"].clone()), (json!(7), json!("invalid_params")), "{e}");
    assert!(e["data"]["message"].as_str().unwrap().contains("sessionId"), "{e}");
    send(&mut w, json!({"type": "ping"})).await;
    assert_eq!(next(&mut w).await, json!({"type": "pong"}));

    // The same answer on /ws/rpc: a stream, ended by rpchub.
    let mut r = ws(ex.hub.addr, Some(&ex.user)).await;
    let answer = call(&mut r, "chat", json!({"message": message, "sessionId": "conv-1"})).await;
    let stream = answer["result"]["stream"].clone();
    assert!(stream.is_string(), "{answer}");
    let mut lines = Vec::new();
    loop {
        let v = recv(&mut r).await;
        assert_eq!((v["method"].clone(), v["params"]["stream"].clone()), (json!("stream"), stream.clone()));
        let line = v["params"]["result"].clone();
        if line["type"] == "end" {
            break;
        }
        lines.push(line);
    }
    assert_eq!(lines, want);

    // The served OpenRPC document describes both methods from the example's schema files.
    let (status, body) = http(ex.hub.addr, "GET", "/openrpc.json", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    for name in ["chat", "chat_publish"] {
        let m = doc["methods"].as_array().unwrap().iter().find(|m| m["name"] == name).expect(name);
        let params: Vec<&Value> = m["params"].as_array().unwrap().iter().map(|p| &p["name"]).collect();
        assert_eq!(params, [&json!("message"), &json!("sessionId")], "{m}");
        assert_eq!(m["x-notifications"].is_array(), name == "chat", "only chat streams: {m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_publish_reaches_every_tab_and_a_tab_back_from_a_drop_recovers_exactly_what_it_missed() {
    let ex = example(Duration::from_millis(20)).await;
    let channel = "conversation:conv-42";
    let (mut asker, mut other, mut leaver) = (tab(&ex).await, tab(&ex).await, tab(&ex).await);
    for w in [&mut asker, &mut other] {
        assert_eq!(subscribe_tab(w, channel, None).await["offset"], 0);
    }
    let epoch = subscribe_tab(&mut leaver, channel, None).await["epoch"].clone();

    let message = "tell me about rivers and the sea";
    let want = published(&chat_backend::answer(message));
    send(&mut asker, json!({"type": "chat_publish", "data": {"message": message, "sessionId": "conv-42"}}))
        .await;
    let accepted = next(&mut asker).await;
    assert_eq!(
        accepted,
        json!({"type": "chat_publish", "data": {"channel": channel, "accepted": true}}),
        "the answer to the call comes first"
    );

    // The leaver reads three chunks and goes; the answer goes on while it is away (another tab
    // sees three more published) and it comes back with since = the last position it saw.
    let before = read_answer(&mut leaver, channel, 3).await;
    assert_eq!(before.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 2, 3]);
    drop(leaver);
    let seen = read_answer(&mut other, channel, 6).await;
    let mut back = tab(&ex).await;
    let snap = subscribe_tab(&mut back, channel, Some(json!({"epoch": epoch, "offset": 3}))).await;
    assert_eq!(snap["recovered"], true, "{snap}");
    let missed: Vec<(u64, Value, Value)> = snap["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["offset"].as_u64().unwrap(), p["event"].clone(), p["data"].clone()))
        .collect();
    assert!(missed.len() >= 3, "what was published while it was away: {snap}");
    assert_eq!(snap["offset"], missed.last().unwrap().0, "{snap}");
    let finished = missed.last().unwrap().2["done"] == true;
    let rest = if finished { Vec::new() } else { read_answer(&mut back, channel, usize::MAX).await };

    let leaver: Vec<_> = before.into_iter().chain(missed).chain(rest).collect();
    let offsets: Vec<u64> = leaver.iter().map(|c| c.0).collect();
    assert_eq!(offsets, (1..=want.len() as u64).collect::<Vec<_>>(), "each chunk once, none missing");
    assert_eq!(leaver.iter().map(|c| (c.1.clone(), c.2.clone())).collect::<Vec<_>>(), want);

    // Every tab that stayed saw the whole answer, in order.
    let other: Vec<_> = seen.into_iter().chain(read_answer(&mut other, channel, usize::MAX).await).collect();
    for (name, got) in [("other", other), ("asker", read_answer(&mut asker, channel, usize::MAX).await)] {
        let offsets: Vec<u64> = got.iter().map(|c| c.0).collect();
        assert_eq!(offsets, (1..=want.len() as u64).collect::<Vec<_>>(), "{name}");
        assert_eq!(got.into_iter().map(|c| (c.1, c.2)).collect::<Vec<_>>(), want, "{name}");
    }
    assert!(silent(&mut back, Duration::from_millis(100)).await, "nothing after the answer");
}

/// Runs `examples/chat-backend/chat.py ARGS` (at most a minute): its exit status, stdout and
/// stderr.
async fn script(python: &Path, args: Vec<String>) -> (bool, String, String) {
    let child = tokio::process::Command::new(python)
        .arg(root().join("examples/chat-backend/chat.py"))
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), child).await.expect("the script ends").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), stdout, stderr)
}

/// The JSON of a script's last line (its `--summary`).
fn summary(stdout: &str) -> Value {
    stdout.lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null)
}

/// The script's arguments for the example `ex`, then `rest`.
fn args(ex: &Example, rest: &[&str]) -> Vec<String> {
    let head = ["--url".to_string(), format!("ws://{}/ws", ex.hub.addr), "--token".into(), ex.user.clone()];
    head.into_iter().chain(rest.iter().map(|s| s.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_script_prints_the_streamed_answer_and_recovers_a_dropped_conversation() {
    let Some(python): Option<PathBuf> = crate::dialects::python() else { return };
    let ex = example(chat_backend::DEFAULT_PAUSE).await;
    let message = "how many words are in this question";
    let want = chat_backend::answer(message);
    let tools: Vec<Value> = want.iter().filter(|l| l["type"] == "tool").map(|l| l["data"].clone()).collect();

    // The answer streamed back to the script's own connection, printed as a reader sees it.
    let (ok, out, err) = script(&python, args(&ex, &["--session", "py-1", "--summary", message])).await;
    assert!(ok, "{out}\n{err}");
    let printed: Vec<&str> = out.lines().collect();
    assert_eq!(printed[0], "You wrote \"how many words are in this question\". Let me count its words.");
    assert_eq!(
        printed[1],
        r#"[tool word_count {"text": "how many words are in this question"} -> {"words": 7}]"#
    );
    assert_eq!(printed[2], "It has 7 words; backwards it reads: question this in are words many how.");
    let got = summary(&out);
    assert_eq!((got["text"].clone(), got["tools"].clone()), (json!(chat_backend::text(&want)), json!(tools)));

    // The other way: a second tab watching the conversation, and the asking tab dropping after
    // four chunks and resuming with since.
    let mut watch = tokio::process::Command::new(&python)
        .arg(root().join("examples/chat-backend/chat.py"))
        .args(args(&ex, &["--watch", "--session", "py-2", "--summary"]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut notes = tokio::io::BufReader::new(watch.stderr.take().unwrap()).lines();
    let ready = tokio::time::timeout(WAIT, notes.next_line()).await.expect("the watcher subscribes").unwrap();
    assert_eq!(ready.as_deref(), Some("-- watching conversation:py-2 from offset 0"));
    let rest = ["--publish", "--session", "py-2", "--drop-after", "4", "--away", "1", "--summary", message];
    let (ok, out, err) = script(&python, args(&ex, &rest)).await;
    assert!(ok, "{out}\n{err}");
    let every: Vec<u64> = (1..=want.len() as u64).collect();
    let got = summary(&out);
    assert_eq!((got["text"].clone(), got["tools"].clone()), (json!(chat_backend::text(&want)), json!(tools)));
    assert_eq!(
        (got["dropped_at"].clone(), got["recovered"].clone()),
        (json!(4), json!(true)),
        "{got}\n{err}"
    );
    let missed = got["missed"].as_array().unwrap();
    assert!(!missed.is_empty() && missed[0] == 5, "the snapshot starts right after the drop: {got}");
    assert_eq!(got["offsets"], json!(every), "each chunk once, none missing: {got}");
    assert!(err.contains("recovered=true"), "{err}");

    let out = tokio::time::timeout(Duration::from_secs(30), watch.wait_with_output())
        .await
        .expect("the watcher ends with the answer")
        .unwrap();
    assert!(out.status.success());
    let got = summary(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        (got["text"].clone(), got["offsets"].clone()),
        (json!(chat_backend::text(&want)), json!(every))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_chat_in_the_console_with_presence_typing_and_read_cursors_across_tabs() {
    let dir = root().join("tests/browser");
    if let Err(why) = browser_ready(&dir) {
        skip_unless_required("RPCHUB_BROWSER_TESTS", &why);
        return;
    }
    let ex = example(Duration::from_millis(5)).await;
    let channel = "conversation:conv-7";
    let artifacts = root().join("target/browser-artifacts");
    let run = tokio::process::Command::new("node")
        .arg(dir.join("chat.mjs"))
        .arg(format!("http://{}", ex.hub.addr))
        .arg(channel)
        .arg(&artifacts)
        .arg(&ex.user)
        .arg(&ex.bob)
        .kill_on_drop(true)
        .output();
    let out =
        tokio::time::timeout(Duration::from_secs(150), run).await.expect("the browser script ends").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seen: Value = stdout.lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null);
    assert!(out.status.success(), "{seen:#}\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for shot in seen["screenshots"].as_array().unwrap() {
        println!("screenshot: {}", shot.as_str().unwrap());
    }
    assert_eq!(seen["pageErrors"], json!([]), "{seen:#}");

    // Alone, then with bob: the join is shown with who and which client.
    assert_eq!(seen["alone"], json!({"people": "alice", "unread": "0", "me": "as alice"}), "{seen:#}");
    let joins = seen["joinRow"].as_array().unwrap();
    assert!(joins.iter().any(|j| j.as_str().unwrap().starts_with("bob joined (")), "{seen:#}");
    // Typing shows on the other's tab only, and ends with the message.
    assert_eq!(seen["typing"], "bob is typing…", "{seen:#}");
    assert_eq!(seen["bobSeesHimselfTyping"], Value::Null, "{seen:#}");
    assert_eq!(seen["typingAfterMessage"], "", "{seen:#}");
    // The backend wrote bob's name into each message; alice has 3 unread, bob none.
    let said = ["bob: hello alice", "bob: are you there?", "bob: the meeting moved to 3pm"];
    assert_eq!(seen["aliceReads"], json!(said), "{seen:#}");
    assert_eq!(seen["bobUnread"], "0", "sending marks read: {seen:#}");
    // A second tab of alice: the unread count from the cursor the server keeps, the history.
    let second = &seen["secondTab"];
    assert_eq!(second["people"], "here: alice (2 tabs), bob", "{seen:#}");
    assert_eq!(second["badge"], "3", "{seen:#}");
    assert_eq!(second["snapshot"], json!(said), "{seen:#}");
    // Marked read in one tab, read in both: the second was told by a cursor notification.
    let read = &seen["afterMarkRead"];
    assert_eq!((&read["a1Cursor"], &read["a2Cursor"]), (&json!("3"), &json!("3")), "{seen:#}");
    assert_eq!(read["a2Badge"], "", "{seen:#}");
    assert!(read["a2Cursors"].as_str().unwrap().parse::<u64>().unwrap() >= 1, "{seen:#}");
    let bob_reads = seen["bobReads"].as_array().unwrap();
    assert_eq!(bob_reads.last().unwrap(), "alice: @bob yes, see you at 3", "{seen:#}");
    // A mention reached every device of the one mentioned, on the user channel the server
    // subscribed each of them to; another user's is refused.
    let to_alice = json!(["bob: @alice are we still on?"]);
    assert_eq!(seen["aliceMentioned"], json!([to_alice, to_alice]), "{seen:#}");
    assert_eq!(seen["bobMentioned"], json!(["alice: @bob yes, see you at 3"]), "{seen:#}");
    // One panel, from the snapshot the server sent at connect, live, the mention unread.
    assert_eq!(seen["bobInbox"], json!([{"status": "live", "snapshots": "1", "unread": "1"}]), "{seen:#}");
    let refused = &seen["aliceAtBobs"];
    assert!(refused["status"].as_str().unwrap().starts_with("error: "), "{seen:#}");
    assert_eq!(refused["rows"], 0, "{seen:#}");
    // Bob left; the reloaded tab has read everything, as the server remembers.
    assert!(seen["leaveRow"][0].as_str().unwrap().starts_with("bob left ("), "{seen:#}");
    let reloaded = &seen["reloaded"];
    assert_eq!(
        (&reloaded["unread"], &reloaded["cursor"], &reloaded["offset"]),
        (&json!("0"), &json!("5"), &json!("5")),
        "{seen:#}"
    );
    assert_eq!(reloaded["people"], "here: alice (2 tabs)", "{seen:#}");
    // What the page sent: typing notifications, messages, cursor moves, by the methods anyone
    // can call.
    let sent: Vec<Value> = seen["sent"]["b"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| serde_json::from_str(f.as_str().unwrap()).unwrap())
        .collect();
    let typing = sent.iter().find(|m| m["method"] == "publish" && m["params"]["channel"] == "typing:conv-7");
    assert_eq!(typing.expect("a typing notification")["params"]["event"], "typing", "{sent:?}");
    assert!(sent.iter().any(|m| m["method"] == "cursor_set"), "{sent:?}");

    // Typing notifications are not kept; the messages are, in their senders' names.
    let mut w = ws(ex.hub.addr, Some(&ex.bob)).await;
    let typing = call(&mut w, "history", json!({"channel": "typing:conv-7"})).await;
    assert_eq!(typing["result"]["publications"], json!([]), "{typing}");
    let r = call(&mut w, "publish", json!({"channel": "typing:conv-7", "event": "typing", "data": {}})).await;
    assert!(r["result"]["offset"].is_u64(), "{r}");
    let again = call(&mut w, "history", json!({"channel": "typing:conv-7"})).await;
    assert_eq!(again["result"]["publications"], json!([]), "{again}");
    let kept = call(&mut w, "history", json!({"channel": channel})).await;
    let users: Vec<&Value> =
        kept["result"]["publications"].as_array().unwrap().iter().map(|p| &p["data"]["user"]).collect();
    assert_eq!(users, ["bob", "bob", "bob", "bob", "alice"], "{kept}");
    // Nobody writes in another's name: the backend puts the sender's in.
    let r = call(
        &mut w,
        "publish",
        json!({"channel": channel, "event": "message", "data": {"user": "alice", "text": "it's me, alice"}}),
    )
    .await;
    assert!(r["result"]["offset"].is_u64(), "{r}");
    let last = call(&mut w, "history", json!({"channel": channel, "limit": 1})).await;
    assert_eq!(
        last["result"]["publications"][0]["data"],
        json!({"user": "bob", "text": "it's me, alice"}),
        "{last}"
    );
    let r = call(&mut w, "publish", json!({"channel": channel, "data": {"text": "  "}})).await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("text"), "{r}");
    let mut anon = ws(ex.hub.addr, None).await;
    let r = call(&mut anon, "publish", json!({"channel": channel, "data": {"text": "hi"}})).await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
}
