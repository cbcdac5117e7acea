//! Procedural macros of [mcp-harden](https://docs.rs/mcp-harden). Use them through that
//! crate (`mcp_harden::tool`, `mcp_harden::ToolArgs`); the generated code refers to it.
//!
//! Each macro runs parse -> check -> emit and collects every mistake before reporting, so
//! one build shows all of them.

mod args;
mod ctxt;
mod derive;
mod doc;
mod lint;
mod tool;

use proc_macro::TokenStream;

/// Declares a hardened MCP tool on a free `async fn`.
///
/// Required: a doc comment (the description, linted against tool poisoning), `scopes`
/// (`"a b"`, `["a", "b"]`, `[]` for any authenticated caller, or `public`) and `rate`
/// (`"N/sec|min|hour"`, or `"unlimited"`). Optional: `burst = N`, `timeout = "5s"`,
/// `retryable_on = [Error::Variant, ...]`, `name = "..."`, `title = "..."`, `read_only`,
/// `destructive`, `idempotent`, `open_world`, `crate = "path::to::mcp_harden"`.
///
/// Every parameter is either the context `Ctx<S>` or a tool argument, bounded with
/// `#[arg(...)]`: `max_len`, `min_len`, `max_items`, `min_items`, `range = a..=b`,
/// `pattern = "regex"`, `default = expr`, `secret`, `unbounded`, `desc = "..."`.
///
/// The function is left as it is; a marker type of the same name registers it:
/// `.tool::<my_tool>()`.
#[proc_macro_attribute]
pub fn tool(attr: TokenStream, item: TokenStream) -> TokenStream {
    tool::expand(attr.into(), item.into()).into()
}

/// Makes a struct with named fields, a fieldless enum (an allow-list of strings) or an enum
/// of single-field variants (one of several JSON types) usable as a tool argument, with the
/// same `#[arg(...)]` field rules as `#[tool]` parameters.
#[proc_macro_derive(ToolArgs, attributes(arg))]
pub fn derive_tool_args(item: TokenStream) -> TokenStream {
    derive::expand(item.into()).into()
}
