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
    /// How many calls of this tool may run at once (`max_concurrency = N`), and what
    /// happens to the next one; `None` means no limit.
    pub concurrency: Option<Concurrency>,
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
            concurrency: None,
        }
    }

    #[doc(hidden)]
    pub const fn __with_concurrency(mut self, max: u32, wait_ms: Option<u64>) -> Self {
        self.concurrency = Some(Concurrency {
            max,
            wait: match wait_ms {
                Some(ms) => Some(Duration::from_millis(ms)),
                None => None,
            },
        });
        self
    }
}

/// A tool's concurrency limit: at most `max` calls at once. The next call is refused at once
/// with `UNAVAILABLE` (retryable), or, with `wait`, waits up to that long for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency {
    /// Calls allowed to run at once (at least 1).
    pub max: u32,
    /// How long a call may wait for a slot; `None` refuses at once.
    pub wait: Option<Duration>,
}

impl Concurrency {
    /// At most `max` at once; the next call is refused at once.
    pub const fn reject_over(max: u32) -> Self {
        Self { max, wait: None }
    }

    /// At most `max` at once; the next call waits up to `wait` for a slot (more than zero
    /// and at most an hour: `build()` refuses others, as `#[tool]` does).
    pub const fn wait_up_to(max: u32, wait: Duration) -> Self {
        Self {
            max,
            wait: Some(wait),
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

impl Rate {
    /// `count` calls per second, bursts of `count`.
    pub const fn per_second(count: u32) -> Self {
        Rate::Limited {
            count,
            period: Period::Second,
            burst: None,
        }
    }

    /// `count` calls per minute, bursts of `count`.
    pub const fn per_minute(count: u32) -> Self {
        Rate::Limited {
            count,
            period: Period::Minute,
            burst: None,
        }
    }

    /// `count` calls per hour, bursts of `count`.
    pub const fn per_hour(count: u32) -> Self {
        Rate::Limited {
            count,
            period: Period::Hour,
            burst: None,
        }
    }

    /// This rate with bursts of up to `burst` calls at once (at least 1: `build()` refuses
    /// a burst of 0, as `#[tool]` does).
    pub const fn with_burst(self, burst: u32) -> Self {
        match self {
            Rate::Limited { count, period, .. } => Rate::Limited {
                count,
                period,
                burst: Some(burst),
            },
            Rate::Unlimited => Rate::Unlimited,
        }
    }
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
