//! The client commands as a person uses them: the built binary run as a child process against
//! real servers, its stdout read line by line, its connection cut by a proxy the test holds,
//! and its server killed and started again on the same port.

use crate::support::{ADMIN, WAIT, channel, publish, shared};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A client command running as a child process, its output read as lines.
struct Client {
    /// Taken by [`Client::exit`]; killed on drop otherwise (a failed test leaves no process).
    child: Option<Child>,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: mpsc::UnboundedReceiver<String>,
}

impl Client {
    /// Starts `rpchub ARGS` with `env` set and stdin piped.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Client {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rpchub"))
            .args(args)
            .env_remove("RPCHUB_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        Client { child: Some(child), stdout, stderr }
    }

    /// The child's stdin.
    fn stdin(&mut self) -> std::process::ChildStdin {
        self.child.as_mut().unwrap().stdin.take().unwrap()
    }

    /// The next stdout line, as JSON.
    async fn json(&mut self) -> Value {
        let line = tokio::time::timeout(WAIT, self.stdout.recv())
            .await
            .expect("a line within the wait")
            .expect("stdout still open");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// The next stderr line.
    async fn err_line(&mut self) -> String {
        tokio::time::timeout(WAIT, self.stderr.recv())
            .await
            .expect("a stderr line within the wait")
            .expect("stderr still open")
    }

    /// Sends a signal to the process.
    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(self.child.as_ref().unwrap().id() as i32, sig)
        };
    }

    /// Waits for the exit; returns the status code and what remains of stdout and stderr.
    async fn exit(mut self) -> (i32, Vec<String>, String) {
        let mut child = self.child.take().unwrap();
        drop(child.stdin.take());
        let status = tokio::task::spawn_blocking(move || {
            let t0 = std::time::Instant::now();
            loop {
                if let Some(s) = child.try_wait().unwrap() {
                    return s;
                }
                if t0.elapsed() > WAIT {
                    let _ = child.kill();
                    panic!("the client did not exit");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
        .await
        .unwrap();
        let mut out = Vec::new();
        while let Some(l) = self.stdout.recv().await {
            out.push(l);
        }
        let mut err = String::new();
        while let Some(l) = self.stderr.recv().await {
            err.push_str(&l);
            err.push('\n');
        }
        (status.code().unwrap_or(-1), out, err)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
        }
    }
}

/// Runs `rpchub ARGS` with `stdin` to its end; returns the exit code, stdout and stderr.
async fn run(args: &[&str], env: &[(&str, &str)], stdin: &str) -> (i32, String, String) {
    let mut c = Client::start(args, env);
    c.stdin().write_all(stdin.as_bytes()).unwrap();
    let (code, out, err) = c.exit().await;
    (code, out.join("\n"), err)
}

/// The lines of `r`, read on a thread of their own.
fn lines(r: impl std::io::Read + Send + 'static) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws/rpc")
}

/// The offsets of publication lines.
fn offsets(lines: &[Value]) -> Vec<u64> {
    lines.iter().filter(|l| l["type"] == "publication").map(|l| l["offset"].as_u64().unwrap()).collect()
}

/// Several channels on one connection: each snapshot, its publications as lines of their own,
/// then live events; SIGINT ends it with status 0.
#[tokio::test]
async fn subscribe_prints_snapshots_and_live_events_of_several_channels_and_exits_0_on_sigint() {
    let addr = shared();
    let (a, b) = (channel("cli"), channel("cli"));
    publish(addr, &a, json!({"n": 1})).await;
    publish(addr, &a, json!({"n": 2})).await;
    let mut c = Client::start(&["subscribe", &url(addr), &a, &b], &[]);
    let mut got = Vec::new();
    // Two snapshots and the two publications of the first one's history.
    for _ in 0..4 {
        got.push(c.json().await);
    }
    let of = |ch: &str, got: &[Value]| got.iter().filter(|l| l["channel"] == ch).cloned().collect::<Vec<_>>();
    let la = of(&a, &got);
    assert_eq!(la[0]["type"], "snapshot", "{got:?}");
    assert_eq!(la[0]["offset"], 2);
    assert_eq!(offsets(&la), [1, 2]);
    assert_eq!(la[1]["data"], json!({"n": 1}));
    assert_eq!(of(&b, &got)[0]["type"], "snapshot");
    publish(addr, &b, json!("live-b")).await;
    let live = c.json().await;
    assert_eq!(
        (live["type"].as_str(), live["channel"].as_str(), &live["data"]),
        (Some("publication"), Some(b.as_str()), &json!("live-b"))
    );
    publish(addr, &a, json!("live-a")).await;
    let live = c.json().await;
    assert_eq!((live["channel"].as_str(), live["offset"].as_u64()), (Some(a.as_str()), Some(3)));
    c.signal(libc::SIGINT);
    let (code, rest, err) = c.exit().await;
    assert_eq!(code, 0, "{err}");
    assert!(rest.is_empty(), "{rest:?}");
}

/// A TCP proxy in front of `upstream` whose connections the test can cut, and which refuses
/// new ones while it is down.
struct Proxy {
    addr: SocketAddr,
    cut: tokio::sync::broadcast::Sender<()>,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = tokio::sync::broadcast::channel(4);
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cut2, down2) = (cut.clone(), down.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                if down2.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let mut cut = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.recv() => {}
                    }
                });
            }
        });
        Proxy { addr, cut, down }
    }

    /// Drops every open connection, and refuses new ones until [`Proxy::up`].
    fn cut_and_stay_down(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.cut.send(());
    }

    fn up(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The connection cut while publications go on: the client comes back with `since` = the last
/// offset it printed, the snapshot recovers exactly the missed ones, and no line is printed
/// twice or skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_resumes_after_a_cut_connection_from_the_last_offset_printed() {
    let addr = shared();
    let proxy = Proxy::start(addr).await;
    let ch = channel("cli");
    publish(addr, &ch, json!(1)).await;
    let mut c = Client::start(&["subscribe", &url(proxy.addr), &ch], &[]);
    let mut got = vec![c.json().await, c.json().await];
    publish(addr, &ch, json!(2)).await;
    got.push(c.json().await);
    assert_eq!(offsets(&got), [1, 2]);

    proxy.cut_and_stay_down();
    assert!(c.err_line().await.contains("reconnecting in"));
    publish(addr, &ch, json!(3)).await;
    publish(addr, &ch, json!(4)).await;
    proxy.up();
    let snapshot = c.json().await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    assert_eq!(snapshot["recovered"], true, "{snapshot}");
    got.push(snapshot);
    got.push(c.json().await);
    got.push(c.json().await);
    publish(addr, &ch, json!(5)).await;
    got.push(c.json().await);
    assert_eq!(offsets(&got), [1, 2, 3, 4, 5], "{got:#?}");
    c.signal(libc::SIGINT);
    let (code, rest, err) = c.exit().await;
    assert_eq!(code, 0);
    assert!(rest.is_empty(), "{rest:?}");
    assert!(!err.contains("warning"), "{err}");
}

