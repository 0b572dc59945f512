//! The server's configuration: plain serde data with defaults, loaded one way.
//!
//! Sources, later ones winning: built-in defaults ([`crate::constants`]) < the TOML file
//! (`--config`) < environment variables < command-line flags. Environment variables are
//! `RPCHUB_<KEY>` for top-level keys and `RPCHUB_<TABLE>__<KEY>` for nested ones (for example
//! `RPCHUB_LIMITS__MAX_MESSAGE_BYTES=8192`), plus the fixed names `RPCHUB_ADMIN_TOKEN`,
//! `RPCHUB_JWT_SECRET` and `ALLOWED_WS_ORIGINS` (comma separated). Any key can also be set with
//! `--set key=value` (`--set limits.ping_interval=30s`). The result is validated once
//! ([`Config::validate`]) and then only read.
//!
//! Files: this one is [`Config`] and its loading; `limits`, `namespace` and `tokens` the
//! tables; `sources` the reading of environment variables and `--set` values.

mod backend;
mod instances;
mod limits;
mod namespace;
mod sources;
#[cfg(test)]
mod tests;
mod tokens;

pub use backend::{BackendConfig, HOOK_EVENTS, UpstreamConfig};
pub use instances::{InstanceConfig, valid_instance_name};
pub use limits::Limits;
pub use namespace::{Access, Mode, NamespaceConfig, OnSlow};
pub use tokens::{Secret, StaticToken};

use crate::constants::*;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use sources::{ENV_KEYS, override_toml, string_or_list};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything `rpchub serve` can be told.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address and port to listen on (HTTP and WebSocket share it).
    pub listen: SocketAddr,
    /// `memory`, `redis://HOST:PORT`, `rediss://HOST:PORT` (TLS) or
    /// `redis+cluster://HOST:PORT[,HOST:PORT...]` (`rediss+cluster://` with TLS).
    pub broker: String,
    /// Certificates of a TLS broker (`rediss://`): the CA to trust instead of the system's, and
    /// the client certificate and key when Redis asks for one (its `tls-auth-clients`).
    pub broker_tls: BrokerTls,
    /// Name of this node in `info` and logs; default: a random one per start.
    pub node_id: Option<String>,
    /// Run the built-in market simulator (`trades:*`, `l2Book:*`).
    pub demo: bool,
    /// Log filter, `tracing` EnvFilter syntax (`info`, `rpchub=debug`).
    pub log: String,
    /// `text` (one readable line per event) or `json` (one JSON object per line, for machines).
    pub log_format: LogFormat,
    /// A static token that may do everything (env `RPCHUB_ADMIN_TOKEN`).
    pub admin_token: Option<Secret>,
    /// HS256 secret for JWTs (env `RPCHUB_JWT_SECRET`).
    pub jwt_secret: Option<Secret>,
    /// PEM public key file for RS256 or ES256 JWTs.
    pub jwt_public_key_file: Option<PathBuf>,
    /// When set, a JWT must carry this `aud`.
    pub jwt_audience: Option<String>,
    /// When set, a JWT must carry this `iss`.
    pub jwt_issuer: Option<String>,
    /// Origins allowed to open WebSockets (env `ALLOWED_WS_ORIGINS`, comma separated). Empty:
    /// only same-origin pages (Origin host equals Host). Requests without Origin are accepted.
    #[serde(deserialize_with = "string_or_list")]
    pub allowed_origins: Vec<String>,
    /// Origins whose pages may call `POST /rpc` across origins (CORS), `*` for any. Empty: no
    /// cross-origin calls (a POST from a page of another origin is 403).
    #[serde(deserialize_with = "string_or_list")]
    pub cors_origins: Vec<String>,
    /// How long shutdown waits for clients before exiting anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How long a client's presence entry (`presence`, `join_leave`) outlives the last refresh
    /// of its node: a node that dies without saying goodbye has its clients leave within it.
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
    /// permessage-deflate (RFC 7692) for the WebSocket clients that offer it (`auto`), on every
    /// front door, or never (`off`): each publication is compressed once for all its
    /// subscribers.
    pub compression: Compression,
    /// Messages with fewer payload bytes than this go uncompressed on a connection with
    /// permessage-deflate.
    pub compression_min_bytes: usize,
    /// Hard limits that keep one client from hurting others.
    pub limits: Limits,
    /// Settings of channels whose namespace is not listed in `namespaces` (and of bare names).
    pub default_namespace: NamespaceConfig,
    /// Per-namespace settings: the key is the part of the channel name before the first `:`.
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// Static API keys.
    pub tokens: Vec<StaticToken>,
    /// The `/ws/{instance}` event sources, by name (`[instances.NAME]`).
    pub instances: BTreeMap<String, InstanceConfig>,
    /// Where `POST /api/events/websocket/{instance}` keeps the instances it creates or changes
    /// (JSON, written atomically); relative paths are from the working directory.
    pub instances_file: PathBuf,
    /// The application's backend: proxied methods, permission checks, lifecycle hooks.
    pub backend: BackendConfig,
    /// An HTTP-only JSON-RPC node whose methods are forwarded.
    pub upstream: UpstreamConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("DEFAULT_LISTEN is a socket address; qed"),
            broker: DEFAULT_BROKER.to_string(),
            broker_tls: BrokerTls::default(),
            node_id: None,
            demo: false,
            log: DEFAULT_LOG.to_string(),
            log_format: LogFormat::Text,
            admin_token: None,
            jwt_secret: None,
            jwt_public_key_file: None,
            jwt_audience: None,
            jwt_issuer: None,
            allowed_origins: Vec::new(),
            cors_origins: Vec::new(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            presence_ttl: DEFAULT_PRESENCE_TTL,
            compression: Compression::Auto,
            compression_min_bytes: crate::constants::DEFAULT_COMPRESSION_MIN_BYTES,
            limits: Limits::default(),
            default_namespace: NamespaceConfig::default(),
            namespaces: BTreeMap::new(),
            tokens: Vec::new(),
            instances: BTreeMap::new(),
            instances_file: PathBuf::from(DEFAULT_INSTANCES_FILE),
            backend: BackendConfig::default(),
            upstream: UpstreamConfig::default(),
        }
    }
}

