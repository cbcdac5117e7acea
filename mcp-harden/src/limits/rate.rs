use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DefaultKeyedStateStore, ShrinkableKeyedStateStore};
use governor::state::StateStore;
use governor::Quota;

use super::GcraQuota;
use crate::spec::Rate;

/// The outcome of one rate decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateDecision {
    /// The call may proceed.
    Allow,
    /// The call is refused; the caller may retry after this long (exact, from the GCRA).
    Deny(Duration),
    /// The limiter tracks as many callers as it may; a caller it does not know yet is
    /// refused until idle ones are evicted.
    Full,
}

/// The default bound on the callers one limiter tracks.
pub const DEFAULT_MAX_TRACKED: usize = 1_000_000;

/// Decisions between two sweeps of idle keys, at least. A limiter tracking more keys waits
/// for a quarter of their number in decisions (see [`RateLimiter::sweep`]).
const SWEEP_EVERY: u32 = 4096;

/// Keys beyond which a limiter's periodic sweep runs in the background (within a runtime).
const BACKGROUND_SWEEP: usize = 4 * SWEEP_EVERY as usize;

/// `per_minute` sustained with bursts of `burst` (0: `per_minute`); `None` for a rate of 0.
/// The form of the HTTP guard's limits on failed authentications and audit records.
pub(crate) fn per_minute_quota(per_minute: u32, burst: u32) -> Option<Quota> {
    let per_minute = NonZeroU32::new(per_minute)?;
    Some(Quota::per_minute(per_minute).allow_burst(NonZeroU32::new(burst).unwrap_or(per_minute)))
}

/// The last time something happened, which threads claim in turn: milliseconds since the
/// moment was made, plus one (0: never).
pub(crate) struct Moment {
    born: Instant,
    at_ms: AtomicU64,
}

