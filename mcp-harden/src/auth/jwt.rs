//! JSON Web Token bearer authentication with `jsonwebtoken`.
//!
//! Every key is pinned to one algorithm: a token is verified only with a key whose algorithm
//! is the token's `alg`, so `alg: none` (not even parseable) and HS/RS confusion (an HS256
//! token "signed" with an RSA public key) are impossible.
//!
//! Verified tokens are remembered in a bounded cache keyed by the SHA-256 of the whole
//! token, so that a client presenting the same token on every request pays for one signature
//! verification, not one per request. A cached token is honoured only while its `exp` and
//! `nbf` (with the leeway) still hold, checked against the clock on every hit, and only for
//! the resource its audience was checked against. Failures are never cached.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{AuthContext, AuthFailure, AuthMethod, Authenticator, Principal};

/// The shortest HMAC secret accepted: 256 bits, as RFC 7518 §3.2 requires for HS256.
const MIN_HMAC_SECRET: usize = 32;
/// The longest subject accepted.
const MAX_SUBJECT: usize = 256;
/// Verified tokens remembered by default (see [`JwtBuilder::cache`]).
const DEFAULT_CACHE_CAPACITY: usize = 10_000;

/// Verifies JWT bearer tokens: signature with a pinned key, `exp`, `nbf`, `iss`, `aud`
/// (RFC 8707: the audience must name this resource), then reads the subject, the scopes
/// (`scope` as a space-separated string, or `scp`/`scopes` as an array or string) and an
/// optional tier claim.
///
/// ```
/// use mcp_harden::auth::JwtAuthenticator;
/// let jwt = JwtAuthenticator::builder()
///     .hs256(b"a development secret of at least 32 bytes!")
///     .issuer("https://auth.example.com")
///     .tier_claim("tier")
///     .build()?;
/// # Ok::<(), mcp_harden::auth::JwtConfigError>(())
/// ```
///
/// Verified tokens are cached (10 000 by default, see [`JwtBuilder::cache`]): a token seen
/// before skips signature verification while it is still within its validity window.
pub struct JwtAuthenticator {
    keys: Vec<Key>,
    /// Whether any key has a `kid`: then a token's `kid` must name one.
    any_kid: bool,
    audiences: Vec<String>,
    /// Whether issuers are configured: then `iss` must be one string.
    check_issuer: bool,
    tier_claim: Option<String>,
    /// The `typ` a token must carry, lowercase, without `application/`.
    token_type: Option<String>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    leeway: u64,
    cache: Option<TokenCache>,
    /// Full verifications performed (tests prove that a hit skips them).
    #[cfg(test)]
    verifications: std::sync::atomic::AtomicUsize,
}

/// Verified tokens by the SHA-256 of the whole token (so the cache holds no credential, and
/// no two tokens share an entry short of a SHA-256 collision). Bounded: when full, `quick_cache`
/// evicts (S3-FIFO: tokens seen once go first).
struct TokenCache {
    entries: quick_cache::sync::Cache<[u8; 32], Arc<CachedToken>>,
}

/// What a verification established, and the conditions under which it still holds.
struct CachedToken {
    principal: Arc<Principal>,
    /// The token's `exp` (required, so always known).
    exp: u64,
    /// The token's `nbf`, if it has one.
    nbf: Option<u64>,
    /// The resource the audience was checked against; `None` when fixed audiences are
    /// configured, which do not depend on the request's resource.
    resource: Option<Box<str>>,
}

impl CachedToken {
    /// Whether the verification still holds at `now` (seconds since the epoch) for a
    /// request to `resource`: `now < exp + leeway`, `now >= nbf - leeway`, same resource.
    fn holds(&self, now: u64, leeway: u64, resource: &str) -> bool {
        now < self.exp.saturating_add(leeway)
            && self.nbf.is_none_or(|nbf| now >= nbf.saturating_sub(leeway))
            && self.resource.as_deref().is_none_or(|r| r == resource)
    }
}

impl TokenCache {
    fn new(capacity: usize) -> Option<Self> {
        (capacity > 0).then(|| Self {
            entries: quick_cache::sync::Cache::new(capacity),
        })
    }

    fn key(token: &str) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(token.as_bytes()).into()
    }

    /// The principal of a cached token whose verification still holds. A stale entry is
    /// dropped (a request for another resource leaves it alone).
    fn get(&self, key: &[u8; 32], now: u64, leeway: u64, resource: &str) -> Option<Arc<Principal>> {
        let hit = self.entries.get(key)?;
        if hit.holds(now, leeway, resource) {
            return Some(hit.principal.clone());
        }
        if now >= hit.exp.saturating_add(leeway) {
            self.entries.remove(key);
        }
        None
    }
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field(
                "keys",
                &self
                    .keys
                    .iter()
                    .map(|k| (k.kid.as_deref(), k.alg))
                    .collect::<Vec<_>>(),
            )
            .field("audiences", &self.audiences)
            .field(
                "cache_capacity",
                &self.cache.as_ref().map_or(0, |c| c.entries.capacity()),
            )
            .finish_non_exhaustive()
    }
}

