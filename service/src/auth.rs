//! Who may subscribe to and publish on which topic. Shared by the publisher and the
//! gateway, so both verify tokens and answer refusals the same way.
//!
//! - [`Auth`]: the verifier built from the settings (`jwt_secret` for HS256,
//!   `jwt_public_key_file` for RS256 or ES256, `jwt_leeway`, `metrics_public`, and on the
//!   gateway `public_topics`), and the checks each route calls: [`Auth::authenticate`],
//!   [`Auth::authorize_subscribe`], [`Auth::authorize_publish`], [`Auth::authorize_read`],
//!   [`Auth::access_ends`].
//! - [`Claims`]: what a token may do, `{"sub":..,"exp":..,"topics":{"subscribe":[..],
//!   "publish":[..],"where":{..}}}`, with `*` as a wildcard inside a [`TopicPattern`].
//!   `topics.where` narrows what the holder sees inside a topic: the `where` of every
//!   pattern that matches the topic is ANDed into each subscription, snapshot and REST read
//!   of it ([`Claims::scope`]); a client's own filter can only narrow it further.
//! - [`Caller`]: the axum extractor that finds the token (`Authorization: Bearer`, then the
//!   `access_token` cookie, then the `access_token` query parameter) and verifies it.
//!
//! With no JWT setting, auth is off: every check passes (development).
//!
//! Tokens are secrets: nothing here logs one, error messages never quote one, and
//! [`redact_query`] removes `access_token` from a query string before anything logs a URI.
//!
//! What it does not own: which check a route needs (the routers decide), rate limits, CORS.

mod pattern;
mod request;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use proto::Topic;
use serde::Deserialize;

pub use pattern::TopicPattern;
pub use request::{Authenticated, Caller, find_token, redact_query, redact_uri};

use crate::settings::{Layers, SettingsError};

/// The cookie a browser may carry its token in (same name as the query parameter).
pub const TOKEN_COOKIE: &str = "access_token";
/// The query parameter a token may come in: LoopBack's name. `EventSource` cannot set
/// headers, so a cross-site page without cookies has only this.
pub const TOKEN_QUERY_PARAM: &str = "access_token";
/// Default clock skew allowed on `exp` (and `nbf`): the minting service's clock and the
/// pod's may differ by this much. A stream ends at `exp` plus this.
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(5);
/// Largest leeway accepted: more would let expired tokens live on for long.
pub const MAX_JWT_LEEWAY: Duration = Duration::from_secs(300);
/// Default: `/metrics` answers without a token (counts only, no topic names or data).
pub const DEFAULT_METRICS_PUBLIC: bool = true;
/// Shortest HS256 secret accepted, in bytes: the hash size, as RFC 7518 section 3.2 asks.
pub const MIN_SECRET_LEN: usize = 32;
/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// What a token says about its bearer. Unknown claims are ignored.
#[derive(Clone, Debug, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub sub: Option<String>,
    /// Expiry, seconds since the Unix epoch. Required.
    pub exp: u64,
    #[serde(default)]
    pub topics: TopicGrants,
}

/// The latest `exp` taken at its word (9999-12-31T23:59:59Z); later ones count as this, so
/// time arithmetic on a far-future `exp` cannot overflow.
const LATEST_EXP: u64 = 253_402_300_799;

impl Claims {
    /// The moment `exp` names (at most the year 9999).
    pub fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.exp.min(LATEST_EXP))
    }
}

/// The `topics` claim. A missing list grants nothing.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct TopicGrants {
    #[serde(default)]
    pub subscribe: Vec<TopicPattern>,
    #[serde(default)]
    pub publish: Vec<TopicPattern>,
    /// Row scopes: topic pattern -> LoopBack `where`, as the token carries them. Checked
    /// and parsed into [`TopicGrants::scopes`] when the token is authenticated.
    #[serde(default, rename = "where")]
    pub where_: serde_json::Map<String, serde_json::Value>,
    /// `where_` parsed; filled by [`Auth::authenticate`].
    #[serde(skip)]
    scopes: Vec<(TopicPattern, proto::Filter)>,
}

