use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{JsonObject, ToolAnnotations};

use super::{default_info, Entry, Hardened, Inner};
use crate::audit::{AuditSink, TracingAuditSink};
use crate::auth::Principal;
use crate::definition::{Tool, ToolFns};
use crate::limits::{
    Backend, ConcurrencyGate, FailMode, Limit, RateLimitStore, DEFAULT_MAX_TRACKED,
};
use crate::spec::{Concurrency, Rate, ToolSpec};

/// Why a server could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Two registered tools share a name.
    #[error(
        "two tools are registered under the name `{0}`; rename one with #[tool(name = \"...\")]"
    )]
    DuplicateTool(&'static str),
    /// A description names another registered tool: a classic cross-tool poisoning vector
    /// ("before using `send_email`, call this tool").
    #[error("the description of tool `{tool}` names another tool, `{other}`; descriptions must not steer the model towards other tools")]
    DescriptionNamesTool {
        /// The tool whose description is refused.
        tool: &'static str,
        /// The tool it names.
        other: &'static str,
    },
    /// A rate limit that cannot be enforced: a count or burst of zero, more than one call
    /// per microsecond, or a burst window longer than ten years, as declared or once scaled
    /// by a tier.
    #[error("{limit} cannot be enforced: {reason}")]
    #[non_exhaustive]
    InvalidRate {
        /// Which limit, e.g. "the rate of tool `search` for tier `enterprise`".
        limit: String,
        /// Why.
        reason: &'static str,
    },
    /// A [`StoreOutage`](crate::limits::StoreOutage) of no failures, or a rest under 10 ms
    /// or over a minute.
    #[error(
        "the store outage setting is unusable: at least 1 failure, and a rest of 10 ms to a minute"
    )]
    InvalidStoreOutage,
    /// A record budget for rejected calls
    /// ([`rejected_records_per_caller`](HardenedBuilder::rejected_records_per_caller),
    /// [`rejected_records_total`](HardenedBuilder::rejected_records_total)) of zero a minute.
    #[error("the rejected-call record budgets must be at least 1/min")]
    InvalidRecordBudget,
    /// A summary interval for rejected calls
    /// ([`rejected_summary_interval`](HardenedBuilder::rejected_summary_interval)) under
    /// [`MIN_SUMMARY_INTERVAL`](crate::audit::budget::MIN_SUMMARY_INTERVAL) or over
    /// [`MAX_SUMMARY_INTERVAL`](crate::audit::budget::MAX_SUMMARY_INTERVAL).
    #[error("the rejected-call summary interval ({0:?}) must be at least 1 s and at most an hour")]
    InvalidSummaryInterval(Duration),
    /// A tier multiplier that is not a finite number above zero.
    #[error("the tier `{0}` has an unusable multiplier: it must be a finite number above 0")]
    InvalidTier(String),
    /// A concurrency limit of zero, or a queue wait of zero or over an hour.
    #[error("the concurrency limit of tool `{tool}` is unusable: {reason}")]
    #[non_exhaustive]
    InvalidConcurrency {
        /// The tool.
        tool: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// A per-tool setting names a tool that is not registered.
    #[error("`{0}` is not a registered tool; register it with .tool::<{0}>() first")]
    UnknownTool(&'static str),
    /// No tool was registered.
    #[error("no tool is registered; add one with .tool::<my_tool>()")]
    NoTools,
}

struct Registered<S> {
    spec: ToolSpec,
    input_schema: Arc<JsonObject>,
    output_schema: Option<Arc<JsonObject>>,
    fns: ToolFns<S>,
}

/// Collects the tools and the policy of a [`Hardened`] server.
#[must_use = "call .build() to get a server"]
pub struct HardenedBuilder<S> {
    state: Arc<S>,
    tools: Vec<Registered<S>>,
    local_principal: Option<Arc<Principal>>,
    audit: Arc<dyn AuditSink>,
    default_timeout: Duration,
    max_output_bytes: usize,
    name: String,
    version: String,
    instructions: Option<String>,
    tiers: Vec<(Arc<str>, f64)>,
    principal_rate: Option<Rate>,
    global_rates: Vec<(&'static str, Rate)>,
    concurrency: Vec<(&'static str, Concurrency)>,
    /// A shared rate-limit store and what to do when it cannot decide (`None`: in memory).
    store: Option<(Arc<dyn RateLimitStore>, FailMode)>,
    store_outage: crate::limits::StoreOutage,
    max_tracked: usize,
    rejected_records_per_caller: (u32, u32),
    rejected_records_total: (u32, u32),
    rejected_summary_interval: Duration,
}

impl<S: Send + Sync + 'static> HardenedBuilder<S> {
    pub(super) fn new(state: Arc<S>) -> Self {
        Self {
            state,
            tools: Vec::new(),
            local_principal: None,
            audit: Arc::new(TracingAuditSink),
            default_timeout: Duration::from_secs(30),
            max_output_bytes: 1024 * 1024,
            rejected_records_per_caller: crate::audit::budget::DEFAULT_PER_KEY,
            rejected_records_total: crate::audit::budget::DEFAULT_TOTAL,
            rejected_summary_interval: crate::audit::budget::SUMMARY_EVERY,
            name: "mcp-harden".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            instructions: None,
            tiers: Vec::new(),
            principal_rate: None,
            global_rates: Vec::new(),
            concurrency: Vec::new(),
            store: None,
            store_outage: crate::limits::StoreOutage::default(),
            max_tracked: DEFAULT_MAX_TRACKED,
        }
    }

    /// Registers a `#[tool]` function by its name: `.tool::<query_database>()`.
    pub fn tool<T: Tool<S>>(mut self) -> Self {
        self.tools.push(Registered {
            spec: T::SPEC,
            input_schema: crate::__private::input_schema::<T::Args>(),
            output_schema: T::output_schema(),
            fns: ToolFns::of::<T>(),
        });
        self
    }

    /// The identity of every caller on stdio and in-process transports, configured
    /// explicitly by whoever starts the server. Without one, only `public` tools can be
    /// called there.
    pub fn local_principal(mut self, principal: Principal) -> Self {
        self.local_principal = Some(Arc::new(principal));
        self
    }

    /// Where audit records go (default: [`TracingAuditSink`]).
    pub fn audit_sink(mut self, sink: impl AuditSink) -> Self {
        self.audit = Arc::new(sink);
        self
    }

    /// The timeout of tools that declare none (default: 30 s).
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// The largest result, in bytes of JSON text, a tool may return (default: 1 MiB).
    pub fn max_output_bytes(mut self, bytes: usize) -> Self {
        self.max_output_bytes = bytes;
        self
    }

    /// An identified caller's calls rejected before they ran, for a reason that is not a
    /// security event (a rate limit, a busy tool, arguments refused, an unknown tool),
    /// recorded one by one per caller: `per_minute` sustained with bursts of `burst` (default
    /// 30 and 20, [`DEFAULT_PER_KEY`](crate::audit::budget::DEFAULT_PER_KEY); a burst of 0
    /// means `per_minute`; a rate of 0 a minute:
    /// [`BuildError::InvalidRecordBudget`]).
    ///
    /// An agent looping on its own mistake (calling on past its rate limit, resending
    /// arguments that are refused) can cause thousands of rejections a minute. The budget
    /// is kept per caller and reason, so that one kind of rejection cannot use it up to hide
    /// another. Beyond it, or [`rejected_records_total`](Self::rejected_records_total), a
    /// rejection is still answered and counted
    /// (`mcp_harden_audit_records_total{result="unrecorded"}`, and for a registered tool
    /// `mcp_harden_tool_calls_total`), and summed up in one
    /// [`Unrecorded`](crate::audit::AuditEvent::Unrecorded) record
    /// [`rejected_summary_interval`](Self::rejected_summary_interval) after the first held
    /// back (a timer on the Tokio runtime) and when the audit is flushed at shutdown: how
    /// many, when, for which reasons and tools, and the callers that made most. Calls
    /// without any identity share one budget per reason. Over HTTP, an identified caller's other
    /// non-security refusals (no room for a session, a late body) count here too. Security
    /// events (a missing scope) and every call that runs are always recorded; to record
    /// every rejection, give `u32::MAX` here and to
    /// [`rejected_records_total`](Self::rejected_records_total). A summary recorded after the last flush (the server
    /// dropped with rejections held back) is handed to the sink unflushed.
    /// Anonymous callers over HTTP are bounded per source instead
    /// ([`HttpConfig::refusal_records_per_source`](crate::server::http::HttpConfig::refusal_records_per_source)).
    pub fn rejected_records_per_caller(mut self, per_minute: u32, burst: u32) -> Self {
        self.rejected_records_per_caller = (per_minute, burst);
        self
    }

    /// Rejected calls recorded one by one from all callers together (default 300 a minute,
    /// bursts of 100, [`DEFAULT_TOTAL`](crate::audit::budget::DEFAULT_TOTAL); a burst of 0
    /// means `per_minute`); see
    /// [`rejected_records_per_caller`](Self::rejected_records_per_caller).
    pub fn rejected_records_total(mut self, per_minute: u32, burst: u32) -> Self {
        self.rejected_records_total = (per_minute, burst);
        self
    }

    /// How long after the first rejection held back over
    /// [`rejected_records_per_caller`](Self::rejected_records_per_caller) its summary is
    /// recorded (default [`SUMMARY_EVERY`](crate::audit::budget::SUMMARY_EVERY), 10 s; from
    /// 1 s to an hour, or [`BuildError::InvalidSummaryInterval`]). Longer means fewer
    /// summaries and later ones.
    pub fn rejected_summary_interval(mut self, interval: Duration) -> Self {
        self.rejected_summary_interval = interval;
        self
    }

    /// The name and version the server reports at initialization. The name also namespaces
    /// its keys in a shared [`RateLimitStore`](crate::limits::RateLimitStore): servers of one
    /// name share their quotas there.
    pub fn server_info(mut self, name: impl Into<String>, version: impl Into<String>) -> Self {
        self.name = name.into();
        self.version = version.into();
        self
    }

    /// Instructions sent to the client at initialization.
    pub fn instructions(mut self, text: impl Into<String>) -> Self {
        self.instructions = Some(text.into());
        self
    }

    /// A tier and its quota multiplier: a principal with this tier (from a JWT's tier claim,
    /// see `JwtAuthenticatorBuilder::tier_claim`, or an API key's entry) gets `factor` times
    /// every per-caller rate and burst, e.g. `.tier("enterprise", 10.0)`. Names are
    /// case-sensitive; principals without a listed tier get the declared rates (a tier that
    /// no `.tier` names, a typo say, is logged as a warning, at most once a minute). Setting
    /// a tier again replaces its factor.
    pub fn tier(mut self, name: impl Into<Arc<str>>, factor: f64) -> Self {
        let name = name.into();
        self.tiers.retain(|(n, _)| *n != name);
        self.tiers.push((name, factor));
        self
    }

    /// A limit on each caller's calls across all tools (tier-scaled), decided with the
    /// tool's own (a refusal by both is named by the tool's):
    /// `.principal_rate(Rate::per_minute(600))`. Setting it again replaces it.
    pub fn principal_rate(mut self, rate: Rate) -> Self {
        self.principal_rate = Some(rate);
        self
    }

    /// A limit on a tool's calls across all callers, decided with the caller's own limits
    /// (all or nothing: a call refused by any spends none, nor does one refused for its
    /// concurrency slot): `.global_rate::<query_database>(Rate::per_second(200))`. Setting it again
    /// for the same tool replaces it.
    pub fn global_rate<T: Tool<S>>(mut self, rate: Rate) -> Self {
        self.global_rates.push((T::SPEC.name, rate));
        self
    }

    /// Sets (or overrides `max_concurrency`) how many calls of a tool run at once:
    /// `.concurrency::<query_database>(Concurrency::wait_up_to(8, Duration::from_secs(2)))`.
    /// At least 1, and a wait of more than zero and at most an hour, as `#[tool]` requires.
    /// Setting it again for the same tool replaces it.
    pub fn concurrency<T: Tool<S>>(mut self, limit: Concurrency) -> Self {
        self.concurrency.push((T::SPEC.name, limit));
        self
    }

    /// Makes rate decisions in a shared store (e.g. Redis, for several replicas) instead of
    /// in memory; `fail` says what happens when the store cannot decide.
    pub fn rate_limit_store(mut self, store: impl RateLimitStore, fail: FailMode) -> Self {
        self.store = Some((Arc::new(store), fail));
        self
    }

    /// When a failing rate-limit store is left alone, and for how long (default
    /// [`STORE_TRIP`](crate::limits::STORE_TRIP) = 3 failed decisions in a row, then
    /// [`STORE_REST`](crate::limits::STORE_REST) = 1 s). A lower trip spares calls the store's
    /// timeout sooner in an outage but takes a rest for a lone slow answer; a longer rest
    /// costs fewer timeouts (one a rest) and keeps the fail mode longer after the store is
    /// back. `FailMode::Closed` gives the rest as its retry hint.
    pub fn store_outage(mut self, outage: crate::limits::StoreOutage) -> Self {
        self.store_outage = outage;
        self
    }

    /// The most callers each in-memory limiter tracks (default one million; at least 1):
    /// every limit has one limiter per configured tier and one for the other callers, each
    /// with this bound. Beyond it new callers are refused (`UNAVAILABLE`, retryable) until
    /// idle ones are evicted.
    pub fn max_tracked_callers(mut self, max: usize) -> Self {
        self.max_tracked = max;
        self
    }

    /// Checks the tool set (unique names; no description naming another tool) and builds.
    pub fn build(self) -> Result<Hardened<S>, BuildError> {
        if self.tools.is_empty() {
            return Err(BuildError::NoTools);
        }
        let mut names = std::collections::HashSet::with_capacity(self.tools.len());
        let mut order = Vec::with_capacity(self.tools.len());
        for t in &self.tools {
            if !names.insert(t.spec.name) {
                return Err(BuildError::DuplicateTool(t.spec.name));
            }
            order.push(t.spec.name);
        }
        for t in &self.tools {
            for other in &self.tools {
                if other.spec.name != t.spec.name && names_tool(t.spec.description, other.spec.name)
                {
                    return Err(BuildError::DescriptionNamesTool {
                        tool: t.spec.name,
                        other: other.spec.name,
                    });
                }
            }
        }
        for (name, factor) in &self.tiers {
            if !(factor.is_finite() && *factor > 0.0) {
                return Err(BuildError::InvalidTier(name.to_string()));
            }
        }
        let (tiers, max_tracked) = (&self.tiers, self.max_tracked);
        // A rate limit (`None`: unlimited), or why it cannot be enforced. `what` names it.
        let limit = |id: String, rate: Rate, scaled: bool, what: String| {
            Limit::new(id, rate, if scaled { tiers } else { &[] }, max_tracked).map_err(
                |(tier, reason)| BuildError::InvalidRate {
                    limit: match tier {
                        Some(t) => format!("{what} for tier `{t}`"),
                        None => what,
                    },
                    reason,
                },
            )
        };
        let named = self.global_rates.iter().map(|(n, _)| *n);
        for name in named.chain(self.concurrency.iter().map(|(n, _)| *n)) {
            if !names.contains(name) {
                return Err(BuildError::UnknownTool(name));
            }
        }
        let principal_rate = match self.principal_rate {
            Some(r) => limit("principal".into(), r, true, "`principal_rate`".into())?,
            None => None,
        };
        let tier_labels = crate::telemetry::tier_labels(self.tiers.iter().map(|(t, _)| t));
        let mut tools = HashMap::with_capacity(self.tools.len());
        for t in self.tools {
            let mut spec = t.spec;
            if let Some((_, c)) = self.concurrency.iter().rev().find(|(n, _)| *n == spec.name) {
                spec.concurrency = Some(*c);
            }
            let concurrency = match spec.concurrency {
                Some(c) => Some(ConcurrencyGate::new(c).map_err(|reason| {
                    BuildError::InvalidConcurrency {
                        tool: spec.name,
                        reason,
                    }
                })?),
                None => None,
            };
            let global = match self
                .global_rates
                .iter()
                .rev()
                .find(|(n, _)| *n == spec.name)
            {
                Some((_, r)) => limit(
                    format!("global:{}", spec.name),
                    *r,
                    false,
                    format!("the global rate of tool `{}`", spec.name),
                )?,
                None => None,
            };
            let entry = Entry {
                spec,
                definition: definition(&spec, t.input_schema, t.output_schema),
                rate: limit(
                    format!("tool:{}", spec.name),
                    spec.rate,
                    true,
                    format!("the rate of tool `{}`", spec.name),
                )?,
                global,
                concurrency,
                fns: t.fns,
                metrics: crate::telemetry::ToolMetrics::new(spec.name, &tier_labels),
            };
            tools.insert(spec.name, entry);
        }
        // Store keys are namespaced by the server's name, so servers can share a store.
        let backend = match self.store {
            Some((store, fail)) => Backend::Store {
                store,
                fail,
                prefix: Arc::from(format!(
                    "mcp-harden:{}:",
                    crate::limits::key_part(&self.name)
                )),
                health: Arc::new(crate::limits::StoreHealth::new(self.store_outage)),
            },
            None => Backend::Memory,
        };
        let mut info = default_info(&self.name, &self.version);
        if let Some(i) = self.instructions {
            info = info.with_instructions(i);
        }
        if !self.store_outage.usable() {
            return Err(BuildError::InvalidStoreOutage);
        }
        if !crate::audit::budget::usable_interval(self.rejected_summary_interval) {
            return Err(BuildError::InvalidSummaryInterval(
                self.rejected_summary_interval,
            ));
        }
        let rejected = crate::audit::budget::RefusalRecords::new(
            self.rejected_records_per_caller,
            self.rejected_records_total,
            self.rejected_summary_interval,
            self.audit.clone(),
        )
        .ok_or(BuildError::InvalidRecordBudget)?;
        Ok(Hardened {
            inner: Arc::new(Inner {
                state: self.state,
                tools,
                order,
                local_principal: self.local_principal,
                audit: self.audit,
                default_timeout: self.default_timeout,
                max_output_bytes: self.max_output_bytes,
                info,
                inflight: tokio_util::task::TaskTracker::new(),
                backend,
                principal_rate,
                rejected,
            }),
            local: None,
            transport: "none",
            client: std::sync::OnceLock::new(),
        })
    }
}

fn definition(
    spec: &ToolSpec,
    input: Arc<JsonObject>,
    output: Option<Arc<JsonObject>>,
) -> rmcp::model::Tool {
    let mut tool = rmcp::model::Tool::new(spec.name, spec.description, input);
    if let Some(title) = spec.title {
        tool = tool.with_title(title);
    }
    if let Some(output) = output {
        tool = tool.with_raw_output_schema(output);
    }
    let a = spec.annotations;
    if a != crate::spec::Annotations::default() {
        let mut ann = ToolAnnotations::new();
        ann.read_only_hint = a.read_only;
        ann.destructive_hint = a.destructive;
        ann.idempotent_hint = a.idempotent;
        ann.open_world_hint = a.open_world;
        tool = tool.with_annotations(ann);
    }
    tool
}

/// Whether `text` mentions the tool `name`. A compound name (`send_email`) counts wherever
/// it stands as a whole word; a single-word name (`search`) only where it is marked as a
/// name — in backticks, or followed by "tool" or "(" — so ordinary prose stays allowed.
fn names_tool(text: &str, name: &str) -> bool {
    let is_word = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
    let lower = text.to_lowercase();
    let name = name.to_lowercase();
    let compound = name.contains(['_', '-', '.']);
    lower.match_indices(&name).any(|(i, m)| {
        let before = lower[..i].chars().next_back();
        let rest = &lower[i + m.len()..];
        if before.is_some_and(is_word) || rest.chars().next().is_some_and(is_word) {
            return false;
        }
        compound
            || (before == Some('`') && rest.starts_with('`'))
            || rest.trim_start().starts_with("tool")
            || rest.starts_with('(')
    })
}

#[cfg(test)]
mod tests {
    use super::names_tool;

    #[test]
    fn tool_names_match_as_whole_words() {
        assert!(names_tool(
            "Before using send_email, call this.",
            "send_email"
        ));
        assert!(names_tool("see `Send_Email`", "send_email"));
        assert!(!names_tool("sends an email", "send_email"));
        assert!(!names_tool("query_database_v2 rows", "query_database"));
        assert!(!names_tool("a status update.", "update"));
        assert!(names_tool("then call `update`.", "update"));
        assert!(names_tool("use the update tool first", "update"));
    }
}
