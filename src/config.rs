//! The server's configuration: plain serde data with defaults, loaded one way.
//!
//! Sources, later ones winning: built-in defaults ([`crate::constants`]) < the TOML file
//! (`--config`) < environment variables < command-line flags. Environment variables are
//! `RPCHUB_<KEY>` for top-level keys and `RPCHUB_<TABLE>__<KEY>` for nested ones (for example
//! `RPCHUB_LIMITS__MAX_MESSAGE_BYTES=8192`), plus the fixed names `RPCHUB_ADMIN_TOKEN`,
//! `RPCHUB_JWT_SECRET` and `ALLOWED_WS_ORIGINS` (comma separated). Any key can also be set with
//! `--set key=value` (`--set limits.ping_interval=30s`). The result is validated once
//! ([`Config::validate`]) and then only read.

use crate::constants::*;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything `rpchub serve` can be told.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address and port to listen on (HTTP and WebSocket share it).
    pub listen: SocketAddr,
    /// `memory` or `redis://HOST:PORT`.
    pub broker: String,
    /// Name of this node in `info` and logs; default: a random one per start.
    pub node_id: Option<String>,
    /// Run the built-in market simulator (`trades:*`, `l2Book:*`).
    pub demo: bool,
    /// Log filter, `tracing` EnvFilter syntax (`info`, `rpchub=debug`).
    pub log: String,
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
    /// How long shutdown waits for clients before exiting anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Hard limits that keep one client from hurting others.
    pub limits: Limits,
    /// Settings of channels whose namespace is not listed in `namespaces` (and of bare names).
    pub default_namespace: NamespaceConfig,
    /// Per-namespace settings: the key is the part of the channel name before the first `:`.
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// Static API keys.
    pub tokens: Vec<StaticToken>,
}

/// Limits; see PROTOCOL.md "Limits".
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest client message in bytes; a bigger one closes the connection with code 1009.
    pub max_message_bytes: usize,
    /// Messages queued for one client connection while its socket is full before it is dropped
    /// as a slow consumer.
    pub outbound_queue_messages: usize,
    /// Bytes queued for one client connection before it is dropped as a slow consumer.
    pub outbound_queue_bytes: usize,
    /// Interval between server pings.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A client silent for this long (no pong, no message) is disconnected.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// WebSocket upgrades per minute per client IP.
    pub upgrades_per_minute: u32,
    /// Concurrent WebSocket connections.
    pub max_connections: usize,
    /// Subscriptions per connection.
    pub max_subscriptions: usize,
    /// Calls per second per connection (a static key's `rate` overrides it; admin: unlimited).
    pub calls_per_second: u32,
    /// Calls of one connection handled at the same time: slow calls (a history read from a
    /// shared broker, later a proxied call) do not hold up fast ones, and what unanswered calls
    /// hold stays bounded.
    pub calls_in_flight: usize,
    /// Channels the node keeps state for.
    pub max_channels: usize,
}

/// Who may do something on a namespace.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Anyone, with or without a token.
    Public,
    /// Any holder of a valid token.
    Authenticated,
    /// A token whose `channels` (subscribe, history) or `publish` globs match the channel.
    Claims,
}

/// Settings of one namespace.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Publications kept for snapshots and recovery (0: none).
    pub history_size: usize,
    /// How long a publication stays in history.
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// Who may subscribe and read history.
    pub subscribe: Access,
    /// Who may publish.
    pub publish: Access,
}

/// A static API key from the config file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    /// Name shown in logs and `auth` results instead of the key itself.
    pub name: String,
    /// The key clients send.
    pub token: Secret,
    /// May do everything, like the admin token.
    #[serde(default)]
    pub admin: bool,
    /// Glob patterns of channels the holder may subscribe to (and read history of).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Glob patterns of channels the holder may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Calls per second per connection for this key, instead of `limits.calls_per_second`.
    #[serde(default)]
    pub rate: Option<u32>,
}