impl Claims {
    /// The rows of `topic` this token may see: the `where` of every `topics.where` pattern
    /// that matches `topic`, ANDed; `None` when no pattern narrows it.
    pub fn scope(&self, topic: &Topic) -> Option<proto::Filter> {
        self.topics
            .scopes
            .iter()
            .filter(|(pattern, _)| pattern.matches(topic.as_str()))
            .map(|(_, filter)| filter)
            .fold(None, |acc: Option<proto::Filter>, filter| {
                Some(match acc {
                    None => filter.clone(),
                    Some(acc) => acc.restricted_to(filter),
                })
            })
    }

    /// Checks and parses `topics.where`.
    fn parse_scopes(&mut self) -> Result<(), AuthError> {
        let limits = proto::FilterLimits::default();
        let mut scopes = Vec::with_capacity(self.topics.where_.len());
        for (pattern, where_) in &self.topics.where_ {
            let bad = |reason: String| AuthError::BadScope {
                pattern: pattern.chars().take(64).collect(),
                reason,
            };
            let parsed = TopicPattern::parse(pattern).map_err(bad)?;
            let filter =
                proto::Filter::from_where(where_, &limits).map_err(|e| bad(e.to_string()))?;
            scopes.push((parsed, filter));
        }
        self.topics.scopes = scopes;
        Ok(())
    }
}

/// What a caller asked to do with a topic, for the 403 message and the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Subscribe,
    Publish,
    /// Read records through the REST API: a `subscribe` or a `publish` grant will do.
    Read,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Subscribe => "subscribe to",
            Self::Publish => "publish to",
            Self::Read => "read",
        })
    }
}

/// Why a request was refused. Messages are safe to send: they never quote the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token where one is needed: 401.
    #[error(
        "authorization required: send a token as `Authorization: Bearer`, the `access_token` cookie or the `access_token` query parameter"
    )]
    Missing,
    /// `exp` (plus the leeway) is past: 401.
    #[error("the access token has expired")]
    Expired,
    /// Not a token we accept (malformed, bad signature, algorithm, `nbf`): 401.
    #[error("the access token is invalid: {0}")]
    Invalid(&'static str),
    /// A valid token without a grant for the topic: 403.
    #[error("this access token may not {action} {topic}")]
    Forbidden { action: Action, topic: Topic },
    /// A token whose `topics.where` scope cannot be applied (not a pattern, not a valid
    /// `where`): 401, rather than a scope silently ignored.
    #[error("the access token's topics.where.{pattern} is not usable: {reason}")]
    BadScope { pattern: String, reason: String },
}

impl AuthError {
    /// 401 (no or bad credential) rather than 403 (good credential, no grant).
    pub fn is_unauthenticated(&self) -> bool {
        !matches!(self, Self::Forbidden { .. })
    }

    /// The `WWW-Authenticate` value of a 401 (RFC 6750 section 3).
    pub fn challenge(&self) -> &'static str {
        match self {
            Self::Missing | Self::Forbidden { .. } => "Bearer",
            Self::Expired | Self::Invalid(_) | Self::BadScope { .. } => {
                "Bearer error=\"invalid_token\""
            }
        }
    }
}

/// One accepted signing algorithm and the key that verifies it.
struct VerifyingKey {
    algorithm: Algorithm,
    key: DecodingKey,
    /// Allows `algorithm` alone: a token is checked only against the key of the algorithm
    /// it names, so an HS256 token can never be verified with a public key as its secret.
    validation: Validation,
}

/// Verifies tokens and checks grants. Cheap to clone. Off (every check passes) when built
/// with no key.
#[derive(Clone)]
pub struct Auth {
    keys: Arc<[VerifyingKey]>,
    public_topics: Arc<[TopicPattern]>,
    leeway: Duration,
    metrics_public: bool,
}

