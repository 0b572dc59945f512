//! Who a client is and what it may do.
//!
//! A token is checked once (on the upgrade, or by the `auth` method) and becomes a
//! [`Principal`]: its subject, its rights (admin, or channel and publish globs), its call rate
//! and when it expires. Permission checks combine a principal with the channel's namespace rule
//! ([`Access`]): `public` lets anyone in, `authenticated` any valid token, `claims` only a token
//! whose globs match.

mod glob;
mod jwt;

pub use glob::Globs;
pub use jwt::{Claims, mint_hs256};

use crate::config::{Access, Config, NamespaceConfig};
use std::collections::HashMap;
use std::sync::Arc;

/// How a principal was established.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No token.
    Anonymous,
    /// The admin token or a static key with `admin = true`.
    Admin,
    /// A static key from the config file.
    StaticKey,
    /// A JWT.
    Jwt,
    /// The application's backend said who connects (`backend.connect_proxy`), with rights as a
    /// JWT's claims would give them.
    Backend,
}

/// An authenticated (or anonymous) client.
#[derive(Clone, Debug)]
pub struct Principal {
    /// How it was established.
    pub kind: Kind,
    /// `sub` of a JWT, the name of a static key, `admin`, or empty for anonymous clients.
    pub subject: String,
    /// Channels it may subscribe to and read history of (beyond public namespaces).
    pub channels: Globs,
    /// Channels it may publish to.
    pub publish: Globs,
    /// Calls per second per connection: `None` uses the default limit.
    pub rate: Option<u32>,
    /// Unix seconds after which the token is no longer valid.
    pub expires_at: Option<u64>,
}

impl Principal {
    /// A client without a token.
    pub fn anonymous() -> Principal {
        Principal {
            kind: Kind::Anonymous,
            subject: String::new(),
            channels: Globs::default(),
            publish: Globs::default(),
            rate: None,
            expires_at: None,
        }
    }

    /// True for the admin token and admin keys.
    pub fn is_admin(&self) -> bool {
        self.kind == Kind::Admin
    }

    /// True for any valid token.
    pub fn is_authenticated(&self) -> bool {
        self.kind != Kind::Anonymous
    }

    /// True once `expires_at` has passed.
    pub fn is_expired(&self, now_s: u64) -> bool {
        self.expires_at.is_some_and(|e| now_s >= e)
    }

    /// Calls per second allowed on a connection: `None` means unlimited (admin).
    pub fn call_rate(&self, default: u32) -> Option<u32> {
        if self.is_admin() { None } else { Some(self.rate.unwrap_or(default)) }
    }
}

/// What a permission check is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Subscribe or read history.
    Subscribe,
    /// Publish.
    Publish,
}

/// Checks a principal against a namespace's rule; the error says what is missing.
pub fn authorize(p: &Principal, ns: &NamespaceConfig, action: Action, channel: &str) -> Result<(), String> {
    if p.is_admin() {
        return Ok(());
    }
    let (rule, globs, verb, claim) = match action {
        Action::Subscribe => (ns.subscribe, &p.channels, "subscribe to", "channels"),
        Action::Publish => (ns.publish, &p.publish, "publish to", "publish"),
    };
    match rule {
        Access::Public => Ok(()),
        Access::Authenticated if p.is_authenticated() => Ok(()),
        Access::Authenticated => Err(format!("a token is needed to {verb} {channel}")),
        Access::Claims if globs.matches(channel) => Ok(()),
        Access::Claims if !p.is_authenticated() => {
            Err(format!("a token whose {claim} patterns match {channel} is needed to {verb} it"))
        }
        Access::Claims => Err(format!(
            "the token of {:?} may not {verb} {channel}: none of its {claim} patterns {:?} match",
            p.subject,
            globs.patterns()
        )),
    }
}

/// Why a token was refused. Messages never include the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// Not a known key and not a valid JWT.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// A JWT past its `exp`.
    #[error("token expired")]
    Expired,
    /// A JWT before its `nbf`.
    #[error("token not yet valid")]
    NotYetValid,
}

/// Turns tokens into principals.
pub struct Authenticator {
    keys: HashMap<String, Arc<Principal>>,
    jwt: jwt::Verifier,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys and secrets stay out of every log line.
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Builds the key table and JWT verifier from the configuration.
    pub fn new(config: &Config) -> Result<Authenticator, String> {
        let mut keys = HashMap::new();
        if let Some(admin) = &config.admin_token {
            let p = Principal { kind: Kind::Admin, subject: "admin".into(), ..Principal::anonymous() };
            keys.insert(admin.expose().to_string(), Arc::new(p));
        }
        for t in &config.tokens {
            let p = Principal {
                kind: if t.admin { Kind::Admin } else { Kind::StaticKey },
                subject: t.name.clone(),
                channels: Globs::new(&t.channels).map_err(|e| format!("token {:?}: {e}", t.name))?,
                publish: Globs::new(&t.publish).map_err(|e| format!("token {:?}: {e}", t.name))?,
                rate: t.rate,
                expires_at: None,
            };
            if keys.insert(t.token.expose().to_string(), Arc::new(p)).is_some() {
                return Err(format!("token {:?}: the same key is configured twice", t.name));
            }
        }
        Ok(Authenticator { keys, jwt: jwt::Verifier::new(config)? })
    }

    /// The principal a token stands for.
    pub fn authenticate(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        if let Some(p) = self.keys.get(token) {
            return Ok(p.clone());
        }
        self.jwt.verify(token).map(Arc::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Secret, StaticToken};

    fn config() -> Config {
        Config {
            admin_token: Some(Secret("admin-token-1".into())),
            tokens: vec![StaticToken {
                name: "bot".into(),
                token: Secret("bot-key-123".into()),
                admin: false,
                channels: vec!["conversation:a".into()],
                publish: vec!["trades:*".into()],
                rate: Some(5),
            }],
            ..Config::default()
        }
    }

    #[test]
    fn keys_and_rules() {
        let a = Authenticator::new(&config()).unwrap();
        let admin = a.authenticate("admin-token-1").unwrap();
        let bot = a.authenticate("bot-key-123").unwrap();
        assert!(admin.is_admin() && admin.call_rate(200).is_none());
        assert_eq!(bot.call_rate(200), Some(5));
        assert!(matches!(a.authenticate("nope"), Err(AuthError::Invalid(_))));

        let claims = NamespaceConfig { subscribe: Access::Claims, ..NamespaceConfig::default() };
        let public = NamespaceConfig::default();
        let anon = Principal::anonymous();
        assert!(authorize(&anon, &public, Action::Subscribe, "trades:SOL").is_ok());
        assert!(authorize(&anon, &public, Action::Publish, "trades:SOL").unwrap_err().contains("token"));
        assert!(authorize(&bot, &public, Action::Publish, "trades:SOL").is_ok());
        assert!(authorize(&bot, &public, Action::Publish, "l2Book:SOL").unwrap_err().contains("trades:*"));
        assert!(authorize(&bot, &claims, Action::Subscribe, "conversation:a").is_ok());
        assert!(authorize(&bot, &claims, Action::Subscribe, "conversation:b").is_err());
        assert!(authorize(&admin, &claims, Action::Subscribe, "conversation:b").is_ok());
        let authn = NamespaceConfig { subscribe: Access::Authenticated, ..NamespaceConfig::default() };
        assert!(authorize(&anon, &authn, Action::Subscribe, "x").is_err());
        assert!(authorize(&bot, &authn, Action::Subscribe, "x").is_ok());
    }
}