/// A string that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    /// The secret itself, for comparing or signing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("DEFAULT_LISTEN is a socket address; qed"),
            broker: DEFAULT_BROKER.to_string(),
            node_id: None,
            demo: false,
            log: DEFAULT_LOG.to_string(),
            admin_token: None,
            jwt_secret: None,
            jwt_public_key_file: None,
            jwt_audience: None,
            jwt_issuer: None,
            allowed_origins: Vec::new(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            limits: Limits::default(),
            default_namespace: NamespaceConfig::default(),
            namespaces: BTreeMap::new(),
            tokens: Vec::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            outbound_queue_messages: DEFAULT_OUTBOUND_QUEUE_MESSAGES,
            outbound_queue_bytes: DEFAULT_OUTBOUND_QUEUE_BYTES,
            ping_interval: DEFAULT_PING_INTERVAL,
            pong_timeout: DEFAULT_PONG_TIMEOUT,
            upgrades_per_minute: DEFAULT_UPGRADES_PER_MINUTE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            calls_per_second: DEFAULT_CALLS_PER_SECOND,
            calls_in_flight: DEFAULT_CALLS_IN_FLIGHT,
            max_channels: DEFAULT_MAX_CHANNELS,
        }
    }
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        NamespaceConfig {
            history_size: DEFAULT_HISTORY_SIZE,
            history_ttl: DEFAULT_HISTORY_TTL,
            subscribe: Access::Public,
            publish: Access::Claims,
        }
    }
}