impl fmt::Debug for Auth {
    // Never the keys: the HS256 secret is one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("algorithms", &self.algorithms())
            .field("public_topics", &self.public_topics)
            .field("leeway", &self.leeway)
            .field("metrics_public", &self.metrics_public)
            .finish()
    }
}

impl Default for Auth {
    fn default() -> Self {
        Self::off()
    }
}

/// How to build an [`Auth`] without the settings layers (tests, embedding).
#[derive(Clone)]
pub struct AuthOptions {
    /// HS256 shared secret, at least [`MIN_SECRET_LEN`] bytes.
    pub jwt_secret: Option<String>,
    /// PEM text of an RSA (RS256) or P-256 (ES256) public key.
    pub jwt_public_key_pem: Option<String>,
    pub public_topics: Vec<TopicPattern>,
    pub leeway: Duration,
    pub metrics_public: bool,
}

impl Default for AuthOptions {
    /// No key (auth off) and the documented defaults.
    fn default() -> Self {
        Self {
            jwt_secret: None,
            jwt_public_key_pem: None,
            public_topics: Vec::new(),
            leeway: DEFAULT_JWT_LEEWAY,
            metrics_public: DEFAULT_METRICS_PUBLIC,
        }
    }
}

impl fmt::Debug for AuthOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthOptions")
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "***"))
            .field("jwt_public_key_pem", &self.jwt_public_key_pem.is_some())
            .field("public_topics", &self.public_topics)
            .field("leeway", &self.leeway)
            .field("metrics_public", &self.metrics_public)
            .finish()
    }
}

/// Which setting a bad auth option is, for the start-up error.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct AuthConfigError {
    pub key: &'static str,
    pub reason: String,
}

impl Auth {
    /// Auth off: no token needed anywhere (development).
    pub fn off() -> Self {
        Self {
            keys: Arc::new([]),
            public_topics: Arc::new([]),
            leeway: DEFAULT_JWT_LEEWAY,
            metrics_public: DEFAULT_METRICS_PUBLIC,
        }
    }

    /// Builds the verifier; auth is on when a secret or a public key is given.
    ///
    /// # Errors
    /// [`AuthConfigError`] naming the option: a short secret, a key that is not an RSA
    /// (2048 bits or more) or P-256 public key, a leeway over [`MAX_JWT_LEEWAY`], or
    /// `public_topics` / `metrics_public = false` without any key (they would mean nothing).
    pub fn new(options: AuthOptions) -> Result<Self, AuthConfigError> {
        let mut keys = Vec::new();
        if let Some(secret) = &options.jwt_secret {
            keys.push(hs256_key(secret).map_err(|reason| AuthConfigError {
                key: "jwt_secret",
                reason,
            })?);
        }
        if let Some(pem) = &options.jwt_public_key_pem {
            keys.push(public_key(pem).map_err(|reason| AuthConfigError {
                key: "jwt_public_key_file",
                reason,
            })?);
        }
        if options.leeway > MAX_JWT_LEEWAY {
            return Err(AuthConfigError {
                key: "jwt_leeway",
                reason: format!("must be at most {MAX_JWT_LEEWAY:?}"),
            });
        }
        if keys.is_empty() && !options.public_topics.is_empty() {
            return Err(AuthConfigError {
                key: "public_topics",
                reason: "needs jwt_secret or jwt_public_key_file: without them auth is off and every topic is public".to_owned(),
            });
        }
        if keys.is_empty() && !options.metrics_public {
            return Err(AuthConfigError {
                key: "metrics_public",
                reason: "false needs jwt_secret or jwt_public_key_file: without them auth is off"
                    .to_owned(),
            });
        }
        let leeway_secs = options.leeway.as_secs();
        for key in &mut keys {
            key.validation.leeway = leeway_secs;
        }
        Ok(Self {
            keys: keys.into(),
            public_topics: options.public_topics.into(),
            leeway: Duration::from_secs(leeway_secs),
            metrics_public: options.metrics_public,
        })
    }

