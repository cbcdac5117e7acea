//! Limits: rate limiting (GCRA; in memory with `governor`, or in a shared
//! [`RateLimitStore`] such as Redis for several replicas), tier-scaled quotas, and
//! per-tool concurrency.
//!
//! Up to three rate limits apply to a call, in this order, the first refusal winning:
//! the tool's own rate per caller (`rate = "50/min"`, scaled by the caller's tier), the
//! caller's total across all tools ([`HardenedBuilder::principal_rate`], scaled by tier),
//! then, once the call holds its concurrency slot (if the tool limits concurrency), the
//! tool's global rate across all callers ([`HardenedBuilder::global_rate`]). The caller's
//! own limits come first so that a call they refuse, or one refused as busy, never spends
//! the budget every caller shares; a limit that admitted a call keeps its cell when a later
//! one refuses it.
//!
//! [`HardenedBuilder::global_rate`]: crate::HardenedBuilder::global_rate
//! [`HardenedBuilder::principal_rate`]: crate::HardenedBuilder::principal_rate

pub(crate) mod rate;
#[cfg(feature = "redis")]
mod redis_store;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use rate::{RateDecision, RateLimiter, DEFAULT_MAX_TRACKED};
#[cfg(feature = "redis")]
pub use redis_store::RedisStore;

use crate::auth::Principal;
use crate::errors::{ErrorCode, ToolError};
use crate::spec::{Concurrency, Rate};

/// GCRA parameters: one cell every `emission`, up to `burst` cells at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraQuota {
    /// The time one call "costs" (period / count).
    pub emission: Duration,
    /// Calls allowed at once.
    pub burst: u32,
}

impl GcraQuota {
    /// The quota of a declared rate; `None` for `unlimited`, and for a rate that cannot be
    /// enforced (see [`try_from_rate`](Self::try_from_rate)).
    pub fn from_rate(rate: Rate) -> Option<Self> {
        Self::try_from_rate(rate).ok().flatten()
    }

    /// The quota of a declared rate: `Ok(None)` for `unlimited`; an error saying why for a
    /// count or burst of zero, more than one call per microsecond, or a burst window
    /// (`burst × period / count`) longer than ten years.
    pub fn try_from_rate(rate: Rate) -> Result<Option<Self>, &'static str> {
        let Rate::Limited {
            count,
            period,
            burst,
        } = rate
        else {
            return Ok(None);
        };
        if count == 0 {
            return Err(ZERO_RATE);
        }
        Self::checked(period.as_duration() / count, burst.unwrap_or(count)).map(Some)
    }

    /// A quota that can be enforced: at least a microsecond per call, a burst of at least
    /// one, and a burst window (`emission * burst`) of at most ten years.
    fn checked(emission: Duration, burst: u32) -> Result<Self, &'static str> {
        const MAX_WINDOW: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
        if burst == 0 {
            return Err("a burst of 0 admits no call");
        }
        if emission < Duration::from_micros(1) {
            return Err(TOO_FAST);
        }
        if emission.checked_mul(burst).is_none_or(|w| w > MAX_WINDOW) {
            return Err("its burst window (burst × period / count) is longer than ten years: lower the burst");
        }
        Ok(Self { emission, burst })
    }

    /// This quota scaled by `factor` (a tier's multiplier): `factor` times the rate and the
    /// burst. `None` if the result cannot be enforced.
    pub fn scaled(self, factor: f64) -> Option<Self> {
        self.try_scaled(factor).ok()
    }

    fn try_scaled(self, factor: f64) -> Result<Self, &'static str> {
        if !(factor.is_finite() && factor > 0.0) {
            return Err("a tier's multiplier must be a finite number above 0");
        }
        let secs = self.emission.as_secs_f64() / factor;
        let burst = (f64::from(self.burst) * factor).round().max(1.0);
        if secs < 1e-6 {
            return Err(TOO_FAST);
        }
        if secs > 1e9 {
            return Err("scaled by the tier, one call would take more than 30 years: use a larger multiplier");
        }
        if burst > f64::from(u32::MAX) {
            return Err(
                "scaled by the tier, its burst exceeds 4 294 967 295: use a smaller multiplier",
            );
        }
        Self::checked(Duration::from_secs_f64(secs), burst as u32)
    }
}

const ZERO_RATE: &str = "a rate of 0 admits no call (for no limit, use `unlimited`)";
const TOO_FAST: &str =
    "more than one call per microsecond cannot be enforced (lower it, or use `unlimited`)";

