//! Limits: rate limiting (GCRA; in memory with `governor`, or in a shared
//! [`RateLimitStore`] such as Redis for several replicas), tier-scaled quotas, and
//! per-tool concurrency.
//!
//! Up to three rate limits apply to a call: the tool's own rate per caller
//! (`rate = "50/min"`, scaled by the caller's tier), the caller's total across all tools
//! ([`HardenedBuilder::principal_rate`], scaled by tier), and the tool's global rate across
//! all callers ([`HardenedBuilder::global_rate`]). They are decided together, before the
//! call waits for a concurrency slot, all or nothing: the call takes a cell of each, or of
//! none, and a refusal, named by the first of them (in that order) without a free cell,
//! gives the longest of their waits as its hint. A call refused afterwards as busy (or
//! cancelled while it waited for a slot) gives its cells back. A refused call thus costs
//! nobody a cell, itself included; a call refused later, for its arguments say, keeps
//! them.
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
        let period = period.as_duration().as_nanos();
        if period < u128::from(count) * 1000 {
            return Err(TOO_FAST);
        }
        // Rounded up to the nanosecond: a rate is never enforced looser than declared.
        let interval = period.div_ceil(u128::from(count));
        let interval = Duration::from_nanos(u64::try_from(interval).unwrap_or(u64::MAX));
        Self::checked(interval, burst.unwrap_or(count)).map(Some)
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
        // Up to a nanosecond a call over, as an interval rounded up may make it (what
        // `#[tool]` checks is the exact window).
        let slack = Duration::from_nanos(u64::from(burst));
        if emission
            .checked_mul(burst)
            .is_none_or(|w| w > MAX_WINDOW + slack)
        {
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
        // Never looser than scaled: the interval rounded up to the nanosecond, the burst
        // down (but at least 1; the 1e-9 absorbs float error, 10 × 0.7 being
        // 7.000000000000001 and 3 × 0.1 / 0.1 a hair under 3).
        let nanos = self.emission.as_nanos() as f64 / factor;
        let burst = (f64::from(self.burst) * factor + 1e-9).floor().max(1.0);
        if nanos < 1e3 {
            return Err(TOO_FAST);
        }
        if nanos > 1e18 {
            return Err("scaled by the tier, one call would take more than 30 years: use a larger multiplier");
        }
        if burst > f64::from(u32::MAX) {
            return Err(
                "scaled by the tier, its burst exceeds 4 294 967 295: use a smaller multiplier",
            );
        }
        Self::checked(Duration::from_nanos(nanos.ceil() as u64), burst as u32)
    }
}

const ZERO_RATE: &str = "a rate of 0 admits no call (for no limit, use `unlimited`)";
const TOO_FAST: &str =
    "more than one call per microsecond cannot be enforced (lower it, or use `unlimited`)";

/// One of the rate limits a call meets, as a [`RateLimitStore`] sees it: the key of its
/// state (namespaced by the server, the limit, the caller's tier and the caller) and its
/// quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimit<'a> {
    /// The key of this limit's state for this caller.
    pub key: &'a str,
    /// The quota it enforces.
    pub quota: GcraQuota,
}

/// A [`RateLimitStore`]'s decision over the rate limits of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreDecision {
    /// Every limit had a cell free, and one of each was taken.
    Allow,
    /// Not every limit had a cell free, and none was taken.
    Deny {
        /// The first limit (its index in the slice) without a free cell: it names the
        /// refusal.
        limit: usize,
        /// How long until every limit has a cell free: the longest of their waits (exact,
        /// from the GCRA).
        wait: Duration,
    },
}

