//! Starts real servers on port 0 and talks to them with real WebSocket clients.

#![allow(dead_code)]

use futures::{SinkExt, StreamExt};
use rpchub::{Config, Running};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The admin token of every test server.
pub(crate) const ADMIN: &str = "test-admin-token";
/// How long a test waits for something that should arrive.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// A configuration for tests: port 0, the admin token, the default limits.
pub(crate) fn config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_token: Some(rpchub::config::Secret(ADMIN.into())),
        // Instances made through the API (schemathesis tries that route too) go to a file of
        // this test process, not into the working directory.
        instances_file: std::env::temp_dir().join(format!("rpchub-it-instances-{}.json", std::process::id())),
        ..Config::default()
    }
}

/// Starts a server with `config` on the current runtime.
pub(crate) async fn start(config: Config) -> Running {
    rpchub::start(config).await.expect("server starts")
}

/// One server shared by the tests of this binary that need no special configuration. It runs
/// on its own runtime thread, so tests on their own runtimes can all use it.
pub(crate) fn shared() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("shared-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let mut c = config();
                    c.limits.calls_per_second = 100_000;
                    let running = start(c).await;
                    tx.send(running.addr).unwrap();
                    running.wait().await;
                });
            })
            .unwrap();
        rx.recv().unwrap()
    })
}

/// A raw WebSocket client for exact wire JSON.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `ws://addr/ws/rpc`, optionally with a bearer token.
pub(crate) async fn ws(addr: SocketAddr, token: Option<&str>) -> Ws {
    try_ws(addr, "/ws/rpc", token, &[]).await.expect("upgrade succeeds")
}

