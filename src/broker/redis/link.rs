//! What the Redis broker talks to: one Redis or a cluster, its command connection and where
//! subscriptions are made; the broker URL's forms; the keys of a channel.

use super::*;

/// What the broker talks to.
pub(super) enum Target {
    /// One Redis.
    One(Box<(::redis::Client, AsyncConnectionConfig)>),
    /// A Redis Cluster, from its seed nodes' URLs, and the certificates of a TLS one.
    Cluster(Vec<String>, Option<TlsCertificates>),
}

impl Target {
    pub(super) fn cluster(
        &self,
        resp3: Option<tokio::sync::mpsc::UnboundedSender<::redis::PushInfo>>,
    ) -> RedisResultOf<ClusterClient> {
        let Target::Cluster(nodes, certs) = self else { unreachable!("only called for a cluster; qed") };
        let mut b = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
            .connection_timeout(REDIS_COMMAND_TIMEOUT)
            .response_timeout(REDIS_COMMAND_TIMEOUT);
        if let Some(certs) = certs {
            b = b.certs(certs.clone());
        }
        if let Some(tx) = resp3 {
            b = b.use_protocol(::redis::ProtocolVersion::RESP3).push_sender(tx);
        }
        b.build()
    }

    pub(super) async fn connect(&self) -> Result<Conn, RedisError> {
        match self {
            Target::One(one) => {
                let (client, config) = &**one;
                client.get_multiplexed_async_connection_with_config(config).await.map(Conn::One)
            }
            Target::Cluster(..) => self.cluster(None)?.get_async_connection().await.map(Conn::Cluster),
        }
    }
}

pub(super) type RedisResultOf<T> = Result<T, RedisError>;

/// A command connection to one Redis or to a cluster.
#[derive(Clone)]
pub(super) enum Conn {
    One(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::One(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::One(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::One(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where subscriptions are made: a pub/sub connection to one Redis (`SUBSCRIBE`), or a RESP3
/// cluster connection (`SSUBSCRIBE`, on the shard of each channel).
pub(super) enum Sink {
    One(PubSubSink),
    Cluster(ClusterConnection),
}

impl Sink {
    pub(super) async fn subscribe(&mut self, names: Vec<String>) -> Result<(), RedisError> {
        match self {
            Sink::One(s) => s.subscribe(names).await,
            // One command per channel: a cluster routes each to its own shard.
            Sink::Cluster(c) => {
                for name in names {
                    c.ssubscribe(name).await?;
                }
                Ok(())
            }
        }
    }

    pub(super) async fn unsubscribe(&mut self, name: String) -> Result<(), RedisError> {
        match self {
            Sink::One(s) => s.unsubscribe(name).await,
            Sink::Cluster(c) => c.sunsubscribe(name).await,
        }
    }

    /// Subscribes to creation notices: plain `SUBSCRIBE` on a cluster too, where a `PUBLISH`
    /// reaches every node.
    pub(super) async fn subscribe_notices(&mut self, names: Vec<String>) -> Result<(), RedisError> {
        match self {
            Sink::One(s) => s.subscribe(names).await,
            Sink::Cluster(c) => c.subscribe(names).await,
        }
    }

    pub(super) async fn unsubscribe_notices(&mut self, name: String) -> Result<(), RedisError> {
        match self {
            Sink::One(s) => s.unsubscribe(name).await,
            Sink::Cluster(c) => c.unsubscribe(name).await,
        }
    }
}

/// Refuses what this version does not serve, with a message that says so.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    if let Some(nodes) = cluster_nodes(url) {
        for node in &nodes {
            ::redis::Client::open(node.as_str()).map_err(|e| format!("broker {}: {e}", redacted(url)))?;
        }
        return Ok(());
    }
    if !url.starts_with("redis://") && !url.starts_with("rediss://") {
        return Err(format!(
            "broker {}: use \"memory\", \"redis://HOST:PORT\" (\"rediss://\" for TLS) or \
             \"redis+cluster://HOST:PORT[,HOST:PORT...]\"",
            redacted(url)
        ));
    }
    ::redis::Client::open(url).map(drop).map_err(|e| format!("broker {}: {e}", redacted(url)))
}

/// The seed nodes of a `redis+cluster://[user:password@]HOST:PORT[,HOST:PORT...]` URL, each as
/// `redis://[user:password@]HOST:PORT` (of `rediss+cluster://`, as `rediss://`); `None` for any
/// other URL.
pub(super) fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let (scheme, rest) = match url.strip_prefix("redis+cluster://") {
        Some(rest) => ("redis", rest),
        None => ("rediss", url.strip_prefix("rediss+cluster://")?),
    };
    let rest = rest.trim_end_matches('/');
    let (user, hosts) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    Some(hosts.split(',').filter(|h| !h.is_empty()).map(|h| format!("{scheme}://{user}{h}")).collect())
}

/// The certificates `[broker_tls]` names, read from their files (`None`: none named, the
/// system's roots and no client certificate).
pub(super) fn certificates(tls: &BrokerTls) -> Result<Option<TlsCertificates>, String> {
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("broker_tls.{what} {}: {e}", path.display()))
    };
    let root_cert = tls.ca_file.as_deref().map(|p| read("ca_file", p)).transpose()?;
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read("cert_file", cert)?,
            client_key: read("key_file", key)?,
        }),
        _ => None,
    };
    Ok((root_cert.is_some() || client_tls.is_some()).then_some(TlsCertificates { client_tls, root_cert }))
}