/// A shared store of rate-limit state: one atomic GCRA decision per limit a call meets.
/// Implement it for a store shared by every replica (see `RedisStore` with the `redis`
/// feature).
///
/// An error means the store cannot decide for now, not for this key alone: the call asks it
/// nothing more, and the [`FailMode`] applies to the whole call (failing open, its other
/// limits are not checked). Bound each decision's time yourself: the call waits for it.
pub trait RateLimitStore: Send + Sync + 'static {
    /// Takes one cell of `quota` for `key`, or says how long until one is free.
    fn check<'a>(
        &'a self,
        key: &'a str,
        quota: GcraQuota,
    ) -> Pin<Box<dyn Future<Output = Result<RateDecision, StoreError>> + Send + 'a>>;
}

/// The store could not decide (unreachable, timed out, answered nonsense).
#[derive(Debug, thiserror::Error)]
#[error("rate-limit store: {0}")]
pub struct StoreError(pub String);

/// What to do when the [`RateLimitStore`] cannot decide. Either way the failure is logged
/// (target `mcp_harden::limits`) and counted ([`Hardened::rate_store_errors`](crate::Hardened::rate_store_errors)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailMode {
    /// Refuse the call with `UNAVAILABLE` (retryable). The default.
    #[default]
    Closed,
    /// Let the call through unlimited: none of its rate limits is checked further. Opt in only
    /// where availability beats the limit.
    Open,
}

/// Where rate decisions are made.
#[derive(Clone)]
pub(crate) enum Backend {
    /// In this process (`governor`).
    Memory,
    /// In a shared store.
    Store {
        store: Arc<dyn RateLimitStore>,
        fail: FailMode,
        prefix: Arc<str>,
    },
}

/// One rate limit with its tier-scaled variants.
pub(crate) struct Limit {
    /// Names the limit in store keys: `tool:<name>`, `global:<name>`, `principal`.
    id: Box<str>,
    base: RateLimiter,
    tiers: Box<[(Arc<str>, RateLimiter)]>,
}

impl Limit {
    /// A limit of `rate`, scaled per tier; if the rate cannot be enforced, why, with the tier
    /// whose scaled version cannot be (`None`: the rate itself).
    pub(crate) fn new(
        id: String,
        rate: Rate,
        tiers: &[(Arc<str>, f64)],
        max_tracked: usize,
    ) -> Result<Option<Self>, (Option<Arc<str>>, &'static str)> {
        let Some(quota) = GcraQuota::try_from_rate(rate).map_err(|e| (None, e))? else {
            return Ok(None);
        };
        let limiter = |q| RateLimiter::with_quota(q, max_tracked).ok_or(TOO_FAST);
        let base = limiter(quota).map_err(|e| (None, e))?;
        let tiers = tiers
            .iter()
            .map(|(t, f)| {
                quota
                    .try_scaled(*f)
                    .and_then(limiter)
                    .map(|l| (t.clone(), l))
                    .map_err(|e| (Some(t.clone()), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Self {
            id: id.into(),
            base,
            tiers: tiers.into_boxed_slice(),
        }))
    }

    fn for_tier(&self, tier: Option<&str>) -> (&str, &RateLimiter) {
        if let Some(t) = tier {
            if let Some((name, l)) = self.tiers.iter().find(|(n, _)| &**n == t) {
                return (name, l);
            }
            if !self.tiers.is_empty() {
                unknown_tier(t);
            }
        }
        ("", &self.base)
    }

    /// How many callers the in-memory limiters track.
    pub(crate) fn tracked_keys(&self) -> usize {
        self.base.tracked_keys()
            + self
                .tiers
                .iter()
                .map(|(_, l)| l.tracked_keys())
                .sum::<usize>()
    }

    /// One decision for `key` (the caller's method and subject, `jwt:alice`, or `*` for a global limit).
    pub(crate) async fn check(
        &self,
        backend: &Backend,
        key: &Arc<str>,
        tier: Option<&str>,
        errors: &AtomicU64,
        message: &'static str,
    ) -> Result<Checked, ToolError> {
        let (tier_name, limiter) = self.for_tier(tier);
        let decision = match backend {
            Backend::Memory => limiter.check(key),
            Backend::Store {
                store,
                fail,
                prefix,
            } => {
                let store_key = format!("{prefix}{}:{tier_name}:{key}", self.id);
                match store.check(&store_key, limiter.quota()).await {
                    Ok(d) => d,
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(target: "mcp_harden::limits", limit = %self.id, error = %e, fail_open = (*fail == FailMode::Open), "rate-limit store failed");
                        return match fail {
                            FailMode::Open => Ok(Checked::StoreDown),
                            FailMode::Closed => Err(ToolError::new(
                                ErrorCode::Unavailable,
                                "rate limiting is unavailable; retry shortly",
                                true,
                            )
                            .with_retry_after(Duration::from_secs(1))),
                        };
                    }
                }
            }
        };
        match decision {
            RateDecision::Allow => Ok(Checked::Admitted),
            RateDecision::Deny(wait) => Err(ToolError::rate_limited(wait, message)),
            RateDecision::Full => Err(ToolError::new(
                ErrorCode::Unavailable,
                "the server is tracking too many callers; retry shortly",
                true,
            )
            .with_retry_after(rate::FULL_RETRY)),
        }
    }
}

/// A limit's decision that let the call on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checked {
    /// The limit admitted the call.
    Admitted,
    /// The store could not decide and fails open: the call goes on, and the call's other
    /// limits are not asked (each would wait for the same store), so that a store that is
    /// down costs a call at most one of its timeouts.
    StoreDown,
}

