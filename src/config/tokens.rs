//! Static API keys from the config file, and the secret string that never shows in logs.

use serde::{Deserialize, Serialize};
use std::fmt;

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
