//! Rate limits by properties (proptest), in memory and in a real Redis: for any arrival
//! sequence, every decision agrees with the GCRA model (so the calls accepted in any window
//! never exceed the quota plus the burst, and a caller under its quota is never refused).
//!
//! Arrivals happen in real time (the limiters read real clocks), with quotas of tens of
//! milliseconds so a case takes a fraction of a second; a decision within a couple of
//! milliseconds of a boundary may go either way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_harden::limits::{
    GcraQuota, RateDecision, RateLimitStore, RateLimiter, RedisStore, StoreDecision, StoreLimit,
};
use proptest::prelude::*;

mod common;
use common::Redis;

/// Decisions this close to a GCRA boundary are not judged (clock reads, scheduling).
const SLACK: Duration = Duration::from_millis(4);

/// One arrival: when it came (since the first) and whether it was admitted.
type Decision = (Duration, bool);

/// Checks a sequence of decisions against GCRA with `quota`, tracking the model's state from
/// the actual decisions.
fn check_against_model(quota: GcraQuota, decisions: &[Decision]) -> Result<(), TestCaseError> {
    let e = quota.emission;
    let tolerance = e * (quota.burst - 1);
    let mut tat = Duration::ZERO;
    for (i, &(at, admitted)) in decisions.iter().enumerate() {
        // The earliest time this call could be admitted: TAT - (burst - 1) * emission.
        let allow_at = tat.saturating_sub(tolerance);
        if admitted {
            prop_assert!(
                allow_at <= at + SLACK,
                "call {i} at {at:?} admitted although the caller was over quota until {allow_at:?} ({decisions:?})"
            );
            tat = tat.max(at) + e;
        } else {
            prop_assert!(
                allow_at + SLACK > at,
                "call {i} at {at:?} refused although the caller was under quota since {allow_at:?} ({decisions:?})"
            );
        }
    }
    // The window property, directly: in any window of arrivals, admitted calls are at most
    // the burst plus one per emission interval the window spans.
    for i in 0..decisions.len() {
        for j in i..decisions.len() {
            let span = decisions[j].0 - decisions[i].0 + SLACK;
            let admitted = decisions[i..=j].iter().filter(|d| d.1).count() as u128;
            let bound = u128::from(quota.burst) + span.as_nanos() / e.as_nanos();
            prop_assert!(
                admitted <= bound,
                "{admitted} admitted in a window of {span:?} ({decisions:?})"
            );
        }
    }
    Ok(())
}

fn quota_strategy() -> impl Strategy<Value = GcraQuota> {
    (20u64..=60, 1u32..=4).prop_map(|(ms, burst)| GcraQuota {
        emission: Duration::from_millis(ms),
        burst,
    })
}

fn gaps_strategy() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(prop_oneof![3 => 0u64..=5, 2 => 5u64..=60], 1..=14)
}

/// Runs the arrivals against `decide`, sleeping the gaps in real time.
async fn run<F, Fut>(gaps: &[u64], mut decide: F) -> Vec<Decision>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    let mut out = Vec::with_capacity(gaps.len());
    for (i, gap) in gaps.iter().enumerate() {
        if i > 0 && *gap > 0 {
            tokio::time::sleep(Duration::from_millis(*gap)).await;
        }
        // Timestamp between the call's start and its answer: the limiter decided then.
        let before = start.elapsed();
        let admitted = decide().await;
        let after = start.elapsed();
        out.push((before + (after - before) / 2, admitted));
    }
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn in_memory_decisions_follow_gcra(quota in quota_strategy(), gaps in gaps_strategy()) {
        let limiter = RateLimiter::with_quota(quota, 1000).expect("limiter");
        let key: Arc<str> = Arc::from("caller");
        let other: Arc<str> = Arc::from("other");
        let decisions = runtime().block_on(run(&gaps, || {
            let d = limiter.check(&key);
            // Another caller's traffic never changes this caller's decisions.
            let _ = limiter.check(&other);
            std::future::ready(d == RateDecision::Allow)
        }));
        check_against_model(quota, &decisions)?;
    }
}

#[test]
fn redis_decisions_follow_gcra() {
    let Some(redis) = Redis::start() else { return };
    let rt = runtime();
    let _entered = rt.enter();
    let store = RedisStore::new(&redis.url()).expect("store");
    let case = std::sync::atomic::AtomicU32::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&(quota_strategy(), gaps_strategy()), |(quota, gaps)| {
        // A fresh key per case: state never leaks between cases.
        let key = format!(
            "props:{}",
            case.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let decisions = rt.block_on(run(&gaps, || {
            let store = &store;
            let key = key.as_str();
            async move {
                let limits = [StoreLimit { key, quota }];
                matches!(store.check(&limits).await, Ok(StoreDecision::Allow))
            }
        }));
        check_against_model(quota, &decisions)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