    /// Reads `jwt_secret`, `jwt_public_key_file` (the file is read now), `jwt_leeway`,
    /// `metrics_public` and, if `with_public_topics` (the gateway), `public_topics`.
    /// The binaries give defaults for `jwt_leeway` and `metrics_public`.
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] naming the setting; a secret's value is shown as `***`.
    pub fn from_layers(layers: &Layers, with_public_topics: bool) -> Result<Self, SettingsError> {
        let key_file = layers.raw("jwt_public_key_file");
        let jwt_public_key_pem = key_file
            .as_deref()
            .map(|path| {
                std::fs::read_to_string(path).map_err(|e| {
                    layers.invalid("jwt_public_key_file", path, format!("cannot read: {e}"))
                })
            })
            .transpose()?;
        let public_topics = if with_public_topics {
            let raw = layers.raw("public_topics").unwrap_or_default();
            raw.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| {
                    TopicPattern::parse(p).map_err(|e| layers.invalid("public_topics", &raw, e))
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
        let options = AuthOptions {
            jwt_secret: layers.raw("jwt_secret"),
            jwt_public_key_pem,
            public_topics,
            leeway: layers.duration("jwt_leeway")?,
            metrics_public: layers.get("metrics_public")?,
        };
        Self::new(options).map_err(|e| {
            let shown = match e.key {
                "jwt_secret" => "***".to_owned(),
                "jwt_public_key_file" => key_file.clone().unwrap_or_default(),
                key => layers.raw(key).unwrap_or_default(),
            };
            layers.invalid(e.key, &shown, e.reason)
        })
    }

    /// Whether any key is configured (else every check passes).
    pub fn is_on(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The accepted algorithms, for the configuration log line.
    pub fn algorithms(&self) -> Vec<&'static str> {
        self.keys
            .iter()
            .map(|k| match k.algorithm {
                Algorithm::HS256 => "HS256",
                Algorithm::RS256 => "RS256",
                Algorithm::ES256 => "ES256",
                _ => "other",
            })
            .collect()
    }

    pub fn public_topics(&self) -> &[TopicPattern] {
        &self.public_topics
    }

    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    pub fn metrics_public(&self) -> bool {
        self.metrics_public
    }

    /// Verifies `token` if there is one. `Ok(None)`: no token, or auth off. A token that is
    /// present is always verified, even where none is needed (a public topic): a client
    /// with a bad token learns so instead of being served silently as anonymous.
    ///
    /// # Errors
    /// [`AuthError::Expired`] or [`AuthError::Invalid`].
    pub fn authenticate(&self, token: Option<&str>) -> Result<Option<Claims>, AuthError> {
        let Some(token) = token.filter(|_| self.is_on()) else {
            return Ok(None);
        };
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("not a JWT with a valid header"))?;
        // The token names its algorithm; only the key configured for exactly that one may
        // verify it. No key for it (including `none`): refused.
        let key = self
            .keys
            .iter()
            .find(|k| k.algorithm == header.alg)
            .ok_or(AuthError::Invalid("signing algorithm not accepted"))?;
        let mut claims = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)
            .map_err(|e| token_error(e.kind()))?
            .claims;
        claims.parse_scopes()?;
        // The library compares whole seconds and accepts the second of `exp` itself; RFC
        // 7519 says a token is expired from `exp` on. Judge by the same instant a stream
        // ends at ([`Auth::access_ends`]), so a client that was cut off cannot reconnect
        // with the same token.
        if SystemTime::now() >= claims.expires_at() + self.leeway {
            return Err(AuthError::Expired);
        }
        Ok(Some(claims))
    }

    /// Whether anyone may subscribe to `topic` without a token (`public_topics`).
    pub fn is_public(&self, topic: &Topic) -> bool {
        self.public_topics.iter().any(|p| p.matches(topic.as_str()))
    }

    /// May the caller follow `topic`'s change stream? Yes when auth is off or the topic is
    /// public; otherwise it needs a token with a matching `subscribe` pattern. Call it for
    /// every topic of a connection.
    ///
    /// # Errors
    /// [`AuthError::Missing`] (401) or [`AuthError::Forbidden`] (403).
    pub fn authorize_subscribe(
        &self,
        claims: Option<&Claims>,
        topic: &Topic,
    ) -> Result<(), AuthError> {
        if !self.is_on() || self.is_public(topic) {
            return Ok(());
        }
        self.grant(claims, topic, Action::Subscribe, |c| &c.topics.subscribe)
    }

    /// May the caller change `topic` (REST mutations, `POST /publish`)? Public topics do not
    /// count: only a `publish` pattern does.
    ///
    /// # Errors
    /// [`AuthError::Missing`] (401) or [`AuthError::Forbidden`] (403).
    pub fn authorize_publish(
        &self,
        claims: Option<&Claims>,
        topic: &Topic,
    ) -> Result<(), AuthError> {
        if !self.is_on() {
            return Ok(());
        }
        self.grant(claims, topic, Action::Publish, |c| &c.topics.publish)
    }

    /// May the caller read `topic`'s records through the REST API? A `subscribe` or a
    /// `publish` pattern will do (who may see the changes may see the records).
    ///
    /// # Errors
    /// [`AuthError::Missing`] (401) or [`AuthError::Forbidden`] (403).
    pub fn authorize_read(&self, claims: Option<&Claims>, topic: &Topic) -> Result<(), AuthError> {
        if !self.is_on() {
            return Ok(());
        }
        let subscribe = self.grant(claims, topic, Action::Read, |c| &c.topics.subscribe);
        match subscribe {
            Err(AuthError::Forbidden { .. }) => {
                self.grant(claims, topic, Action::Read, |c| &c.topics.publish)
            }
            other => other,
        }
    }

    /// May the caller read `/metrics`? Yes when auth is off or `metrics_public`; otherwise
    /// any valid token.
    ///
    /// # Errors
    /// [`AuthError::Missing`] (401).
    pub fn authorize_metrics(&self, claims: Option<&Claims>) -> Result<(), AuthError> {
        if !self.is_on() || self.metrics_public || claims.is_some() {
            Ok(())
        } else {
            Err(AuthError::Missing)
        }
    }

    /// When access to `topic` granted by `claims` ends: `exp` plus the leeway. `None` when
    /// it does not end (auth off, a public topic, no token). A stream must end by then; for
    /// a connection to several topics, take the earliest.
    pub fn access_ends(&self, claims: Option<&Claims>, topic: &Topic) -> Option<SystemTime> {
        if !self.is_on() || self.is_public(topic) {
            return None;
        }
        claims.map(|c| c.expires_at() + self.leeway)
    }

    fn grant(
        &self,
        claims: Option<&Claims>,
        topic: &Topic,
        action: Action,
        patterns: impl Fn(&Claims) -> &Vec<TopicPattern>,
    ) -> Result<(), AuthError> {
        let claims = claims.ok_or(AuthError::Missing)?;
        if patterns(claims).iter().any(|p| p.matches(topic.as_str())) {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                action,
                topic: topic.clone(),
            })
        }
    }
}