/// A problem with the JWT configuration, found when it is built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtConfigError {
    /// No verification key was given.
    #[error("no JWT verification key configured")]
    NoKeys,
    /// Public keys without an issuer: name the issuer (or accept any, explicitly).
    #[error(
        "public keys verify tokens an authorization server signs, perhaps for others too: name \
         it with .issuer(..), or accept any issuer with .any_issuer()"
    )]
    NoIssuer,
    /// Both `.issuer(..)` and `.any_issuer()`.
    #[error(".any_issuer() and .issuer(..) contradict each other: keep one")]
    IssuerAndAnyIssuer,
    /// An HMAC secret shorter than 32 bytes.
    #[error("the HMAC secret is {0} bytes; at least 32 random bytes are required")]
    WeakSecret(usize),
    /// A key could not be read.
    #[error("invalid {alg:?} key{}: {reason}", kid.as_deref().map(|k| format!(" `{k}`")).unwrap_or_default())]
    InvalidKey {
        /// The key's `kid`, if any.
        kid: Option<String>,
        /// The algorithm it was meant for.
        alg: Algorithm,
        /// Why it was refused.
        reason: String,
    },
    /// The algorithm does not fit the kind of key given.
    #[error("{0:?} cannot be used with this kind of key")]
    AlgorithmForKey(Algorithm),
    /// A JWKS document could not be read or holds no usable signing key.
    #[error("JWKS: {0}")]
    Jwks(String),
    /// Two keys share a `kid`.
    #[error("two keys have the kid `{0}`")]
    DuplicateKid(String),
    /// The token type given to `.token_type` is empty or not visible ASCII.
    #[error("the token type `{0}` is not a media type")]
    TokenType(String),
    /// `.with_kid` was called before any key was added.
    #[error("with_kid must follow the key it names")]
    KidWithoutKey,
}

/// Builds a [`JwtAuthenticator`]. Configuration mistakes are reported by
/// [`build`](Self::build), all at once if there are several (the first is returned).
#[derive(Default)]
#[must_use]
pub struct JwtBuilder {
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: Option<Duration>,
    tier_claim: Option<String>,
    cache: Option<usize>,
    token_type: Option<String>,
    any_issuer: bool,
    errors: Vec<JwtConfigError>,
}

impl JwtAuthenticator {
    /// Starts a configuration.
    pub fn builder() -> JwtBuilder {
        JwtBuilder::default()
    }

    fn select(&self, header: &jsonwebtoken::Header) -> Result<Vec<&Key>, AuthFailure> {
        if let (Some(kid), true) = (&header.kid, self.any_kid) {
            let key = self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid.as_str()))
                .ok_or(AuthFailure::UnknownKey)?;
            return if key.alg == header.alg {
                Ok(vec![key])
            } else {
                Err(AuthFailure::AlgorithmMismatch)
            };
        }
        let fitting: Vec<&Key> = self.keys.iter().filter(|k| k.alg == header.alg).collect();
        if fitting.is_empty() {
            Err(AuthFailure::AlgorithmMismatch)
        } else {
            Ok(fitting)
        }
    }

    fn principal(
        &self,
        claims: &Map<String, Value>,
        cx: &AuthContext<'_>,
    ) -> Result<Principal, AuthFailure> {
        let audience_ok = |aud: &str| {
            if self.audiences.is_empty() {
                aud == cx.resource
            } else {
                self.audiences.iter().any(|a| a == aud)
            }
        };
        match claims.get("aud") {
            Some(Value::String(a)) if audience_ok(a) => {}
            Some(Value::Array(v)) if v.iter().any(|a| a.as_str().is_some_and(audience_ok)) => {}
            None => return Err(AuthFailure::MissingClaim),
            Some(_) => return Err(AuthFailure::WrongAudience),
        }
        // One issuer, a string (RFC 7519): jsonwebtoken accepts an array naming any
        // configured issuer among others.
        if self.check_issuer && !matches!(claims.get("iss"), Some(Value::String(_))) {
            return Err(AuthFailure::WrongIssuer);
        }
        let subject = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_SUBJECT => s.as_str(),
            _ => return Err(AuthFailure::MissingClaim),
        };
        let scopes = scopes_of(claims).ok_or(AuthFailure::MissingClaim)?;
        let mut principal = Principal::new(subject, scopes, AuthMethod::Jwt);
        if let Some(name) = &self.tier_claim {
            match claims.get(name) {
                Some(Value::String(t)) if !t.is_empty() && t.len() <= 64 => {
                    principal = principal.with_tier(t.as_str());
                }
                None | Some(Value::Null) => {}
                Some(_) => return Err(AuthFailure::MissingClaim),
            }
        }
        Ok(principal)
    }
}

/// The granted scopes: `scope` (RFC 8693/9068, space-separated), else `scp` or `scopes`
/// (an array of strings, or a space-separated string). `None` if present but malformed:
/// every scope must be an RFC 6749 scope-token (printable ASCII but `"` and `\\`), and only
/// the ASCII space separates them, so that no other blank (a no-break space, say, in a scope
/// an authorization server copied from a request) splits one granted scope into several.
fn scopes_of(claims: &Map<String, Value>) -> Option<Vec<&str>> {
    let claim = ["scope", "scp", "scopes"]
        .iter()
        .find_map(|n| claims.get(*n));
    let token = |t: &str| {
        t.bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5b | 0x5d..=0x7e))
    };
    match claim {
        None => Some(Vec::new()),
        Some(Value::String(s)) => s
            .split(' ')
            .filter(|t| !t.is_empty())
            .map(|t| token(t).then_some(t))
            .collect(),
        Some(Value::Array(v)) => v
            .iter()
            .filter(|t| t.as_str() != Some(""))
            .map(|t| t.as_str().filter(|t| token(t)))
            .collect(),
        Some(_) => None,
    }
}

