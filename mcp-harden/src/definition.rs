use std::sync::Arc;

use futures::future::BoxFuture;
use rmcp::model::JsonObject;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::args::{FieldPath, ToolArgs, Violation};
use crate::ctx::Ctx;
use crate::errors::Failure;
use crate::spec::ToolSpec;

/// A hardened tool, implemented by `#[tool]` on a marker type named like the function.
/// Register it with [`HardenedBuilder::tool`](crate::HardenedBuilder::tool):
/// `.tool::<query_database>()`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a `#[tool]` of a server whose state is `{S}`",
    label = "not a tool for `Hardened<{S}>`",
    note = "register functions annotated with `#[tool]`; one taking `Ctx<A>` registers only on `Hardened<A>`"
)]
pub trait Tool<S>: 'static {
    /// The generated argument struct.
    type Args: ToolArgs + DeserializeOwned + JsonSchema + Send + 'static;

    /// The tool's static facts.
    const SPEC: ToolSpec;

    /// The JSON Schema of the result's structured content, when the result type has one.
    fn output_schema() -> Option<Arc<JsonObject>>;

    /// Runs the user's function with decoded, validated arguments.
    #[doc(hidden)]
    fn invoke(
        ctx: Ctx<S>,
        args: Self::Args,
    ) -> BoxFuture<'static, Result<serde_json::Value, Failure>>;
}

/// A running call, ready once its arguments were decoded and validated.
pub(crate) type Invocation = BoxFuture<'static, Result<serde_json::Value, Failure>>;

/// The type-erased operations the server needs from a tool.
pub(crate) struct ToolFns<S> {
    pub prepare: fn(Ctx<S>, &serde_json::Value) -> Result<Invocation, Vec<Violation>>,
    /// The audit walk of the tool's arguments (`ToolArgs::audit_json`).
    pub redact: fn(&mut serde_json::Value),
}

impl<S> ToolFns<S> {
    pub(crate) fn of<T: Tool<S>>() -> Self {
        Self {
            prepare: prepare::<S, T>,
            redact: <T::Args as ToolArgs>::audit_json,
        }
    }
}

fn prepare<S, T: Tool<S>>(
    ctx: Ctx<S>,
    raw: &serde_json::Value,
) -> Result<Invocation, Vec<Violation>> {
    // The fast path decodes directly; only a failure pays for path tracking, to say where.
    let args: T::Args = match <T::Args as serde::Deserialize>::deserialize(raw) {
        Ok(args) => args,
        Err(plain) => {
            let e = match serde_path_to_error::deserialize::<_, T::Args>(raw) {
                Err(e) => e,
                // Cannot decode one way and not the other; report the plain error.
                Ok(_) => {
                    return Err(vec![Violation {
                        path: String::new(),
                        message: plain.to_string(),
                    }])
                }
            };
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            return Err(vec![Violation {
                path,
                message: e.into_inner().to_string(),
            }]);
        }
    };
    let mut violations = Vec::new();
    args.validate_into(&FieldPath::Root, &mut violations);
    if violations.is_empty() {
        Ok(T::invoke(ctx, args))
    } else {
        Err(violations)
    }
}