/// Top-level keys taken from `RPCHUB_*` variables; other `RPCHUB_*` variables (of scripts and
/// tools around the server) are not configuration and are left alone.
const ENV_KEYS: &[&str] = &[
    "listen",
    "broker",
    "node_id",
    "demo",
    "log",
    "admin_token",
    "jwt_secret",
    "jwt_public_key_file",
    "jwt_audience",
    "jwt_issuer",
    "allowed_origins",
    "shutdown_grace",
    "limits",
    "default_namespace",
];

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

    /// Checks what serde cannot: ranges and relations between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let err = |m: String| Err(ConfigError(m));
        if l.max_message_bytes < 64 {
            return err(format!(
                "limits.max_message_bytes is {}; it must be at least 64",
                l.max_message_bytes
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
        if l.upgrades_per_minute == 0 || l.calls_per_second == 0 {
            return err("limits.upgrades_per_minute and limits.calls_per_second must be above zero".into());
        }
        if self.broker != "memory" && !self.broker.starts_with("redis://") {
            return err(format!("broker is {:?}; use \"memory\" or \"redis://HOST:PORT\"", self.broker));
        }
        if self.broker != "memory" {
            return err("the redis broker is not available in this version; use \"memory\"".into());
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
        if self.admin_token.as_ref().is_some_and(|t| t.expose().len() < 8) {
            return err("admin_token (RPCHUB_ADMIN_TOKEN) must be at least 8 characters".into());
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

    /// The demo's namespaces: public trades with history, public books keeping only the latest.
    pub fn with_demo_namespaces(mut self) -> Config {
        let base = self.default_namespace.clone();
        self.namespaces.entry("trades".into()).or_insert_with(|| base.clone());
        self.namespaces
            .entry("l2Book".into())
            .or_insert_with(|| NamespaceConfig { history_size: 1, ..base.clone() });
        self
    }
}

/// `key=value` as TOML: the value as written when it parses as a TOML value, else as a string.
fn override_toml(key: &str, value: &str) -> Result<String, ConfigError> {
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.') {
        return Err(ConfigError(format!(
            "--set {key}=...: keys are dotted names like limits.max_connections"
        )));
    }
    let literal = format!("{key} = {value}");
    if literal.parse::<toml_value::Probe>().is_ok() {
        Ok(literal)
    } else {
        Ok(format!("{key} = {}", toml_value::quote(value)))
    }
}

/// Just enough TOML to decide whether a `--set` value is a literal.
mod toml_value {
    use figment::providers::Format;
    use std::str::FromStr;

    /// Parses a one-line TOML document through figment's TOML parser.
    pub struct Probe;

    impl FromStr for Probe {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            figment::Figment::from(figment::providers::Toml::string(s))
                .extract::<figment::value::Dict>()
                .map(|_| Probe)
                .map_err(|_| ())
        }
    }

    /// A TOML basic string.
    pub fn quote(s: &str) -> String {
        let mut out = String::with_capacity(s.len() + 2);
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }
}

/// Accepts `["a","b"]` or `"a,b"` (as environment variables give it).
fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        One(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(v) => v,
        Either::One(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_shows_every_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("rpchub.example.toml");
        let text = std::fs::read_to_string(&path).expect("rpchub.example.toml at the repository root");
        let parsed: Config = Figment::from(Toml::string(&text)).extract().expect("example parses");
        // The example adds one namespace and one token to show their shape; the rest must be
        // exactly the defaults.
        let expected = Config {
            namespaces: parsed.namespaces.clone(),
            tokens: parsed.tokens.clone(),
            ..Config::default()
        };
        assert_eq!(parsed, expected);
        assert_eq!(parsed.namespaces.get("trades"), Some(&NamespaceConfig::default()));
        for key in ENV_KEYS {
            assert!(
                text.contains(&format!("{key} =")) || text.contains(&format!("[{key}]")),
                "{key} missing"
            );
        }
    }

    #[test]
    fn overrides_win_and_strings_need_no_quotes() {
        let c = Config::load(
            None,
            &[
                ("limits.ping_interval".into(), "5s".into()),
                ("limits.pong_timeout".into(), "7s".into()),
                ("limits.max_connections".into(), "12".into()),
                ("allowed_origins".into(), "https://a.example,https://b.example".into()),
            ],
        )
        .unwrap();
        assert_eq!(c.limits.ping_interval, Duration::from_secs(5));
        assert_eq!(c.limits.max_connections, 12);
        assert_eq!(c.allowed_origins, vec!["https://a.example", "https://b.example"]);
    }

    #[test]
    fn bad_values_are_explained() {
        let e = Config::load(None, &[("limits.pong_timeout".into(), "1s".into())]).unwrap_err();
        assert!(e.0.contains("pong_timeout"), "{e}");
        let e = Config::load(None, &[("limits.max_conections".into(), "1".into())]).unwrap_err();
        assert!(e.0.contains("max_conections"), "{e}");
        let e = Config::load(None, &[("broker".into(), "kafka://x".into())]).unwrap_err();
        assert!(e.0.contains("broker"), "{e}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail returns its own error type
    fn environment_sets_keys_and_ignores_other_rpchub_variables() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("RPCHUB_ADMIN_TOKEN", "from-the-env-123");
            jail.set_env("RPCHUB_LIMITS__MAX_CONNECTIONS", "77");
            jail.set_env("RPCHUB_BIN", "/not/a/config/key");
            jail.set_env("ALLOWED_WS_ORIGINS", "https://a.example, https://b.example");
            let c = Config::load(None, &[("limits.max_connections".into(), "78".into())]).unwrap();
            assert_eq!(c.admin_token.as_ref().map(Secret::expose), Some("from-the-env-123"));
            assert_eq!(c.limits.max_connections, 78, "flags win over the environment");
            assert_eq!(c.allowed_origins, vec!["https://a.example", "https://b.example"]);
            let c = Config::load(None, &[]).unwrap();
            assert_eq!(c.limits.max_connections, 77);
            Ok(())
        });
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Config { admin_token: Some(Secret("super-secret-token".into())), ..Config::default() };
        assert!(!format!("{c:?}").contains("super-secret"));
    }

    #[test]
    fn namespace_lookup_falls_back_to_the_default() {
        let c = Config::default().with_demo_namespaces();
        assert_eq!(c.namespace_of("l2Book:BTC").history_size, 1);
        assert_eq!(c.namespace_of("trades:SOL").history_size, DEFAULT_HISTORY_SIZE);
        assert_eq!(c.namespace_of("other:x"), &c.default_namespace);
        assert_eq!(c.namespace_of("bare"), &c.default_namespace);
    }
}
