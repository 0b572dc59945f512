//! Real `redis-server` processes for the tests of the Redis broker: each on a free loopback port,
//! without persistence (`--save "" --appendonly no`), and killed when the test process exits
//! (a shell beside each waits on a pipe from this process and kills it when the pipe closes).
//!
//! When `redis-server` is not installed the tests that need it are skipped, unless
//! `RPCHUB_REDIS_TESTS=required` (as `.ci/run` sets), when they fail.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A `redis-server` of the tests.
#[derive(Debug)]
pub(crate) struct RedisServer {
    /// Its port on 127.0.0.1.
    pub(crate) port: u16,
    pid: u32,
    /// The shell that kills it when this process exits (its stdin is our pipe).
    guard: Child,
}

impl RedisServer {
    /// Starts one on a free port; `None` (the test skips) when `redis-server` is not installed.
    pub(crate) fn start() -> Option<RedisServer> {
        if !installed() {
            crate::support::skip_unless_required("RPCHUB_REDIS_TESTS", "redis-server is not installed");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Some(RedisServer::on(port))
    }

    /// Starts one on `port` (a restart of a killed one).
    pub(crate) fn on(port: u16) -> RedisServer {
        let script = r#"redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no --logfile "" >/dev/null 2>&1 &
pid=$!
echo $pid
read _
kill -9 $pid 2>/dev/null"#;
        let mut guard = Command::new("sh")
            .args(["-c", script, "sh", &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh starts");
        let mut line = String::new();
        BufReader::new(guard.stdout.take().unwrap()).read_line(&mut line).expect("the pid of redis-server");
        let pid = line.trim().parse().expect("a pid");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server listens on {port} within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer { port, pid, guard }
    }

    /// `redis://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against it; its output.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGKILLs it.
    pub(crate) fn kill(&mut self) {
        let _ = Command::new("kill").args(["-9", &self.pid.to_string()]).output();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "redis-server is gone within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.guard.kill();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-9", &self.pid.to_string()]).output();
        let _ = self.guard.kill();
    }
}

/// One server shared by the tests of this process that need no server of their own (`None`
/// when `redis-server` is not installed).
pub(crate) fn shared() -> Option<&'static RedisServer> {
    static SHARED: OnceLock<Option<RedisServer>> = OnceLock::new();
    SHARED.get_or_init(RedisServer::start).as_ref()
}

fn installed() -> bool {
    Command::new("redis-server").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}
