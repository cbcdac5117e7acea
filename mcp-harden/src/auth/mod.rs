//! Who is calling: the [`Principal`], scope checks, and the authenticators that turn a
//! bearer credential into a principal.
//!
//! On stdio the caller is a local principal configured explicitly at start-up
//! ([`HardenedBuilder::local_principal`](crate::HardenedBuilder::local_principal)); there is
//! no default identity and no default credential. Over HTTP every request carries a bearer
//! credential checked by the [`Authenticator`]s given to
//! [`HttpConfig::authenticator`](crate::server::http::HttpConfig::authenticator): a
//! [`JwtAuthenticator`] for tokens from an authorization server (or minted by the
//! `mcp-harden` tool), an [`ApiKeyAuthenticator`] for hashed API keys, or your own.

mod apikey;
mod jwt;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

pub use apikey::{ApiKey, ApiKeyAuthenticator, ApiKeyEntry, ApiKeyError, API_KEY_PREFIX};
pub use jwt::{
    random_secret, DevToken, JwtAuthenticator, JwtBuilder, JwtConfigError, MAX_DEV_TOKEN_TTL,
};

/// How a principal was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthMethod {
    /// Configured by the process that started the server (stdio).
    Local,
    /// No identity: only `public` tools are reachable.
    Anonymous,
    /// A verified JSON Web Token (bearer).
    Jwt,
    /// An API key (bearer), identified by its key id.
    ApiKey,
    /// A custom [`Authenticator`].
    Custom,
}

impl AuthMethod {
    /// The method's name as recorded in audit records.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Local => "local",
            AuthMethod::Anonymous => "anonymous",
            AuthMethod::Jwt => "jwt",
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Custom => "custom",
        }
    }
}

/// An authenticated caller: a subject, the scopes it was granted, and an optional tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    subject: Arc<str>,
    // Shared: a clone (every cached-token hit) copies no string.
    scopes: Arc<[Box<str>]>,
    tier: Option<Arc<str>>,
    method: AuthMethod,
    key_id: Option<Arc<str>>,
    /// Whose quota a call spends: the method and the subject (`jwt:alice`), so that a JWT's
    /// `sub` never spends an API key's quota of the same name, nor the other way round.
    rate_key: Arc<str>,
}

impl Principal {
    /// A local principal (stdio) with the given subject and scopes.
    ///
    /// ```
    /// let p = mcp_harden::Principal::local("ops", ["db:read", "db:write"]);
    /// assert!(p.has_scope("db:read"));
    /// ```
    pub fn local<I, S>(subject: impl Into<Arc<str>>, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::new(subject, scopes, AuthMethod::Local)
    }

    /// A principal authenticated by `method`. Each item may hold several scopes separated by
    /// ASCII whitespace; scopes are deduplicated, empty ones dropped.
    pub fn new<I, S>(subject: impl Into<Arc<str>>, scopes: I, method: AuthMethod) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut v: Vec<Box<str>> = scopes
            .into_iter()
            .flat_map(|s| {
                s.as_ref()
                    .split_ascii_whitespace()
                    .map(Box::from)
                    .collect::<Vec<_>>()
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        let subject: Arc<str> = subject.into();
        Self {
            rate_key: format!("{}:{subject}", method.as_str()).into(),
            subject,
            scopes: Arc::from(v),
            tier: None,
            method,
            key_id: None,
        }
    }

    /// The caller of a `public` tool that presented no identity.
    pub(crate) fn anonymous() -> Self {
        Self::new(
            "anonymous",
            std::iter::empty::<&str>(),
            AuthMethod::Anonymous,
        )
    }

    /// This principal with a tier (e.g. `enterprise`), used by tier-aware limits.
    pub fn with_tier(mut self, tier: impl Into<Arc<str>>) -> Self {
        self.tier = Some(tier.into());
        self
    }

    /// This principal with the id of the credential that identified it (an API key's id):
    /// safe to log, never the credential itself.
    pub fn with_key_id(mut self, key_id: impl Into<Arc<str>>) -> Self {
        self.key_id = Some(key_id.into());
        self
    }

    /// The id of the credential that identified this principal, if any.
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    /// The subject (user or service id).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub(crate) fn subject_arc(&self) -> &Arc<str> {
        &self.subject
    }

    /// The key of this caller's rate limits: its method and subject.
    pub(crate) fn rate_key(&self) -> &Arc<str> {
        &self.rate_key
    }