/// Starts the built binary's server on `port` (memory broker, the admin token).
async fn serve_on(port: u16) -> crate::support::ServerProcess {
    crate::support::serve_binary_on(port, &[]).await
}

/// The server killed and started again on the same port: the client reconnects by itself; the
/// new server's memory broker starts a new epoch, so it warns on one stderr line and goes on
/// with the new epoch's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_warns_and_goes_on_when_a_restarted_server_lost_the_history() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut server = serve_on(port).await;
    let ch = "restart:one";
    publish(addr, ch, json!("old")).await;
    let mut c = Client::start(&["subscribe", &url(addr), ch], &[]);
    let first = c.json().await;
    assert_eq!(first["type"], "snapshot");
    let epoch = first["epoch"].as_str().unwrap().to_string();
    assert_eq!(c.json().await["data"], "old");

    server.kill().unwrap();
    server.wait().unwrap();
    let mut server = serve_on(port).await;
    let warning = loop {
        let l = c.err_line().await;
        if l.starts_with("warning:") {
            break l;
        }
        assert!(l.contains("reconnecting in"), "{l}");
    };
    assert!(warning.starts_with(&format!("warning: {ch}: ")) && warning.contains(&epoch), "{warning}");
    let snapshot = c.json().await;
    assert_eq!((snapshot["type"].as_str(), snapshot["recovered"].as_bool()), (Some("snapshot"), Some(false)));
    assert_ne!(snapshot["epoch"], epoch.as_str());
    publish(addr, ch, json!("new")).await;
    let live = c.json().await;
    assert_eq!((live["offset"].as_u64(), &live["data"]), (Some(1), &json!("new")), "{live}");

    // Stopped as a person stops it (Ctrl-C: a graceful shutdown, `closed` `shutdown`, then close
    // code 1001) and started again: the same once more.
    let epoch = snapshot["epoch"].as_str().unwrap().to_string();
    // SAFETY: signalling our own child.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(server.id() as i32, libc::SIGINT)
    };
    server.wait().unwrap();
    let mut server = serve_on(port).await;
    let lost = c.err_line().await;
    assert!(lost.contains("close code 1001") && lost.contains("reconnecting in"), "{lost}");
    let warning = loop {
        let l = c.err_line().await;
        if l.starts_with("warning:") {
            break l;
        }
    };
    assert!(warning.contains(&format!("from {epoch} to ")), "{warning}");
    // The graceful shutdown's last event, printed as every event is.
    let closed = c.json().await;
    assert_eq!(
        (closed["type"].as_str(), closed["reason"].as_str()),
        (Some("closed"), Some("shutdown")),
        "{closed}"
    );
    assert_eq!(c.json().await["recovered"], false);
    publish(addr, ch, json!("newer")).await;
    assert_eq!(c.json().await["data"], "newer");
    c.signal(libc::SIGINT);
    assert_eq!(c.exit().await.0, 0);
    server.kill().unwrap();
    server.wait().unwrap();
}