/// What a [`RateLimitStore`]'s methods return: a boxed future of the store's answer (the
/// trait stays object safe: a server holds its store as `Arc<dyn RateLimitStore>`).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A shared store of rate-limit state: one atomic GCRA decision over all the rate limits a
/// call meets (all or nothing: a cell of each, or of none), and those cells given back when
/// the call is refused after them (its tool busy). Implement it for a store shared by every
/// replica (see `RedisStore` with the `redis` feature).
///
/// An error means the store cannot decide for now, not for these keys alone: the
/// [`FailMode`] answers, and after [`STORE_TRIP`] errors in a row (by default:
/// [`StoreOutage`]) the store is not asked for [`STORE_REST`], then by one call while the
/// others keep to the `FailMode` until that call has its answer. Bound each decision's time
/// yourself: the call waits for it.
///
/// The contract, in a store kept in one process's memory (a stand-in for a shared one):
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use std::time::{Duration, Instant};
///
/// use mcp_harden::limits::{
///     GcraQuota, RateLimitStore, StoreDecision, StoreError, StoreFuture, StoreLimit,
/// };
///
/// /// Each key holds its theoretical arrival time (TAT), since `start`.
/// struct Gcra {
///     start: Instant,
///     tats: Mutex<HashMap<String, Duration>>,
/// }
///
/// impl RateLimitStore for Gcra {
///     fn check<'a>(&'a self, limits: &'a [StoreLimit<'a>]) -> StoreFuture<'a, StoreDecision> {
///         Box::pin(async move {
///             let now = self.start.elapsed();
///             let mut tats = self.tats.lock().map_err(|_| StoreError("poisoned".into()))?;
///             // Every limit is decided before any is written: all or nothing.
///             let (mut next, mut refused) = (Vec::new(), None::<(usize, Duration)>);
///             for (i, l) in limits.iter().enumerate() {
///                 let GcraQuota { emission, burst } = l.quota;
///                 let tat = tats.get(l.key).map_or(now, |t| (*t).max(now)) + emission;
///                 let allow_at = tat.saturating_sub(emission * burst);
///                 if allow_at > now {
///                     // Named by the first refusing limit; the wait is the longest.
///                     let (first, wait) = refused.unwrap_or((i, Duration::ZERO));
///                     refused = Some((first, wait.max(allow_at - now)));
///                 }
///                 next.push(tat);
///             }
///             if let Some((limit, wait)) = refused {
///                 return Ok(StoreDecision::Deny { limit, wait });
///             }
///             for (l, tat) in limits.iter().zip(next) {
///                 tats.insert(l.key.to_owned(), tat);
///             }
///             Ok(StoreDecision::Allow)
///         })
///     }
///
///     fn refund<'a>(&'a self, limits: &'a [StoreLimit<'a>], taken_ago: Duration) -> StoreFuture<'a, ()> {
///         Box::pin(async move {
///             let now = self.start.elapsed();
///             let mut tats = self.tats.lock().map_err(|_| StoreError("poisoned".into()))?;
///             for l in limits {
///                 // What time has not repaid of the cell, and never below now.
///                 let left = l.quota.emission.saturating_sub(taken_ago);
///                 if let Some(tat) = tats.get_mut(l.key) {
///                     *tat = tat.saturating_sub(left).max(now);
///                 }
///             }
///             Ok(())
///         })
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = Gcra { start: Instant::now(), tats: Mutex::default() };
/// let hourly = |burst| GcraQuota { emission: Duration::from_secs(3600), burst };
/// let mine = StoreLimit { key: "tool:search::jwt:ann", quota: hourly(2) };
/// let shared = StoreLimit { key: "global:search::*", quota: hourly(1) };
/// assert_eq!(store.check(&[mine, shared]).await.ok(), Some(StoreDecision::Allow));
/// // The shared limit is spent: refused, and none of `mine` taken.
/// let refused = store.check(&[mine, shared]).await.ok();
/// assert!(matches!(refused, Some(StoreDecision::Deny { limit: 1, .. })));
/// assert_eq!(store.check(&[mine]).await.ok(), Some(StoreDecision::Allow));
/// # });
/// ```
pub trait RateLimitStore: Send + Sync + 'static {
    /// Takes one cell of each limit's quota for its key if every one has a cell free; else
    /// takes none and says how long until all have. One call's limits, in the order they are
    /// named in refusals (the tool's per caller, the caller's across tools, the tool's
    /// across callers); never empty.
    fn check<'a>(&'a self, limits: &'a [StoreLimit<'a>]) -> StoreFuture<'a, StoreDecision>;

    /// Gives back what is left of the cells a [`check`](Self::check) of the same limits
    /// took `taken_ago`: the call was refused after it (its tool busy, or cancelled while
    /// it waited for a slot). Each key moves back by its quota's interval less `taken_ago`
    /// (nothing once that is the whole interval: what time has already repaid is not given
    /// twice), and never below now. Best effort: on an error the cells stay spent, and the
    /// caller pays, never anyone else; the error counts, as a failed `check` does, towards
    /// the store's rest ([`STORE_TRIP`]) and is logged alike. The default gives nothing
    /// back: a store that keeps it holds refused calls' cells spent.
    fn refund<'a>(
        &'a self,
        limits: &'a [StoreLimit<'a>],
        taken_ago: Duration,
    ) -> StoreFuture<'a, ()> {
        let _ = (limits, taken_ago);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// The store could not decide (unreachable, timed out, answered nonsense).
#[derive(Debug, thiserror::Error)]
#[error("rate-limit store: {0}")]
pub struct StoreError(pub String);

/// How long, by default ([`StoreOutage`]), a [`RateLimitStore`] that failed [`STORE_TRIP`]
/// decisions in a row is left alone: meanwhile every decision is its [`FailMode`]'s, at once, instead of each call
/// waiting for the store's timeout; then one call asks it again (the others keep to the
/// `FailMode` until that call has its answer, however long it takes).
pub const STORE_REST: Duration = Duration::from_secs(1);

/// How many decisions in a row, by default ([`StoreOutage`]), a [`RateLimitStore`] fails
/// before it rests for [`STORE_REST`]: a lone failure (a timeout under a burst of load) costs only its own call.
pub const STORE_TRIP: u32 = 3;

/// When a failing [`RateLimitStore`] is left alone, and for how long
/// ([`HardenedBuilder::store_outage`](crate::HardenedBuilder::store_outage)); the default
/// is [`STORE_TRIP`] failures in a row and [`STORE_REST`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOutage {
    trip: u32,
    rest: Duration,
}

impl StoreOutage {
    /// Rest for `rest` after `trip` decisions failed in a row. At least 1 failure, and a
    /// rest of at least 10 ms and at most a minute (a longer rest is a longer outage of the
    /// limits, whatever the store does), or [`build`](crate::HardenedBuilder::build) refuses
    /// it with [`BuildError::InvalidStoreOutage`](crate::BuildError::InvalidStoreOutage),
    /// with a store or without.
    pub const fn new(trip: u32, rest: Duration) -> Self {
        Self { trip, rest }
    }

    /// Failures in a row before a rest.
    pub const fn trip(&self) -> u32 {
        self.trip
    }

    /// How long a rest lasts.
    pub const fn rest(&self) -> Duration {
        self.rest
    }

    /// Whether [`build`](crate::HardenedBuilder::build) accepts it.
    pub(crate) fn usable(&self) -> bool {
        self.trip >= 1
            && self.rest >= Duration::from_millis(10)
            && self.rest <= Duration::from_secs(60)
    }
}

impl Default for StoreOutage {
    fn default() -> Self {
        Self::new(STORE_TRIP, STORE_REST)
    }
}

/// What to do when the [`RateLimitStore`] cannot decide: for a decision it failed, and for
/// every decision while it rests after [`STORE_TRIP`] failures in a row (at least
/// [`STORE_REST`], then until a call finds it answering again; both by default:
/// [`StoreOutage`]). The outage is logged at `warn` (target
/// `mcp_harden::limits`: when it starts, while it lasts, and a failure short of an outage,
/// each at most once a minute; its end at `info`), and every decision the store did not make is
/// counted ([`Hardened::rate_store_errors`](crate::Hardened::rate_store_errors), the metric
/// `mcp_harden_rate_store_unavailable_total{fail, reason}`, `reason` being `failed` for a
/// decision the store was asked and failed, `resting` for one it was not asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailMode {
    /// Refuse the call with `UNAVAILABLE` (retryable, the rest as its hint: [`STORE_REST`] by
    /// default). The default.
    #[default]
    Closed,
    /// Let the call through unlimited: none of its rate limits is checked further. Opt in only
    /// where availability beats the limit: whoever can slow the store past its timeout gets
    /// unlimited calls for as long.
    Open,
    /// Decide in this process, as without a store: each replica enforces every declared
    /// quota on its own, in its own memory, which knows nothing of what the store admitted.
    /// A caller gets at most its quota from each replica it reaches (so up to `n` times it
    /// over `n` replicas), plus, at each switch between the store and memory, up to its burst
    /// again. Limits still hold, more loosely, and nobody is refused for the outage itself.
    Local,
}