/// The caller's own rate limits, in order: per caller for the tool, then per caller across
/// tools. Checked before the call waits for a concurrency slot, and before the global rate
/// ([`check_global`]), so that a call they refuse never spends what every caller shares. A
/// limit that admits takes its cell, and a later refusal does not give it back: a refused
/// call may cost the caller, never anyone else.
pub(crate) async fn check_own(
    tool: &'static str,
    backend: &Backend,
    per_caller: Option<&Limit>,
    per_principal: Option<&Limit>,
    principal: &Principal,
    errors: &AtomicU64,
) -> Result<Checked, ToolError> {
    let tier = principal.tier();
    let me = principal.rate_key();
    if let Some(l) = per_caller {
        let m = "rate limit exceeded for this tool";
        let c = l
            .check(backend, me, tier, errors, m)
            .await
            .inspect_err(|e| count_refusal(e, tool, "tool"))?;
        if c == Checked::StoreDown {
            return Ok(c);
        }
    }
    if let Some(l) = per_principal {
        let m = "rate limit exceeded across tools for this caller";
        return l
            .check(backend, me, tier, errors, m)
            .await
            .inspect_err(|e| count_refusal(e, tool, "principal"));
    }
    Ok(Checked::Admitted)
}

/// The tool's global rate across all callers: checked last, once the call holds its
/// concurrency slot, so that only calls about to run spend it.
pub(crate) async fn check_global(
    tool: &'static str,
    backend: &Backend,
    global: &Limit,
    errors: &AtomicU64,
) -> Result<Checked, ToolError> {
    let m = "this tool's overall rate limit is reached";
    global
        .check(backend, &global_key(), None, errors, m)
        .await
        .inspect_err(|e| count_refusal(e, tool, "global"))
}

fn count_refusal(e: &ToolError, tool: &'static str, limit: &'static str) {
    if e.code == ErrorCode::RateLimited {
        crate::telemetry::rate_limited(tool, limit);
    }
}

fn global_key() -> Arc<str> {
    static KEY: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| Arc::from("*")).clone()
}

/// A tool's concurrency limit at run time.
pub(crate) struct ConcurrencyGate {
    max: usize,
    permits: Arc<tokio::sync::Semaphore>,
    wait: Option<Duration>,
}

/// The hint given to a caller refused for concurrency.
const BUSY_RETRY: Duration = Duration::from_millis(250);

impl ConcurrencyGate {
    /// A gate for `c`, or why it is unusable (as `#[tool]` refuses: a limit of zero, a
    /// queue wait of zero or over an hour).
    pub(crate) fn new(c: Concurrency) -> Result<Self, &'static str> {
        let max = usize::try_from(c.max)
            .ok()
            .filter(|m| *m > 0)
            .ok_or("it must be at least 1")?;
        if c.wait
            .is_some_and(|w| w.is_zero() || w > Duration::from_secs(3600))
        {
            return Err("a queue wait must be more than 0 and at most an hour");
        }
        Ok(Self {
            max,
            permits: Arc::new(tokio::sync::Semaphore::new(max)),
            wait: c.wait,
        })
    }

    /// A slot for one call, held until the permit is dropped (the call answered, timed out
    /// or was cancelled).
    pub(crate) async fn acquire(
        &self,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ToolError> {
        let busy = || {
            ToolError::new(
                ErrorCode::Unavailable,
                "the tool is busy; retry shortly",
                true,
            )
            .with_retry_after(BUSY_RETRY)
        };
        match self.wait {
            None => self.permits.clone().try_acquire_owned().map_err(|_| busy()),
            Some(wait) => tokio::select! {
                biased;
                () = cancel.cancelled() => Err(ToolError::new(ErrorCode::Unavailable, "the call was cancelled", true)),
                r = tokio::time::timeout(wait, self.permits.clone().acquire_owned()) => match r {
                    Ok(Ok(p)) => Ok(p),
                    _ => Err(busy()),
                },
            },
        }
    }

    /// Calls running now.
    pub(crate) fn in_use(&self) -> usize {
        self.max.saturating_sub(self.permits.available_permits())
    }
}

