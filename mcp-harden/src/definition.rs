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
                        message: json_terms(plain.to_string()),
                    }])
                }
            };
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            return Err(vec![Violation {
                path,
                message: json_terms(e.into_inner().to_string()),
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

/// A decoding error in JSON's terms rather than Rust's: serde names what it expected by the
/// Rust type (`expected u32`, `expected struct Filter`), which says nothing to a client
/// reading the JSON Schema and names the server's types.
fn json_terms(message: String) -> String {
    const SEP: &str = ", expected ";
    let Some(at) = message.rfind(SEP) else {
        return message;
    };
    let expected = &message[at + SEP.len()..];
    let plain = match expected {
        "u8" => "an integer from 0 to 255",
        "u16" => "an integer from 0 to 65535",
        "u32" => "an integer from 0 to 4294967295",
        "u64" | "u128" | "usize" => "a non-negative integer",
        "i8" => "an integer from -128 to 127",
        "i16" => "an integer from -32768 to 32767",
        "i32" => "an integer from -2147483648 to 2147483647",
        "i64" | "i128" | "isize" => "an integer",
        "f32" | "f64" => "a number",
        "char" => "a string of one character",
        "unit" => "null",
        e if e.starts_with("tuple struct ") || e.starts_with("tuple variant ") => "an array",
        e if e.starts_with("unit struct ") => "null",
        e if e.starts_with("struct ")
            || e.starts_with("struct variant ")
            || e.starts_with("internally tagged enum ")
            || e.starts_with("adjacently tagged enum ") =>
        {
            "an object"
        }
        e if e.starts_with("enum ") => "one of the allowed values",
        _ => return message,
    };
    format!("{}{SEP}{plain}", &message[..at])
}

#[cfg(test)]
mod tests {
    use super::json_terms;

    #[test]
    fn decoding_errors_name_json_not_rust() {
        let cases = [
            (
                "invalid type: string \"many\", expected u32",
                "invalid type: string \"many\", expected an integer from 0 to 4294967295",
            ),
            (
                "invalid value: integer `-1`, expected u64",
                "invalid value: integer `-1`, expected a non-negative integer",
            ),
            (
                "invalid type: integer `5`, expected struct Filter",
                "invalid type: integer `5`, expected an object",
            ),
            (
                "invalid type: integer `5`, expected enum Op",
                "invalid type: integer `5`, expected one of the allowed values",
            ),
            (
                "invalid type: integer `5`, expected tuple struct Pair",
                "invalid type: integer `5`, expected an array",
            ),
            (
                "invalid type: string \"a\", expected struct variant Shape::Circle",
                "invalid type: string \"a\", expected an object",
            ),
            (
                "invalid type: string \"x\", expected f64",
                "invalid type: string \"x\", expected a number",
            ),
            // Already in JSON's terms, or not of this shape: as it was.
            (
                "invalid type: integer `1`, expected a string",
                "invalid type: integer `1`, expected a string",
            ),
            (
                "unknown variant `ne`, expected one of `eq`, `lt`",
                "unknown variant `ne`, expected one of `eq`, `lt`",
            ),
            ("missing field `message`", "missing field `message`"),
        ];
        for (serde, ours) in cases {
            assert_eq!(json_terms(serde.to_owned()), ours);
        }
    }
}
