use std::ops::Deref;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::auth::Principal;

/// The context parameter of a tool: the caller, the call's trace id, the server's shared
/// state and the call's cancellation token. `Ctx<S>` dereferences to `S`.
///
/// Build one directly to unit-test a tool function:
/// ```
/// use mcp_harden::{Ctx, Principal};
/// struct App { greeting: &'static str }
/// let ctx = Ctx::new(App { greeting: "hi" }, Principal::local("tester", ["x"]));
/// assert_eq!(ctx.greeting, "hi");
/// assert_eq!(ctx.principal().subject(), "tester");
/// ```
pub struct Ctx<S> {
    state: Arc<S>,
    principal: Arc<Principal>,
    trace_id: crate::telemetry::TraceId,
    /// The call's token (the request's own): the client's cancellation and the timeout fire it.
    call: CancellationToken,
    /// A child of it, made when the tool first asks: cancelling it (to stop the tool's own
    /// work) never aborts the call itself.
    cancellation: std::sync::OnceLock<CancellationToken>,
}

impl<S> Ctx<S> {
    /// A context for calling a tool function directly (tests, other code paths).
    pub fn new(state: impl Into<Arc<S>>, principal: Principal) -> Self {
        Self {
            state: state.into(),
            principal: Arc::new(principal),
            trace_id: crate::telemetry::TraceId::random(),
            call: CancellationToken::new(),
            cancellation: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn from_parts(
        state: Arc<S>,
        principal: Arc<Principal>,
        trace_id: crate::telemetry::TraceId,
        call: CancellationToken,
    ) -> Self {
        Self {
            state,
            principal,
            trace_id,
            call,
            cancellation: std::sync::OnceLock::new(),
        }
    }

    /// The caller.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The call's trace id (32 hex digits), also in its audit record.
    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// The server's shared state.
    pub fn state(&self) -> &Arc<S> {
        &self.state
    }

    /// Fires when the client cancels the call or its timeout passes; long-running work
    /// should stop when it does. The tool may cancel it itself to stop its own work: that
    /// never aborts the call.
    pub fn cancellation(&self) -> &CancellationToken {
        self.cancellation.get_or_init(|| self.call.child_token())
    }
}

impl<S> Clone for Ctx<S> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            principal: self.principal.clone(),
            trace_id: self.trace_id,
            call: self.call.clone(),
            cancellation: self.cancellation.clone(),
        }
    }
}

impl<S> Deref for Ctx<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.state
    }
}

impl<S> std::fmt::Debug for Ctx<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("principal", &self.principal.subject())
            .field("trace_id", &self.trace_id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_cancelling_its_token_never_aborts_its_call() {
        let call = CancellationToken::new();
        let ctx = Ctx::from_parts(
            Arc::new(()),
            Arc::new(Principal::local("t", ["x"])),
            crate::telemetry::TraceId::from_u128(1),
            call.clone(),
        );
        ctx.cancellation().cancel();
        assert!(!call.is_cancelled(), "the call goes on");
        let ctx = Ctx::from_parts(
            Arc::new(()),
            Arc::new(Principal::local("t", ["x"])),
            crate::telemetry::TraceId::from_u128(1),
            call.clone(),
        );
        let token = ctx.cancellation().clone();
        call.cancel();
        assert!(
            token.is_cancelled(),
            "a timeout or the client reaches the tool"
        );
    }
}