impl Moment {
    pub(crate) fn new() -> Self {
        Self {
            born: Instant::now(),
            at_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// It happens now.
    pub(crate) fn mark(&self) {
        self.at_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Whether the caller may make it happen now: it never did, or not within `every`.
    /// One caller of those racing wins, and marks it.
    pub(crate) fn claim(&self, every: Duration) -> bool {
        let last = self.at_ms.load(Ordering::Relaxed);
        let now = self.now_ms();
        (last == 0 || now.saturating_sub(last) >= every.as_millis() as u64)
            && self
                .at_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// When a keyed store is swept of its idle keys: after [`SWEEP_EVERY`] decisions, or after a
/// quarter as many as the keys the last sweep left if that is more. A pass over `n` keys then
/// comes after at least `n / 4` decisions, each of which adds at most one key: at most five
/// keys visited per decision, however many are tracked.
pub(crate) struct SweepPace {
    since: AtomicU32,
    after: AtomicU32,
}

impl SweepPace {
    pub(crate) const fn new() -> Self {
        Self {
            since: AtomicU32::new(0),
            after: AtomicU32::new(SWEEP_EVERY),
        }
    }

    /// Counts one decision: whether a sweep is due (the count then starts again).
    pub(crate) fn due(&self) -> bool {
        let due = self.since.fetch_add(1, Ordering::Relaxed) >= self.after.load(Ordering::Relaxed);
        if due {
            self.since.store(0, Ordering::Relaxed);
        }
        due
    }

    /// A sweep left `keys` keys.
    pub(crate) fn swept(&self, keys: usize) {
        self.since.store(0, Ordering::Relaxed);
        let quarter = u32::try_from(keys / 4).unwrap_or(u32::MAX).min(1 << 30);
        self.after
            .store(quarter.max(SWEEP_EVERY), Ordering::Relaxed);
    }

    /// Whether the last sweep left more than [`BACKGROUND_SWEEP`] keys.
    fn large(&self) -> bool {
        self.after.load(Ordering::Relaxed) as usize > BACKGROUND_SWEEP / 4
    }
}

/// A newcomer that finds a limiter full sweeps it only if no sweep ran for this long (one
/// newcomer does; the others are refused with this as their retry hint): a pass over up to
/// `max_tracked` keys is never paid by every newcomer, however fast callers churn.
pub(crate) const FULL_RETRY: Duration = Duration::from_secs(1);

/// governor's keyed state store, shared so that the limiter can ask whether it knows a key.
struct Shared<K: Hash + Eq + Clone>(Arc<DefaultKeyedStateStore<K>>);

impl<K: Hash + Eq + Clone> StateStore for Shared<K> {
    type Key = K;
    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for Shared<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        self.0.retain_recent(drop_below)
    }
    fn shrink_to_fit(&self) {
        self.0.shrink_to_fit()
    }
    fn len(&self) -> usize {
        ShrinkableKeyedStateStore::len(&*self.0)
    }
    fn is_empty(&self) -> bool {
        ShrinkableKeyedStateStore::is_empty(&*self.0)
    }
}

/// An in-memory GCRA limiter (`governor`), keyed by caller. Memory stays bounded: keys idle
/// long enough to be indistinguishable from fresh ones are evicted as decisions go by (a large
/// limiter's sweeps run on Tokio's blocking pool within a runtime), and once `max_tracked` callers are tracked a new
/// caller is refused ([`RateDecision::Full`], fail closed) until eviction makes room: a
/// newcomer that finds it full sweeps if no sweep ran for a second (one newcomer; the others
/// are refused meanwhile).
pub struct RateLimiter(Arc<Core>);

/// A limiter's state, shared with a sweep running in the background.
struct Core {
    limiter: governor::RateLimiter<Arc<str>, Shared<Arc<str>>, DefaultClock, NoOpMiddleware>,
    store: Arc<DefaultKeyedStateStore<Arc<str>>>,
    clock: DefaultClock,
    /// When the limiter was made, as near as can be read (its own start is private).
    start: <DefaultClock as Clock>::Instant,
    pace: SweepPace,
    /// Whether a periodic sweep is under way (one at a time).
    sweeping: AtomicBool,
    /// When the last sweep started.
    swept: Moment,
    max_tracked: usize,
    quota: GcraQuota,
    /// The thread of the last sweep.
    #[cfg(test)]
    swept_on: std::sync::Mutex<Option<std::thread::ThreadId>>,
}

impl RateLimiter {
    /// A limiter for `rate`; `None` for [`Rate::Unlimited`], and for a rate that cannot be
    /// enforced (see [`GcraQuota::try_from_rate`]; refused by `#[tool]` and by `build()`).
    pub fn new(rate: Rate) -> Option<Self> {
        Self::with_quota(GcraQuota::from_rate(rate)?, DEFAULT_MAX_TRACKED)
    }

    /// A limiter for `quota`, tracking at most `max_tracked` callers.
    pub fn with_quota(quota: GcraQuota, max_tracked: usize) -> Option<Self> {
        let burst = NonZeroU32::new(quota.burst)?;
        let governor_quota = Quota::with_period(quota.emission)?.allow_burst(burst);
        let store: Arc<DefaultKeyedStateStore<Arc<str>>> = Arc::default();
        let clock = DefaultClock::default();
        let limiter =
            governor::RateLimiter::new(governor_quota, Shared(store.clone()), clock.clone());
        // The limiter's times count from when it was made; read just after it, this start
        // is at most a few nanoseconds later, so that a wait measured from it
        // ([`RateLimiter::wait`]) is never shorter than the limiter's own.
        let start = clock.now();
        Some(Self(Arc::new(Core {
            limiter,
            start,
            store,
            clock,
            pace: SweepPace::new(),
            sweeping: AtomicBool::new(false),
            swept: Moment::new(),
            max_tracked: max_tracked.max(1),
            quota,
            #[cfg(test)]
            swept_on: std::sync::Mutex::new(None),
        })))
    }

    /// The quota this limiter enforces.
    pub fn quota(&self) -> GcraQuota {
        self.0.quota
    }

    /// Gives back what is left of the cell a [`check`](Self::check) of `key` took `ago`:
    /// the call was refused after it. The key's state moves back by the interval less
    /// `ago` (no further than to being idle), so a call refused at once is as if it had not
    /// come, and one refused after a wait as long as the interval gives nothing back.
    pub(crate) fn refund(&self, key: &Arc<str>, ago: Duration) {
        let core = &*self.0;
        let left = core.quota.emission.saturating_sub(ago);
        // A key swept since its check (idle again) has nothing to give back.
        if left.is_zero() || !core.store.contains_key(key) {
            return;
        }
        let left = Nanos::from(left);
        let _ = core.store.measure_and_replace(key, |tat| {
            tat.map(|tat| ((), tat.saturating_sub(left))).ok_or(())
        });
    }

    /// How long until `key` has a cell free, without taking one (zero if it has one now):
    /// the wait [`check`](Self::check) would give, or a few nanoseconds more.
    pub(crate) fn wait(&self, key: &Arc<str>) -> Duration {
        let core = &*self.0;
        if !core.store.contains_key(key) {
            // A newcomer waits for room if the limiter is full.
            return if core.full() {
                FULL_RETRY
            } else {
                Duration::ZERO
            };
        }
        // Read, never replaced: the closure refuses to write.
        let Err(Some(tat)) = core.store.measure_and_replace(key, Err::<((), Nanos), _>) else {
            return Duration::ZERO;
        };
        // governor admits a call at `t0` when `t0 >= tat - interval * (burst - 1)`.
        let tolerance =
            Nanos::from(core.quota.emission) * u64::from(core.quota.burst.saturating_sub(1));
        let now = core.clock.now().duration_since(core.start);
        Duration::from(tat.saturating_sub(tolerance).saturating_sub(now))
    }

    /// Takes one cell for `key`, or says how long until one is free.
    pub fn check(&self, key: &Arc<str>) -> RateDecision {
        let core = &*self.0;
        if core.pace.due() {
            self.sweep_soon();
        }
        // A newcomer is admitted only while there is room (a few racing newcomers may
        // overshoot by as many as race).
        if !core.store.contains_key(key) && core.full() {
            // Make room before refusing, if no sweep ran for a `FULL_RETRY` (one newcomer
            // sweeps; the others are refused meanwhile).
            if !core.swept.claim(FULL_RETRY) {
                return RateDecision::Full;
            }
            core.sweep();
            if core.full() {
                return RateDecision::Full;
            }
        }
        match core.limiter.check_key(key) {
            Ok(()) => RateDecision::Allow,
            Err(not_until) => RateDecision::Deny(not_until.wait_time_from(core.clock.now())),
        }
    }

    /// The periodic sweep, one at a time. A large limiter's (one whose last sweep left more
    /// than [`BACKGROUND_SWEEP`] keys) runs on Tokio's blocking pool when the decision is made
    /// within a runtime, so that neither that call nor, on a current-thread runtime, every
    /// other call waits for a pass over the keys (3.5 ms at a million). A small limiter's
    /// pass (tens of µs) runs here, as does every sweep outside a runtime.
    fn sweep_soon(&self) {
        let core = &self.0;
        if !core.pace.large() {
            core.sweep();
            return;
        }
        if core.sweeping.swap(true, Ordering::Acquire) {
            return;
        }
        // Clears the flag however the sweep ends: done, panicked, or dropped unrun by a
        // runtime shutting down.
        struct Sweeping(Arc<Core>);
        impl Drop for Sweeping {
            fn drop(&mut self) {
                self.0.sweeping.store(false, Ordering::Release);
            }
        }
        let job = Sweeping(self.0.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || job.0.sweep())),
            Err(_) => job.0.sweep(),
        }
    }

    /// Evicts idle keys now, on this thread.
    ///
    /// Decisions also sweep as they go: after 4096 of them, or after a quarter as many as the
    /// keys the last sweep left if that is more (at most five keys visited per decision,
    /// however many callers are tracked). Those sweeps run in the decision that starts them,
    /// or, within a runtime, on Tokio's blocking pool for a limiter whose last sweep left more
    /// than 16 384 keys. An idle key stays tracked until the next sweep, within the
    /// `max_tracked` bound.
    pub fn sweep(&self) {
        self.0.sweep();
    }

    /// How many callers the limiter currently tracks.
    pub fn tracked_keys(&self) -> usize {
        self.0.tracked_keys()
    }
}

impl Core {
    fn sweep(&self) {
        #[cfg(test)]
        if let Ok(mut on) = self.swept_on.lock() {
            *on = Some(std::thread::current().id());
        }
        self.swept.mark();
        self.limiter.retain_recent();
        let len = self.tracked_keys();
        if len < self.max_tracked / 2 {
            self.limiter.shrink_to_fit();
        }
        self.pace.swept(len);
    }

    fn tracked_keys(&self) -> usize {
        ShrinkableKeyedStateStore::len(&*self.store)
    }

    /// Whether a caller not tracked yet finds no room ([`RateDecision::Full`]).
    fn full(&self) -> bool {
        self.tracked_keys() >= self.max_tracked
    }
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("quota", &self.0.quota)
            .field("tracked_keys", &self.tracked_keys())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Period;

    #[test]
    fn burst_then_refusal_with_a_wait_hint_per_key() {
        let l = RateLimiter::new(Rate::Limited {
            count: 60,
            period: Period::Minute,
            burst: Some(3),
        })
        .expect("limited");
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        for _ in 0..3 {
            assert_eq!(l.check(&a), RateDecision::Allow);
        }
        match l.check(&a) {
            RateDecision::Deny(d) => assert!(
                d > Duration::from_millis(900) && d <= Duration::from_secs(1),
                "{d:?}"
            ),
            other => panic!("fourth call within the burst window must be refused: {other:?}"),
        }
        assert_eq!(l.check(&b), RateDecision::Allow, "keys are independent");
        assert!(RateLimiter::new(Rate::Unlimited).is_none());
    }

    #[test]
    fn a_full_limiter_refuses_newcomers_but_serves_known_callers() {
        let quota = GcraQuota::from_rate(Rate::per_hour(10)).expect("quota");
        let l = RateLimiter::with_quota(quota, 3).expect("limited");
        let keys: Vec<Arc<str>> = (0..4).map(|i| Arc::from(format!("k{i}"))).collect();
        for k in &keys[..3] {
            assert_eq!(l.check(k), RateDecision::Allow);
        }
        l.sweep();
        assert_eq!(
            l.check(&keys[3]),
            RateDecision::Full,
            "a fourth caller does not fit"
        );
        assert_eq!(
            l.check(&keys[0]),
            RateDecision::Allow,
            "known callers go on"
        );
        assert_eq!(l.tracked_keys(), 3);
    }

    #[test]
    fn a_full_limiter_makes_room_once_its_callers_are_idle() {
        // One call per 100 ms: a caller is idle again 100 ms after its call.
        let quota = GcraQuota::from_rate(Rate::per_second(10).with_burst(1)).expect("quota");
        let l = RateLimiter::with_quota(quota, 2).expect("limited");
        let [a, b, c, d]: [Arc<str>; 4] = ["a", "b", "c", "d"].map(Arc::from);
        assert_eq!(l.check(&a), RateDecision::Allow);
        assert_eq!(l.check(&b), RateDecision::Allow);
        assert_eq!(
            l.check(&c),
            RateDecision::Full,
            "the sweep frees nothing yet"
        );
        std::thread::sleep(Duration::from_millis(200));
        // a and b are idle now, but the limiter swept less than FULL_RETRY ago.
        assert_eq!(l.check(&c), RateDecision::Full);
        std::thread::sleep(FULL_RETRY);
        // Long after, with few decisions between (not the periodic sweep's 4096): a newcomer
        // sweeps again and gets in, and so does the next (room was made for both).
        assert_eq!(l.check(&c), RateDecision::Allow);
        assert_eq!(l.check(&d), RateDecision::Allow);
        assert_eq!(l.tracked_keys(), 2);
        // Full again, its callers soon idle: a sweep that made room does not let the next
        // newcomer sweep at once either (under churn every newcomer would pay a pass).
        std::thread::sleep(Duration::from_millis(200));
        let e: Arc<str> = Arc::from("e");
        assert_eq!(l.check(&e), RateDecision::Full);
        std::thread::sleep(FULL_RETRY);
        assert_eq!(l.check(&e), RateDecision::Allow);
    }

    #[test]
    fn a_large_limiter_sweeps_after_a_quarter_of_its_keys_in_decisions() {
        let quota = GcraQuota::from_rate(Rate::per_minute(50)).expect("quota");
        let l = RateLimiter::with_quota(quota, 100_000).expect("limited");
        let keys: Vec<Arc<str>> = (0..40_000).map(|i| Arc::from(format!("k{i}"))).collect();
        for k in &keys {
            assert_eq!(l.check(k), RateDecision::Allow);
        }
        l.sweep();
        assert_eq!(l.tracked_keys(), 40_000, "nobody is idle yet");
        let swept = || l.0.pace.since.load(Ordering::Relaxed);
        // 9 999 decisions later (more than SWEEP_EVERY), no sweep: the counter runs on.
        for k in &keys[..9_999] {
            l.check(k);
        }
        assert_eq!(
            swept(),
            9_999,
            "no pass over 40 000 keys after 4096 decisions"
        );
        l.check(&keys[0]);
        assert_eq!(swept(), 10_000);
        l.check(&keys[0]);
        assert_eq!(
            swept(),
            0,
            "the 10 001st decision swept (after a quarter of 40 000)"
        );
        // A small limiter still sweeps every SWEEP_EVERY decisions.
        let small = RateLimiter::with_quota(quota, 100).expect("limited");
        let k: Arc<str> = Arc::from("k");
        for _ in 0..=SWEEP_EVERY {
            small.check(&k);
        }
        assert_eq!(small.0.pace.since.load(Ordering::Relaxed), 0, "swept");
    }

    #[test]
    fn within_a_runtime_a_large_limiters_sweep_runs_on_the_blocking_pool() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let quota = GcraQuota::from_rate(Rate::per_hour(60)).expect("quota");
        let l = RateLimiter::with_quota(quota, 100_000).expect("limited");
        let keys: Vec<Arc<str>> = (0..20_000).map(|i| Arc::from(format!("k{i}"))).collect();
        let here = std::thread::current().id();
        let swept_on = || *l.0.swept_on.lock().expect("lock");
        let _inside = runtime.enter();
        // A small limiter sweeps in the decision, even within a runtime.
        for k in keys.iter().cycle().take(SWEEP_EVERY as usize + 1) {
            l.check(k);
        }
        assert_eq!(swept_on(), Some(here), "a small limiter's pass is cheap");
        for k in &keys {
            l.check(k);
        }
        l.sweep();
        assert_eq!(
            l.0.pace.after.load(Ordering::Relaxed),
            5_000,
            "20 000 tracked"
        );
        *l.0.swept_on.lock().expect("lock") = None;
        for k in keys.iter().take(5_001) {
            l.check(k);
        }
        runtime.block_on(async {
            for _ in 0..500 {
                if swept_on().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let on = swept_on();
        assert!(
            on.is_some_and(|t| t != here),
            "swept on another thread: {on:?}"
        );
        assert!(!l.0.sweeping.load(Ordering::Relaxed), "the flag is cleared");
        drop(_inside);
        // Outside a runtime, the decision sweeps itself.
        for k in keys.iter().take(5_001) {
            l.check(k);
        }
        assert_eq!(swept_on(), Some(here));
    }

    #[test]
    fn idle_callers_are_evicted() {
        // One call per millisecond: a caller is idle again a millisecond after its call.
        let quota = GcraQuota::from_rate(Rate::per_second(1000).with_burst(1)).expect("quota");
        let l = RateLimiter::with_quota(quota, 100).expect("limited");
        for i in 0..100 {
            assert_eq!(l.check(&Arc::from(format!("k{i}"))), RateDecision::Allow);
        }
        std::thread::sleep(Duration::from_millis(5));
        l.sweep();
        assert_eq!(l.tracked_keys(), 0, "every caller is idle again");
        assert_eq!(l.check(&Arc::from("late")), RateDecision::Allow);
    }
}
