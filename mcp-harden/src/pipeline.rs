//! The pipeline of one tool call, one small function per stage:
//! identify -> authorize -> limit -> decode and validate -> run -> shape -> record.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rmcp::model::{CallToolResult, ContentBlock};
use tokio_util::sync::CancellationToken;

use crate::audit::budget::{Budgets, Refused};
use crate::audit::{
    redact_credentials, AuditEvent, AuditPrincipal, AuditRecord, Outcome, AUDIT_RECORD_VERSION,
};
use crate::auth::{AuthMethod, Principal};
use crate::ctx::Ctx;
use crate::errors::{ErrorCode, Failure, ToolError};
use crate::limits::CallRates;
use crate::server::{Entry, Inner};
use crate::spec::Scopes;

/// How a call ended before shaping: a result, or a client-facing error plus server detail.
pub(crate) struct Refusal {
    pub error: ToolError,
    pub outcome: Outcome,
    pub detail: Option<String>,
    /// The record's `reason` when the call was refused before it ran.
    pub reason: &'static str,
}

impl Refusal {
    /// A call refused before it ran with `error`: `outcome`, and the code's reason.
    pub(crate) fn refused(error: ToolError, outcome: Outcome) -> Self {
        Self {
            outcome,
            reason: error.code.reason(),
            error,
            detail: None,
        }
    }
    fn before_run(error: ToolError) -> Self {
        let outcome = Outcome::of_refusal(error.code);
        Self::refused(error, outcome)
    }
    fn failed(error: ToolError, detail: impl Into<String>) -> Self {
        Self {
            reason: error.code.reason(),
            error,
            outcome: Outcome::Failed,
            detail: Some(detail.into()),
        }
    }
}

/// Everything known about one call, for the audit record.
pub(crate) struct CallInfo {
    pub time: crate::audit::Timestamp,
    pub trace_id: crate::telemetry::TraceId,
    pub span_id: crate::telemetry::SpanId,
    pub parent_span_id: Option<crate::telemetry::SpanId>,
    pub client: Option<Arc<crate::audit::AuditClient>>,
    /// The tool's name (the requested one, cut, when no such tool exists).
    pub tool: std::borrow::Cow<'static, str>,
    pub principal: Option<Arc<Principal>>,
    pub transport: &'static str,
    pub source: Option<std::net::SocketAddr>,
    /// An anonymous caller's over HTTP: the guard's record budget per source, which its
    /// refusals are recorded within.
    pub per_source: Option<Arc<crate::audit::budget::RefusalRecords>>,
}

/// Stage 2: the tool's scopes against the caller's. A public tool admits anyone.
pub(crate) fn authorize(
    scopes: Scopes,
    principal: Option<&Arc<Principal>>,
) -> Result<Arc<Principal>, ToolError> {
    match (scopes, principal) {
        (Scopes::Public, Some(p)) => Ok(p.clone()),
        (Scopes::Public, None) => Ok(Arc::new(Principal::anonymous())),
        (Scopes::Required(_), None) => Err(ToolError::unauthenticated()),
        // `scopes = []` means any *authenticated* caller: never an anonymous one.
        (Scopes::Required(_), Some(p)) if p.method() == AuthMethod::Anonymous => {
            Err(ToolError::unauthenticated())
        }
        (Scopes::Required(required), Some(p)) => {
            let missing = p.missing_scopes(required);
            if missing.is_empty() {
                Ok(p.clone())
            } else {
                Err(ToolError::forbidden(&missing))
            }
        }
    }
}

/// Whether `tools/list` shows the tool to this caller: exactly when `authorize` would pass.
pub(crate) fn visible(scopes: Scopes, principal: Option<&Arc<Principal>>) -> bool {
    match (scopes, principal) {
        (Scopes::Public, _) => true,
        (Scopes::Required(_), None) => false,
        (Scopes::Required(required), Some(p)) => {
            p.method() != AuthMethod::Anonymous && p.has_all(required)
        }
    }
}

