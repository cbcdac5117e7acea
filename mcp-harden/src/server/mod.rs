//! The server: a [`HardenedBuilder`] collects tools and policy; [`Hardened`] is the rmcp
//! `ServerHandler` that runs every call through the pipeline.

mod builder;
pub mod http;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, ErrorData, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::{RequestContext, RoleServer, RunningService};
use rmcp::{ServerHandler, ServiceExt};

use crate::audit::{AuditClient, AuditSink, Timestamp};
use crate::auth::Principal;
use crate::definition::ToolFns;
use crate::limits::{Backend, ConcurrencyGate, Limit};
use crate::pipeline::{self, CallInfo};
use crate::spec::ToolSpec;

pub use builder::{BuildError, HardenedBuilder};

/// How long `serve_stdio` and the HTTP server's shutdown wait for the audit sink to write
/// the records it holds before returning.
pub const AUDIT_FLUSH: std::time::Duration = std::time::Duration::from_secs(10);

/// A hardened MCP server: serve it over stdio with [`Hardened::serve_stdio`], or over a local
/// rmcp transport with [`Hardened::serve_transport`]. Cloning is cheap.
///
/// The local principal identifies callers only on the handle those two methods serve: a
/// `Hardened` handed to any other service (an HTTP factory, say) identifies no one, so a
/// network caller can never borrow the local identity.
pub struct Hardened<S> {
    inner: Arc<Inner<S>>,
    /// The identity of every caller on this handle's transport; set only for local ones.
    local: Option<Arc<Principal>>,
    /// The transport recorded in audit records.
    transport: &'static str,
    /// The client as it named itself in `initialize`, kept for every record of the session
    /// this handle serves, with the handshake it came from: a clone serving another session
    /// (another handshake) never borrows it. Inline, so that the handle rmcp's HTTP service
    /// makes for every request allocates nothing.
    client: std::sync::OnceLock<(Arc<rmcp::model::InitializeRequestParams>, Arc<AuditClient>)>,
}

impl<S> Clone for Hardened<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            local: self.local.clone(),
            transport: self.transport,
            client: self.client.clone(),
        }
    }
}

pub(crate) struct Inner<S> {
    pub state: Arc<S>,
    pub tools: HashMap<&'static str, Entry<S>>,
    /// Tool names in registration order, for a stable `tools/list`.
    pub order: Vec<&'static str>,
    pub local_principal: Option<Arc<Principal>>,
    pub audit: Arc<dyn AuditSink>,
    pub default_timeout: Duration,
    pub max_output_bytes: usize,
    pub info: ServerConfig,
    /// Calls and HTTP replies in progress, so that shutdown can wait for them.
    pub inflight: tokio_util::task::TaskTracker,
    /// Where rate decisions are made.
    pub backend: Backend,
    /// Each caller's total across tools (tier-scaled).
    pub principal_rate: Option<Limit>,
    /// How many rejected calls of identified callers are recorded one by one.
    pub rejected: Arc<crate::audit::budget::RefusalRecords>,
}

pub(crate) struct Entry<S> {
    pub spec: ToolSpec,
    pub definition: rmcp::model::Tool,
    /// The tool's rate per caller (tier-scaled).
    pub rate: Option<Limit>,
    /// The tool's rate across all callers.
    pub global: Option<Limit>,
    pub concurrency: Option<ConcurrencyGate>,
    pub fns: ToolFns<S>,
    /// The tool's metric keys, built once.
    pub metrics: crate::telemetry::ToolMetrics,
}

/// Who is calling, from where, and (an anonymous caller over HTTP) the guard's record
/// budget per source, which its refused calls are audited within.
#[derive(Default)]
struct Caller {
    principal: Option<Arc<Principal>>,
    source: Option<std::net::SocketAddr>,
    per_source: Option<Arc<crate::audit::budget::RefusalRecords>>,
}