/// `url` with its user part (user and password) replaced by `***`.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "***".into() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

pub(super) fn key(channel: &str, what: &str) -> String {
    let mut out = String::new();
    write_key(&mut out, channel, &[what]);
    out
}

/// Appends `channel`'s key made of `what`'s parts to `out`: `rpchub:{CHANNEL}:WHAT` (one
/// channel's keys share the hash tag, so they sit in one slot of a cluster).
fn write_key(out: &mut String, channel: &str, what: &[&str]) {
    [PREFIX, channel, "}:"].iter().chain(what).for_each(|p| out.push_str(p));
}

/// The hash of `user`'s read cursors (its own hash tag: one user's cursors sit in one slot).
pub(super) fn cursors_key(user: &str) -> String {
    format!("rpchub:cursors:{{{user}}}")
}

/// `channel`'s namespace: the part before its first `:`, or the whole name.
pub(super) fn namespace(channel: &str) -> &str {
    channel.split_once(':').map_or(channel, |(ns, _)| ns)
}

/// The creation notice channel of namespace `ns`.
pub(super) fn notice_of(ns: &str) -> String {
    format!("{NOTICE}{ns}")
}

/// `s` with the bytes a Redis glob gives a meaning (`* ? [ ] \`) escaped.
pub(super) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The channel of a pub/sub channel name.
pub(super) fn channel_of(pubsub: &str) -> Option<&str> {
    pubsub.strip_prefix(PREFIX)?.strip_suffix("}:pub")
}

pub(super) fn new_epoch() -> String {
    let mut out = String::new();
    write_new_epoch(&mut out);
    out
}

/// Appends a new random epoch to `out`: 12 hex digits.
fn write_new_epoch(out: &mut String) {
    use std::fmt::Write;
    let _ = write!(out, "{:012x}", rand::random::<u64>() >> 16);
}

pub(super) fn ttl_ms(r: Retention) -> u64 {
    (r.ttl.as_millis() as u64).max(1)
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// One call of a Lua script, written straight into one command buffer (`EVALSHA`, its keys,
/// its arguments). redis-rs's `ScriptInvocation` holds each key and argument in a vector of
/// its own and copies them into a command when it is sent, and the keys were strings of their
/// own before that: on the publish path (5 keys, 12 arguments) about 35 allocations per call,
/// where this makes three (the command's two buffers and a scratch string for the keys).
pub(super) struct Eval<'s> {
    script: &'s Script,
    cmd: Cmd,
    scratch: String,
}

impl<'s> Eval<'s> {
    /// A call of `script` with `keys` keys: exactly that many [`Eval::key`] calls come first,
    /// then the arguments; `bytes` is about what they will take (the buffer grows past it).
    pub(super) fn new(script: &'s Script, keys: usize, bytes: usize) -> Eval<'s> {
        let mut cmd = Cmd::with_capacity(keys + 16, bytes.saturating_add(64));
        cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys);
        Eval { script, cmd, scratch: String::with_capacity(128) }
    }

    /// Adds `channel`'s key `what` (as [`key`] names it).
    pub(super) fn key(&mut self, channel: &str, what: &[&str]) -> &mut Self {
        self.scratch.clear();
        write_key(&mut self.scratch, channel, what);
        self.cmd.arg(self.scratch.as_bytes());
        self
    }

    /// Adds an argument.
    pub(super) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    /// Adds one argument made of `parts`, one after the other.
    pub(super) fn joined(&mut self, parts: &[&str]) -> &mut Self {
        self.scratch.clear();
        parts.iter().for_each(|p| self.scratch.push_str(p));
        self.cmd.arg(self.scratch.as_bytes());
        self
    }

    /// Adds a new epoch, as [`new_epoch`] makes one.
    pub(super) fn new_epoch(&mut self) -> &mut Self {
        self.scratch.clear();
        write_new_epoch(&mut self.scratch);
        self.cmd.arg(self.scratch.as_bytes());
        self
    }

    /// Runs the call; when Redis does not have the script (a restart, `SCRIPT FLUSH`), loads it
    /// and runs the call again, as `ScriptInvocation` does.
    pub(super) async fn invoke<T: FromRedisValue>(&self, conn: &mut Conn) -> RedisResultOf<T> {
        match self.cmd.query_async(conn).await {
            Err(e) if e.kind() == ::redis::ErrorKind::Server(::redis::ServerErrorKind::NoScript) => {
                self.script.prepare_invoke().load_async(conn).await?;
                self.cmd.query_async(conn).await
            }
            other => other,
        }
    }
}