impl FailMode {
    fn label(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::Local => "local",
        }
    }
}

/// A shared store's health as this server sees it: whether to ask it, and how many
/// decisions it did not make.
pub(crate) struct StoreHealth {
    outage: StoreOutage,
    born: std::time::Instant,
    /// 0 while the store answers; else when (ms after `born`, at least 1) it may be asked
    /// again.
    rest_until_ms: AtomicU64,
    /// A call is asking a resting store (see [`Probe`]).
    probing: std::sync::atomic::AtomicBool,
    /// Decisions failed in a row.
    failures: std::sync::atomic::AtomicU32,
    /// When the outage began (ms after `born`), for the log line that ends it.
    down_since_ms: AtomicU64,
    /// Decisions the store did not make.
    pub(crate) unmade: AtomicU64,
    /// The last warnings that an outage began, and that it goes on; the last line that one
    /// ended (a flapping store would log each once a second); the last warning of a failure
    /// short of an outage.
    began: rate::Moment,
    lasts: rate::Moment,
    ended: rate::Moment,
    blips: rate::Moment,
}

/// Whether a decision goes to the store.
enum Ask<'a> {
    /// It answers (as far as this server knows).
    Store,
    /// It rests, and its rest is over: this call asks it again, alone (while it holds this).
    Probe { _held: Probe<'a> },
    /// It rests: the fail mode decides.
    Skip,
}

/// What a store failed to do, in its log lines.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// Decide a call's limits ([`RateLimitStore::check`]).
    Check,
    /// Give a refused call's cells back ([`RateLimitStore::refund`]).
    Refund,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Self::Check => "check",
            Self::Refund => "refund",
        }
    }
}

/// The one call asking a resting store. Dropped with its answer, or with the call (a client
/// that gave up): either way another call may ask next.
struct Probe<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl StoreHealth {
    pub(crate) fn new(outage: StoreOutage) -> Self {
        Self {
            outage,
            born: std::time::Instant::now(),
            rest_until_ms: AtomicU64::new(0),
            probing: std::sync::atomic::AtomicBool::new(false),
            failures: std::sync::atomic::AtomicU32::new(0),
            down_since_ms: AtomicU64::new(0),
            unmade: AtomicU64::new(0),
            began: rate::Moment::new(),
            lasts: rate::Moment::new(),
            ended: rate::Moment::new(),
            blips: rate::Moment::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// Whether the store rests after failures (the fail mode answers for it).
    fn resting(&self) -> bool {
        self.rest_until_ms.load(Ordering::Relaxed) != 0
    }

    /// What is left of the store's rest (at least a millisecond), or the whole rest when it
    /// does not rest (a failure short of [`StoreOutage::trip`]): a [`FailMode::Closed`]
    /// refusal's hint.
    fn rest_left(&self) -> Duration {
        match self.rest_until_ms.load(Ordering::Relaxed) {
            0 => self.outage.rest,
            until => Duration::from_millis(until.saturating_sub(self.now_ms()).max(1)),
        }
    }

    fn rest_end(&self, now: u64) -> u64 {
        now.saturating_add(u64::try_from(self.outage.rest.as_millis()).unwrap_or(u64::MAX))
    }

    fn ask(&self) -> Ask<'_> {
        let until = self.rest_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return Ask::Store;
        }
        if self.now_ms() < until {
            return Ask::Skip;
        }
        // Of the calls that find the rest over, one asks, until its answer or its end; the
        // others keep to the fail mode meanwhile (the store may be hung: each would wait out
        // its timeout, or forever).
        match self
            .probing
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => Ask::Probe {
                _held: Probe(&self.probing),
            },
            Err(_) => Ask::Skip,
        }
    }

    /// The store failed a decision: after [`STORE_TRIP`] in a row (or failing its probe) it
    /// rests from now.
    fn failed(&self, op: Op, limit: &str, error: &StoreError, fail: FailMode) {
        let op = op.label();
        let now = self.now_ms();
        let in_a_row = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if self.rest_until_ms.load(Ordering::Relaxed) != 0 {
            // Resting: a probe failed (or a call that asked before the rest did).
            self.rest_until_ms
                .store(self.rest_end(now), Ordering::Relaxed);
            if self.lasts.claim(Duration::from_secs(60)) {
                let down_ms = now.saturating_sub(self.down_since_ms.load(Ordering::Relaxed));
                tracing::warn!(target: "mcp_harden::limits", op, limit, error = %error, fail = fail.label(), down_ms, "rate-limit store still failing");
            }
        } else if in_a_row >= self.outage.trip {
            self.down_since_ms.store(now, Ordering::Relaxed);
            self.rest_until_ms
                .store(self.rest_end(now), Ordering::Relaxed);
            self.lasts.mark();
            if self.began.claim(Duration::from_secs(60)) {
                tracing::warn!(target: "mcp_harden::limits", op, limit, error = %error, fail = fail.label(), failures = in_a_row, rest_ms = self.outage.rest.as_millis() as u64, "rate-limit store failing: decisions follow the fail mode until it answers again");
            }
        } else if self.blips.claim(Duration::from_secs(60)) {
            // Short of an outage, yet a decision the fail mode made (or cells not given
            // back): said at least once a minute, whichever the mode.
            tracing::warn!(target: "mcp_harden::limits", op, limit, error = %error, fail = fail.label(), failures = in_a_row, "rate-limit store failed: its decisions follow the fail mode while it fails");
        } else {
            tracing::debug!(target: "mcp_harden::limits", op, limit, error = %error, fail = fail.label(), failures = in_a_row, "rate-limit store failed a decision");
        }
    }

    /// The store answered. A probe's answer ends the rest; any other's only the count of
    /// failures in a row (a call that asked before a rest began says nothing of the store
    /// now).
    fn answered(&self, probe: bool) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if probe && self.rest_until_ms.swap(0, Ordering::Relaxed) != 0 {
            let down_ms = self
                .now_ms()
                .saturating_sub(self.down_since_ms.load(Ordering::Relaxed));
            if self.ended.claim(Duration::from_secs(60)) {
                tracing::info!(target: "mcp_harden::limits", down_ms, "rate-limit store answers again");
            }
        }
    }

    /// A decision the store did not make, answered per `fail`: it failed it (`asked`) or
    /// was resting.
    fn unmade(&self, fail: FailMode, asked: bool) {
        self.unmade.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::rate_store_unavailable(
            fail.label(),
            if asked { "failed" } else { "resting" },
        );
    }
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
        health: Arc<StoreHealth>,
    },
}