/// Stage 3: the call's rate limits (per caller and tool, per caller across tools, the
/// tool's across callers), decided together, then a concurrency slot (held until the
/// returned permit is dropped). A call refused for the slot (busy, or cancelled while it
/// waited, or cancelled by then) gives its rate limits' cells back.
pub(crate) async fn limit<S>(
    inner: &Inner<S>,
    entry: &Entry<S>,
    principal: &Principal,
    cancel: &CancellationToken,
) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ToolError> {
    let rates = CallRates::new(
        entry.rate.as_ref(),
        inner.principal_rate.as_ref(),
        entry.global.as_ref(),
        principal,
    );
    let taken = crate::limits::decide(entry.spec.name, &inner.backend, rates).await?;
    // How long the cells are held before the tool starts: only a queue wait counts (a
    // refusal otherwise follows the decision at once), so only a gate reads the clock.
    let (permit, held) = match &entry.concurrency {
        Some(gate) => {
            let decided = std::time::Instant::now();
            (gate.acquire(cancel).await.map(Some), decided.elapsed())
        }
        None => (Ok(None), Duration::ZERO),
    };
    // A client that gave up while its call waited (for a rate decision from the store, or
    // for a slot): the tool does not start.
    let permit = permit.and_then(|p| {
        if cancel.is_cancelled() {
            Err(ToolError::cancelled())
        } else {
            Ok(p)
        }
    });
    if permit.is_err() {
        taken.give_back(&inner.backend, held).await;
    }
    permit
}

/// Stages 4 and 5: decode and validate, then run under the timeout with panics caught and
/// cancellation honoured.
///
/// `call_ct` is the request's own token (rmcp makes one per request): the client's
/// cancellation fires it, and so does the timeout, for the tool's `Ctx::cancellation`.
pub(crate) async fn run<S: Send + Sync + 'static>(
    entry: &Entry<S>,
    ctx_parts: (Arc<S>, Arc<Principal>, crate::telemetry::TraceId),
    raw: &serde_json::Value,
    timeout: Duration,
    call_ct: &CancellationToken,
) -> Result<serde_json::Value, Refusal> {
    let (state, principal, trace_id) = ctx_parts;
    let ctx = Ctx::from_parts(state, principal, trace_id, call_ct.clone());
    let prepared = std::panic::catch_unwind(AssertUnwindSafe(|| (entry.fns.prepare)(ctx, raw)));
    let invocation = match prepared {
        Ok(Ok(inv)) => inv,
        Ok(Err(violations)) => {
            return Err(Refusal::before_run(ToolError::invalid_arguments(
                violations,
            )))
        }
        Err(panic) => {
            return Err(Refusal::failed(
                ToolError::internal(),
                panic_detail(&*panic),
            ))
        }
    };
    let guarded = AssertUnwindSafe(invocation).catch_unwind();
    let outcome = tokio::select! {
        biased;
        r = guarded => r,
        () = tokio::time::sleep(timeout) => {
            call_ct.cancel();
            return Err(Refusal::failed(ToolError::timeout(timeout), format!("timed out after {timeout:?}")));
        }
        () = call_ct.cancelled() => {
            return Err(Refusal::failed(
                ToolError::cancelled(),
                "cancelled by the client",
            ));
        }
    };
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(Failure::Tool(f))) => {
            let message = f
                .public_message
                .unwrap_or_else(|| "the tool failed".to_owned());
            Err(Refusal::failed(
                ToolError::new(ErrorCode::ToolError, message, f.retryable),
                f.detail,
            ))
        }
        Ok(Err(Failure::Output(detail))) => Err(Refusal::failed(
            ToolError::internal(),
            format!("result not serializable: {detail}"),
        )),
        Err(panic) => Err(Refusal::failed(
            ToolError::internal(),
            panic_detail(&*panic),
        )),
    }
}

fn panic_detail(panic: &(dyn std::any::Any + Send)) -> String {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string payload".to_owned());
    format!("panicked: {msg}")
}