    pub(crate) fn tier_arc(&self) -> Option<&Arc<str>> {
        self.tier.as_ref()
    }

    pub(crate) fn key_id_arc(&self) -> Option<&Arc<str>> {
        self.key_id.as_ref()
    }

    /// The granted scopes, sorted.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scopes.iter().map(|s| &**s)
    }

    /// The tier, if any.
    pub fn tier(&self) -> Option<&str> {
        self.tier.as_deref()
    }

    /// How the principal was authenticated.
    pub fn method(&self) -> AuthMethod {
        self.method
    }

    /// Whether the principal was granted `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.binary_search_by(|s| (**s).cmp(scope)).is_ok()
    }

    /// The required scopes this principal lacks, in declaration order.
    pub fn missing_scopes<'a>(&self, required: &[&'a str]) -> Vec<&'a str> {
        required
            .iter()
            .copied()
            .filter(|s| !self.has_scope(s))
            .collect()
    }

    /// Whether the principal holds every scope in `required`.
    pub fn has_all(&self, required: &[&str]) -> bool {
        required.iter().all(|s| self.has_scope(s))
    }
}

/// What an authenticator knows about the request besides the credential.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct AuthContext<'a> {
    /// This server's resource identifier (RFC 8707/9728), e.g. `https://mcp.example.com/mcp`:
    /// the audience a token must name when no other audience is configured.
    pub resource: &'a str,
    /// The client's address: the peer's or, from a trusted proxy, the one it forwarded
    /// (port 0; see `HttpConfig::trusted_proxies`).
    pub source: SocketAddr,
}

impl<'a> AuthContext<'a> {
    /// A context for `resource` and `source` (for tests and custom transports).
    pub fn new(resource: &'a str, source: SocketAddr) -> Self {
        Self { resource, source }
    }
}

/// Turns a bearer credential into a [`Principal`].
///
/// Several authenticators compose: each is asked in turn, and the first that recognises the
/// credential's format decides. Implementations must not log the credential.
pub trait Authenticator: Send + Sync + 'static {
    /// `None` when the credential is not of this authenticator's kind (let the next one
    /// try); otherwise the verified principal or why it was refused.
    fn authenticate(
        &self,
        credential: &str,
        cx: &AuthContext<'_>,
    ) -> Option<Result<Principal, AuthFailure>>;

    /// The same decision as [`authenticate`](Self::authenticate), with the principal shared:
    /// what the HTTP guard calls for every request. The default puts `authenticate`'s
    /// principal in a new `Arc`; an authenticator that keeps its principals (a key table, a
    /// cache of verified tokens) hands out its own instead of copying one per request.
    fn authenticate_shared(
        &self,
        credential: &str,
        cx: &AuthContext<'_>,
    ) -> Option<Result<Arc<Principal>, AuthFailure>> {
        self.authenticate(credential, cx).map(|r| r.map(Arc::new))
    }
}

impl<A: Authenticator + ?Sized> Authenticator for Arc<A> {
    fn authenticate(
        &self,
        credential: &str,
        cx: &AuthContext<'_>,
    ) -> Option<Result<Principal, AuthFailure>> {
        (**self).authenticate(credential, cx)
    }
    fn authenticate_shared(
        &self,
        credential: &str,
        cx: &AuthContext<'_>,
    ) -> Option<Result<Arc<Principal>, AuthFailure>> {
        (**self).authenticate_shared(credential, cx)
    }
}

/// Why a request was not authenticated. Recorded in audit records (its [`reason`](Self::reason))
/// and summarised to the client; never carries the credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthFailure {
    /// No `Authorization` header.
    Missing,
    /// The header is not `Bearer <credential>`, or is not valid visible ASCII.
    MalformedHeader,
    /// The credential is longer than the configured limit.
    Oversized,
    /// No authenticator recognises the credential's format.
    UnrecognizedCredential,
    /// The token is not a well-formed JWT (bad base64, bad JSON, unsupported `alg`, `alg: none`).
    MalformedToken,
    /// The token's `exp` is past (beyond the leeway).
    Expired,
    /// The token's `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// The token's `iss` is not an accepted issuer.
    WrongIssuer,
    /// The token's `aud` does not name this resource.
    WrongAudience,
    /// The signature does not verify.
    BadSignature,
    /// The token's `kid` names no configured key, or no key fits a token without `kid`.
    UnknownKey,
    /// The token's `alg` is not the algorithm pinned for the selected key.
    AlgorithmMismatch,
    /// The token's `typ` header is not the one required (an OpenID Connect ID token, say,
    /// where RFC 9068 access tokens, `at+jwt`, are expected).
    WrongTokenType,
    /// A required claim (`exp`, `sub`, `aud`, `iss`) is missing or has the wrong type.
    MissingClaim,
    /// The API key is unknown or does not match its stored hash.
    UnknownApiKey,
    /// Too many failed attempts from this source address; retry later.
    Throttled,
    /// A custom authenticator's reason.
    Other(&'static str),
}

