//! How the sources are read: which environment variables are configuration, `--set` values as
//! TOML, and comma-separated lists from the environment.

use super::ConfigError;
use serde::{Deserialize, Deserializer};

/// Top-level keys taken from `RPCHUB_*` variables; other `RPCHUB_*` variables (of scripts and
/// tools around the server) are not configuration and are left alone.
pub(super) const ENV_KEYS: &[&str] = &[
    "listen",
    "broker",
    "broker_tls",
    "node_id",
    "demo",
    "log",
    "log_format",
    "admin_token",
    "jwt_secret",
    "jwt_public_key_file",
    "jwt_audience",
    "jwt_issuer",
    "allowed_origins",
    "shutdown_grace",
    "presence_ttl",
    "limits",
    "default_namespace",
    "instances_file",
    "backend",
    "upstream",
];

/// `key=value` as TOML: the value as written when it parses as a TOML value, else as a string.
pub(super) fn override_toml(key: &str, value: &str) -> Result<String, ConfigError> {
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
    pub(super) struct Probe;

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
    pub(super) fn quote(s: &str) -> String {
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
pub(super) fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
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