impl<S: Send + Sync + 'static> Hardened<S> {
    /// Starts building a server around the shared application state.
    pub fn builder(state: impl Into<Arc<S>>) -> HardenedBuilder<S> {
        HardenedBuilder::new(state.into())
    }

    /// How many rate decisions the shared [`RateLimitStore`](crate::limits::RateLimitStore)
    /// did not make, each answered per the configured [`FailMode`](crate::limits::FailMode):
    /// those it failed, and those not asked while it rested after failures: one per call,
    /// whichever its rate limits (they are one decision).
    pub fn rate_store_errors(&self) -> u64 {
        self.inner.backend.unmade()
    }

    /// How many callers the in-memory rate limiters track now (all tools and limits).
    pub fn tracked_callers(&self) -> usize {
        self.inner
            .tools
            .values()
            .flat_map(|e| [e.rate.as_ref(), e.global.as_ref()])
            .chain([self.inner.principal_rate.as_ref()])
            .flatten()
            .map(Limit::tracked_keys)
            .sum()
    }

    /// Calls of `tool` running now (0 without a concurrency limit).
    pub fn running(&self, tool: &str) -> usize {
        self.inner
            .tools
            .get(tool)
            .and_then(|e| e.concurrency.as_ref())
            .map(ConcurrencyGate::in_use)
            .unwrap_or(0)
    }

    /// The MCP definitions of every registered tool, as `--print-manifest` shows them.
    pub fn tool_definitions(&self) -> Vec<rmcp::model::Tool> {
        self.inner
            .order
            .iter()
            .filter_map(|n| self.inner.tools.get(n))
            .map(|e| e.definition.clone())
            .collect()
    }

    /// The static facts of every registered tool, in registration order.
    pub fn tool_specs(&self) -> Vec<ToolSpec> {
        self.inner
            .order
            .iter()
            .filter_map(|n| self.inner.tools.get(n))
            .map(|e| e.spec)
            .collect()
    }

    /// A manifest of every tool as JSON: name, title, description, scopes, rate, timeout,
    /// annotations and input/output schemas.
    pub fn manifest(&self) -> serde_json::Value {
        let tools: Vec<_> = self
            .inner
            .order
            .iter()
            .filter_map(|n| self.inner.tools.get(n))
            .map(|e| {
                let s = &e.spec;
                let timeout = s.timeout.unwrap_or(self.inner.default_timeout);
                serde_json::json!({
                    "name": s.name,
                    "title": s.title,
                    "description": s.description,
                    "scopes": match s.scopes {
                        crate::spec::Scopes::Public => serde_json::json!("public"),
                        crate::spec::Scopes::Required(r) => serde_json::json!(r),
                    },
                    "rate": match s.rate {
                        crate::spec::Rate::Unlimited => serde_json::json!("unlimited"),
                        crate::spec::Rate::Limited { count, period, burst } => serde_json::json!({
                            "count": count,
                            "per": match period {
                                crate::spec::Period::Second => "sec",
                                crate::spec::Period::Minute => "min",
                                crate::spec::Period::Hour => "hour",
                            },
                            "burst": burst.unwrap_or(count),
                        }),
                    },
                    "timeout_ms": u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    "annotations": e.definition.annotations,
                    "input_schema": e.definition.input_schema,
                    "output_schema": e.definition.output_schema,
                })
            })
            .collect();
        serde_json::json!({ "server": self.inner.info.server_info, "tools": tools })
    }

    /// Serves over stdin/stdout until the client disconnects, every caller being the local
    /// principal. stdout carries only the protocol: make sure logs (and the default audit
    /// sink) write to stderr.
    ///
    /// When the client has gone, waits up to [`AUDIT_FLUSH`] for the audit sink to write
    /// what it holds ([`flush_audit`](Self::flush_audit)).
    pub async fn serve_stdio(self) -> Result<(), ServeError> {
        let server = self.clone();
        let served = async {
            let service = self
                .local_handle("stdio")
                .serve(rmcp::transport::stdio())
                .await?;
            service.waiting().await?;
            Ok(())
        }
        .await;
        server.flush_audit(AUDIT_FLUSH).await;
        served
    }

    /// Records the summary of rejected calls held back over their record budget, if any
    /// ([`HardenedBuilder::rejected_records_per_caller`](crate::HardenedBuilder::rejected_records_per_caller)),
    /// then waits until every audit record handed to the sink so far is written (and synced,
    /// per the sink's policy), or `timeout` passes; returns whether it finished. `serve_stdio`
    /// and the HTTP server's shutdown call it; call it before the process exits when you
    /// serve otherwise (`serve_transport`, your own router), or records still queued are
    /// lost.
    pub async fn flush_audit(&self, timeout: std::time::Duration) -> bool {
        // Rejected calls held back over the record budget: their summary first.
        self.inner.rejected.summarize(true);
        let audit = self.inner.audit.clone();
        let done = tokio::task::spawn_blocking(move || audit.flush(timeout))
            .await
            .unwrap_or(false);
        if !done {
            tracing::error!(target: "mcp_harden::audit", timeout_ms = timeout.as_millis() as u64, "the audit sink did not write every record before shutdown");
        }
        done
    }

    /// Serves over a local rmcp transport (an in-process duplex stream, a child process's
    /// pipes), every caller being the local principal. The returned service runs until
    /// dropped or the peer disconnects; then call [`flush_audit`](Self::flush_audit)
    /// before the process exits.
    pub async fn serve_transport<T, E, A>(
        self,
        transport: T,
    ) -> Result<RunningService<RoleServer, Self>, ServeError>
    where
        T: rmcp::transport::IntoTransport<RoleServer, E, A>,
        E: std::error::Error + Send + Sync + 'static,
    {
        Ok(self.local_handle("local").serve(transport).await?)
    }

    /// This handle with the local principal active: only for local transports.
    fn local_handle(mut self, transport: &'static str) -> Self {
        self.local = self.inner.local_principal.clone();
        self.transport = transport;
        self.client = std::sync::OnceLock::new();
        self
    }

    /// A handler for HTTP: no local principal (the guard authenticates each request).
    pub(crate) fn http_instance(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            local: None,
            transport: "http",
            client: std::sync::OnceLock::new(),
        }
    }

    /// Stage 1: who is calling, and from where. On a local transport, the principal
    /// configured at start-up; over HTTP, the principal the guard authenticated for this very
    /// request (the guard also keeps sessions to their owners); on anything else, no one.
    fn identify(&self, rc: &RequestContext<RoleServer>) -> Caller {
        if let Some(p) = &self.local {
            return Caller {
                principal: Some(p.clone()),
                ..Caller::default()
            };
        }
        match rc
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<http::Authenticated>())
        {
            Some(auth) => Caller {
                principal: Some(auth.principal.clone()),
                source: Some(auth.source),
                per_source: auth.per_source.clone(),
            },
            None => Caller::default(),
        }
    }

    async fn call(
        &self,
        params: CallToolRequestParams,
        rc: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let inner = &*self.inner;
        // The guard's token covers a POST until its reply ends; this one covers the call
        // itself, which in a stateful session runs on after its client has gone away.
        let _inflight = inner.inflight.token();
        let started = Instant::now();
        // Every call gets a slot in the audit queue before anything else: with a full queue
        // (a slow or failing disk) the call is refused rather than its record lost.
        let Ok(slot) = inner.audit.reserve() else {
            crate::telemetry::audit(crate::telemetry::AuditResult::Refused);
            let error = crate::ToolError::new(
                crate::ErrorCode::Unavailable,
                "the audit log is unavailable; retry shortly",
                true,
            )
            .with_retry_after(Duration::from_secs(1));
            return Ok(pipeline::error_result(&error).into());
        };
        let Caller {
            principal,
            source,
            per_source,
        } = self.identify(&rc);
        let CallToolRequestParams {
            name, arguments, ..
        } = params;
        let trace = crate::telemetry::TraceIds::of_request(
            rc.extensions.get::<axum::http::request::Parts>(),
            &rc.meta.0 .0,
        );
        let time = Timestamp::now();
        let call_info = |trace: crate::telemetry::TraceIds, tool, principal| CallInfo {
            time,
            trace_id: trace.trace_id,
            span_id: trace.span_id,
            parent_span_id: trace.parent_span_id,
            client: self.client_of(&rc),
            tool,
            principal,
            transport: self.transport,
            source,
            per_source: per_source.clone(),
        };
        let raw = serde_json::Value::Object(arguments.unwrap_or_default());
        let Some(entry) = inner.tools.get(&*name) else {
            let tool = crate::audit::cut_chars(&name, 128).to_owned();
            let info = call_info(trace, std::borrow::Cow::Owned(tool), principal);
            let refusal = pipeline::Refusal {
                detail: Some("unknown tool".to_owned()),
                reason: "unknown_tool",
                ..pipeline::Refusal::refused(
                    crate::ToolError::new(
                        crate::ErrorCode::InvalidArguments,
                        "unknown tool",
                        false,
                    ),
                    crate::audit::Outcome::Rejected,
                )
            };
            let elapsed = started.elapsed();
            pipeline::record(inner, slot, info, raw, None, Some(&refusal), elapsed);
            return Err(ErrorData::invalid_params("unknown tool", None));
        };
        let _in_flight = entry.metrics.in_flight();
        // One span per call, named and attributed after OpenTelemetry's conventions for MCP
        // and GenAI tools. A root: a call starts its own trace unless the caller sent a
        // `traceparent` (never the session's). `trace_id`/`span_id` tie it to the record.
        let span = tracing::info_span!(
            target: "mcp_harden::call",
            parent: None,
            "tools/call",
            "otel.name" = %format_args!("tools/call {}", entry.spec.name),
            "otel.kind" = "server",
            "mcp.method.name" = "tools/call",
            "gen_ai.operation.name" = "execute_tool",
            "gen_ai.tool.name" = entry.spec.name,
            "network.transport" = self.transport,
            "client.address" = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty,
            "error.type" = tracing::field::Empty,
            "otel.status_code" = tracing::field::Empty,
        );
        // With an OpenTelemetry layer the span's own ids become the call's.
        #[cfg(feature = "opentelemetry")]
        let trace = crate::telemetry::otel::adopt(&span, trace);
        if !span.is_disabled() {
            span.record("trace_id", &*trace.trace_id);
            span.record("span_id", &*trace.span_id);
            if let Some(parent) = trace.parent_span_id.as_deref() {
                span.record("parent_span_id", parent);
            }
            if let Some(src) = source {
                span.record("client.address", tracing::field::display(src.ip()));
            }
        }
        let info = call_info(
            trace,
            std::borrow::Cow::Borrowed(entry.spec.name),
            principal.clone(),
        );
        let stages = async {
            // Logged with its record (`pipeline::record`), within its record budget.
            let caller = pipeline::authorize(entry.spec.scopes, principal.as_ref())
                .map_err(|e| pipeline::Refusal::refused(e, crate::audit::Outcome::Denied))?;
            let _permit = pipeline::limit(inner, entry, &caller, &rc.ct)
                .await
                .map_err(|e| pipeline::Refusal::refused(e, crate::audit::Outcome::Rejected))?;
            let timeout = entry.spec.timeout.unwrap_or(inner.default_timeout);
            let value = pipeline::run(
                entry,
                (inner.state.clone(), caller, info.trace_id),
                &raw,
                timeout,
                &rc.ct,
            )
            .await?;
            pipeline::shape(value, inner.max_output_bytes)
        };
        // Boxed: the stages' state lives on the heap instead of being moved with the
        // handler's future. Instrumented only when a subscriber wants the span.
        let outcome = if span.is_disabled() {
            Box::pin(stages).await
        } else {
            Box::pin(tracing::Instrument::instrument(stages, span.clone())).await
        };
        if let Err(r) = &outcome {
            span.record("error.type", r.error.code.as_str());
            span.record("otel.status_code", "ERROR");
        }
        let code = outcome.as_ref().err().map(|r| r.error.code.as_str());
        let elapsed = started.elapsed();
        pipeline::record(
            inner,
            slot,
            info,
            raw,
            Some(entry.fns.redact),
            outcome.as_ref().err(),
            elapsed,
        );
        let tier = principal.as_deref().and_then(Principal::tier);
        entry.metrics.finished(code, tier, elapsed);
        Ok(match outcome {
            Ok(r) => r,
            Err(refusal) => pipeline::error_result(&refusal.error),
        }
        .into())
    }

    /// The client's name and version, from its `initialize` (kept for the session), or,
    /// without one, from the request's `_meta`; cut to 128 characters.
    fn client_of(&self, rc: &RequestContext<RoleServer>) -> Option<Arc<AuditClient>> {
        let client = |name: &str, version: &str| {
            Arc::new(AuditClient {
                name: crate::audit::cut_chars(name, 128).to_owned(),
                version: crate::audit::cut_chars(version, 128).to_owned(),
            })
        };
        if let Some(info) = rc.peer.peer_info() {
            if let Some((seen, c)) = self.client.get() {
                if Arc::ptr_eq(seen, &info) {
                    return Some(c.clone());
                }
            }
            let c = client(&info.client_info.name, &info.client_info.version);
            // The first session's is kept; a clone made after another session set it pays
            // per call.
            let _ = self.client.set((info, c.clone()));
            return Some(c);
        }
        let meta = rc.meta.0 .0.get("io.modelcontextprotocol/clientInfo")?;
        Some(client(
            meta.get("name")?.as_str()?,
            meta.get("version").and_then(|v| v.as_str()).unwrap_or(""),
        ))
    }
}

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The MCP handshake failed.
    #[error("MCP initialization failed: {0}")]
    Initialize(Box<rmcp::service::ServerInitializeError>),
    /// The service task failed.
    #[error("the MCP service task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl From<rmcp::service::ServerInitializeError> for ServeError {
    fn from(e: rmcp::service::ServerInitializeError) -> Self {
        ServeError::Initialize(Box::new(e))
    }
}

impl<S: Send + Sync + 'static> ServerHandler for Hardened<S> {
    fn get_info(&self) -> ServerConfig {
        self.inner.info.clone()
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        rc: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let principal = self.identify(&rc).principal;
        let tools = self
            .inner
            .order
            .iter()
            .filter_map(|n| self.inner.tools.get(n))
            .filter(|e| pipeline::visible(e.spec.scopes, principal.as_ref()))
            .map(|e| e.definition.clone())
            .collect();
        // The list depends on the caller: never let it be cached across callers.
        Ok(ListToolsResult::with_all_items(tools).with_cache_scope(CacheScope::Private))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.call(request, context).await
    }

    fn get_tool(&self, name: &str) -> Option<rmcp::model::Tool> {
        self.inner.tools.get(name).map(|e| e.definition.clone())
    }
}

pub(crate) fn default_info(name: &str, version: &str) -> ServerConfig {
    ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
        .with_server_info(Implementation::new(name, version))
}