/// Opens `ws://addr{path}` with extra headers; `Err(status)` if the upgrade is refused.
pub(crate) async fn try_ws(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<Ws, u16> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    for (k, v) in headers {
        req.headers_mut().insert(
            k.parse::<tokio_tungstenite::tungstenite::http::HeaderName>().unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("connect: {e}"),
    }
}

/// Sends a text frame.
pub(crate) async fn send(ws: &mut Ws, v: impl ToString) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// The next text message as JSON (pings are answered by the client library).
pub(crate) async fn recv(ws: &mut Ws) -> Value {
    loop {
        let m =
            tokio::time::timeout(WAIT, ws.next()).await.expect("a message within the wait").expect("open");
        match m.expect("a message") {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => {}
        }
    }
}

/// Waits for the connection to end; returns the close code, if a close frame came.
pub(crate) async fn closed(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("the connection ends within the wait") {
            Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// True if nothing arrives within `d`.
pub(crate) async fn silent(ws: &mut Ws, d: Duration) -> bool {
    tokio::time::timeout(d, ws.next()).await.is_err()
}

/// Sends a request with `id` and returns its response, keeping notifications that arrive first
/// in `notes`.
pub(crate) async fn call_keep(
    ws: &mut Ws,
    id: u64,
    method: &str,
    params: Value,
    notes: &mut Vec<Value>,
) -> Value {
    send(ws, json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})).await;
    loop {
        let v = recv(ws).await;
        if v.get("id") == Some(&json!(id)) {
            return v;
        }
        notes.push(v);
    }
}

/// Sends a request and returns its response, dropping notifications that arrive first.
pub(crate) async fn call(ws: &mut Ws, method: &str, params: Value) -> Value {
    call_keep(ws, 9_999_999, method, params, &mut Vec::new()).await
}

/// Subscribes; returns the subscription id and the snapshot event.
pub(crate) async fn subscribe(ws: &mut Ws, params: Value) -> (String, Value) {
    let r = call(ws, "subscribe", params).await;
    let id = r["result"].as_str().unwrap_or_else(|| panic!("subscribe failed: {r}")).to_string();
    let snap = recv(ws).await;
    assert_eq!(snap["method"], "subscription", "{snap}");
    assert_eq!(snap["params"]["subscription"], id.as_str());
    assert_eq!(snap["params"]["result"]["type"], "snapshot");
    (id, snap["params"]["result"].clone())
}

/// The next notification's event.
pub(crate) async fn event(ws: &mut Ws) -> Value {
    let v = recv(ws).await;
    assert_eq!(v["method"], "subscription", "{v}");
    v["params"]["result"].clone()
}

/// Publishes with the admin token over a fresh connection; returns `{epoch, offset}`.
pub(crate) async fn publish(addr: SocketAddr, channel: &str, data: Value) -> Value {
    let mut w = ws(addr, Some(ADMIN)).await;
    let r = call(&mut w, "publish", json!({"channel": channel, "data": data})).await;
    r["result"].clone()
}

/// A unique channel name for a test.
pub(crate) fn channel(ns: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{ns}:t{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// POSTs to `path` and returns the status and body.
pub(crate) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await.expect("response").unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, dechunk(&body))
}

fn dechunk(body: &str) -> String {
    // hyper answers fixed-length bodies here; keep a fallback for chunked ones.
    if !body.contains("\r\n") {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { return body.to_string() };
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

/// A WebSocket spoken by hand over TCP, for frames a well-behaved library would never send.
pub(crate) mod raw {
    use super::WAIT;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Upgrades a TCP connection on `/ws/rpc` and returns it.
    pub(crate) async fn connect(addr: SocketAddr) -> TcpStream {
        upgrade(TcpStream::connect(addr).await.unwrap(), addr).await
    }

    /// Like [`connect`], with the client's receive buffer cut to `bytes` before connecting: a
    /// client whose kernel takes little for it, so what it does not read waits at the server.
    pub(crate) async fn connect_small_window(addr: SocketAddr, bytes: u32) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(bytes).unwrap();
        upgrade(socket.connect(addr).await.unwrap(), addr).await
    }

    /// Upgrades `s` on `/ws/rpc`.
    async fn upgrade(s: TcpStream, addr: SocketAddr) -> TcpStream {
        upgrade_on(s, addr, "/ws/rpc", "").await.0
    }

    /// Upgrades a TCP connection on `path` with the extra request header lines `headers`
    /// (each ending in CRLF); returns it and the response's head.
    pub(crate) async fn connect_with(addr: SocketAddr, path: &str, headers: &str) -> (TcpStream, String) {
        upgrade_on(TcpStream::connect(addr).await.unwrap(), addr, path, headers).await
    }

    async fn upgrade_on(
        mut s: TcpStream,
        addr: SocketAddr,
        path: &str,
        headers: &str,
    ) -> (TcpStream, String) {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            tokio::time::timeout(WAIT, s.read_exact(&mut b)).await.unwrap().unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        (s, head)
    }

    /// A client frame: first byte `b0` (FIN, RSV, opcode), masked with a fixed key.
    pub(crate) fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![b0];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xffff {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// A final text frame.
    pub(crate) fn text(s: &str) -> Vec<u8> {
        frame(0x81, s.as_bytes())
    }

    /// Reads one server frame: (opcode, payload); `None` at the end of the stream.
    pub(crate) async fn read(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
        read_whole(s).await.map(|(b0, p)| (b0 & 0x0f, p))
    }

    /// Reads one server frame: (its first byte, with FIN, RSV and opcode; payload).
    pub(crate) async fn read_whole(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
        let mut h = [0u8; 2];
        tokio::time::timeout(WAIT, s.read_exact(&mut h)).await.expect("a frame within the wait").ok()?;
        assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                s.read_exact(&mut b).await.ok()?;
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                s.read_exact(&mut b).await.ok()?;
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).await.ok()?;
        Some((h[0], p))
    }

    /// Reads frames until a close frame and returns its code (`None`: the stream ended first).
    pub(crate) async fn close_code(s: &mut TcpStream) -> Option<u16> {
        texts_until_close(s, |_| {}).await
    }

    /// Reads until the server's close frame, handing each text message's JSON to `on_text`;
    /// returns the close code (`None` if the stream ends without one).
    pub(crate) async fn texts_until_close(
        s: &mut TcpStream,
        mut on_text: impl FnMut(serde_json::Value),
    ) -> Option<u16> {
        loop {
            match read(s).await {
                Some((0x8, p)) if p.len() >= 2 => return Some(u16::from_be_bytes([p[0], p[1]])),
                Some((0x8, _)) => return Some(1005),
                Some((0x1, p)) => on_text(serde_json::from_slice(&p).unwrap()),
                Some(_) => continue,
                None => return None,
            }
        }
    }
}

/// A test whose outside tool (a browser, node packages, a Python venv) is missing, for `why`:
/// it says it is skipped, unless `var` is `required` (as `.ci/run` sets it), where the missing
/// tool fails the test instead.
pub(crate) fn skip_unless_required(var: &str, why: &str) {
    assert_ne!(std::env::var(var).as_deref(), Ok("required"), "{var}=required, but {why}");
    eprintln!("skipped: {why}");
}

/// Starts the built binary on a free port with the admin token, `args` after `serve --listen`
/// and `env` set, its log piped; returns once it accepts connections.
pub(crate) async fn serve_binary(args: &[&str], env: &[(&str, &str)]) -> (ServerProcess, SocketAddr) {
    serve_binary_limited(args, env, None).await
}

/// Like [`serve_binary`], with the process's descriptor limit (soft and hard) set to `nofile`.
pub(crate) async fn serve_binary_limited(
    args: &[&str],
    env: &[(&str, &str)],
    nofile: Option<u64>,
) -> (ServerProcess, SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = serve_binary_at(port, args, env, nofile, std::process::Stdio::piped()).await;
    (child, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Starts the built binary on `port` with the admin token, `args` after `serve --listen`,
/// `env` set, the descriptor limit `nofile` and its log to `stderr`; returns once it accepts
/// connections. Killed on drop from the moment it is started, also when it does not start in
/// time.
pub(crate) async fn serve_binary_at(
    port: u16,
    args: &[&str],
    env: &[(&str, &str)],
    nofile: Option<u64>,
    stderr: std::process::Stdio,
) -> ServerProcess {
    use std::process::{Command, Stdio};
    let mut command = Command::new(env!("CARGO_BIN_EXE_rpchub"));
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .env("RPCHUB_ADMIN_TOKEN", ADMIN)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(stderr);
    if let Some(n) = nofile {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the child between fork and exec and only makes one
        // system call (setrlimit), which is async-signal-safe; it allocates nothing.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, n, n));
        }
    }
    let child = ServerProcess(Some(command.spawn().unwrap()));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + WAIT;
    while TcpStream::connect(addr).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the server did not start on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

/// Waits until `done`, checking every 5 ms for up to `within`; true if it came.
pub(crate) async fn until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    while !done() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// A server process of the built binary, killed (SIGKILL, as a crash would) when dropped, also
/// when the test fails; used as its [`std::process::Child`].
#[derive(Debug)]
pub(crate) struct ServerProcess(Option<std::process::Child>);

impl ServerProcess {
    /// The process, no longer killed on drop (to wait for its end and read its output).
    pub(crate) fn into_child(mut self) -> std::process::Child {
        self.0.take().expect("taken only here; qed")
    }
}

impl std::ops::Deref for ServerProcess {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        self.0.as_ref().expect("taken only by into_child; qed")
    }
}

impl std::ops::DerefMut for ServerProcess {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("taken only by into_child; qed")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts the built binary on `port` with the admin token and `args` after `serve --listen`,
/// its output dropped; returns once it accepts connections. The same port each time, for a
/// server restarted under clients that reconnect to the address they know.
pub(crate) async fn serve_binary_on(port: u16, args: &[&str]) -> ServerProcess {
    serve_binary_at(port, args, &[], None, std::process::Stdio::null()).await
}

/// Stops a server started by [`serve_binary`] with SIGTERM and returns everything it logged.
pub(crate) async fn stop_for_log(child: ServerProcess) -> String {
    let child = child.into_child();
    // SAFETY: signalling our own child.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM)
    };
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A TCP connection to `addr` from the loopback address `from` (`127.0.0.N`), as a client of
/// another address.
pub(crate) async fn connect_from(from: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(addr).await
}

/// True if the server closed `s` (end of stream or reset) within `d`, with nothing sent.
pub(crate) async fn closed_within(s: &mut TcpStream, d: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut b = [0u8; 64];
    matches!(tokio::time::timeout(d, s.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_)))
}

/// The value of the metric line `name` (with its labels) in `/metrics`, 0 when absent.
pub(crate) async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (_, text) = http(addr, "GET", "/metrics", &[], "").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Whether the browser tests can run here: Chromium (`CHROMIUM`, default `/usr/bin/chromium`),
/// `npm ci` done in `script_dir` (tests/browser), and node; else why not.
pub(crate) fn browser_ready(script_dir: &Path) -> Result<(), String> {
    if !Path::new(&std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())).exists() {
        return Err("no Chromium at /usr/bin/chromium (set CHROMIUM)".into());
    }
    if !script_dir.join("node_modules/playwright-core").exists() {
        return Err(format!("run `npm ci` in {}", script_dir.display()));
    }
    std::process::Command::new("node").arg("--version").output().map(|_| ()).map_err(|e| format!("node: {e}"))
}