fn failure(kind: &ErrorKind) -> AuthFailure {
    match kind {
        ErrorKind::InvalidSignature => AuthFailure::BadSignature,
        ErrorKind::ExpiredSignature => AuthFailure::Expired,
        ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
        ErrorKind::InvalidIssuer => AuthFailure::WrongIssuer,
        ErrorKind::InvalidAudience => AuthFailure::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
            AuthFailure::MissingClaim
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => AuthFailure::AlgorithmMismatch,
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidEddsaKey | ErrorKind::InvalidRsaKey(_) => {
            AuthFailure::BadSignature
        }
        _ => AuthFailure::MalformedToken,
    }
}

impl Authenticator for JwtAuthenticator {
    fn authenticate(
        &self,
        credential: &str,
        cx: &AuthContext<'_>,
    ) -> Option<Result<Principal, AuthFailure>> {
        self.authenticate_shared(credential, cx)
            .map(|r| r.map(Arc::unwrap_or_clone))
    }

    /// A cached token's principal is the cache's own, shared: a hit copies nothing.
    fn authenticate_shared(
        &self,
        credential: &str,
        cx: &AuthContext<'_>,
    ) -> Option<Result<Arc<Principal>, AuthFailure>> {
        // A JWS compact serialization: three base64url segments. Anything else is another
        // authenticator's business.
        if count_dots(credential.as_bytes()) != 2 {
            return None;
        }
        let Some(cache) = &self.cache else {
            return Some(self.verify(credential, cx).map(|(p, _)| Arc::new(p)));
        };
        let key = TokenCache::key(credential);
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(principal) = cache.get(&key, now, self.leeway, cx.resource) {
            return Some(Ok(principal));
        }
        let (principal, window) = match self.verify(credential, cx) {
            Ok((p, window)) => (Arc::new(p), window),
            // Failures are not cached: a refused token is checked afresh every time.
            Err(e) => return Some(Err(e)),
        };
        if let Some((exp, nbf)) = window {
            cache.entries.insert(
                key,
                Arc::new(CachedToken {
                    principal: principal.clone(),
                    exp,
                    nbf,
                    resource: self.audiences.is_empty().then(|| cx.resource.into()),
                }),
            );
        }
        Some(Ok(principal))
    }
}

/// The dots in `bytes`, by vectorised search (`split('.')` compares char by char).
fn count_dots(bytes: &[u8]) -> usize {
    memchr::memchr_iter(b'.', bytes).count()
}

impl JwtAuthenticator {
    /// Full verification: header, key selection, signature, `exp`/`nbf`/`iss`, audience,
    /// claims. Also returns the token's validity window (`exp`, `nbf`) when it can be cached.
    #[allow(clippy::type_complexity)]
    fn verify(
        &self,
        credential: &str,
        cx: &AuthContext<'_>,
    ) -> Result<(Principal, Option<(u64, Option<u64>)>), AuthFailure> {
        #[cfg(test)]
        self.verifications
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let header = jsonwebtoken::decode_header(credential).map_err(|e| failure(e.kind()))?;
        let mut last = AuthFailure::BadSignature;
        for key in self.select(&header)? {
            match jsonwebtoken::decode::<Map<String, Value>>(credential, &key.key, &key.validation)
            {
                Ok(data) => {
                    // After the signature: a forged token is audited as one, whatever its
                    // typ says.
                    if let Some(want) = &self.token_type {
                        if data
                            .header
                            .typ
                            .as_deref()
                            .is_none_or(|t| media_type(t) != *want)
                        {
                            return Err(AuthFailure::WrongTokenType);
                        }
                    }
                    let principal = self.principal(&data.claims, cx)?;
                    return Ok((principal, validity_window(&data.claims)));
                }
                Err(e) => last = failure(e.kind()),
            }
            if last != AuthFailure::BadSignature {
                break;
            }
        }
        Err(last)
    }
}

/// Whether `alg` is verified with a shared secret (the other algorithms, with public keys).
fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// A JOSE `typ` as compared (RFC 7515 4.1.9): lowercase, and a media type without a `/`
/// stands for `application/` and it (`at+jwt` is `application/at+jwt`).
fn media_type(typ: &str) -> String {
    let typ = typ.to_ascii_lowercase();
    if typ.contains('/') {
        typ
    } else {
        format!("application/{typ}")
    }
}

/// `exp` and `nbf` of verified claims as whole seconds (what `jsonwebtoken` checked); `None`
/// if either is not in that form, and then the token is not cached.
fn validity_window(claims: &Map<String, Value>) -> Option<(u64, Option<u64>)> {
    let exp = claims.get("exp")?.as_u64()?;
    let nbf = match claims.get("nbf") {
        None => None,
        Some(v) => Some(v.as_u64()?),
    };
    Some((exp, nbf))
}

impl JwtBuilder {
    /// An HS256 shared secret (at least 32 bytes).
    pub fn hs256(self, secret: impl AsRef<[u8]>) -> Self {
        self.hmac(Algorithm::HS256, secret)
    }

