//! # mcp-harden
//!
//! Hardened [MCP](https://modelcontextprotocol.io) tools for the official Rust SDK
//! [`rmcp`]. One attribute on a plain `async fn` declares who may call the tool, how often,
//! for how long and with which arguments; the crate generates the validated argument
//! struct, its JSON Schema, scope checks, rate limits, timeouts, safe structured errors and
//! an audit record for every call.
//!
//! ```no_run
//! use mcp_harden::prelude::*;
//!
//! struct App;
//!
//! /// Greet someone by name.
//! #[tool(scopes = "greet", rate = "10/min", timeout = "2s", read_only)]
//! async fn greet(_ctx: Ctx<App>, #[arg(max_len = 64)] name: String) -> Result<String, std::io::Error> {
//!     Ok(format!("Hello, {name}!"))
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Hardened::builder(App)
//!     .tool::<greet>()
//!     .local_principal(Principal::local("me", ["greet"]))
//!     .build()?;
//! server.serve_stdio().await?;
//! # Ok(()) }
//! ```
//!
//! The pipeline of one call (see the README): identify the caller, check scopes, apply the
//! rate limit, decode and validate the arguments, run under the timeout with panics caught,
//! shape the result or a safe error, and record one audit record.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// The common impls of a fixed-size ASCII text kept inline (ids, timestamps): `as_str`,
/// `Deref<Target = str>`, `Display`, `Debug`, `Serialize` as a string, comparisons with
/// `str`. The wrapped bytes are ASCII by construction.
macro_rules! inline_text {
    ($t:ident) => {
        impl $t {
            /// The text.
            pub fn as_str(&self) -> &str {
                // Always ASCII: every constructor writes or checks ASCII bytes.
                std::str::from_utf8(&self.0).unwrap_or_default()
            }
        }
        impl std::ops::Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                self.as_str()
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(self.as_str(), f)
            }
        }
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

pub mod args;
pub mod audit;
pub mod auth;
mod ctx;
mod definition;
pub mod errors;
pub mod limits;
mod pipeline;
pub mod server;
pub mod spec;
pub mod telemetry;

pub use args::{FieldPath, ToolArgs, Violation};
pub use audit::{AuditRecord, AuditSink, TracingAuditSink};
pub use auth::Principal;
pub use ctx::Ctx;
pub use definition::Tool;
pub use errors::{ErrorCode, PublicError, ToolError};
pub use mcp_harden_macros::{tool, ToolArgs};
pub use server::{BuildError, Hardened, HardenedBuilder};
pub use spec::ToolSpec;

/// The names a tool author needs: `use mcp_harden::prelude::*;`.
pub mod prelude {
    pub use crate::{tool, Ctx, Hardened, Principal, PublicError, ToolArgs, ToolError};
}

/// Items used by the code that `#[tool]` and `#[derive(ToolArgs)]` generate. Not public API.
#[doc(hidden)]
pub mod __private;
