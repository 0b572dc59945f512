//! What the Redis broker talks to: one Redis or a cluster, its command connection and where
//! subscriptions are made; the broker URL's forms; the keys of a channel.

use super::*;

/// What the broker talks to.
pub(super) enum Target {
    /// One Redis.
    One(Box<(::redis::Client, AsyncConnectionConfig)>),
    /// A Redis Cluster, from its seed nodes' URLs.
    Cluster(Vec<String>),
}

impl Target {
    pub(super) fn cluster(
        &self,
        resp3: Option<tokio::sync::mpsc::UnboundedSender<::redis::PushInfo>>,
    ) -> RedisResultOf<ClusterClient> {
        let Target::Cluster(nodes) = self else { unreachable!("only called for a cluster; qed") };
        let mut b = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
            .connection_timeout(REDIS_COMMAND_TIMEOUT)
            .response_timeout(REDIS_COMMAND_TIMEOUT);
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
            Target::Cluster(_) => self.cluster(None)?.get_async_connection().await.map(Conn::Cluster),
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
}

/// Refuses what this version does not serve, with a message that says so.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    if let Some(nodes) = cluster_nodes(url) {
        for node in &nodes {
            ::redis::Client::open(node.as_str()).map_err(|e| format!("broker {}: {e}", redacted(url)))?;
        }
        return Ok(());
    }
    if url.starts_with("rediss://") || url.starts_with("rediss+cluster://") {
        return Err(format!(
            "broker {}: TLS to Redis is not built into this version; use redis:// (on a private \
             network, or through a TLS tunnel)",
            redacted(url)
        ));
    }
    if !url.starts_with("redis://") {
        return Err(format!("broker {}: use \"memory\" or \"redis://HOST:PORT\"", redacted(url)));
    }
    ::redis::Client::open(url).map(drop).map_err(|e| format!("broker {}: {e}", redacted(url)))
}

/// The seed nodes of a `redis+cluster://[user:password@]HOST:PORT[,HOST:PORT...]` URL, each as
/// `redis://[user:password@]HOST:PORT`; `None` for any other URL.
pub(super) fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let rest = url.strip_prefix("redis+cluster://")?;
    let rest = rest.trim_end_matches('/');
    let (user, hosts) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    Some(hosts.split(',').filter(|h| !h.is_empty()).map(|h| format!("redis://{user}{h}")).collect())
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
    format!("{PREFIX}{channel}}}:{what}")
}

/// The channel of a pub/sub channel name.
pub(super) fn channel_of(pubsub: &str) -> Option<&str> {
    pubsub.strip_prefix(PREFIX)?.strip_suffix("}:pub")
}

pub(super) fn new_epoch() -> String {
    format!("{:012x}", rand::random::<u64>() >> 16)
}

pub(super) fn ttl_ms(r: Retention) -> u64 {
    (r.ttl.as_millis() as u64).max(1)
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}