/// A refused token (401) and a refused subscribe end the command with one line naming the
/// server's reason; the token comes from `--token` or RPCHUB_TOKEN.
#[tokio::test]
async fn subscribe_exits_non_zero_with_one_line_on_401_or_a_refused_channel() {
    let addr = shared();
    for (args, env) in [
        (vec!["subscribe", "--token", "wrong"], vec![]),
        (vec!["subscribe"], vec![("RPCHUB_TOKEN", "wrong")]),
    ] {
        let u = url(addr);
        let args: Vec<&str> = args.into_iter().chain([u.as_str(), "x"]).collect();
        let (code, out, err) = run(&args, &env, "").await;
        assert_ne!(code, 0);
        assert!(out.is_empty(), "{out}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.starts_with("rpchub: ") && err.contains("HTTP 401"), "{err}");
    }
    let (code, _, err) = run(&["subscribe", &url(addr), "bad channel"], &[], "").await;
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("subscribe bad channel: error -32005"), "{err}");
}

/// `call` with params as JSON or as KEY=VALUE words, over ws:// and http://; a JSON-RPC error
/// exits 1 with its code and message.
#[tokio::test]
async fn call_takes_json_or_key_value_params_and_exits_1_on_an_error() {
    let addr = shared();
    let ch = channel("cli");
    publish(addr, &ch, json!({"n": 1})).await;
    publish(addr, &ch, json!({"n": 2})).await;
    let params = json!({"channel": ch, "limit": 1}).to_string();
    let (code, out, err) = run(&["call", &url(addr), "history", &params], &[], "").await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["publications"][0]["data"], json!({"n": 2}), "{v}");

    let http = format!("http://{addr}/rpc");
    let (code, out, err) =
        run(&["call", &http, "history", &format!("channel={ch}"), "limit=2"], &[], "").await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["publications"].as_array().unwrap().len(), 2, "{v}");

    let (code, out, _) = run(&["call", &url(addr), "ping"], &[], "").await;
    assert_eq!((code, out.as_str()), (0, "\"pong\""));

    for u in [url(addr), http] {
        let (code, out, err) = run(&["call", &u, "no_such_method"], &[], "").await;
        assert_eq!(code, 1);
        assert!(out.is_empty());
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("error -32601: Method not found"), "{err}");
    }
    let (code, _, err) = run(&["call", &url(addr), "history", "channel=bad channel"], &[], "").await;
    assert_eq!(code, 1);
    assert!(err.contains("error -32005") && err.contains("invalid_request"), "{err}");
}

