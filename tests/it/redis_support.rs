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
        RedisServer::with(port, &[] as &[&str])
    }

    /// Starts one on `port` with `extra` arguments.
    pub(crate) fn with(port: u16, extra: &[impl AsRef<std::ffi::OsStr>]) -> RedisServer {
        let script = r#"port=$1; shift
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --logfile "" "$@" >/dev/null 2>&1 &
pid=$!
echo $pid
read _
kill -9 $pid 2>/dev/null"#;
        let mut guard = Command::new("sh")
            .args(["-c", script, "sh", &port.to_string()])
            .args(extra)
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

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// `redis://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against it; its output.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        self.cli_over(&[], args)
    }

    /// Runs `redis-cli` with `connection` arguments first (`--tls ...` for a TLS one).
    pub(crate) fn cli_over(&self, connection: &[String], args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(connection)
            .args(["-c", "-p", &self.port.to_string()])
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

/// A Redis Cluster of three masters (no replicas), each a [`RedisServer`] started with
/// `--cluster-enabled yes`, created with `redis-cli --cluster create`.
#[derive(Debug)]
pub(crate) struct RedisCluster {
    /// Its nodes.
    pub(crate) nodes: Vec<RedisServer>,
    /// Where the nodes keep their cluster state (removed when it is dropped).
    dir: std::path::PathBuf,
    /// `redis-cli`'s arguments for a TLS cluster (empty for a plain one).
    cli_tls: Vec<String>,
}

impl RedisCluster {
    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3` (`rediss+cluster://` for TLS).
    pub(crate) fn url(&self) -> String {
        let nodes: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let scheme = if self.cli_tls.is_empty() { "redis+cluster" } else { "rediss+cluster" };
        format!("{scheme}://{}", nodes.join(","))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port whose cluster bus port (+10000) is free too.
fn cluster_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// One cluster shared by the tests of this process (`None` when `redis-server` is not installed).
pub(crate) fn shared_cluster() -> Option<&'static RedisCluster> {
    static SHARED: OnceLock<Option<RedisCluster>> = OnceLock::new();
    SHARED.get_or_init(RedisCluster::start).as_ref()
}

impl RedisCluster {
    /// Starts one (`None` when `redis-server` is not installed): three masters, a node counted
    /// as failed after 1 s.
    pub(crate) fn start() -> Option<RedisCluster> {
        RedisCluster::start_over(None)
    }

    /// Starts one whose nodes take TLS connections only, between them too (`tls-cluster`),
    /// with Redis's certificate of `tls`, authenticating clients by its CA.
    pub(crate) fn start_tls(tls: &TlsFiles) -> Option<RedisCluster> {
        RedisCluster::start_over(Some(tls))
    }

    fn start_over(tls: Option<&TlsFiles>) -> Option<RedisCluster> {
        shared()?;
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        remove_stale_cluster_dirs();
        let dir = std::env::temp_dir().join(format!("rpchub-it-cluster-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = |name: &str| tls.map(|t| t.path(name).to_str().unwrap().to_string()).unwrap_or_default();
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let port = cluster_port();
                let mut args = RedisCluster::args(&dir, port);
                if tls.is_some() {
                    // TLS only: the plain port is closed and the TLS one takes its number.
                    let more = ["--port", "0", "--tls-port", &port.to_string(), "--tls-cluster", "yes"];
                    args.extend(more.iter().map(|a| a.to_string()));
                    for (flag, file) in [
                        ("--tls-cert-file", "redis.pem"),
                        ("--tls-key-file", "redis-key.pem"),
                        ("--tls-ca-cert-file", "ca.pem"),
                    ] {
                        args.extend([flag.to_string(), path(file)]);
                    }
                }
                RedisServer::with(port, &args)
            })
            .collect();
        let cli_tls: Vec<String> = match tls {
            Some(_) => [
                "--tls",
                "--cacert",
                &path("ca.pem"),
                "--cert",
                &path("client.pem"),
                "--key",
                &path("client-key.pem"),
            ]
            .iter()
            .map(|a| a.to_string())
            .collect(),
            None => Vec::new(),
        };
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(&cli_tls)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(out.status.success(), "the cluster is created: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = RedisCluster { nodes, dir, cli_tls };
        cluster.wait_ok();
        Some(cluster)
    }

    /// The arguments of the node on `port`.
    fn args(dir: &std::path::Path, port: u16) -> Vec<String> {
        let conf = dir.join(format!("nodes-{port}.conf"));
        ["--cluster-enabled", "yes", "--cluster-node-timeout", "1000", "--cluster-config-file"]
            .iter()
            .map(|a| a.to_string())
            .chain([conf.to_str().unwrap().to_string()])
            .collect()
    }

    /// Waits until every node says the cluster is ok.
    pub(crate) fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .nodes
            .iter()
            .all(|n| n.cli_over(&self.cli_tls, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "the cluster is ok within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The index of the node that holds `key`.
    pub(crate) fn owner(&self, key: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| {
                let out = Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "EXISTS", key])
                    .output()
                    .expect("redis-cli runs");
                !String::from_utf8_lossy(&out.stdout).contains("MOVED")
            })
            .expect("a node holds every slot")
    }

    /// Starts node `i` again on its port, with its cluster state (its data is gone).
    pub(crate) fn restart(&mut self, i: usize) {
        let port = self.nodes[i].port;
        self.nodes[i] = RedisServer::with(port, &RedisCluster::args(&self.dir, port));
    }
}

/// Removes the cluster state directories of test processes that are gone (the shared cluster
/// lives as long as its process and cannot clean up after itself).
fn remove_stale_cluster_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("rpchub-it-cluster-").and_then(|r| r.split('-').next()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Certificates for a TLS Redis, made fresh by rcgen in a directory of their own (removed when
/// dropped): a CA, Redis's certificate from it (for 127.0.0.1), a client certificate from it,
/// and a CA that signed neither.
#[derive(Debug)]
pub(crate) struct TlsFiles {
    pub(crate) dir: std::path::PathBuf,
}

impl TlsFiles {
    /// Makes them.
    pub(crate) fn new() -> TlsFiles {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rpchub-it-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, pem: String| std::fs::write(dir.join(name), pem).unwrap();
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (Issuer::new(params, key), cert)
        };
        let (issuer, ca_cert) = ca("rpchub test CA");
        write("ca.pem", ca_cert.pem());
        let (_, other) = ca("another CA");
        write("other-ca.pem", other.pem());
        for (name, sans) in
            [("redis", vec!["127.0.0.1".to_string()]), ("client", vec!["rpchub-node".to_string()])]
        {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(sans).unwrap().signed_by(&key, &issuer).unwrap();
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}-key.pem"), key.serialize_pem());
        }
        TlsFiles { dir }
    }

    /// The path of one of them: `ca.pem`, `other-ca.pem`, `redis.pem`, `redis-key.pem`,
    /// `client.pem`, `client-key.pem`.
    pub(crate) fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.join(name)
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RedisServer {
    /// Starts one (`None` when `redis-server` is not installed) that also takes TLS
    /// connections, with Redis's certificate of `tls`, authenticating clients by the CA of
    /// `tls`; returns it and its TLS port (its plain port stays open, for `cli`).
    pub(crate) fn start_tls(tls: &TlsFiles) -> Option<(RedisServer, u16)> {
        shared()?;
        let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (port, tls_port) = (free(), free());
        let path = |name: &str| tls.path(name).to_str().unwrap().to_string();
        let args = [
            "--tls-port".to_string(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path("redis.pem"),
            "--tls-key-file".into(),
            path("redis-key.pem"),
            "--tls-ca-cert-file".into(),
            path("ca.pem"),
            "--tls-auth-clients".into(),
            "yes".into(),
        ];
        Some((RedisServer::with(port, &args), tls_port))
    }
}