    /// An HMAC secret for `alg` (HS256, HS384 or HS512; at least 32 bytes).
    pub fn hmac(mut self, alg: Algorithm, secret: impl AsRef<[u8]>) -> Self {
        let secret = secret.as_ref();
        if !is_hmac(alg) {
            self.errors.push(JwtConfigError::AlgorithmForKey(alg));
        } else if secret.len() < MIN_HMAC_SECRET {
            self.errors.push(JwtConfigError::WeakSecret(secret.len()));
        } else {
            self.keys
                .push((None, alg, DecodingKey::from_secret(secret)));
        }
        self
    }

    /// An RS256 public key in PEM (SPKI or PKCS#1).
    pub fn rs256_pem(self, pem: impl AsRef<[u8]>) -> Self {
        self.pem(Algorithm::RS256, pem)
    }

    /// An ES256 (P-256) public key in PEM.
    pub fn es256_pem(self, pem: impl AsRef<[u8]>) -> Self {
        self.pem(Algorithm::ES256, pem)
    }

    /// An Ed25519 (EdDSA) public key in PEM.
    pub fn eddsa_pem(self, pem: impl AsRef<[u8]>) -> Self {
        self.pem(Algorithm::EdDSA, pem)
    }

    /// A public key in PEM, pinned to `alg` (RS*/PS*, ES256/ES384 or EdDSA).
    pub fn pem(mut self, alg: Algorithm, pem: impl AsRef<[u8]>) -> Self {
        let pem = pem.as_ref();
        let key = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => DecodingKey::from_rsa_pem(pem),
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
            _ => {
                self.errors.push(JwtConfigError::AlgorithmForKey(alg));
                return self;
            }
        };
        // An EC key's point is as long as its curve's (uncompressed or compressed): a P-384
        // key given for ES256 would build and then refuse every token.
        let point_fits = |k: &DecodingKey| match (alg, k.try_get_as_bytes().map(<[u8]>::len)) {
            (Algorithm::ES256, Ok(n)) => n == 65 || n == 33,
            (Algorithm::ES384, Ok(n)) => n == 97 || n == 49,
            _ => true,
        };
        match key {
            Ok(k) if !point_fits(&k) => self.errors.push(JwtConfigError::AlgorithmForKey(alg)),
            Ok(k) => self.keys.push((None, alg, k)),
            Err(e) => self.errors.push(JwtConfigError::InvalidKey {
                kid: None,
                alg,
                reason: e.to_string(),
            }),
        }
        self
    }

    /// Names the key added last: a token whose header carries this `kid` is verified with it.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        match self.keys.last_mut() {
            Some(k) => k.0 = Some(kid.into()),
            None => self.errors.push(JwtConfigError::KidWithoutKey),
        }
        self
    }

    /// Every signing key of a JWKS document (RFC 7517). Keys marked `"use": "enc"` are
    /// skipped; each key's algorithm comes from its `alg`, or, for EC and OKP keys, from its
    /// curve; an RSA or symmetric key without `alg` is refused (its algorithm would be a guess).
    pub fn jwks_json(mut self, json: &str) -> Self {
        let set: JwkSet = match serde_json::from_str(json) {
            Ok(s) => s,
            Err(e) => {
                self.errors
                    .push(JwtConfigError::Jwks(format!("not a JWKS document: {e}")));
                return self;
            }
        };
        let before = self.keys.len();
        for jwk in &set.keys {
            if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
                continue;
            }
            match jwk_key(jwk) {
                Ok(Some(k)) => self.keys.push(k),
                Ok(None) => {}
                Err(e) => self.errors.push(e),
            }
        }
        if self.keys.len() == before {
            self.errors
                .push(JwtConfigError::Jwks("no usable signing key".into()));
        }
        self
    }

    /// [`jwks_json`](Self::jwks_json) read from a file.
    pub fn jwks_file(mut self, path: impl AsRef<Path>) -> Self {
        match std::fs::read_to_string(path.as_ref()) {
            Ok(s) => self.jwks_json(&s),
            Err(e) => {
                self.errors.push(JwtConfigError::Jwks(format!(
                    "cannot read {}: {e}",
                    path.as_ref().display()
                )));
                self
            }
        }
    }

    /// Accept tokens from this issuer (`iss`); repeat for several. Without any, `iss` is
    /// not checked, which public keys allow only with [`any_issuer`](Self::any_issuer).
    ///
    /// Several issuers share this authenticator's keys and its subjects: a token signed by
    /// any of the keys may name any of the issuers, and `sub` alone is the caller (who
    /// owns a session, whose rate limit, whose audit records). Configure several only for
    /// one authority (an identity provider under two URLs), not for independent ones.
    pub fn issuer(mut self, iss: impl Into<String>) -> Self {
        self.issuers.push(iss.into());
        self
    }

    /// Accept tokens from any issuer, leaving `iss` unchecked. Without it, an authenticator
    /// with a public key (RS*, PS*, ES*, EdDSA, from PEM or JWKS) needs
    /// [`issuer`](Self::issuer): an authorization server may sign tokens for others with the
    /// same keys (a multi-tenant identity provider, say), and the audience alone then
    /// separates yours. An HMAC secret is yours alone and needs neither.
    pub fn any_issuer(mut self) -> Self {
        self.any_issuer = true;
        self
    }

    /// Accept tokens for this audience (`aud`); repeat for several. Without any, the
    /// audience must be the server's own resource URL (RFC 8707).
    pub fn audience(mut self, aud: impl Into<String>) -> Self {
        self.audiences.push(aud.into());
        self
    }

    /// Clock skew allowed on `exp` and `nbf` (default 30 s, at most 5 min).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = Some(leeway.min(Duration::from_secs(300)));
        self
    }

    /// Read the principal's tier from this claim (a string), when present.
    pub fn tier_claim(mut self, name: impl Into<String>) -> Self {
        self.tier_claim = Some(name.into());
        self
    }

    /// Accept only tokens whose JOSE header `typ` is this media type (compared without case;
    /// `at+jwt` and `application/at+jwt` are one type, RFC 7515 4.1.9), checked once the
    /// signature verifies. Set `"at+jwt"` when the authorization server issues
    /// RFC 9068 access tokens: an OpenID Connect ID token (`typ: JWT`) for the same audience,
    /// or any other JWT signed by the same keys, is then refused
    /// ([`AuthFailure::WrongTokenType`](crate::auth::AuthFailure::WrongTokenType)). Without
    /// it, `typ` is not checked.
    pub fn token_type(mut self, typ: impl Into<String>) -> Self {
        let typ = typ.into();
        let well_formed = typ.bytes().all(|b| b.is_ascii_graphic())
            && match typ.split_once('/') {
                None => !typ.is_empty(),
                Some((kind, sub)) => !kind.is_empty() && !sub.is_empty() && !sub.contains('/'),
            };
        if !well_formed {
            self.errors.push(JwtConfigError::TokenType(typ));
        } else {
            self.token_type = Some(media_type(&typ));
        }
        self
    }

    /// How many verified tokens to remember (default 10 000; `0` turns the cache off).
    ///
    /// A remembered token skips signature verification while it is still valid: its `exp`
    /// and `nbf` (with the leeway) are checked against the clock on every use, and it is
    /// accepted only for the resource its audience was checked against. Entries are keyed by
    /// the SHA-256 of the whole token, so the cache holds no credential; refused tokens are
    /// never remembered. When full, the least promising entries are evicted (S3-FIFO).
    pub fn cache(mut self, capacity: usize) -> Self {
        self.cache = Some(capacity);
        self
    }

    /// Checks the configuration.
    pub fn build(mut self) -> Result<JwtAuthenticator, JwtConfigError> {
        if !self.errors.is_empty() {
            return Err(self.errors.swap_remove(0));
        }
        if self.keys.is_empty() {
            return Err(JwtConfigError::NoKeys);
        }
        let mut kids: Vec<&str> = self.keys.iter().filter_map(|k| k.0.as_deref()).collect();
        kids.sort_unstable();
        if let Some(w) = kids.windows(2).find(|w| w[0] == w[1]) {
            return Err(JwtConfigError::DuplicateKid(w[0].to_owned()));
        }
        let public_keys = self.keys.iter().any(|k| !is_hmac(k.1));
        match (self.issuers.is_empty(), self.any_issuer) {
            (false, true) => return Err(JwtConfigError::IssuerAndAnyIssuer),
            (true, false) if public_keys => return Err(JwtConfigError::NoIssuer),
            _ => {}
        }
        let leeway = self.leeway.unwrap_or(Duration::from_secs(30)).as_secs();
        let any_kid = self.keys.iter().any(|k| k.0.is_some());
        let issuers = self.issuers;
        let keys = self
            .keys
            .into_iter()
            .map(|(kid, alg, key)| {
                let mut v = Validation::new(alg);
                v.leeway = leeway;
                v.validate_exp = true;
                v.validate_nbf = true;
                // The audience is checked against the resource of the request (below).
                v.validate_aud = false;
                let mut required = vec!["exp", "sub"];
                if !issuers.is_empty() {
                    v.set_issuer(&issuers);
                    required.push("iss");
                }
                v.set_required_spec_claims(&required);
                Key {
                    kid,
                    alg,
                    key,
                    validation: v,
                }
            })
            .collect();
        Ok(JwtAuthenticator {
            keys,
            any_kid,
            audiences: self.audiences,
            check_issuer: !issuers.is_empty(),
            tier_claim: self.tier_claim,
            token_type: self.token_type,
            leeway,
            cache: TokenCache::new(self.cache.unwrap_or(DEFAULT_CACHE_CAPACITY)),
            #[cfg(test)]
            verifications: std::sync::atomic::AtomicUsize::new(0),
        })
    }
}

