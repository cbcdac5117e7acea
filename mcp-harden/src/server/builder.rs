use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{JsonObject, ToolAnnotations};

use super::{default_info, Entry, Hardened, Inner};
use crate::audit::{AuditSink, TracingAuditSink};
use crate::auth::Principal;
use crate::definition::{Tool, ToolFns};
use crate::limits::RateLimiter;
use crate::spec::ToolSpec;

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
    /// A rate too high to enforce (more than one call per microsecond).
    #[error(
        "the rate of tool `{0}` is too high to enforce; use `rate = \"unlimited\"` or a lower rate"
    )]
    InvalidRate(&'static str),
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
            name: "mcp-harden".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            instructions: None,
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

    /// The name and version the server reports at initialization.
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

    /// Checks the tool set (unique names; no description naming another tool) and builds.
    pub fn build(self) -> Result<Hardened<S>, BuildError> {
        if self.tools.is_empty() {
            return Err(BuildError::NoTools);
        }
        let mut tools = HashMap::with_capacity(self.tools.len());
        let mut order = Vec::with_capacity(self.tools.len());
        for t in &self.tools {
            if tools.contains_key(t.spec.name) {
                return Err(BuildError::DuplicateTool(t.spec.name));
            }
            tools.insert(t.spec.name, ());
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
        for t in &self.tools {
            if t.spec.rate != crate::spec::Rate::Unlimited
                && RateLimiter::new(t.spec.rate).is_none()
            {
                return Err(BuildError::InvalidRate(t.spec.name));
            }
        }
        let tools = self
            .tools
            .into_iter()
            .map(|t| {
                let definition = definition(&t.spec, t.input_schema, t.output_schema);
                let entry = Entry {
                    spec: t.spec,
                    definition,
                    limiter: RateLimiter::new(t.spec.rate),
                    fns: t.fns,
                };
                (t.spec.name, entry)
            })
            .collect();
        let mut info = default_info(&self.name, &self.version);
        if let Some(i) = self.instructions {
            info = info.with_instructions(i);
        }
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
            }),
            local: None,
            transport: "none",
            session: None,
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
