//! The server under test and how the bench reaches it: the URL (loopback unless allowed
//! otherwise), TCP connections from chosen loopback source addresses, and the WebSocket upgrade
//! through tokio-tungstenite for the connections that send calls (the publisher, rpc).
//!
//! Why many source addresses: rpchub allows 100 upgrades per minute per client IP, and one
//! address has about 28,000 ephemeral ports towards one server port. Spreading connections over
//! 127.B.x.y (the whole 127/8 is loopback on Linux), at most `--per-ip` each, stays under both.

use super::{CommonArgs, Error};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A WebSocket connection through tokio-tungstenite.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Addresses one block 127.B.x.y offers: x in 0..=255, y in 1..=250.
const BLOCK_ADDRESSES: usize = 256 * 250;

/// Blocks (the B of 127.B.x.y) by purpose, so no two kinds of connection share an address.
pub(crate) mod block {
    /// Fan-out subscribers.
    pub(crate) const SUBSCRIBERS: u8 = 1;
    /// The fan-out publisher.
    pub(crate) const PUBLISHER: u8 = 2;
    /// Idle's warm-up connections.
    pub(crate) const WARMUP: u8 = 3;
    /// rpc connections.
    pub(crate) const RPC: u8 = 4;
    /// Idle connections.
    pub(crate) const IDLE: u8 = 5;
    /// Storm clients.
    pub(crate) const STORM: u8 = 8;
}

/// The server under test.
pub(crate) struct Target {
    url: String,
    addr: SocketAddr,
    token: Option<String>,
    /// `host:port` as written in the URL (the Host header).
    host: String,
    /// Path and query of the URL.
    path: String,
}

impl Target {
    /// Checks `--url`: `ws://`, resolvable, and loopback unless `--allow-remote`.
    pub(crate) fn new(c: &CommonArgs) -> Result<Target, Error> {
        Target::of("--url", &c.url, c)
    }

    /// Checks `url`, given as option `flag`, as [`Target::new`] checks `--url` (same token).
    pub(crate) fn of(flag: &str, url: &str, c: &CommonArgs) -> Result<Target, Error> {
        let rest = url.strip_prefix("ws://").ok_or_else(|| {
            Error::Usage(format!("{flag} {url}: use ws://HOST:PORT/PATH (wss:// is not supported)"))
        })?;
        let (host, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let mut addrs: Vec<SocketAddr> = host
            .to_socket_addrs()
            .map_err(|e| Error::Usage(format!("{flag}: cannot resolve {host}: {e}")))?
            .collect();
        // IPv4 first: the source addresses are 127.x.y.z.
        addrs.sort_by_key(|a| !a.is_ipv4());
        let addr = *addrs.first().ok_or_else(|| Error::Usage(format!("{flag}: no address for {host}")))?;
        if !addr.ip().is_loopback() && !c.allow_remote {
            return Err(Error::Usage(format!(
                "{flag} {url}: {} is not a loopback address; pass --allow-remote to load a remote server",
                addr.ip()
            )));
        }
        let path = if path.starts_with('?') { format!("/{path}") } else { path.to_string() };
        Ok(Target { url: url.to_string(), addr, token: c.token.clone(), host: host.to_string(), path })
    }

    /// True when connections may come from generated 127.x.y.z source addresses.
    pub(crate) fn spreads_sources(&self) -> bool {
        matches!(self.addr.ip(), IpAddr::V4(ip) if ip.is_loopback())
    }

    /// The URL as given.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The token sent as `Authorization: Bearer`.
    pub(crate) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `host:port` and `/path?query` of the URL, for a hand-written upgrade request.
    pub(crate) fn host_and_path(&self) -> (&str, &str) {
        (&self.host, &self.path)
    }

    /// A TCP connection from `src` (any port), or from the kernel's choice when None.
    pub(crate) async fn tcp(&self, src: Option<Ipv4Addr>) -> Result<TcpStream, String> {
        let sock = match self.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| format!("socket: {e}"))?;
        if let Some(ip) = src.filter(|_| self.spreads_sources()) {
            // Without this, bind() picks the port alone and runs out after ~28,000 connections
            // over all source addresses together; with it, connect() picks it per 4-tuple.
            let one: libc::c_int = 1;
            // SAFETY: a valid socket descriptor and a c_int option value of the size passed.
            #[allow(unsafe_code)]
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            sock.bind(SocketAddr::new(ip.into(), 0)).map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let stream = sock.connect(self.addr).await.map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// TCP connect from `src` and the WebSocket upgrade through tokio-tungstenite.
    pub(crate) async fn connect(&self, src: Option<Ipv4Addr>, read_buffer: usize) -> Result<Ws, String> {
        let stream = self.tcp(src).await?;
        let mut req = self.url.as_str().into_client_request().map_err(|e| format!("bad url: {e}"))?;
        if let Some(t) = &self.token {
            let v = format!("Bearer {t}").parse().map_err(|_| "the token is not a valid header value")?;
            req.headers_mut().insert("authorization", v);
        }
        let config = WebSocketConfig::default().read_buffer_size(read_buffer);
        match tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                Err(format!("upgrade refused: HTTP {}", resp.status().as_u16()))
            }
            Err(e) => Err(format!("upgrade: {e}")),
        }
    }
}