fn jwk_key(jwk: &Jwk) -> Result<Option<(Option<String>, Algorithm, DecodingKey)>, JwtConfigError> {
    let kid = jwk.common.key_id.clone();
    let declared = jwk.common.key_algorithm.map(|a| match a {
        KeyAlgorithm::HS256 => Some(Algorithm::HS256),
        KeyAlgorithm::HS384 => Some(Algorithm::HS384),
        KeyAlgorithm::HS512 => Some(Algorithm::HS512),
        KeyAlgorithm::ES256 => Some(Algorithm::ES256),
        KeyAlgorithm::ES384 => Some(Algorithm::ES384),
        KeyAlgorithm::RS256 => Some(Algorithm::RS256),
        KeyAlgorithm::RS384 => Some(Algorithm::RS384),
        KeyAlgorithm::RS512 => Some(Algorithm::RS512),
        KeyAlgorithm::PS256 => Some(Algorithm::PS256),
        KeyAlgorithm::PS384 => Some(Algorithm::PS384),
        KeyAlgorithm::PS512 => Some(Algorithm::PS512),
        KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
        // Encryption algorithms: not a signing key.
        _ => None,
    });
    let alg = match (declared, &jwk.algorithm) {
        (Some(None), _) => return Ok(None),
        (Some(Some(a)), _) => a,
        (None, AlgorithmParameters::EllipticCurve(p)) if p.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        (None, AlgorithmParameters::EllipticCurve(p)) if p.curve == EllipticCurve::P384 => {
            Algorithm::ES384
        }
        (None, AlgorithmParameters::OctetKeyPair(p)) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        (None, _) => {
            return Err(JwtConfigError::Jwks(format!(
                "key {} has no `alg`; add one",
                kid.as_deref().unwrap_or("without kid")
            )))
        }
    };
    // The key's type, and for elliptic curves its curve, must be the algorithm's: a P-384
    // key declared ES256 (or an OKP key on P-256 declared EdDSA) would build and then
    // refuse every token.
    let fits = match (&jwk.algorithm, alg) {
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES384) => p.curve == EllipticCurve::P384,
        (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => {
            p.curve == EllipticCurve::Ed25519
        }
        (AlgorithmParameters::OctetKey(_), alg) => is_hmac(alg),
        _ => false,
    };
    if !fits {
        return Err(JwtConfigError::AlgorithmForKey(alg));
    }
    if let AlgorithmParameters::OctetKey(_) = &jwk.algorithm {
        let key = DecodingKey::from_jwk(jwk).map_err(|e| JwtConfigError::InvalidKey {
            kid: kid.clone(),
            alg,
            reason: e.to_string(),
        })?;
        if key.try_get_as_bytes().map_or(0, <[u8]>::len) < MIN_HMAC_SECRET {
            return Err(JwtConfigError::WeakSecret(
                key.try_get_as_bytes().map_or(0, <[u8]>::len),
            ));
        }
        return Ok(Some((kid, alg, key)));
    }
    DecodingKey::from_jwk(jwk)
        .map(|k| Some((kid.clone(), alg, k)))
        .map_err(|e| JwtConfigError::InvalidKey {
            kid,
            alg,
            reason: e.to_string(),
        })
}