fn hs256_key(secret: &str) -> Result<VerifyingKey, String> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "an HS256 secret must be at least {MIN_SECRET_LEN} bytes (got {}); e.g. `openssl rand -base64 48`",
            secret.len()
        ));
    }
    Ok(verifying_key(
        Algorithm::HS256,
        DecodingKey::from_secret(secret.as_bytes()),
    ))
}

/// An RSA (RS256) or P-256 (ES256) public key from PEM text, chosen by the key's type.
fn public_key(pem: &str) -> Result<VerifyingKey, String> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::DecodePublicKey;
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::traits::PublicKeyParts;

    if pem.contains("PRIVATE KEY") {
        return Err("the file holds a private key; give the public key only".to_owned());
    }
    let rsa = rsa::RsaPublicKey::from_public_key_pem(pem)
        .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(pem));
    if let Ok(key) = rsa {
        let bits = key.n().bits();
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "RSA key of {bits} bits; at least {MIN_RSA_BITS} are needed"
            ));
        }
        let decoding =
            DecodingKey::from_rsa_raw_components(&key.n().to_bytes_be(), &key.e().to_bytes_be());
        return Ok(verifying_key(Algorithm::RS256, decoding));
    }
    if let Ok(key) = p256::PublicKey::from_public_key_pem(pem) {
        let point = key.to_encoded_point(false);
        return Ok(verifying_key(
            Algorithm::ES256,
            DecodingKey::from_ec_der(point.as_bytes()),
        ));
    }
    Err("not a PEM public key of RSA (RS256) or EC P-256 (ES256) type".to_owned())
}

