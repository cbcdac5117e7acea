use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::spec::Rate;

/// The outcome of one rate decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// The call may proceed.
    Allow,
    /// The call is refused; the caller may retry after this long.
    Deny(Duration),
}

/// A GCRA limiter for one tool, keyed by caller. Keys idle long enough to be
/// indistinguishable from a fresh one are evicted as the key set grows.
pub struct RateLimiter {
    limiter: DefaultKeyedRateLimiter<Arc<str>>,
    clock: DefaultClock,
    since_sweep: AtomicU32,
}

/// Decisions between two sweeps of idle keys.
const SWEEP_EVERY: u32 = 4096;

impl RateLimiter {
    /// A limiter for `rate`; `None` for [`Rate::Unlimited`], and for a rate of zero or of more
    /// than one call per microsecond (both refused by `#[tool]` and by `build()`).
    pub fn new(rate: Rate) -> Option<Self> {
        let Rate::Limited {
            count,
            period,
            burst,
        } = rate
        else {
            return None;
        };
        let count = NonZeroU32::new(count)?;
        let burst = burst.and_then(NonZeroU32::new).unwrap_or(count);
        let per_call = period.as_duration() / count.get();
        // Finer than a microsecond cannot be enforced meaningfully; `build()` refuses it.
        if per_call < Duration::from_micros(1) {
            return None;
        }
        let quota = Quota::with_period(per_call)?.allow_burst(burst);
        Some(Self {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            since_sweep: AtomicU32::new(0),
        })
    }

    /// Takes one cell for `key`, or says how long until one is free.
    pub fn check(&self, key: &Arc<str>) -> RateDecision {
        if self.since_sweep.fetch_add(1, Ordering::Relaxed) >= SWEEP_EVERY {
            self.since_sweep.store(0, Ordering::Relaxed);
            self.limiter.retain_recent();
        }
        match self.limiter.check_key(key) {
            Ok(()) => RateDecision::Allow,
            Err(not_until) => RateDecision::Deny(not_until.wait_time_from(self.clock.now())),
        }
    }

    /// How many callers the limiter currently tracks.
    pub fn tracked_keys(&self) -> usize {
        self.limiter.len()
    }
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
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
            RateDecision::Allow => panic!("fourth call within the burst window must be refused"),
        }
        assert_eq!(l.check(&b), RateDecision::Allow, "keys are independent");
        assert!(RateLimiter::new(Rate::Unlimited).is_none());
    }
}