impl Backend {
    /// Rate decisions the store did not make (0 in memory).
    pub(crate) fn unmade(&self) -> u64 {
        match self {
            Self::Memory => 0,
            Self::Store { health, .. } => health.unmade.load(Ordering::Relaxed),
        }
    }
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
}

/// Which of a call's rate limits: it names a refusal (its message and metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The tool's rate per caller.
    Tool,
    /// The caller's total across tools.
    Principal,
    /// The tool's rate across callers.
    Global,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Self::Tool => "tool",
            Self::Principal => "principal",
            Self::Global => "global",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::Tool => "rate limit exceeded for this tool",
            Self::Principal => "rate limit exceeded across tools for this caller",
            Self::Global => "this tool's overall rate limit is reached",
        }
    }
}

/// One rate limit a call meets: the limit's variant for the caller's tier, and the key
/// (the caller's method and subject, `jwt:alice`, or `*` for a global limit).
#[derive(Clone, Copy)]
pub(crate) struct Meet<'a> {
    id: &'a str,
    tier: &'a str,
    limiter: &'a RateLimiter,
    key: &'a Arc<str>,
    kind: Kind,
}

impl<'a> Meet<'a> {
    pub(crate) fn new(limit: &'a Limit, key: &'a Arc<str>, tier: Option<&str>, kind: Kind) -> Self {
        let (tier, limiter) = limit.for_tier(tier);
        Self {
            id: &limit.id,
            tier,
            limiter,
            key,
            kind,
        }
    }

    /// `<prefix><limit>:<tier>:<method>:<subject>`: the prefix's server name and the tier
    /// escaped ([`key_part`]), so that no two callers, tiers or servers share a key (the
    /// limit's id is fixed, the method has no `:`, the subject comes last).
    fn store_key(&self, prefix: &str) -> String {
        format!("{prefix}{}:{}:{}", self.id, key_part(self.tier), self.key)
    }
}

/// The rate limits of one call, in order: the tool's per caller (tier-scaled), the
/// caller's across tools (tier-scaled), the tool's across callers.
pub(crate) struct CallRates<'a>([Option<Meet<'a>>; 3]);

impl<'a> CallRates<'a> {
    pub(crate) fn new(
        per_caller: Option<&'a Limit>,
        per_principal: Option<&'a Limit>,
        global: Option<&'a Limit>,
        principal: &'a Principal,
    ) -> Self {
        let (me, tier) = (principal.rate_key(), principal.tier());
        Self([
            per_caller.map(|l| Meet::new(l, me, tier, Kind::Tool)),
            per_principal.map(|l| Meet::new(l, me, tier, Kind::Principal)),
            global.map(|l| Meet::new(l, global_key(), None, Kind::Global)),
        ])
    }

    fn iter(&self) -> impl Iterator<Item = &Meet<'a>> {
        self.0.iter().flatten()
    }

    /// The limit that names a store failure in its log line (the first).
    fn named(&self) -> &str {
        self.iter().next().map_or("", |m| m.id)
    }

    /// The store keys of these limits, for [`store_limits`](Self::store_limits).
    fn in_store(&self, prefix: &str) -> Vec<String> {
        self.iter().map(|m| m.store_key(prefix)).collect()
    }

    /// These limits as the store is asked about them, under `keys` (from
    /// [`in_store`](Self::in_store)).
    fn store_limits<'k>(&self, keys: &'k [String]) -> Vec<StoreLimit<'k>> {
        self.iter()
            .zip(keys)
            .map(|(m, key)| StoreLimit {
                key,
                quota: m.limiter.quota(),
            })
            .collect()
    }
}

/// Where a call's cells were taken, to give them back there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Nowhere: no rate limit, or a store failing open ([`FailMode::Open`]).
    Nowhere,
    /// In this process's limiters.
    Memory,
    /// In the shared store.
    Store,
}

/// The cells a call's rate limits took, given back ([`give_back`](Self::give_back)) if it
/// is refused after them.
pub(crate) struct Taken<'a> {
    rates: CallRates<'a>,
    place: Place,
}

impl Taken<'_> {
    /// Gives the cells back, taken `ago`: the call was refused after its rate limits
    /// admitted it (its tool busy, or it was cancelled waiting for a slot), and costs nobody
    /// a cell. What is given back is what is left of each cell (its interval less `ago`;
    /// nothing after a queue wait as long as the interval): time has repaid the rest, and
    /// giving it again would admit calls beyond the quota. From a store only while it
    /// answers (as far as this server knows); a failure counts towards its rest and is
    /// logged as the store's failed decisions are, the cells then staying spent.
    pub(crate) async fn give_back(self, backend: &Backend, ago: Duration) {
        match (self.place, backend) {
            (Place::Memory, _) => {
                for m in self.rates.iter() {
                    m.limiter.refund(m.key, ago);
                }
            }
            (
                Place::Store,
                Backend::Store {
                    store,
                    prefix,
                    health,
                    fail,
                },
            ) if !health.resting() => {
                let keys = self.rates.in_store(prefix);
                match store.refund(&self.rates.store_limits(&keys), ago).await {
                    Ok(()) => health.answered(false),
                    Err(e) => health.failed(Op::Refund, self.rates.named(), &e, *fail),
                }
            }
            _ => {}
        }
    }
}