impl AuthFailure {
    /// A stable snake_case reason for audit records and metrics.
    pub const fn reason(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing_credentials",
            AuthFailure::MalformedHeader => "malformed_header",
            AuthFailure::Oversized => "oversized_credentials",
            AuthFailure::UnrecognizedCredential => "unrecognized_credentials",
            AuthFailure::MalformedToken => "malformed_token",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::WrongIssuer => "wrong_issuer",
            AuthFailure::WrongAudience => "wrong_audience",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::UnknownKey => "unknown_key",
            AuthFailure::AlgorithmMismatch => "algorithm_mismatch",
            AuthFailure::WrongTokenType => "wrong_token_type",
            AuthFailure::MissingClaim => "missing_claim",
            AuthFailure::UnknownApiKey => "unknown_api_key",
            AuthFailure::Throttled => "throttled",
            AuthFailure::Other(r) => r,
        }
    }

    /// What the client is told (RFC 6750 `error_description`): deliberately vague except
    /// where the client can act on it.
    pub const fn client_message(self) -> &'static str {
        match self {
            AuthFailure::Missing => "authentication required",
            AuthFailure::MalformedHeader => "expected an Authorization: Bearer header",
            AuthFailure::Oversized => "the credential is too long",
            AuthFailure::Expired => "the token has expired",
            AuthFailure::NotYetValid => "the token is not valid yet",
            AuthFailure::WrongAudience => "the token was not issued for this resource",
            AuthFailure::Throttled => "too many failed attempts; retry later",
            _ => "the credential is not valid",
        }
    }
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// Authenticators asked in order: the first that recognises a credential decides.
#[derive(Clone, Default)]
pub(crate) struct Authenticators(Vec<(std::any::TypeId, Arc<dyn Authenticator>)>);

impl Authenticators {
    pub(crate) fn push<A: Authenticator>(&mut self, a: Arc<A>) {
        self.0.push((std::any::TypeId::of::<A>(), a));
    }
    /// Why the authenticators cannot work together, if a built-in one is there twice: the
    /// first decides every credential of its kind, and the second would never be asked.
    pub(crate) fn repeated_builtin(&self) -> Option<&'static str> {
        use std::any::TypeId;
        [
            (
                TypeId::of::<JwtAuthenticator>(),
                "two JwtAuthenticators: the first decides every JWT, so the second would never \
                 be asked; give one authenticator every key (a JWKS) of one issuer",
            ),
            (
                TypeId::of::<ApiKeyAuthenticator>(),
                "two ApiKeyAuthenticators: the first decides every API key, so the second would \
                 never be asked; keep every key in one keys file",
            ),
        ]
        .into_iter()
        .find(|(kind, _)| self.0.iter().filter(|(k, _)| k == kind).count() > 1)
        .map(|(_, why)| why)
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub(crate) fn authenticate(
        &self,
        credential: &str,
        cx: &AuthContext<'_>,
    ) -> Result<Arc<Principal>, AuthFailure> {
        self.0
            .iter()
            .find_map(|(_, a)| a.authenticate_shared(credential, cx))
            .unwrap_or(Err(AuthFailure::UnrecognizedCredential))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_split_sorted_and_checked_exactly() {
        let p = Principal::local("u", ["db:write db:read", "db:read", ""]);
        assert_eq!(p.scopes().collect::<Vec<_>>(), ["db:read", "db:write"]);
        assert!(p.has_all(&["db:read", "db:write"]));
        assert!(!p.has_scope("db"));
        assert!(!p.has_scope("db:read "));
        assert_eq!(p.missing_scopes(&["admin", "db:read"]), ["admin"]);
    }
}
