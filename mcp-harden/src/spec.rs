//! Static facts of a tool, produced at compile time by `#[tool]`.

use std::time::Duration;

/// Everything `#[tool]` knows about a tool before it is ever called.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ToolSpec {
    /// The tool's MCP name (the function name unless `name = "..."` overrides it).
    pub name: &'static str,
    /// A human-readable title (`title = "..."`).
    pub title: Option<&'static str>,
    /// The description shown to the model: the function's doc comment, linted at compile time.
    pub description: &'static str,
    /// Who may call the tool.
    pub scopes: Scopes,
    /// How often one caller may call it.
    pub rate: Rate,
    /// The declared timeout; `None` means the server's default.
    pub timeout: Option<Duration>,
    /// The MCP behaviour hints.
    pub annotations: Annotations,
}

impl ToolSpec {
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub const fn __new(
        name: &'static str,
        title: Option<&'static str>,
        description: &'static str,
        scopes: Scopes,
        rate: Rate,
        timeout: Option<Duration>,
        annotations: Annotations,
    ) -> Self {
        Self {
            name,
            title,
            description,
            scopes,
            rate,
            timeout,
            annotations,
        }
    }
}

/// Who may call a tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scopes {
    /// Anyone, even a caller with no identity (`scopes = public`).
    Public,
    /// An authenticated caller holding every listed scope (`[]`: any authenticated caller).
    Required(&'static [&'static str]),
}

impl Scopes {
    /// The scopes a caller needs; empty for `Public` and `[]`.
    pub fn required(&self) -> &'static [&'static str] {
        match self {
            Scopes::Public => &[],
            Scopes::Required(s) => s,
        }
    }
}

/// The length of a rate-limit window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// One second.
    Second,
    /// One minute.
    Minute,
    /// One hour.
    Hour,
}

impl Period {
    /// The window as a duration.
    pub const fn as_duration(self) -> Duration {
        match self {
            Period::Second => Duration::from_secs(1),
            Period::Minute => Duration::from_secs(60),
            Period::Hour => Duration::from_secs(3600),
        }
    }
}

/// A tool's declared rate limit, applied per caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// No limit, declared on purpose (`rate = "unlimited"`).
    Unlimited,
    /// `count` calls per `period`, with up to `burst` at once (default: `count`).
    Limited {
        /// Calls allowed per period.
        count: u32,
        /// The period.
        period: Period,
        /// Calls allowed at once; `None` means `count`.
        burst: Option<u32>,
    },
}

/// MCP tool annotations. `None` leaves the protocol's default in place (a tool that is not
/// declared `read_only` is presumed by clients to be destructive and open-world).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Annotations {
    /// The tool does not modify its environment.
    pub read_only: Option<bool>,
    /// The tool may perform destructive updates.
    pub destructive: Option<bool>,
    /// Calling it again with the same arguments has no further effect.
    pub idempotent: Option<bool>,
    /// The tool interacts with an open world of external entities.
    pub open_world: Option<bool>,
}