/// permessage-deflate for the clients that offer it (`compression`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Negotiated with every client that offers it in a form the server can honour.
    #[default]
    Auto,
    /// Never negotiated.
    Off,
}

/// How log lines are written (to stderr).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines: time, level, message, `key=value` fields.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (with `message`), `span`s.
    Json,
}

/// `[broker_tls]`: PEM files for a `rediss://` broker.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerTls {
    /// The CA certificate(s) that signed Redis's certificate; default: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// This node's certificate, for a Redis that authenticates clients (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// A configuration problem, said so that the reader knows what to change.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Loads defaults, then `file` (if any), then the environment, then `overrides` (flag values
    /// as `(dotted.key, value)`; a value that is not valid TOML is taken as a string), and
    /// validates the result.
    pub fn load(file: Option<&Path>, overrides: &[(String, String)]) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!("config file {} does not exist", path.display())));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        fig = fig
            .merge(Env::prefixed("RPCHUB_").split("__").filter(|k| {
                let top = k.as_str().split('.').next().unwrap_or("");
                ENV_KEYS.iter().any(|t| t.eq_ignore_ascii_case(top))
            }))
            .merge(Env::raw().only(&["ALLOWED_WS_ORIGINS"]).map(|_| "allowed_origins".into()));
        for (key, value) in overrides {
            fig = fig.merge(Toml::string(&override_toml(key, value)?));
        }
        let config: Config = fig.extract().map_err(|e| ConfigError(format!("configuration: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks a channel name ([`crate::channel::validate_channel`]) and that a user channel's
    /// `#` is in a namespace with `user_channels`.
    pub fn check_channel(&self, name: &str) -> Result<(), String> {
        crate::channel::validate_channel(name)?;
        if name.contains('#') && !self.namespace_of(name).user_channels {
            return Err(format!(
                "{name}: '#' names a user channel, and namespace {:?} has user_channels off",
                crate::channel::namespace(name)
            ));
        }
        Ok(())
    }

    /// Checks what serde cannot: ranges and relations between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let err = |m: String| Err(ConfigError(m));
        for (name, i) in &self.instances {
            if !valid_instance_name(name) {
                return err(format!(
                    "instances.{name}: an instance name is 1 to 64 of A-Z a-z 0-9 _ -, and not \"rpc\""
                ));
            }
            if i.token.expose().is_empty() {
                return err(format!("instances.{name}.token must not be empty"));
            }
        }
        if l.max_message_bytes < 64 {
            return err(format!(
                "limits.max_message_bytes is {}; it must be at least 64",
                l.max_message_bytes
            ));
        }
        if l.max_publish_body_bytes < l.max_message_bytes {
            return err(format!(
                "limits.max_publish_body_bytes is {}; it must be at least limits.max_message_bytes ({})",
                l.max_publish_body_bytes, l.max_message_bytes
            ));
        }
        if l.outbound_queue_messages == 0 || l.outbound_queue_bytes < 1024 {
            return err("limits.outbound_queue_messages must be at least 1 and limits.outbound_queue_bytes \
                        at least 1024"
                .into());
        }
        if l.ping_interval.is_zero() || l.pong_timeout <= l.ping_interval {
            return err(format!(
                "limits.pong_timeout ({:?}) must be longer than limits.ping_interval ({:?}), and the \
                 interval above zero: a client needs time to answer a ping",
                l.pong_timeout, l.ping_interval
            ));
        }
        if l.calls_in_flight == 0 {
            return err("limits.calls_in_flight must be above zero".into());
        }
        if l.max_connections == 0 || l.max_subscriptions == 0 || l.max_channels == 0 {
            return err(
                "limits.max_connections, max_subscriptions and max_channels must be above zero".into()
            );
        }
        if l.max_http_connections == 0 || l.http_connections_per_address == 0 {
            return err(
                "limits.max_http_connections and limits.http_connections_per_address must be above zero"
                    .into(),
            );
        }
        if l.request_timeout.is_zero() || l.write_timeout.is_zero() {
            return err("limits.request_timeout and limits.write_timeout must be above zero".into());
        }
        if l.max_response_bytes < 1024 {
            return err(format!(
                "limits.max_response_bytes is {}; it must be at least 1024 (an error answer must fit)",
                l.max_response_bytes
            ));
        }
        if !(l.anonymous_channel_share > 0.0 && l.anonymous_channel_share <= 1.0) {
            return err(format!(
                "limits.anonymous_channel_share is {}; it must be above 0 and at most 1 (a share of \
                 limits.max_channels: 0.01 is 1%)",
                l.anonymous_channel_share
            ));
        }
        if l.min_conflate_ms == 0 || l.min_conflate_ms > l.max_conflate_ms {
            return err(format!(
                "limits.min_conflate_ms ({}) must be above zero and at most limits.max_conflate_ms ({})",
                l.min_conflate_ms, l.max_conflate_ms
            ));
        }
        if l.upgrades_per_minute == 0 || l.calls_per_second == 0 {
            return err("limits.upgrades_per_minute and limits.calls_per_second must be above zero".into());
        }
        if self.presence_ttl < MIN_PRESENCE_TTL {
            return err(format!(
                "presence_ttl is {}; it must be at least {}",
                humantime::format_duration(self.presence_ttl),
                humantime::format_duration(MIN_PRESENCE_TTL)
            ));
        }
        if self.broker != "memory" {
            crate::broker::redis::check_url(&self.broker).map_err(ConfigError)?;
        }
        let tls = &self.broker_tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return err(
                "broker_tls.cert_file and broker_tls.key_file go together: give both or neither".into()
            );
        }
        let tls_set = tls.ca_file.is_some() || tls.cert_file.is_some();
        if tls_set && !self.broker.starts_with("rediss://") && !self.broker.starts_with("rediss+cluster://") {
            return err(format!(
                "broker_tls is set but broker {} is not a TLS URL (rediss:// or rediss+cluster://)",
                crate::broker::redis::redacted(&self.broker)
            ));
        }
        for (name, ns) in
            self.namespaces.iter().chain([(&"default_namespace".to_string(), &self.default_namespace)])
        {
            if let Some(ms) = ns.conflate_ms
                && !(l.min_conflate_ms..=l.max_conflate_ms).contains(&ms)
            {
                return err(format!(
                    "namespaces.{name}.conflate_ms is {ms}; it must be {} to {} (limits.min_conflate_ms, \
                     limits.max_conflate_ms)",
                    l.min_conflate_ms, l.max_conflate_ms
                ));
            }
            if ns.mode == Mode::State && (ns.conflate_ms.is_some() || ns.on_slow == OnSlow::Conflate) {
                return err(format!(
                    "namespaces.{name}: a state channel is not conflated (conflate_ms, on_slow = \"conflate\"): \
                     folding publications of different keys would lose them"
                ));
            }
            if !(1..=MAX_PATTERN_CHANNELS).contains(&ns.max_pattern_channels) {
                return err(format!(
                    "namespaces.{name}.max_pattern_channels is {}; it must be 1 to {MAX_PATTERN_CHANNELS}",
                    ns.max_pattern_channels
                ));
            }
            if ns.auto_subscribe && !ns.user_channels {
                return err(format!(
                    "namespaces.{name}.auto_subscribe subscribes each user to its user channel: it needs \
                     user_channels = true"
                ));
            }
            if let Some(h) = ns.heartbeat
                && !(MIN_HEARTBEAT..=MAX_HEARTBEAT).contains(&h)
            {
                return err(format!(
                    "namespaces.{name}.heartbeat is {}; it must be {} to {}",
                    humantime::format_duration(h),
                    humantime::format_duration(MIN_HEARTBEAT),
                    humantime::format_duration(MAX_HEARTBEAT)
                ));
            }
        }
        for name in self.namespaces.keys() {
            if name.is_empty() || !name.bytes().all(crate::channel::is_channel_byte) || name.contains(':') {
                return err(format!(
                    "namespace {name:?}: names are 1 or more of [A-Za-z0-9_.@/=,+-] without ':'"
                ));
            }
        }
        for t in &self.tokens {
            if t.token.expose().len() < 8 {
                return err(format!("token {:?}: a static key must be at least 8 characters", t.name));
            }
        }
        self.validate_backend()?;
        if self.admin_token.as_ref().is_some_and(|t| t.expose().len() < 8) {
            return err("admin_token (RPCHUB_ADMIN_TOKEN) must be at least 8 characters".into());
        }
        Ok(())
    }

    /// The `[backend]` and `[upstream]` tables, and the namespaces' proxy options.
    fn validate_backend(&self) -> Result<(), ConfigError> {
        let (b, u) = (&self.backend, &self.upstream);
        let err = |m: String| Err(ConfigError(m));
        if b.is_on() {
            backend::check_url("backend.url", &b.url).map_err(ConfigError)?;
            if b.timeout.is_zero() || b.stream_timeout < b.timeout {
                return err(format!(
                    "backend.timeout ({:?}) must be above zero and backend.stream_timeout ({:?}) at \
                     least as long",
                    b.timeout, b.stream_timeout
                ));
            }
            if b.max_in_flight == 0 || b.max_body_bytes < 1024 || b.hooks_queue == 0 {
                return err("backend.max_in_flight and backend.hooks_queue must be above zero, and \
                            backend.max_body_bytes at least 1024"
                    .into());
            }
            if b.hooks_reconcile < Duration::from_secs(1) {
                return err("backend.hooks_reconcile must be at least 1s".into());
            }
            if let Some(h) = b.hooks.iter().find(|h| !HOOK_EVENTS.contains(&h.as_str())) {
                return err(format!("backend.hooks: unknown event {h:?}; use {HOOK_EVENTS:?}"));
            }
            for h in &b.forward_headers {
                if hyper::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    return err(format!("backend.forward_headers: {h:?} is not a header name"));
                }
            }
            crate::auth::Globs::new(&b.methods).map_err(|e| ConfigError(format!("backend.methods: {e}")))?;
            for m in b.schemas.keys() {
                if !crate::auth::Globs::new(&b.methods).is_ok_and(|g| g.matches(m)) {
                    return err(format!(
                        "backend.schemas.{m}: {m} is not among backend.methods, so it is not proxied"
                    ));
                }
            }
        } else {
            let proxied = self
                .namespaces
                .iter()
                .map(|(n, ns)| (n.as_str(), ns))
                .chain([("default_namespace", &self.default_namespace)]);
            for (name, ns) in proxied {
                if ns.subscribe_proxy || ns.publish_proxy {
                    return err(format!(
                        "namespace {name}: subscribe_proxy and publish_proxy need a backend (backend.url)"
                    ));
                }
            }
            if b.connect_proxy || !b.methods.is_empty() || !b.hooks.is_empty() {
                return err(
                    "backend.connect_proxy, backend.methods and backend.hooks need backend.url".into()
                );
            }
        }
        if u.is_on() {
            backend::check_url("upstream.url", &u.url).map_err(ConfigError)?;
            if u.timeout.is_zero() {
                return err("upstream.timeout must be above zero".into());
            }
            crate::auth::Globs::new(&u.methods).map_err(|e| ConfigError(format!("upstream.methods: {e}")))?;
        }
        Ok(())
    }

    /// The settings of the namespace `channel` belongs to.
    pub fn namespace_of(&self, channel: &str) -> &NamespaceConfig {
        match channel.split_once(':') {
            Some((ns, _)) => self.namespaces.get(ns).unwrap_or(&self.default_namespace),
            None => &self.default_namespace,
        }
    }

    /// The demo's namespaces: public trades with history, public books keeping only the latest,
    /// public tickers as state channels (`mode = "state"`), all taking patterns (`trades:*`);
    /// and public chat rooms keeping presence with join and leave events (`chat:ROOM`).
    pub fn with_demo_namespaces(mut self) -> Config {
        let base = NamespaceConfig { patterns: true, ..self.default_namespace.clone() };
        self.namespaces.entry("trades".into()).or_insert_with(|| base.clone());
        self.namespaces
            .entry("l2Book".into())
            .or_insert_with(|| NamespaceConfig { history_size: 1, ..base.clone() });
        self.namespaces.entry("ticker".into()).or_insert_with(|| NamespaceConfig {
            mode: Mode::State,
            history_size: 100,
            ..base.clone()
        });
        // Conversations to try: who is in `chat:ROOM`, with join and leave events.
        self.namespaces.entry("chat".into()).or_insert_with(|| NamespaceConfig {
            presence: true,
            join_leave: true,
            ..self.default_namespace.clone()
        });
        self
    }
}
