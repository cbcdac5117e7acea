//! API keys: random bearer credentials stored only as SHA-256 hashes.
//!
//! A key reads `mhk_<id>_<secret>`: the 16-hex-digit id is public (it names the key in
//! logs and audit records), the secret is 256 random bits. The server keeps the id, the
//! SHA-256 of the whole key and the principal it stands for; comparison is constant-time.
//! A fast hash is right here: the secret has full entropy, so there is nothing to
//! brute-force that a slow password hash would protect.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AuthContext, AuthFailure, AuthMethod, Authenticator, Principal};

/// Every API key starts with this prefix.
pub const API_KEY_PREFIX: &str = "mhk_";
const ID_HEX: usize = 16;

/// A freshly generated API key. Show it to its owner once; store only [`ApiKey::entry`].
pub struct ApiKey {
    id: String,
    key: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ApiKey {
    /// A new key from the operating system's CSPRNG (via `rand`'s thread RNG).
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let mut id = [0u8; ID_HEX / 2];
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut id);
        rng.fill_bytes(&mut secret);
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let key = format!("{API_KEY_PREFIX}{id}_{secret}");
        Self { id, key }
    }

    /// The public key id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The whole key, to hand to its owner. Never log it.
    pub fn expose(&self) -> &str {
        &self.key
    }

    /// What the server stores for this key: its id, hash and principal.
    pub fn entry<I, S>(&self, subject: impl Into<String>, scopes: I) -> ApiKeyEntry
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ApiKeyEntry {
            id: self.id.clone(),
            sha256: hex(&Sha256::digest(self.key.as_bytes())),
            subject: subject.into(),
            scopes: scopes.into_iter().map(Into::into).collect(),
            tier: None,
        }
    }
}

/// A stored API key: what a keys file holds (a JSON array of these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// The key's public id (16 hex digits).
    pub id: String,
    /// The SHA-256 of the whole key, 64 hex digits.
    pub sha256: String,
    /// The subject the key authenticates as.
    pub subject: String,
    /// The scopes it grants.
    pub scopes: Vec<String>,
    /// The principal's tier, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

/// A problem with stored API keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiKeyError {
    /// The keys file could not be read or parsed.
    #[error("API keys: {0}")]
    Read(String),
    /// An entry is malformed.
    #[error("API key `{id}`: {reason}")]
    Entry {
        /// The entry's id as written.
        id: String,
        /// What is wrong.
        reason: &'static str,
    },
}

struct Stored {
    hash: [u8; 32],
    principal: Arc<Principal>,
}

/// Authenticates `mhk_…` bearer keys against their stored hashes.
///
/// ```
/// use mcp_harden::auth::{ApiKey, ApiKeyAuthenticator};
/// let key = ApiKey::generate();
/// let keys = ApiKeyAuthenticator::new([key.entry("ci-bot", ["db:read"])])?;
/// # Ok::<(), mcp_harden::auth::ApiKeyError>(())
/// ```
pub struct ApiKeyAuthenticator {
    keys: HashMap<String, Stored>,
}

impl std::fmt::Debug for ApiKeyAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyAuthenticator")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl ApiKeyAuthenticator {
    /// From stored entries. Refuses malformed ids or hashes and duplicate ids.
    pub fn new(entries: impl IntoIterator<Item = ApiKeyEntry>) -> Result<Self, ApiKeyError> {
        let mut keys = HashMap::new();
        for e in entries {
            let bad = |reason| ApiKeyError::Entry {
                id: e.id.chars().take(32).collect(),
                reason,
            };
            if e.id.len() != ID_HEX || !e.id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("the id must be 16 hex digits"));
            }
            let hash = unhex32(&e.sha256).ok_or_else(|| bad("sha256 must be 64 hex digits"))?;
            if e.subject.is_empty() || e.subject.len() > 256 {
                return Err(bad("the subject must be 1 to 256 bytes"));
            }
            let mut principal = Principal::new(e.subject.as_str(), &e.scopes, AuthMethod::ApiKey)
                .with_key_id(e.id.to_ascii_lowercase());
            if let Some(t) = &e.tier {
                principal = principal.with_tier(t.as_str());
            }
            if keys
                .insert(
                    e.id.to_ascii_lowercase(),
                    Stored {
                        hash,
                        principal: Arc::new(principal),
                    },
                )
                .is_some()
            {
                return Err(bad("duplicate id"));
            }
        }
        Ok(Self { keys })
    }

    /// From a JSON array of [`ApiKeyEntry`].
    pub fn from_json(json: &str) -> Result<Self, ApiKeyError> {
        let entries: Vec<ApiKeyEntry> =
            serde_json::from_str(json).map_err(|e| ApiKeyError::Read(e.to_string()))?;
        Self::new(entries)
    }

    /// From a file holding a JSON array of [`ApiKeyEntry`].
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, ApiKeyError> {
        let path = path.as_ref();
        let json = std::fs::read_to_string(path)
            .map_err(|e| ApiKeyError::Read(format!("cannot read {}: {e}", path.display())))?;
        Self::from_json(&json)
    }
}