/// A principal's tier that no `.tier(..)` names (a typo in a tier claim or an API key's
/// entry, say): the caller gets the declared rates, and a warning says so, at most once a
/// minute (any caller can present one on every call).
fn unknown_tier(tier: &str) {
    static WARNED: std::sync::LazyLock<rate::Moment> = std::sync::LazyLock::new(rate::Moment::new);
    if WARNED.claim(Duration::from_secs(60)) {
        // Debug-formatted: the tier comes from a token's claim, and is escaped.
        tracing::warn!(target: "mcp_harden::limits", tier = ?crate::audit::cut_chars(tier, 64), "a principal's tier is not configured: it gets the declared rates (further ones are not logged for a minute)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_scale_by_tier() {
        let q = GcraQuota::from_rate(Rate::per_minute(60).with_burst(5)).expect("quota");
        assert_eq!(q.emission, Duration::from_secs(1));
        let ten = q.scaled(10.0).expect("scaled");
        assert_eq!(ten.emission, Duration::from_millis(100));
        assert_eq!(ten.burst, 50);
        let half = q.scaled(0.5).expect("scaled");
        assert_eq!(half.emission, Duration::from_secs(2));
        assert_eq!(half.burst, 3);
        assert_eq!(q.scaled(0.0), None);
        assert_eq!(q.scaled(f64::NAN), None);
        assert_eq!(GcraQuota::from_rate(Rate::Unlimited), None);
    }

    #[tokio::test]
    async fn a_caller_is_its_method_and_subject() {
        use crate::auth::{AuthMethod, Principal};
        let limit = Limit::new("tool:t".into(), Rate::per_hour(1), &[], 100)
            .ok()
            .flatten()
            .expect("a limit");
        let errors = AtomicU64::new(0);
        let own = |p: Principal| {
            let (limit, errors) = (&limit, &errors);
            async move { check_own("t", &Backend::Memory, Some(limit), None, &p, errors).await }
        };
        let bot = |m| Principal::new("ci-bot", ["s"], m);
        assert!(own(bot(AuthMethod::ApiKey)).await.is_ok());
        assert!(
            own(bot(AuthMethod::Jwt)).await.is_ok(),
            "a JWT naming the API key's subject has its own quota"
        );
        let again = own(bot(AuthMethod::ApiKey)).await.map(|_| ());
        assert_eq!(again.map_err(|e| e.code), Err(ErrorCode::RateLimited));
    }

    #[tokio::test]
    async fn concurrency_rejects_or_waits() {
        let ct = tokio_util::sync::CancellationToken::new();
        let g = ConcurrencyGate::new(Concurrency::reject_over(1)).expect("gate");
        let p = g.acquire(&ct).await.expect("first");
        let e = g.acquire(&ct).await.expect_err("second is refused");
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(e.retryable);
        assert_eq!(g.in_use(), 1);
        drop(p);
        assert_eq!(g.in_use(), 0);

        let g = Arc::new(
            ConcurrencyGate::new(Concurrency::wait_up_to(1, Duration::from_secs(5))).expect("gate"),
        );
        let p = g.acquire(&ct).await.expect("first");
        let waiting = tokio::spawn({
            let g = g.clone();
            let ct = ct.clone();
            async move { g.acquire(&ct).await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(p);
        assert!(
            waiting.await.expect("joins").is_ok(),
            "the waiter gets the freed slot"
        );

        let g = ConcurrencyGate::new(Concurrency::wait_up_to(1, Duration::from_millis(30)))
            .expect("gate");
        let _p = g.acquire(&ct).await.expect("first");
        assert!(g.acquire(&ct).await.is_err(), "the wait is bounded");
    }
}