/// Stage 6: a result becomes content plus structured content, capped in size.
pub(crate) fn shape(value: serde_json::Value, max_bytes: usize) -> Result<CallToolResult, Refusal> {
    let text = match &value {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    if text.len() > max_bytes {
        return Err(Refusal::failed(
            ToolError::new(
                ErrorCode::ToolError,
                "the result exceeds the server's size limit",
                false,
            ),
            format!(
                "result of {} bytes exceeds the {max_bytes}-byte limit",
                text.len()
            ),
        ));
    }
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    if value.is_object() {
        result.structured_content = Some(value);
    }
    Ok(result)
}

/// The wire form of a refusal.
pub(crate) fn error_result(error: &ToolError) -> CallToolResult {
    CallToolResult::structured_error(error.to_json())
}

/// Stage 7: one audit record, whatever happened.
pub(crate) fn record<S>(
    inner: &Inner<S>,
    slot: crate::audit::AuditSlot,
    info: CallInfo,
    arguments: serde_json::Value,
    redact: Option<fn(&mut serde_json::Value)>,
    refusal: Option<&Refusal>,
    elapsed: Duration,
) {
    let refused = refusal.filter(|r| matches!(r.outcome, Outcome::Denied | Outcome::Rejected));
    // A registered tool's name (an unknown one, owned, is not kept in a summary).
    let tool = match &info.tool {
        std::borrow::Cow::Borrowed(t) => Some(*t),
        std::borrow::Cow::Owned(_) => None,
    };
    // A refusal over its record budget is summed up instead.
    if let Some(r) = refused {
        let budgets = Budgets {
            per_source: info.per_source.as_deref(),
            per_caller: &inner.rejected,
        };
        let admitted = budgets.admit(Refused {
            principal: info.principal.as_deref(),
            source: info.source.map(|s| s.ip()),
            transport: info.transport,
            event: AuditEvent::ToolCall,
            reason: r.reason,
            tool,
            outcome: r.outcome,
        });
        if !admitted {
            return;
        }
        if r.outcome == Outcome::Denied {
            tracing::warn!(target: "mcp_harden::security", tool = %info.tool, code = r.error.code.as_str(), "call denied");
        }
    }
    // A hand-written `redact_json` or `audit_json` could panic on odd input: never let that
    // lose the record or the reply, and never record what it failed to redact. `redact` is
    // the tool's whole audit walk (`ToolArgs::audit_json`); without a tool, the generic one.
    let redacted = std::panic::catch_unwind(AssertUnwindSafe(move || {
        let mut arguments = arguments;
        redact.unwrap_or(redact_credentials)(&mut arguments);
        arguments
    }));
    let arguments = redacted
        .unwrap_or_else(|_| serde_json::Value::String("[REDACTED: redaction failed]".to_owned()));
    let principal = AuditPrincipal::of(info.principal.as_deref());
    let record = AuditRecord {
        version: AUDIT_RECORD_VERSION,
        time: info.time,
        trace_id: info.trace_id,
        span_id: Some(info.span_id),
        parent_span_id: info.parent_span_id,
        client: info.client,
        event: AuditEvent::ToolCall,
        principal,
        tool: Some(info.tool),
        arguments,
        outcome: refusal.map_or(Outcome::Success, |r| r.outcome),
        error_code: refusal.map(|r| r.error.code.as_str()),
        retryable: refusal.is_some_and(|r| r.error.retryable),
        reason: refused.map(|r| r.reason),
        detail: refusal.and_then(|r| r.detail.clone()),
        duration_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        transport: info.transport,
        source: info.source,
        unrecorded: None,
    };
    crate::audit::deliver(&*inner.audit, Some(slot), &record);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_table() {
        let reader = Arc::new(Principal::local("r", ["db:read"]));
        assert!(authorize(Scopes::Public, None).is_ok_and(|p| p.subject() == "anonymous"));
        let anonymous = Arc::new(Principal::anonymous());
        assert!(authorize(Scopes::Required(&[]), Some(&anonymous))
            .is_err_and(|e| e.code == ErrorCode::Unauthenticated));
        assert!(!visible(Scopes::Required(&[]), Some(&anonymous)));
        assert!(visible(Scopes::Public, Some(&anonymous)));
        assert_eq!(
            authorize(Scopes::Required(&[]), None)
                .map(|_| ())
                .unwrap_err()
                .code,
            ErrorCode::Unauthenticated
        );
        assert!(authorize(Scopes::Required(&[]), Some(&reader)).is_ok());
        let denied = authorize(Scopes::Required(&["db:read", "db:write"]), Some(&reader))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(denied.code, ErrorCode::Forbidden);
        assert!(denied.message.ends_with("db:write"));
        for (scopes, who) in [
            (Scopes::Public, None),
            (Scopes::Required(&[]), None),
            (Scopes::Required(&[]), Some(&reader)),
            (Scopes::Required(&["db:write"]), Some(&reader)),
        ] {
            assert_eq!(visible(scopes, who), authorize(scopes, who).is_ok());
        }
    }

    #[test]
    fn shaping_caps_and_structures() {
        let r = shape(serde_json::json!({"a": 1}), 100).ok().expect("fits");
        assert_eq!(r.structured_content, Some(serde_json::json!({"a": 1})));
        let r = shape(serde_json::json!("plain"), 100).ok().expect("fits");
        assert!(r.structured_content.is_none());
        assert!(shape(serde_json::json!({"a": "x".repeat(200)}), 100).is_err());
    }
}
