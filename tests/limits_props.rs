//! Rate limits by properties (proptest), in memory and in a real Redis: for any arrival
//! sequence, every decision agrees with the GCRA model (so the calls accepted in any window
//! never exceed the quota plus the burst, and a caller under its quota is never refused).
//!
//! Composed, a call's limits (two tools' own, and one both share) are one decision, all or
//! nothing: every decision agrees with a model in which a call is admitted exactly when each
//! of its limits has a cell, and a refused call takes none (so a caller under all its quotas
//! is never refused, whichever limit refused it before).
//!
//! Arrivals happen in real time (the limiters read real clocks), with quotas of tens of
//! milliseconds so a case takes a fraction of a second; a decision within a couple of
//! milliseconds of a boundary may go either way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_harden::limits::{
    GcraQuota, RateDecision, RateLimitStore, RateLimiter, RedisStore, StoreDecision, StoreLimit,
};
use mcp_harden::prelude::*;
use mcp_harden::spec::Rate;
use proptest::prelude::*;
use rmcp::model::CallToolRequestParams;

mod common;
use common::{connect, Redis};

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
    // The window property, directly.
    within_windows(quota, decisions)?;
    Ok(())
}

/// The window property: in any window of arrivals, the calls admitted are at most the burst
/// plus one per emission interval the window spans.
fn within_windows(quota: GcraQuota, decisions: &[Decision]) -> Result<(), TestCaseError> {
    let e = quota.emission;
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

/// One arrival of a composed case: when, whether admitted, and which of the two own limits
/// it met (besides the shared one).
type Composed = (Duration, bool, usize);

/// Checks composed decisions against GCRA over `quotas` (`[own 0, own 1, shared]`): a call
/// meets its own limit and the shared one, and takes a cell of both or of neither.
fn check_composed(quotas: [GcraQuota; 3], decisions: &[Composed]) -> Result<(), TestCaseError> {
    let mut tat = [Duration::ZERO; 3];
    let allow_at = |tat: &[Duration; 3], l: usize| {
        tat[l].saturating_sub(quotas[l].emission * (quotas[l].burst - 1))
    };
    for (i, &(at, admitted, own)) in decisions.iter().enumerate() {
        let meets = [own, 2];
        if admitted {
            for l in meets {
                let allow = allow_at(&tat, l);
                prop_assert!(
                    allow <= at + SLACK,
                    "call {i} at {at:?} admitted although limit {l} was spent until {allow:?} ({decisions:?})"
                );
            }
            for l in meets {
                tat[l] = tat[l].max(at) + quotas[l].emission;
            }
        } else {
            let latest = meets
                .iter()
                .map(|&l| allow_at(&tat, l))
                .max()
                .unwrap_or_default();
            prop_assert!(
                latest + SLACK > at,
                "call {i} at {at:?} refused although its limits had cells since {latest:?} ({decisions:?})"
            );
        }
    }
    // Per limit, the calls it admitted never exceed its quota plus its burst in any window.
    for (l, q) in quotas.iter().enumerate() {
        let mine: Vec<Decision> = decisions
            .iter()
            .filter(|d| l == 2 || d.2 == l)
            .map(|d| (d.0, d.1))
            .collect();
        within_windows(*q, &mine)?;
    }
    Ok(())
}

/// A rate per minute (1 000 to 3 000: 20 to 60 ms a call) with a burst of 1 to 3.
fn rate_strategy() -> impl Strategy<Value = Rate> {
    (1000u32..=3000, 1u32..=3).prop_map(|(n, burst)| Rate::per_minute(n).with_burst(burst))
}

/// Arrivals of a composed case: the gap before each, and which own limit it meets.
fn composed_strategy() -> impl Strategy<Value = Vec<(u64, usize)>> {
    prop::collection::vec(
        (prop_oneof![3 => 0u64..=5, 2 => 5u64..=50], 0usize..=1),
        1..=16,
    )
}

/// Runs composed arrivals against `decide(own)`, sleeping the gaps in real time.
async fn run_composed<F, Fut>(arrivals: &[(u64, usize)], mut decide: F) -> Vec<Composed>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    let mut out = Vec::with_capacity(arrivals.len());
    for (i, &(gap, own)) in arrivals.iter().enumerate() {
        if i > 0 && gap > 0 {
            tokio::time::sleep(Duration::from_millis(gap)).await;
        }
        // Timestamp between the call's start and its answer: the limiter decided then.
        let before = start.elapsed();
        let admitted = decide(own).await;
        let after = start.elapsed();
        out.push((before + (after - before) / 2, admitted, own));
    }
    out
}

