//! Who is calling: the [`Principal`] and scope checks.
//!
//! On stdio the caller is a local principal configured explicitly at start-up
//! ([`HardenedBuilder::local_principal`](crate::HardenedBuilder::local_principal)); there is
//! no default identity and no default credential.

use std::sync::Arc;

/// How a principal was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthMethod {
    /// Configured by the process that started the server (stdio).
    Local,
    /// No identity: only `public` tools are reachable.
    Anonymous,
}

impl AuthMethod {
    /// The method's name as recorded in audit records.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Local => "local",
            AuthMethod::Anonymous => "anonymous",
        }
    }
}

/// An authenticated caller: a subject, the scopes it was granted, and an optional tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    subject: Arc<str>,
    scopes: Box<[Box<str>]>,
    tier: Option<Arc<str>>,
    method: AuthMethod,
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

    /// A principal authenticated by `method`. Scopes are deduplicated; empty ones dropped.
    pub fn new<I, S>(subject: impl Into<Arc<str>>, scopes: I, method: AuthMethod) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut v: Vec<Box<str>> = scopes
            .into_iter()
            .flat_map(|s| {
                s.as_ref()
                    .split_whitespace()
                    .map(Box::from)
                    .collect::<Vec<_>>()
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        Self {
            subject: subject.into(),
            scopes: v.into_boxed_slice(),
            tier: None,
            method,
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

    /// The subject (user or service id).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub(crate) fn subject_arc(&self) -> &Arc<str> {
        &self.subject
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
