//! Errors on the wire: a refused or failed call becomes a tool result with `isError: true`
//! and `structuredContent: {"error": {...}}` that never carries internal detail.

use std::borrow::Cow;
use std::time::Duration;

use serde::Serialize;

use crate::args::Violation;

/// The most violations listed in one error.
const MAX_VIOLATIONS: usize = 32;
/// The longest path or message of a violation, in bytes (serde messages quote the input).
const MAX_VIOLATION_TEXT: usize = 200;

fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push('…');
    }
}

/// The stable error codes a client can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The caller has no identity and the tool is not public.
    Unauthenticated,
    /// The caller lacks a required scope.
    Forbidden,
    /// The caller exceeded the tool's rate limit; see `retry_after_ms`.
    RateLimited,
    /// The arguments failed decoding or validation; see `violations`.
    InvalidArguments,
    /// The tool did not finish within its timeout (in the audit trail, also an HTTP request
    /// body that did not arrive in time).
    Timeout,
    /// The server cannot take the call now.
    Unavailable,
    /// The tool returned an error.
    ToolError,
    /// The server failed (a panic, an unserializable result).
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire, e.g. `RATE_LIMITED`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::InvalidArguments => "INVALID_ARGUMENTS",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::ToolError => "TOOL_ERROR",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// Whether the refusal is a security event (an identity or permission failure).
    pub const fn is_security_event(self) -> bool {
        matches!(self, ErrorCode::Unauthenticated | ErrorCode::Forbidden)
    }

    /// The audit record's `reason` for a call refused with this code.
    pub(crate) const fn reason(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "insufficient_scope",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::InvalidArguments => "invalid_arguments",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::ToolError => "tool_error",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused or failed call as the client sees it. Every message is safe by construction:
/// fixed text chosen by mcp-harden, or text the tool's error type chose to expose through
/// [`PublicError`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolError {
    /// The error code.
    pub code: ErrorCode,
    /// A message safe to show to the client and the model.
    pub message: Cow<'static, str>,
    /// Whether the same call may succeed if retried.
    pub retryable: bool,
    /// How long to wait before retrying, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Every broken argument rule, with its field path.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
}

impl ToolError {
    /// An error with a code, a safe message and a retry flag.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>, retryable: bool) -> Self {
        Self {
            code,
            message: message.into(),
            retryable,
            retry_after_ms: None,
            violations: Vec::new(),
        }
    }

    /// This error with a retry hint (rounded up to the millisecond).
    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        let ms = u64::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        self.retry_after_ms = Some(ms.max(1));
        self
    }

    pub(crate) fn unauthenticated() -> Self {
        Self::new(
            ErrorCode::Unauthenticated,
            "this tool requires an authenticated caller",
            false,
        )
    }

    pub(crate) fn forbidden(missing: &[&str]) -> Self {
        Self::new(
            ErrorCode::Forbidden,
            format!(
                "the caller lacks the required scope(s): {}",
                missing.join(" ")
            ),
            false,
        )
    }

    pub(crate) fn rate_limited(wait: Duration, message: &'static str) -> Self {
        // Round up: retrying after the hint must succeed.
        let ms = u64::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        Self {
            retry_after_ms: Some(ms.max(1)),
            ..Self::new(ErrorCode::RateLimited, message, true)
        }
    }

    pub(crate) fn invalid_arguments(mut violations: Vec<Violation>) -> Self {
        let n = violations.len();
        // Bounded reply: at most MAX_VIOLATIONS entries, each of bounded length, so that
        // a large invalid request cannot become a larger error.
        if n > MAX_VIOLATIONS {
            violations.truncate(MAX_VIOLATIONS);
            violations.push(Violation {
                path: String::new(),
                message: format!("{} more violations not shown", n - MAX_VIOLATIONS),
            });
        }
        for v in &mut violations {
            cut(&mut v.path, MAX_VIOLATION_TEXT);
            cut(&mut v.message, MAX_VIOLATION_TEXT);
        }
        let message = if n == 1 {
            "the arguments are invalid: 1 violation".to_owned()
        } else {
            format!("the arguments are invalid: {n} violations")
        };
        Self {
            violations,
            ..Self::new(ErrorCode::InvalidArguments, message, false)
        }
    }

    pub(crate) fn timeout(after: Duration) -> Self {
        Self::new(
            ErrorCode::Timeout,
            format!("the tool did not finish within {} ms", after.as_millis()),
            true,
        )
    }

    /// The client cancelled the call (while it waited for a slot, or while it ran).
    pub(crate) fn cancelled() -> Self {
        Self::new(ErrorCode::Unavailable, "the call was cancelled", true)
    }

    pub(crate) fn internal() -> Self {
        Self::new(ErrorCode::Internal, "internal error", false)
    }

    /// The JSON placed in `structuredContent`: `{"error": {...}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let inner = serde_json::to_value(self).unwrap_or_else(|_| {
            serde_json::json!({"code": "INTERNAL", "message": "internal error", "retryable": false})
        });
        serde_json::json!({ "error": inner })
    }
}

/// Opt-in: lets an error type show its own text to clients.
///
/// By default a tool's error reaches the client as `TOOL_ERROR` with a generic message, and
/// its `Display` text goes only to the audit record. Implement this trait to expose a message
/// (for instance only for some variants); return `None` to keep the generic one.
///
/// ```
/// use std::borrow::Cow;
/// use mcp_harden::PublicError;
///
/// #[derive(Debug)]
/// enum OrderError { NotFound(u64), Db(String) }
///
/// impl PublicError for OrderError {
///     fn public_message(&self) -> Option<Cow<'_, str>> {
///         match self {
///             OrderError::NotFound(id) => Some(format!("order {id} does not exist").into()),
///             OrderError::Db(_) => None, // internal detail: never shown
///         }
///     }
/// }
/// ```
pub trait PublicError {
    /// The text a client may see, or `None` for the generic message.
    fn public_message(&self) -> Option<Cow<'_, str>>;
}

/// How a tool's own error left the function: decided by generated code.
#[doc(hidden)]
#[derive(Debug)]
pub struct ToolFailure {
    pub retryable: bool,
    pub public_message: Option<String>,
    /// Server-side detail for the audit record; never sent to a client.
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape_matches_the_design() {
        let e = ToolError::rate_limited(
            Duration::from_micros(1500),
            "rate limit exceeded for this tool",
        );
        assert_eq!(
            e.to_json(),
            serde_json::json!({"error": {"code": "RATE_LIMITED", "message": "rate limit exceeded for this tool", "retryable": true, "retry_after_ms": 2}})
        );
        let e = ToolError::invalid_arguments(vec![Violation {
            path: "a".into(),
            message: "b".into(),
        }]);
        assert_eq!(e.to_json()["error"]["violations"][0]["path"], "a");
        assert!(e.to_json()["error"].get("retry_after_ms").is_none());
    }
}

/// Why an invocation did not produce a result. Generated code builds it.
#[doc(hidden)]
#[derive(Debug)]
pub enum Failure {
    /// The tool's own error.
    Tool(ToolFailure),
    /// The result could not be serialized.
    Output(String),
}