/// A short-lived HS256 token for development and tests: what `mcp-harden token` and the
/// example's start-up token are. Production tokens come from an authorization server.
///
/// ```
/// use mcp_harden::auth::DevToken;
/// use std::time::Duration;
/// let token = DevToken::new("alice", "http://127.0.0.1:8080/mcp")
///     .scopes(["db:read"])
///     .ttl(Duration::from_secs(600))
///     .sign_hs256(b"a development secret of at least 32 bytes!")?;
/// assert_eq!(token.split('.').count(), 3);
/// # Ok::<(), mcp_harden::auth::JwtConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct DevToken {
    subject: String,
    audience: String,
    scopes: Vec<String>,
    issuer: Option<String>,
    tier: Option<String>,
    ttl: Duration,
}

/// The longest lifetime a development token may have.
pub const MAX_DEV_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

impl DevToken {
    /// A token for `subject`, valid for `audience` (the server's resource URL), for one hour.
    pub fn new(subject: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            audience: audience.into(),
            scopes: Vec::new(),
            issuer: None,
            tier: None,
            ttl: Duration::from_secs(3600),
        }
    }

    /// The scopes granted (each may hold several, space-separated).
    pub fn scopes<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, scopes: I) -> Self {
        self.scopes = scopes
            .into_iter()
            .flat_map(|s| {
                s.as_ref()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        self
    }

    /// The `iss` claim.
    pub fn issuer(mut self, iss: impl Into<String>) -> Self {
        self.issuer = Some(iss.into());
        self
    }

    /// A `tier` claim.
    pub fn tier(mut self, tier: impl Into<String>) -> Self {
        self.tier = Some(tier.into());
        self
    }

    /// The lifetime (default one hour, at most [`MAX_DEV_TOKEN_TTL`]).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.min(MAX_DEV_TOKEN_TTL);
        self
    }

    /// Signs with an HS256 secret of at least 32 bytes.
    pub fn sign_hs256(&self, secret: &[u8]) -> Result<String, JwtConfigError> {
        if secret.len() < MIN_HMAC_SECRET {
            return Err(JwtConfigError::WeakSecret(secret.len()));
        }
        let now = jsonwebtoken::get_current_timestamp();
        let mut claims = serde_json::json!({
            "sub": self.subject,
            "aud": self.audience,
            "scope": self.scopes.join(" "),
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl.as_secs(),
            "jti": crate::audit::hex_into(rand::random::<u128>(), &mut [0u8; 32]),
        });
        if let Some(iss) = &self.issuer {
            claims["iss"] = iss.as_str().into();
        }
        if let Some(tier) = &self.tier {
            claims["tier"] = tier.as_str().into();
        }
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .map_err(|e| JwtConfigError::InvalidKey {
            kid: None,
            alg: Algorithm::HS256,
            reason: e.to_string(),
        })
    }
}