fn verifying_key(algorithm: Algorithm, key: DecodingKey) -> VerifyingKey {
    let mut validation = Validation::new(algorithm);
    validation.leeway = DEFAULT_JWT_LEEWAY.as_secs();
    validation.set_required_spec_claims(&["exp"]);
    validation.validate_exp = true;
    validation.validate_nbf = true;
    // No audience or issuer setting exists: a token is judged by its signature, expiry and
    // topic grants (docs/SECURITY.md: use a key of its own for this service).
    validation.validate_aud = false;
    VerifyingKey {
        algorithm,
        key,
        validation,
    }
}

/// A fixed message per failure: library messages may quote claim values.
fn token_error(kind: &jsonwebtoken::errors::ErrorKind) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => AuthError::Expired,
        K::InvalidSignature => AuthError::Invalid("signature does not verify"),
        K::ImmatureSignature => AuthError::Invalid("not valid yet (nbf)"),
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm => {
            AuthError::Invalid("signing algorithm not accepted")
        }
        K::MissingRequiredClaim(_) => AuthError::Invalid("the exp claim is required"),
        K::Json(_) => AuthError::Invalid("claims do not have the expected shape"),
        _ => AuthError::Invalid("malformed token"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn hs256(claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn auth(public: &[&str]) -> Auth {
        Auth::new(AuthOptions {
            jwt_secret: Some(SECRET.to_owned()),
            public_topics: public
                .iter()
                .map(|p| TopicPattern::parse(p).unwrap())
                .collect(),
            leeway: Duration::ZERO,
            metrics_public: true,
            ..AuthOptions::default()
        })
        .unwrap()
    }

    fn topic(name: &str) -> Topic {
        Topic::new(name).unwrap()
    }

    #[test]
    fn a_far_future_exp_does_not_overflow() {
        let auth = auth(&[]);
        let token = hs256(&json!({"exp": u64::MAX, "topics": {"subscribe": ["A"]}}));
        let claims = auth.authenticate(Some(&token)).unwrap();
        assert!(auth.access_ends(claims.as_ref(), &topic("A")).is_some());
    }

    #[test]
    fn off_allows_everything_and_ignores_tokens() {
        let off = Auth::off();
        assert!(!off.is_on());
        assert!(off.authenticate(Some("garbage")).unwrap().is_none());
        assert!(off.authorize_subscribe(None, &topic("A")).is_ok());
        assert!(off.authorize_publish(None, &topic("A")).is_ok());
        assert!(off.authorize_read(None, &topic("A")).is_ok());
        assert_eq!(off.access_ends(None, &topic("A")), None);
    }

    #[test]
    fn grants_by_pattern() {
        let auth = auth(&["Public*"]);
        let token = hs256(&json!({"sub": "user-42", "exp": now() + 60,
            "topics": {"subscribe": ["MyModels", "Orders*"], "publish": ["Drafts"]}}));
        let claims = auth.authenticate(Some(&token)).unwrap().unwrap();
        assert_eq!(claims.sub.as_deref(), Some("user-42"));
        let c = Some(&claims);
        assert!(auth.authorize_subscribe(c, &topic("MyModels")).is_ok());
        assert!(auth.authorize_subscribe(c, &topic("Orders-1")).is_ok());
        assert!(auth.authorize_subscribe(None, &topic("PublicNews")).is_ok());
        assert_eq!(
            auth.authorize_subscribe(c, &topic("Secret")),
            Err(AuthError::Forbidden {
                action: Action::Subscribe,
                topic: topic("Secret")
            })
        );
        assert_eq!(
            auth.authorize_subscribe(None, &topic("Secret")),
            Err(AuthError::Missing)
        );
        assert!(auth.authorize_publish(c, &topic("Drafts")).is_ok());
        assert!(auth.authorize_publish(c, &topic("MyModels")).is_err());
        // Public topics are for reading the stream only.
        assert_eq!(
            auth.authorize_publish(None, &topic("PublicNews")),
            Err(AuthError::Missing)
        );
        assert!(auth.authorize_read(c, &topic("MyModels")).is_ok());
        assert!(auth.authorize_read(c, &topic("Drafts")).is_ok());
        assert!(matches!(
            auth.authorize_read(c, &topic("Secret")),
            Err(AuthError::Forbidden {
                action: Action::Read,
                ..
            })
        ));
        assert_eq!(
            auth.access_ends(c, &topic("MyModels")),
            Some(claims.expires_at())
        );
        assert_eq!(auth.access_ends(c, &topic("PublicNews")), None);
    }

    #[test]
    fn bad_tokens_are_refused_without_quoting_them() {
        let auth = auth(&[]);
        let good = hs256(&json!({"exp": now() + 60, "topics": {"subscribe": ["A"]}}));
        // One character in the middle of the signature changed (the last one may only
        // carry padding bits).
        let at = good.rfind('.').unwrap() + 10;
        let flipped = if &good[at..=at] == "A" { "B" } else { "A" };
        let tampered = format!("{}{flipped}{}", &good[..at], &good[at + 1..]);
        let expired = hs256(&json!({"exp": now() - 10}));
        let no_exp = hs256(&json!({"sub": "x"}));
        let other_secret = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"exp": now() + 60}),
            &EncodingKey::from_secret(b"another secret of at least 32 bytes!!"),
        )
        .unwrap();
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &json!({"exp": now() + 60}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        // alg "none": header {"alg":"none"}, no signature.
        let none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            good.split('.').nth(1).unwrap()
        );
        for (token, want) in [
            (tampered.as_str(), "signature"),
            (expired.as_str(), "expired"),
            (no_exp.as_str(), "exp"),
            (other_secret.as_str(), "signature"),
            (hs512.as_str(), "algorithm"),
            (none.as_str(), "header"),
            ("not.a.jwt", "header"),
            ("", "header"),
        ] {
            let err = auth.authenticate(Some(token)).unwrap_err();
            assert!(err.is_unauthenticated());
            let message = err.to_string();
            assert!(message.contains(want), "{token}: {message}");
            if !token.is_empty() {
                assert!(!message.contains(token));
            }
        }
    }

    #[test]
    fn options_are_checked() {
        let err = Auth::new(AuthOptions {
            jwt_secret: Some("short".into()),
            ..AuthOptions::default()
        })
        .unwrap_err();
        assert_eq!(err.key, "jwt_secret");
        assert!(!err.reason.contains("short"));
        let err = Auth::new(AuthOptions {
            public_topics: vec![TopicPattern::parse("A").unwrap()],
            ..AuthOptions::default()
        })
        .unwrap_err();
        assert_eq!(err.key, "public_topics");
        let err = Auth::new(AuthOptions {
            jwt_public_key_pem: Some(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
            ),
            ..AuthOptions::default()
        })
        .unwrap_err();
        assert!(err.reason.contains("private key"), "{err}");
        let err = Auth::new(AuthOptions {
            jwt_public_key_pem: Some("hello".into()),
            ..AuthOptions::default()
        })
        .unwrap_err();
        assert_eq!(err.key, "jwt_public_key_file");
        let debug = format!("{:?}", auth(&[]));
        assert!(!debug.contains(SECRET), "{debug}");
    }
}