/// Source addresses for connection number i of one purpose: 127.B.x.y, at most `per_ip`
/// connections each. Each run starts at a random address of the block, so a run that follows
/// another within a minute does not inherit its upgrade counts.
#[derive(Clone)]
pub(crate) struct SourceIps {
    per_ip: usize,
    block: u8,
    first: usize,
}

impl SourceIps {
    /// Addresses of `block`; none (the kernel's choice) when `per_ip` is 0 or the target is
    /// not an IPv4 loopback address.
    pub(crate) fn new(c: &CommonArgs, target: &Target, block: u8) -> SourceIps {
        let per_ip = if target.spreads_sources() { c.per_ip } else { 0 };
        SourceIps { per_ip, block, first: rand::random::<u32>() as usize % BLOCK_ADDRESSES }
    }

    /// The source address of connection `i`.
    pub(crate) fn for_conn(&self, i: usize) -> Option<Ipv4Addr> {
        if self.per_ip == 0 {
            return None;
        }
        let k = (self.first + i / self.per_ip) % BLOCK_ADDRESSES;
        Some(Ipv4Addr::new(127, self.block, (k / 250) as u8, (1 + k % 250) as u8))
    }

    /// How many distinct addresses `n` connections use.
    pub(crate) fn count(&self, n: usize) -> usize {
        if self.per_ip == 0 { 1 } else { n.div_ceil(self.per_ip).min(BLOCK_ADDRESSES) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    fn common(args: &[&str]) -> CommonArgs {
        Cli::parse_from(std::iter::once("bench").chain(args.iter().copied())).common
    }

    #[test]
    fn refuses_remote_hosts_unless_allowed() {
        let remote = ["--url", "ws://10.1.2.3:7410/ws/rpc"];
        assert!(matches!(Target::new(&common(&remote)), Err(Error::Usage(_))));
        let allowed = Target::new(&common(&[remote[0], remote[1], "--allow-remote"])).unwrap();
        assert!(!allowed.spreads_sources());
        assert!(Target::new(&common(&["--url", "http://127.0.0.1:7410/rpc"])).is_err());
        let local = Target::new(&common(&[])).unwrap();
        assert!(local.spreads_sources());
        assert_eq!(local.host_and_path(), ("127.0.0.1:7410", "/ws/rpc"));
    }

    #[test]
    fn at_most_per_ip_connections_per_address() {
        let c = common(&["--per-ip", "90"]);
        let ips = SourceIps::new(&c, &Target::new(&c).unwrap(), block::STORM);
        let mut seen = std::collections::HashMap::new();
        for i in 0..1000 {
            let ip = ips.for_conn(i).unwrap();
            assert_eq!(ip.octets()[..2], [127, block::STORM]);
            assert_ne!(ip.octets()[3], 0);
            *seen.entry(ip).or_insert(0) += 1;
        }
        assert!(seen.values().all(|&n| n <= 90));
        assert_eq!(seen.len(), ips.count(1000));
    }
}