/// A random 256-bit secret, base64url-encoded (43 characters): for HS256 development setups.
pub fn random_secret() -> String {
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::Ordering;

    use super::*;

    const SECRET: &[u8] = b"a unit-test secret of at least 32 bytes";
    const RESOURCE: &str = "http://127.0.0.1:8080/mcp";

    fn cx(resource: &str) -> AuthContext<'_> {
        AuthContext::new(resource, SocketAddr::from(([127, 0, 0, 1], 4000)))
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn token(claims: &Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .expect("signs")
    }

    fn claims(sub: &str) -> Value {
        serde_json::json!({"sub": sub, "aud": RESOURCE, "scope": "db:read", "exp": now() + 600})
    }

    fn auth(builder: JwtBuilder) -> JwtAuthenticator {
        builder.hs256(SECRET).build().expect("valid configuration")
    }

    fn verifications(a: &JwtAuthenticator) -> usize {
        a.verifications.load(Ordering::Relaxed)
    }

    fn check(a: &JwtAuthenticator, token: &str, resource: &str) -> Result<Principal, AuthFailure> {
        a.authenticate(token, &cx(resource)).expect("a JWT")
    }

    #[test]
    fn a_hit_shares_the_cached_principal() {
        let a = auth(JwtAuthenticator::builder());
        let t = token(&claims("alice"));
        let shared = |a: &JwtAuthenticator| {
            a.authenticate_shared(&t, &cx(RESOURCE))
                .expect("a JWT")
                .expect("valid")
        };
        let (first, second) = (shared(&a), shared(&a));
        assert!(Arc::ptr_eq(&first, &second), "the cache's own principal");
        assert_eq!(verifications(&a), 1);
        assert_eq!(check(&a, &t, RESOURCE).expect("valid"), *first);
        let uncached = auth(JwtAuthenticator::builder().cache(0));
        assert!(!Arc::ptr_eq(&shared(&uncached), &shared(&uncached)));
    }

    #[test]
    fn scopes_are_split_on_the_ascii_space_alone() {
        let a = auth(JwtAuthenticator::builder().cache(0));
        let with = |scope: Value| {
            let mut c = claims("u");
            c["scope"] = scope;
            check(&a, &token(&c), RESOURCE)
                .map(|p| p.scopes().map(str::to_owned).collect::<Vec<_>>())
        };
        assert_eq!(
            with(serde_json::json!("db:read  db:write")).expect("valid"),
            ["db:read", "db:write"]
        );
        assert_eq!(
            with(serde_json::json!(["db:read", "", "db:write"])).expect("valid"),
            ["db:read", "db:write"]
        );
        // Another blank would split one granted scope into two: refused as malformed.
        for bad in [
            serde_json::json!("group:x\u{a0}admin"),
            serde_json::json!("group:x\u{3000}admin"),
            serde_json::json!("db:read\tadmin"),
            serde_json::json!(["files:read admin"]),
            serde_json::json!(["files:read\u{2003}admin"]),
            serde_json::json!(["quote\"d"]),
            serde_json::json!(["db:read", 7]),
        ] {
            assert_eq!(with(bad.clone()), Err(AuthFailure::MissingClaim), "{bad}");
        }
    }

    #[test]
    fn issuer_must_be_one_string() {
        let a = auth(
            JwtAuthenticator::builder()
                .issuer("https://issuer.example")
                .cache(0),
        );
        let with = |iss: Value| {
            let mut c = claims("u");
            c["iss"] = iss;
            check(&a, &token(&c), RESOURCE).map(|_| ())
        };
        assert_eq!(with(serde_json::json!("https://issuer.example")), Ok(()));
        for bad in [
            serde_json::json!(["https://evil.example", "https://issuer.example"]),
            serde_json::json!(["https://issuer.example"]),
            serde_json::json!("https://evil.example"),
        ] {
            assert_eq!(with(bad.clone()), Err(AuthFailure::WrongIssuer), "{bad}");
        }
    }

    #[test]
    fn dots_are_counted_in_tokens_of_any_length() {
        for len in [0, 1, 254, 255, 256, 600] {
            let all = vec![b'.'; len];
            assert_eq!(count_dots(&all), len);
            let mut some = vec![b'a'; len];
            for i in (0..len).step_by(7) {
                some[i] = b'.';
            }
            assert_eq!(count_dots(&some), len.div_ceil(7));
        }
    }

    #[test]
    fn only_three_segments_are_taken_as_a_jwt() {
        let a = auth(JwtAuthenticator::builder());
        let t = token(&claims("alice"));
        for other in [
            "mh_0123.abc",
            "abc",
            "",
            "a.b.c.d",
            &format!("{t}."),
            &t.replace('.', ""),
        ] {
            assert!(a.authenticate(other, &cx(RESOURCE)).is_none(), "{other}");
        }
        assert!(check(&a, &t, RESOURCE).is_ok());
        assert_eq!(
            check(&a, "a.b.c", RESOURCE),
            Err(AuthFailure::MalformedToken)
        );
    }

    #[test]
    fn a_hit_skips_verification_and_returns_the_same_principal() {
        let a = auth(JwtAuthenticator::builder());
        let t = token(&claims("alice"));
        let first = check(&a, &t, RESOURCE).expect("valid");
        assert_eq!(verifications(&a), 1);
        for _ in 0..5 {
            assert_eq!(check(&a, &t, RESOURCE).expect("cached"), first);
        }
        assert_eq!(verifications(&a), 1, "hits verify nothing");
        assert_eq!(first.subject(), "alice");
        assert!(first.has_scope("db:read"));

        let uncached = auth(JwtAuthenticator::builder().cache(0));
        for _ in 0..3 {
            check(&uncached, &t, RESOURCE).expect("valid");
        }
        assert_eq!(verifications(&uncached), 3, "cache(0) verifies every time");
    }

    #[test]
    fn another_token_never_hits_an_entry() {
        let a = auth(JwtAuthenticator::builder());
        let alice = token(&claims("alice"));
        let bob = token(&claims("bob"));
        assert_eq!(
            check(&a, &alice, RESOURCE).expect("valid").subject(),
            "alice"
        );
        assert_eq!(check(&a, &bob, RESOURCE).expect("valid").subject(), "bob");
        assert_eq!(verifications(&a), 2);
        // Alice's token with its signature altered, or with bytes appended: verified (and
        // refused), never served from alice's entry.
        let mut forged = alice.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).expect("ASCII");
        assert_eq!(check(&a, &forged, RESOURCE), Err(AuthFailure::BadSignature));
        assert!(check(&a, &format!("{alice}A"), RESOURCE).is_err());
        assert_eq!(verifications(&a), 4);
        assert_eq!(
            check(&a, &alice, RESOURCE).expect("cached").subject(),
            "alice"
        );
        assert_eq!(verifications(&a), 4);
    }

    #[test]
    fn failures_are_not_cached() {
        let a = auth(JwtAuthenticator::builder());
        let mut c = claims("alice");
        c["aud"] = "https://elsewhere.example/mcp".into();
        let wrong = token(&c);
        let mut c = claims("alice");
        c["exp"] = (now() - 3600).into();
        let expired = token(&c);
        for _ in 0..3 {
            assert_eq!(check(&a, &wrong, RESOURCE), Err(AuthFailure::WrongAudience));
            assert_eq!(check(&a, &expired, RESOURCE), Err(AuthFailure::Expired));
        }
        assert_eq!(
            verifications(&a),
            6,
            "every refusal is a fresh verification"
        );
        assert_eq!(a.cache.as_ref().expect("cache on").entries.len(), 0);
    }

    #[test]
    fn a_token_cached_for_one_resource_is_refused_for_another() {
        let a = auth(JwtAuthenticator::builder());
        let t = token(&claims("alice"));
        check(&a, &t, RESOURCE).expect("valid for its audience");
        assert_eq!(
            check(&a, &t, "http://127.0.0.1:9090/mcp"),
            Err(AuthFailure::WrongAudience),
            "the entry is not honoured for another resource"
        );
        assert_eq!(verifications(&a), 2);
        check(&a, &t, RESOURCE).expect("still cached for its own resource");
        assert_eq!(verifications(&a), 2);

        // With fixed audiences the request's resource plays no part, cached or not.
        let fixed = auth(JwtAuthenticator::builder().audience(RESOURCE));
        check(&fixed, &t, "http://127.0.0.1:9090/mcp").expect("fixed audience");
        check(&fixed, &t, "http://127.0.0.1:7070/mcp").expect("fixed audience, cached");
        assert_eq!(verifications(&fixed), 1);
    }

    #[test]
    fn stale_entries_are_refused_at_the_boundaries() {
        let cache = TokenCache::new(4).expect("enabled");
        let key = TokenCache::key("a.b.c");
        cache.entries.insert(
            key,
            Arc::new(CachedToken {
                principal: Arc::new(Principal::new("alice", ["s"], AuthMethod::Jwt)),
                exp: 1_000,
                nbf: Some(500),
                resource: Some(RESOURCE.into()),
            }),
        );
        let leeway = 30;
        assert!(cache.get(&key, 1_029, leeway, RESOURCE).is_some());
        assert!(cache.get(&key, 470, leeway, RESOURCE).is_some());
        assert!(
            cache.get(&key, 469, leeway, RESOURCE).is_none(),
            "before nbf - leeway"
        );
        assert!(
            cache.get(&key, 1_000, leeway, "http://other/mcp").is_none(),
            "other resource"
        );
        assert_eq!(cache.entries.len(), 1, "neither removes the entry");
        assert!(
            cache.get(&key, 1_030, leeway, RESOURCE).is_none(),
            "at exp + leeway"
        );
        assert_eq!(cache.entries.len(), 0, "an expired entry is dropped");
        assert!(cache.get(&key, 600, leeway, RESOURCE).is_none());
    }

    #[test]
    fn an_expired_cached_token_is_refused() {
        let a = auth(JwtAuthenticator::builder().leeway(Duration::ZERO));
        let t0 = now();
        let mut c = claims("alice");
        c["exp"] = (t0 + 1).into();
        let t = token(&c);
        check(&a, &t, RESOURCE).expect("valid for about a second");
        check(&a, &t, RESOURCE).expect("cached");
        assert_eq!(verifications(&a), 1);
        while now() <= t0 + 1 {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(check(&a, &t, RESOURCE), Err(AuthFailure::Expired));
        assert_eq!(verifications(&a), 2, "the stale entry was not honoured");
    }

    #[test]
    fn the_cache_is_bounded() {
        let a = auth(JwtAuthenticator::builder().cache(16));
        for i in 0..200 {
            check(&a, &token(&claims(&format!("user{i}"))), RESOURCE).expect("valid");
        }
        let entries = &a.cache.as_ref().expect("cache on").entries;
        assert!(entries.len() <= 16, "{} entries", entries.len());
        assert!(!entries.is_empty());
    }
}