struct App;

/// One of two tools a caller alternates between (their limits are set on the builder).
#[tool(scopes = "props", rate = "unlimited")]
async fn left() -> String {
    "left".to_owned()
}

/// The other.
#[tool(scopes = "props", rate = "unlimited")]
async fn right() -> String {
    "right".to_owned()
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
    let arrivals: Vec<(u64, usize)> = gaps.iter().map(|&g| (g, 0)).collect();
    let decisions = run_composed(&arrivals, |_| decide()).await;
    decisions.into_iter().map(|(at, ok, _)| (at, ok)).collect()
}

/// Runs `test` over `cases` values of `strategy` (no failures persisted), panicking with
/// the smallest failing case.
fn run_cases<S: Strategy>(
    cases: u32,
    strategy: &S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    if let Err(e) = runner.run(strategy, test) {
        panic!("{e}");
    }
}

/// A `redis-server` of the test's own, a runtime, and a store on that server made in it;
/// None without `redis-server` (see [`Redis::start`]).
fn redis_store() -> Option<(Redis, tokio::runtime::Runtime, RedisStore)> {
    let redis = Redis::start()?;
    let rt = runtime();
    let store = {
        let _entered = rt.enter();
        redis.store()
    };
    Some((redis, rt, store))
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

/// Through a server, in memory: each tool's global rate is a caller's own limit (one caller),
/// and the caller's total across tools is the shared one.
#[test]
fn composed_limits_are_all_or_nothing_in_memory() {
    let rt = runtime();
    let strategy = (
        rate_strategy(),
        rate_strategy(),
        rate_strategy(),
        composed_strategy(),
    );
    run_cases(16, &strategy, |(r0, r1, shared, arrivals)| {
        let quotas = [r0, r1, shared].map(|r| GcraQuota::from_rate(r).expect("a quota"));
        let server = Hardened::builder(App)
            .local_principal(Principal::local("carol", ["props"]))
            .tool::<left>()
            .tool::<right>()
            .global_rate::<left>(r0)
            .global_rate::<right>(r1)
            .principal_rate(shared)
            .build()
            .expect("builds");
        let decisions = rt.block_on(async {
            let client = connect(server).await;
            let decisions = run_composed(&arrivals, |own| {
                let client = &client;
                async move {
                    let tool = ["left", "right"][own];
                    let r = client
                        .call_tool(CallToolRequestParams::new(tool))
                        .await
                        .expect("answers");
                    r.is_error == Some(false)
                }
            })
            .await;
            let _ = client.cancel().await;
            decisions
        });
        check_composed(quotas, &decisions)
    });
}

/// In Redis: one script over the caller's own key and the shared one.
#[test]
fn composed_limits_are_all_or_nothing_in_redis() {
    let Some((_redis, rt, store)) = redis_store() else {
        return;
    };
    let case = std::sync::atomic::AtomicU32::new(0);
    let strategy = (
        quota_strategy(),
        quota_strategy(),
        quota_strategy(),
        composed_strategy(),
    );
    run_cases(16, &strategy, |(q0, q1, shared, arrivals)| {
        let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let keys = [0, 1, 2].map(|l| format!("composed:{n}:{l}"));
        let quotas = [q0, q1, shared];
        let decisions = rt.block_on(run_composed(&arrivals, |own| {
            let limits = [
                StoreLimit {
                    key: &keys[own],
                    quota: quotas[own],
                },
                StoreLimit {
                    key: &keys[2],
                    quota: quotas[2],
                },
            ];
            let store = &store;
            async move { matches!(store.check(&limits).await, Ok(StoreDecision::Allow)) }
        }));
        check_composed(quotas, &decisions)
    });
}

#[test]
fn redis_decisions_follow_gcra() {
    let Some((_redis, rt, store)) = redis_store() else {
        return;
    };
    let case = std::sync::atomic::AtomicU32::new(0);
    let strategy = (quota_strategy(), gaps_strategy());
    run_cases(16, &strategy, |(quota, gaps)| {
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
}
