//! JWTs: HS256 with the configured secret, RS256 or ES256 with the configured public key.
//!
//! The algorithm a token names picks the key, and only algorithms with a configured key are
//! accepted, so an RS256 public key can never be used as an HMAC secret (algorithm confusion)
//! and `alg: none` is not an algorithm at all. `exp` is required; `nbf`, and `aud`/`iss` when
//! configured, are checked, with no leeway.

use super::{AuthError, Globs, Kind, Principal};
use crate::config::Config;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The claims rpchub reads.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// Subject: who the holder is.
    pub sub: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Not before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Glob patterns of channels the holder may subscribe to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// Glob patterns of channels the holder may publish to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
}

/// Verifies JWTs with whatever keys are configured.
pub(super) struct Verifier {
    hmac: Option<DecodingKey>,
    public: Option<(Algorithm, DecodingKey)>,
    audience: Option<String>,
    issuer: Option<String>,
}

impl Verifier {
    /// Reads the keys named by the configuration.
    pub(super) fn new(config: &Config) -> Result<Verifier, String> {
        let hmac = config.jwt_secret.as_ref().map(|s| DecodingKey::from_secret(s.expose().as_bytes()));
        let public = match &config.jwt_public_key_file {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("jwt_public_key_file {}: {e}", path.display()))?;
                if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                    Some((Algorithm::RS256, k))
                } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                    Some((Algorithm::ES256, k))
                } else {
                    return Err(format!(
                        "jwt_public_key_file {}: not an RSA or EC public key in PEM form",
                        path.display()
                    ));
                }
            }
        };
        Ok(Verifier {
            hmac,
            public,
            audience: config.jwt_audience.clone(),
            issuer: config.jwt_issuer.clone(),
        })
    }

    /// Checks a token and turns its claims into a principal.
    pub(super) fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let invalid = |m: &str| AuthError::Invalid(m.to_string());
        if self.hmac.is_none() && self.public.is_none() {
            return Err(invalid("not a known key"));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("not a known key or a well-formed JWT"))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hmac.as_ref(),
            alg => self.public.as_ref().filter(|(a, _)| *a == alg).map(|(_, k)| k),
        }
        .ok_or_else(|| AuthError::Invalid(format!("JWT algorithm {:?} is not accepted here", header.alg)))?;
        let mut v = Validation::new(header.alg);
        v.leeway = 0;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "sub"]);
        match &self.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature => invalid("JWT signature does not verify"),
            ErrorKind::InvalidAudience => invalid("JWT audience is not accepted"),
            ErrorKind::InvalidIssuer => invalid("JWT issuer is not accepted"),
            ErrorKind::MissingRequiredClaim(c) => AuthError::Invalid(format!("JWT lacks the {c} claim")),
            _ => invalid("malformed JWT"),
        })?;
        let c = data.claims;
        let globs = |g: Option<Vec<String>>| {
            Globs::new(&g.unwrap_or_default()).map_err(|e| AuthError::Invalid(format!("JWT claim: {e}")))
        };
        Ok(Principal {
            kind: Kind::Jwt,
            subject: c.sub,
            channels: globs(c.channels)?,
            publish: globs(c.publish)?,
            rate: None,
            expires_at: Some(c.exp),
        })
    }
}

/// Signs claims with an HS256 secret (for `rpchub token` and tests).
pub fn mint_hs256(secret: &str, claims: &Claims) -> Result<String, String> {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()))
        .map_err(|e| format!("cannot sign the token: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use base64::Engine;

    const SECRET: &str = "test-secret-of-some-length";

    fn now() -> u64 {
        crate::broker::memory::now_ms() / 1000
    }

    fn verifier() -> Verifier {
        Verifier::new(&Config { jwt_secret: Some(Secret(SECRET.into())), ..Config::default() }).unwrap()
    }

    fn claims(exp_in: i64) -> Claims {
        Claims {
            sub: "alice".into(),
            exp: (now() as i64 + exp_in) as u64,
            nbf: None,
            channels: Some(vec!["conversation:a".into()]),
            publish: None,
        }
    }

    #[test]
    fn valid_expired_and_future_tokens() {
        let v = verifier();
        let p = v.verify(&mint_hs256(SECRET, &claims(60)).unwrap()).unwrap();
        assert_eq!((p.kind, p.subject.as_str()), (Kind::Jwt, "alice"));
        assert!(p.channels.matches("conversation:a") && !p.channels.matches("conversation:b"));
        assert_eq!(v.verify(&mint_hs256(SECRET, &claims(-1)).unwrap()).unwrap_err(), AuthError::Expired);
        let future = Claims { nbf: Some(now() + 60), ..claims(120) };
        assert_eq!(v.verify(&mint_hs256(SECRET, &future).unwrap()).unwrap_err(), AuthError::NotYetValid);
    }

    #[test]
    fn forged_and_unsigned_tokens_are_refused() {
        let v = verifier();
        let wrong = mint_hs256("another-secret-entirely", &claims(60)).unwrap();
        assert!(matches!(v.verify(&wrong), Err(AuthError::Invalid(m)) if m.contains("signature")));
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let body = b64.encode(serde_json::to_vec(&claims(60)).unwrap());
        let none = format!("{}.{}.", b64.encode(br#"{"alg":"none","typ":"JWT"}"#), body);
        assert!(v.verify(&none).is_err(), "alg none");
        let rs = format!("{}.{}.c2ln", b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#), body);
        assert!(matches!(v.verify(&rs), Err(AuthError::Invalid(m)) if m.contains("RS256")));
        assert!(v.verify("garbage").is_err());
        let no_sub = serde_json::json!({"exp": now() + 60});
        let t =
            jsonwebtoken::encode(&Header::default(), &no_sub, &EncodingKey::from_secret(SECRET.as_bytes()))
                .unwrap();
        assert!(v.verify(&t).is_err(), "sub is required");
    }
}