impl Authenticator for ApiKeyAuthenticator {
    fn authenticate(
        &self,
        credential: &str,
        cx: &AuthContext<'_>,
    ) -> Option<Result<Principal, AuthFailure>> {
        self.authenticate_shared(credential, cx)
            .map(|r| r.map(Arc::unwrap_or_clone))
    }

    fn authenticate_shared(
        &self,
        credential: &str,
        _cx: &AuthContext<'_>,
    ) -> Option<Result<Arc<Principal>, AuthFailure>> {
        let rest = credential.strip_prefix(API_KEY_PREFIX)?;
        let id = rest.get(..ID_HEX).unwrap_or("");
        let hash: [u8; 32] = Sha256::digest(credential.as_bytes()).into();
        // Compare against something even for an unknown id, so timing says nothing about
        // which ids exist.
        const NONE: [u8; 32] = [0; 32];
        let stored = self.keys.get(id);
        let expected = stored.map_or(&NONE, |s| &s.hash);
        let equal: bool = hash.ct_eq(expected).into();
        Some(match stored {
            Some(s) if equal => Ok(s.principal.clone()),
            _ => Err(AuthFailure::UnknownApiKey),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> AuthContext<'static> {
        AuthContext::new("http://127.0.0.1/mcp", ([127, 0, 0, 1], 1).into())
    }

    #[test]
    fn a_generated_key_authenticates_and_nothing_else_does() {
        let key = ApiKey::generate();
        assert!(key.expose().starts_with(API_KEY_PREFIX));
        assert!(!format!("{key:?}").contains(&key.expose()[25..]));
        let auth = ApiKeyAuthenticator::new([key.entry("bot", ["db:read"])]).unwrap();
        let p = auth.authenticate(key.expose(), &cx()).unwrap().unwrap();
        assert_eq!(p.subject(), "bot");
        assert_eq!(p.key_id(), Some(key.id()));
        assert_eq!(p.method(), AuthMethod::ApiKey);
        assert!(p.has_scope("db:read"));

        let mut tampered = key.expose().to_owned();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(
            auth.authenticate(&tampered, &cx()),
            Some(Err(AuthFailure::UnknownApiKey))
        );
        let other = ApiKey::generate();
        assert_eq!(
            auth.authenticate(other.expose(), &cx()),
            Some(Err(AuthFailure::UnknownApiKey))
        );
        assert_eq!(
            auth.authenticate("mhk_", &cx()),
            Some(Err(AuthFailure::UnknownApiKey))
        );
        assert_eq!(auth.authenticate("eyJ.a.b", &cx()), None);
    }

    #[test]
    fn entries_are_checked() {
        let key = ApiKey::generate();
        let mut e = key.entry("bot", ["x"]);
        e.sha256.pop();
        assert!(ApiKeyAuthenticator::new([e]).is_err());
        let e = key.entry("bot", ["x"]);
        assert!(ApiKeyAuthenticator::new([e.clone(), e]).is_err());
        let json = serde_json::to_string(&[key.entry("bot", ["x"])]).unwrap();
        assert!(!json.contains(&key.expose()[21..]));
        assert!(ApiKeyAuthenticator::from_json(&json).is_ok());
        assert!(ApiKeyAuthenticator::from_json(r#"[{"id":"x"}]"#).is_err());
    }
}