/// `publish URL CHANNEL -`: each non-empty stdin line is one publication and one answer line;
/// a line that is not JSON stops the command, naming its number.
#[tokio::test]
async fn publish_dash_publishes_each_stdin_line() {
    let addr = shared();
    let ch = channel("cli");
    let (code, out, err) =
        run(&["publish", &url(addr), &ch, "-"], &[("RPCHUB_TOKEN", ADMIN)], "{\"a\":1}\n\n2\n\"three\"\n")
            .await;
    assert_eq!(code, 0, "{err}");
    let answers: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(answers.iter().map(|a| a["offset"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);

    let http = format!("http://{addr}/rpc");
    let (code, out, err) =
        run(&["publish", "--token", ADMIN, &http, &ch, "-"], &[], "4\nnot json\n6\n").await;
    assert_eq!(code, 1);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(err.contains("stdin line 2 is not JSON"), "{err}");

    let (code, out, _) = run(&["call", &url(addr), "history", &format!("channel={ch}")], &[], "").await;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    let data: Vec<&Value> = v["publications"].as_array().unwrap().iter().map(|p| &p["data"]).collect();
    assert_eq!(data, [&json!({"a": 1}), &json!(2), &json!("three"), &json!(4)]);

    let (code, _, err) = run(&["publish", &url(addr), &ch, "5"], &[], "").await;
    assert_eq!(code, 1);
    assert!(err.contains("error -32001"), "{err}");
    // Over HTTP too: a refused token says what the server said, on one line.
    let (code, _, err) = run(&["publish", "--token", "not-a-known-key", &http, &ch, "5"], &[], "").await;
    assert_eq!(code, 1);
    assert!(err.contains("HTTP 401") && err.contains("not a known key") && err.lines().count() == 1, "{err}");
}

/// The repl driven through a pipe: results printed, errors printed, notifications printed as
/// they arrive, the history kept, and the end of input ends it with 0.
#[tokio::test]
async fn repl_answers_piped_lines_and_exits_at_the_end_of_input() {
    let addr = shared();
    let ch = channel("cli");
    publish(addr, &ch, json!("before")).await;
    let home = std::env::temp_dir().join(format!("rpchub-cli-home-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let mut c = Client::start(&["repl", &url(addr)], &[("HOME", home.to_str().unwrap())]);
    let mut stdin = c.stdin();
    writeln!(stdin, "ping").unwrap();
    assert_eq!(c.json().await, "pong");
    writeln!(stdin, "no_such_method").unwrap();
    assert!(c.err_line().await.starts_with("error -32601"));
    writeln!(stdin, "history channel={ch}").unwrap();
    // Pretty-printed: read until the closing brace.
    let mut text = String::new();
    loop {
        let l = tokio::time::timeout(WAIT, c.stdout.recv()).await.unwrap().unwrap();
        text.push_str(&l);
        if l == "}" {
            break;
        }
    }
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["publications"][0]["data"], "before");
    writeln!(stdin, r#"{{"jsonrpc":"2.0","id":"raw","method":"subscribe","params":{{"channel":"{ch}"}}}}"#)
        .unwrap();
    let id = c.json().await;
    assert!(id.is_string(), "{id}");
    let note = c.json().await;
    assert_eq!(note["method"], "subscription");
    assert_eq!(note["params"]["result"]["type"], "snapshot");
    publish(addr, &ch, json!("live")).await;
    let note = c.json().await;
    assert_eq!(note["params"]["result"]["data"], "live");
    drop(stdin);
    let (code, _, err) = c.exit().await;
    assert_eq!(code, 0, "{err}");
    let history = std::fs::read_to_string(home.join(".rpchub_history")).unwrap();
    assert!(history.contains("no_such_method"), "{history}");
    let _ = std::fs::remove_dir_all(&home);
}

/// A token that expires mid-subscribe: the server ends the subscription with `closed`
/// `token_expired`, which is printed; subscribing again is refused, so the command exits 1
/// with the server's reason instead of retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_prints_closed_and_exits_1_when_its_token_expires() {
    use rpchub::config::{Access, NamespaceConfig, Secret};
    const SECRET: &str = "cli-test-jwt-secret-0123456789";
    let mut config = crate::support::config();
    config.jwt_secret = Some(Secret(SECRET.into()));
    config.namespaces.insert(
        "members".into(),
        NamespaceConfig { subscribe: Access::Authenticated, ..NamespaceConfig::default() },
    );
    let server = crate::support::start(config).await;
    let now = rpchub::broker::memory::now_ms() / 1000;
    let claims =
        rpchub::auth::Claims { sub: "alice".into(), exp: now + 2, nbf: None, channels: None, publish: None };
    let token = rpchub::auth::mint_hs256(SECRET, &claims).unwrap();
    let mut c = Client::start(&["subscribe", &url(server.addr), "members:room"], &[("RPCHUB_TOKEN", &token)]);
    assert_eq!(c.json().await["type"], "snapshot");
    assert_eq!(
        c.json().await,
        json!({"type": "closed", "channel": "members:room", "reason": "token_expired"})
    );
    let (code, rest, err) = c.exit().await;
    assert_eq!(code, 1, "{err}");
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("rpchub: subscribe members:room: error -32001"), "{err}");
}

/// `--since` recovers from a position (no warning); a position the history no longer reaches
/// (a namespace keeping 2 publications) or an unknown epoch gives one warning line naming the
/// missed offsets or the epoch, and the retained tail follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_since_recovers_or_warns_naming_what_was_missed() {
    let mut config = crate::support::config();
    config.namespaces.insert(
        "short".into(),
        rpchub::config::NamespaceConfig { history_size: 2, ..rpchub::config::NamespaceConfig::default() },
    );
    let server = crate::support::start(config).await;
    let addr = server.addr;
    let ch = channel("short");
    let mut epoch = String::new();
    for n in 1..=5 {
        epoch = publish(addr, &ch, json!(n)).await["epoch"].as_str().unwrap().to_string();
    }
    // Within the history: offsets 4 and 5 after 3, recovered.
    let mut c = Client::start(&["subscribe", "--since", &format!("{epoch}:3"), &url(addr), &ch], &[]);
    let lines = [c.json().await, c.json().await, c.json().await];
    assert_eq!(lines[0]["recovered"], true, "{lines:?}");
    assert_eq!(offsets(&lines), [4, 5]);
    c.signal(libc::SIGINT);
    let (code, rest, err) = c.exit().await;
    assert_eq!((code, rest.len()), (0, 0), "{err}");
    assert!(!err.contains("warning"), "{err}");

    // Beyond it: 2 and 3 are gone; the warning names them, then the tail (4, 5) is printed.
    let mut c = Client::start(&["subscribe", "--since", &format!("{epoch}:1"), &url(addr), &ch], &[]);
    let warning = c.err_line().await;
    assert_eq!(
        warning,
        format!(
            "warning: {ch}: not recovered: offsets 2..=3 of epoch {epoch} are no longer in history and were missed"
        )
    );
    let lines = [c.json().await, c.json().await, c.json().await];
    assert_eq!(lines[0]["recovered"], false);
    assert_eq!(offsets(&lines), [4, 5]);
    c.signal(libc::SIGINT);
    assert_eq!(c.exit().await.0, 0);

    // Another epoch: the warning names both.
    let mut c = Client::start(&["subscribe", &url(addr), &ch, "--since", "gone:3"], &[]);
    let warning = c.err_line().await;
    assert!(warning.contains(&format!("the epoch changed from gone to {epoch}")), "{warning}");
    assert_eq!(c.json().await["type"], "snapshot");
    c.signal(libc::SIGINT);
    assert_eq!(c.exit().await.0, 0);

    // Not a position: refused before connecting.
    let (code, _, err) = run(&["subscribe", &url(addr), &ch, "--since", "gone:x"], &[], "").await;
    assert_eq!(code, 1);
    assert!(err.contains("--since gone:x: the offset is not a number"), "{err}");
}