/// One decision over all of a call's rate limits, all or nothing: a cell of each is taken
/// if every one has a cell free, else none, and the refusal, named by the first limit
/// without a free cell, gives the longest wait of all as its hint (retrying after it, the
/// caller meets none of them refused, unless others spent them meanwhile). In memory the
/// limits are asked in order, and what the earlier ones took is given back on a refusal;
/// a store decides all in one step ([`RateLimitStore::check`]). A refused call thus costs
/// nobody a cell, the caller included (in memory, once given back: meanwhile, for the
/// nanoseconds between two limiters, a concurrent call of the same caller may find one
/// spent).
pub(crate) async fn decide<'a>(
    tool: &'static str,
    backend: &Backend,
    rates: CallRates<'a>,
) -> Result<Taken<'a>, ToolError> {
    let Some(first) = rates.iter().next() else {
        return Ok(Taken {
            rates,
            place: Place::Nowhere,
        });
    };
    let place = match backend {
        Backend::Memory => {
            decide_in_memory(tool, &rates)?;
            Place::Memory
        }
        Backend::Store {
            store,
            fail,
            prefix,
            health,
        } => {
            let ask = health.ask();
            let asked = !matches!(ask, Ask::Skip);
            let answer = match ask {
                Ask::Skip => None,
                Ask::Store | Ask::Probe { .. } => {
                    let keys = rates.in_store(prefix);
                    match store.check(&rates.store_limits(&keys)).await {
                        Ok(d) => {
                            health.answered(matches!(ask, Ask::Probe { .. }));
                            Some(d)
                        }
                        Err(e) => {
                            health.failed(Op::Check, rates.named(), &e, *fail);
                            None
                        }
                    }
                }
            };
            drop(ask);
            match answer {
                Some(StoreDecision::Allow) => Place::Store,
                Some(StoreDecision::Deny { limit, wait }) => {
                    let kind = rates.iter().nth(limit).map_or(first.kind, |m| m.kind);
                    crate::telemetry::rate_limited(tool, kind.label());
                    return Err(ToolError::rate_limited(wait, kind.message()));
                }
                None => {
                    health.unmade(*fail, asked);
                    match fail {
                        FailMode::Open => Place::Nowhere,
                        FailMode::Closed => {
                            return Err(ToolError::new(
                                ErrorCode::Unavailable,
                                "rate limiting is unavailable; retry shortly",
                                true,
                            )
                            .with_retry_after(health.rest_left()))
                        }
                        FailMode::Local => {
                            decide_in_memory(tool, &rates)?;
                            Place::Memory
                        }
                    }
                }
            }
        }
    };
    Ok(Taken { rates, place })
}

/// [`decide`] in this process's limiters.
fn decide_in_memory(tool: &'static str, rates: &CallRates<'_>) -> Result<(), ToolError> {
    for (i, m) in rates.iter().enumerate() {
        let refused = match m.limiter.check(m.key) {
            RateDecision::Allow => continue,
            refused => refused,
        };
        for done in rates.iter().take(i) {
            done.limiter.refund(done.key, Duration::ZERO);
        }
        let later = rates
            .iter()
            .skip(i + 1)
            .map(|m| m.limiter.wait(m.key))
            .max()
            .unwrap_or_default();
        return Err(match refused {
            RateDecision::Deny(wait) => {
                crate::telemetry::rate_limited(tool, m.kind.label());
                ToolError::rate_limited(wait.max(later), m.kind.message())
            }
            _ => ToolError::new(
                ErrorCode::Unavailable,
                "the server is tracking too many callers; retry shortly",
                true,
            )
            .with_retry_after(rate::FULL_RETRY.max(later)),
        });
    }
    Ok(())
}

/// `part` with `%` and `:` escaped (`%25`, `%3A`), for a store key.
pub(crate) fn key_part(part: &str) -> std::borrow::Cow<'_, str> {
    if part.contains([':', '%']) {
        std::borrow::Cow::Owned(part.replace('%', "%25").replace(':', "%3A"))
    } else {
        std::borrow::Cow::Borrowed(part)
    }
}

fn global_key() -> &'static Arc<str> {
    static KEY: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| Arc::from("*"))
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
                () = cancel.cancelled() => Err(ToolError::cancelled()),
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
        assert_eq!(half.burst, 2, "2.5 rounded down: never looser than scaled");
        let third = q.scaled(1.0 / 3.0).expect("scaled");
        let over = third.emission.saturating_sub(Duration::from_secs(3));
        assert!(over <= Duration::from_nanos(1), "{:?}", third.emission);
        assert_eq!(third.burst, 1);
        // An interval that is not a whole number of nanoseconds is rounded up.
        let odd = GcraQuota::from_rate(Rate::per_second(999_999)).expect("quota");
        assert_eq!(odd.emission, Duration::from_nanos(1_001));
        let seventh = GcraQuota::from_rate(Rate::per_second(7)).expect("quota");
        assert_eq!(seventh.emission, Duration::from_nanos(142_857_143));
        assert_eq!(seventh.scaled(0.7).map(|q| q.burst), Some(4));
        // A burst window of exactly ten years, as `#[tool]` accepts it, though the interval
        // (3600 s / 7) is rounded up; a call more is refused.
        assert!(GcraQuota::try_from_rate(Rate::per_hour(7).with_burst(613_200)).is_ok());
        assert!(GcraQuota::try_from_rate(Rate::per_hour(7).with_burst(613_201)).is_err());
        assert_eq!(q.scaled(0.0), None);
        assert_eq!(q.scaled(f64::NAN), None);
        assert_eq!(GcraQuota::from_rate(Rate::Unlimited), None);
    }

    impl Limit {
        /// The one limit of a call, decided as `decide` does.
        async fn check(&self, backend: &Backend, key: &Arc<str>) -> Result<(), ToolError> {
            let rates = CallRates([Some(Meet::new(self, key, None, Kind::Tool)), None, None]);
            decide("t", backend, rates).await.map(drop)
        }
    }

    #[tokio::test]
    async fn a_caller_is_its_method_and_subject() {
        use crate::auth::{AuthMethod, Principal};
        let limit = hourly(1);
        let own = |p: Principal| {
            let limit = &limit;
            async move {
                let rates = CallRates::new(Some(limit), None, None, &p);
                decide("t", &Backend::Memory, rates).await.map(drop)
            }
        };
        let bot = |m| Principal::new("ci-bot", ["s"], m);
        assert!(own(bot(AuthMethod::ApiKey)).await.is_ok());
        assert!(
            own(bot(AuthMethod::Jwt)).await.is_ok(),
            "a JWT naming the API key's subject has its own quota"
        );
        let again = own(bot(AuthMethod::ApiKey)).await;
        assert_eq!(again.map_err(|e| e.code), Err(ErrorCode::RateLimited));
    }

    fn limit(id: &str, rate: Rate) -> Limit {
        Limit::new(id.into(), rate, &[], 100)
            .ok()
            .flatten()
            .expect("a limit")
    }

    /// A call's limits are all or nothing: one refusing gives back the cells the others
    /// took, whichever refuses; the hint is the longest wait of all, and the refusal is
    /// named by the first limit refusing.
    #[tokio::test]
    async fn a_refused_call_costs_no_limit_a_cell() {
        use crate::auth::{AuthMethod, Principal};
        let bob = Principal::new("bob", ["s"], AuthMethod::Jwt);
        let ann = Principal::new("ann", ["s"], AuthMethod::Jwt);
        let tool = limit("tool:t", Rate::per_minute(1).with_burst(2));
        let total = limit("principal", Rate::per_hour(1).with_burst(3));
        let global = limit("global:t", Rate::per_hour(1).with_burst(3));
        async fn decide_all(ls: [&Limit; 3], p: &Principal) -> Result<(), ToolError> {
            let rates = CallRates::new(Some(ls[0]), Some(ls[1]), Some(ls[2]), p);
            decide("t", &Backend::Memory, rates).await.map(drop)
        }
        let decide_for = |p| decide_all([&tool, &total, &global], p);
        // Ann spends two of the global three; Bob one: the global is spent.
        assert!(decide_for(&ann).await.is_ok());
        assert!(decide_for(&ann).await.is_ok());
        assert!(decide_for(&bob).await.is_ok());
        // Bob's next calls: his own limits admit, the global refuses, and his cells come
        // back each time; the hint is the global's wait, the longest.
        for _ in 0..20 {
            let e = decide_for(&bob).await.expect_err("global spent");
            assert_eq!(e.code, ErrorCode::RateLimited);
            assert_eq!(e.message, Kind::Global.message());
            let hint = e.retry_after_ms.unwrap_or(0);
            assert!((3_590_000..=3_600_000).contains(&hint), "{hint}");
        }
        // Exactly: one cell of the tool's two left, two of the total's three.
        let key = bob.rate_key();
        assert_eq!(tool.base.wait(key), Duration::ZERO);
        assert_eq!(tool.base.check(key), RateDecision::Allow);
        assert!(matches!(tool.base.check(key), RateDecision::Deny(_)));
        for _ in 0..2 {
            assert_eq!(total.base.check(key), RateDecision::Allow);
        }
        assert!(matches!(total.base.check(key), RateDecision::Deny(_)));
        // Ann's tool burst is spent (2): refused by her tool limit, named by it, with the
        // longest wait as the hint (the global's, over her tool's minute).
        let e = decide_for(&ann).await.expect_err("tool spent");
        assert_eq!(e.message, Kind::Tool.message());
        assert!(e.retry_after_ms.is_some_and(|ms| ms > 1_000_000), "{e:?}");
        // A call given back after it was admitted (its tool busy): as if it had not come.
        let other = limit("tool:u", Rate::per_hour(1).with_burst(1));
        let cara = Principal::new("cara", ["s"], AuthMethod::Jwt);
        for _ in 0..3 {
            let rates = CallRates::new(Some(&other), None, None, &cara);
            let taken = decide("u", &Backend::Memory, rates)
                .await
                .expect("admitted");
            taken.give_back(&Backend::Memory, Duration::ZERO).await;
        }
        assert_eq!(other.base.wait(cara.rate_key()), Duration::ZERO);
        // A cell given back long after it was taken (a queue wait as long as its interval)
        // gives nothing back: time repaid it already.
        let quick = limit("tool:q", Rate::per_second(20).with_burst(1));
        let rates = CallRates::new(Some(&quick), None, None, &cara);
        let taken = decide("q", &Backend::Memory, rates)
            .await
            .expect("admitted");
        let taken_at = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(60)).await;
        let rates = CallRates::new(Some(&quick), None, None, &cara);
        assert!(
            decide("q", &Backend::Memory, rates).await.is_ok(),
            "idle again"
        );
        taken.give_back(&Backend::Memory, taken_at.elapsed()).await;
        let rates = CallRates::new(Some(&quick), None, None, &cara);
        let again = decide("q", &Backend::Memory, rates).await.map(drop);
        assert_eq!(
            again.map_err(|e| e.code),
            Err(ErrorCode::RateLimited),
            "the late give-back did not free the cell the second call took"
        );
    }

    /// A store that answers after `delay`, or fails if `failing` when asked, and counts
    /// questions, and the limits of the last.
    #[derive(Default)]
    struct Flaky {
        asked: std::sync::atomic::AtomicU32,
        failing: std::sync::atomic::AtomicBool,
        delay_ms: AtomicU64,
        last: std::sync::Mutex<Vec<String>>,
        /// The keys of each refund asked, one entry per question.
        refunded: std::sync::Mutex<Vec<Vec<String>>>,
        /// What it answers when it does not fail (else `Allow`).
        answer: std::sync::Mutex<Option<StoreDecision>>,
    }

    impl RateLimitStore for Arc<Flaky> {
        fn check<'a>(&'a self, limits: &'a [StoreLimit<'a>]) -> StoreFuture<'a, StoreDecision> {
            Box::pin(async move {
                self.asked.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut last) = self.last.lock() {
                    *last = limits.iter().map(|l| l.key.to_owned()).collect();
                }
                let (delay, failing) = (
                    self.delay_ms.load(Ordering::SeqCst),
                    self.failing.load(Ordering::SeqCst),
                );
                tokio::time::sleep(Duration::from_millis(delay)).await;
                if failing {
                    Err(StoreError("down".to_owned()))
                } else {
                    let answer = self.answer.lock().ok().and_then(|a| *a);
                    Ok(answer.unwrap_or(StoreDecision::Allow))
                }
            })
        }

        fn refund<'a>(
            &'a self,
            limits: &'a [StoreLimit<'a>],
            _taken_ago: Duration,
        ) -> StoreFuture<'a, ()> {
            Box::pin(async move {
                if let Ok(mut refunded) = self.refunded.lock() {
                    refunded.push(limits.iter().map(|l| l.key.to_owned()).collect());
                }
                Ok(())
            })
        }
    }

    /// A tier's name is escaped in a store key: a tier `gold:jwt` and a subject starting
    /// `jwt:` make no key another caller's.
    #[tokio::test]
    async fn store_keys_escape_tier_names() {
        use crate::auth::{AuthMethod, Principal};
        let (flaky, backend) = flaky_backend(FailMode::Closed);
        let tiers = [(Arc::from("gold:jwt"), 2.0)];
        let tool = Limit::new("tool:t".into(), Rate::per_hour(5), &tiers, 100)
            .ok()
            .flatten()
            .expect("a limit");
        let bob = Principal::new("bob", ["s"], AuthMethod::ApiKey).with_tier("gold:jwt");
        let rates = CallRates::new(Some(&tool), None, None, &bob);
        decide("t", &backend, rates).await.expect("admitted");
        let keys = flaky.last.lock().expect("lock").clone();
        assert_eq!(keys, ["t:tool:t:gold%3Ajwt:api_key:bob"]);
        assert_eq!(key_part("50%:x"), "50%25%3Ax");
        assert_eq!(key_part("gold"), "gold");
    }

    /// A store decides a call's limits in one question, and is given their cells back in
    /// one.
    #[tokio::test]
    async fn a_store_is_asked_once_per_call() {
        use crate::auth::{AuthMethod, Principal};
        let (flaky, backend) = flaky_backend(FailMode::Closed);
        let bob = Principal::new("bob", ["s"], AuthMethod::Jwt);
        let (tool, total) = (hourly(5), limit("principal", Rate::per_hour(9)));
        let global = limit("global:t", Rate::per_hour(50));
        let rates = CallRates::new(Some(&tool), Some(&total), Some(&global), &bob);
        let taken = decide("t", &backend, rates).await.expect("admitted");
        assert_eq!(flaky.asked.load(Ordering::SeqCst), 1);
        let keys = vec![
            "t:tool:t::jwt:bob".to_owned(),
            "t:principal::jwt:bob".to_owned(),
            "t:global:t::*".to_owned(),
        ];
        assert_eq!(*flaky.last.lock().expect("lock"), keys);
        taken.give_back(&backend, Duration::ZERO).await;
        assert_eq!(*flaky.refunded.lock().expect("lock"), [keys], "one refund");
        // A refusal is named by the limit the store names, with its wait.
        *flaky.answer.lock().expect("lock") = Some(StoreDecision::Deny {
            limit: 1,
            wait: Duration::from_millis(4_500),
        });
        let rates = CallRates::new(Some(&tool), Some(&total), Some(&global), &bob);
        let e = decide("t", &backend, rates)
            .await
            .map(drop)
            .expect_err("denied");
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert_eq!(e.message, Kind::Principal.message());
        assert_eq!(e.retry_after_ms, Some(4_500));
    }

    /// A per-caller limit of `n` calls an hour.
    fn hourly(n: u32) -> Limit {
        Limit::new("tool:t".into(), Rate::per_hour(n), &[], 100)
            .ok()
            .flatten()
            .expect("a limit")
    }

    fn alice() -> Arc<str> {
        Arc::from("local:alice")
    }

    fn flaky_backend(fail: FailMode) -> (Arc<Flaky>, Backend) {
        flaky_backend_resting(fail, StoreOutage::default())
    }

    fn flaky_backend_resting(fail: FailMode, outage: StoreOutage) -> (Arc<Flaky>, Backend) {
        let flaky = Arc::new(Flaky::default());
        let backend = Backend::Store {
            store: Arc::new(flaky.clone()),
            fail,
            prefix: Arc::from("t:"),
            health: Arc::new(StoreHealth::new(outage)),
        };
        (flaky, backend)
    }

    #[test]
    fn a_store_fails_closed_by_default() {
        assert_eq!(FailMode::default(), FailMode::Closed);
    }

    /// A store outage configured: one failure trips a rest of a second; the hint is what is
    /// left of it.
    #[tokio::test]
    async fn the_trip_and_the_rest_are_settings() {
        let (limit, key) = (hourly(1000), alice());
        let outage = StoreOutage::new(1, Duration::from_millis(1000));
        let (flaky, backend) = flaky_backend_resting(FailMode::Closed, outage);
        let check = || limit.check(&backend, &key);
        let asked = || flaky.asked.load(Ordering::SeqCst);
        flaky.failing.store(true, Ordering::SeqCst);
        let refused = check().await.expect_err("closed");
        let hint = refused.retry_after_ms.unwrap_or(0);
        assert!((950..=1000).contains(&hint), "the rest as the hint: {hint}");
        assert_eq!(asked(), 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let later = check().await.expect_err("resting");
        let hint = later.retry_after_ms.unwrap_or(0);
        assert!(
            (1..=710).contains(&hint),
            "what is left of the rest: {hint}"
        );
        assert_eq!(asked(), 1, "one failure trips the rest");
        tokio::time::sleep(Duration::from_millis(800)).await;
        flaky.failing.store(false, Ordering::SeqCst);
        assert_eq!(check().await.ok(), Some(()));
        assert_eq!(asked(), 2, "asked again after the rest");
        assert!(!StoreOutage::new(0, Duration::from_secs(1)).usable());
        assert!(!StoreOutage::new(1, Duration::from_millis(5)).usable());
        assert!(!StoreOutage::new(1, Duration::from_secs(61)).usable());
        assert!(StoreOutage::default().usable());
    }

    /// A store that failed `STORE_TRIP` decisions in a row is left alone for `STORE_REST`
    /// (the fail mode answers at once), then asked by one call while the others keep to the
    /// fail mode, and asked by every call once it answers again.
    #[tokio::test]
    async fn a_failed_store_rests_then_one_call_asks_it() {
        let (limit, key) = (hourly(1000), alice());
        let (flaky, backend) = flaky_backend(FailMode::Closed);
        let check = || limit.check(&backend, &key);
        let asked = || flaky.asked.load(Ordering::SeqCst);
        for _ in 0..3 {
            assert_eq!(check().await.ok(), Some(()));
        }
        assert_eq!((asked(), backend.unmade()), (3, 0));

        flaky.failing.store(true, Ordering::SeqCst);
        for _ in 0..10 {
            let e = check().await.expect_err("fails closed");
            assert_eq!(e.code, ErrorCode::Unavailable);
            assert!(e.retryable);
        }
        assert_eq!(
            asked(),
            3 + STORE_TRIP,
            "asked until it failed enough, then left to rest"
        );
        assert_eq!(
            backend.unmade(),
            10,
            "every decision it did not make is counted"
        );

        tokio::time::sleep(STORE_REST + Duration::from_millis(50)).await;
        flaky.delay_ms.store(100, Ordering::SeqCst);
        let five = futures::future::join_all((0..5).map(|_| check())).await;
        assert!(five.iter().all(Result::is_err), "{five:?}");
        assert_eq!(
            asked(),
            4 + STORE_TRIP,
            "one of the calls after the rest asks; the others do not wait"
        );

        flaky.failing.store(false, Ordering::SeqCst);
        flaky.delay_ms.store(0, Ordering::SeqCst);
        assert!(
            check().await.is_err(),
            "still resting after the failed probe"
        );
        tokio::time::sleep(STORE_REST + Duration::from_millis(50)).await;
        for _ in 0..3 {
            assert_eq!(check().await.ok(), Some(()));
        }
        assert_eq!(
            asked(),
            7 + STORE_TRIP,
            "answering again, it is asked by every call"
        );
        assert_eq!(backend.unmade(), 16);
    }

    /// A lone failure costs only its own call: the next one asks the store.
    #[tokio::test]
    async fn a_lone_failure_does_not_rest_the_store() {
        let (limit, key) = (hourly(1000), alice());
        let (flaky, backend) = flaky_backend(FailMode::Closed);
        let check = || limit.check(&backend, &key);
        for _ in 0..3 {
            flaky.failing.store(true, Ordering::SeqCst);
            for _ in 1..STORE_TRIP {
                assert!(check().await.is_err());
            }
            flaky.failing.store(false, Ordering::SeqCst);
            assert_eq!(check().await.ok(), Some(()));
        }
        assert_eq!(flaky.asked.load(Ordering::SeqCst), 3 * STORE_TRIP);
    }

    /// A probe whose call ends before its answer (the client gave up) lets the next call
    /// ask; a call that asked before the rest began, answering during it, does not end it.
    #[tokio::test]
    async fn a_dropped_probe_or_a_stale_answer_leaves_the_rest_right() {
        let (limit, key) = (hourly(1000), alice());
        let (flaky, backend) = flaky_backend(FailMode::Closed);
        let check = || limit.check(&backend, &key);
        let asked = || flaky.asked.load(Ordering::SeqCst);

        // A slow call asks while the store is well; it then fails enough to rest.
        flaky.delay_ms.store(300, Ordering::SeqCst);
        let slow = tokio::spawn({
            let (limit, backend, key) = (hourly(1000), backend.clone(), key.clone());
            async move { limit.check(&backend, &key).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        flaky.delay_ms.store(0, Ordering::SeqCst);
        flaky.failing.store(true, Ordering::SeqCst);
        for _ in 0..STORE_TRIP {
            assert!(check().await.is_err());
        }
        assert!(slow.await.expect("joins"), "the slow call's answer was yes");
        flaky.failing.store(false, Ordering::SeqCst);
        let before = asked();
        assert!(check().await.is_err(), "its answer did not end the rest");
        assert_eq!(asked(), before);

        // The rest over, a probe that is dropped before its answer.
        tokio::time::sleep(STORE_REST + Duration::from_millis(50)).await;
        flaky.delay_ms.store(5_000, Ordering::SeqCst);
        let gave_up = tokio::time::timeout(Duration::from_millis(50), check()).await;
        assert!(gave_up.is_err(), "the probe was still waiting");
        assert_eq!(asked(), before + 1);
        flaky.delay_ms.store(0, Ordering::SeqCst);
        assert_eq!(
            check().await.ok(),
            Some(()),
            "the next call asks, and the store answers"
        );
        assert_eq!(check().await.ok(), Some(()));
        assert_eq!(asked(), before + 3);
    }

    /// Deciding locally, the declared quota holds in memory while the store is down, and
    /// the store decides again once it answers.
    #[tokio::test]
    async fn failing_locally_keeps_the_quota_in_memory() {
        let (limit, key) = (hourly(2), alice());
        let (flaky, backend) = flaky_backend(FailMode::Local);
        let check = || limit.check(&backend, &key);
        flaky.failing.store(true, Ordering::SeqCst);
        assert_eq!(check().await.ok(), Some(()));
        assert_eq!(check().await.ok(), Some(()));
        let e = check().await.expect_err("over the quota in memory");
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(e.retry_after_ms.is_some_and(|ms| ms > 1_700_000), "{e:?}");
        assert_eq!(
            (flaky.asked.load(Ordering::SeqCst), backend.unmade()),
            (STORE_TRIP, 3)
        );
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
