//! Rate limits across replicas: the Redis store against real `redis-server` processes.
//!
//! Each test starts its own `redis-server` on a free loopback port (`.ci/run` installs it).
//! Without the binary the tests say so and pass, unless `MCP_HARDEN_REQUIRE_REDIS` is set
//! (as in CI), where a missing Redis fails them.

use std::time::{Duration, Instant};

use mcp_harden::limits::{
    FailMode, GcraQuota, RateLimitStore, RedisStore, StoreDecision, StoreLimit,
};
use mcp_harden::prelude::*;
use mcp_harden::spec::Rate;
use mcp_harden::HardenedBuilder;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{RoleClient, RunningService};
use serde_json::Value;

mod common;
use common::{connect, Redis};

struct App;

/// Count something, at most four times a minute per caller.
#[tool(scopes = "count", rate = "4/min")]
async fn count(_ctx: Ctx<App>) -> String {
    "counted".to_owned()
}

/// Count something else, with every kind of rate limit on it (see `fully_limited`).
#[tool(scopes = "count", rate = "100/min")]
async fn tally(_ctx: Ctx<App>) -> String {
    "tallied".to_owned()
}

/// Calls of `hold` that run, and what releases them.
static HELD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static RELEASE: std::sync::LazyLock<tokio::sync::Notify> =
    std::sync::LazyLock::new(tokio::sync::Notify::new);

/// Hold until released, one call at a time (see `busy_refusals_give_their_cells_back`).
#[tool(scopes = "count", rate = "unlimited", max_concurrency = 1)]
async fn hold() -> String {
    HELD.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    RELEASE.notified().await;
    "released".to_owned()
}

/// `tally` per caller, across tools per caller, and across callers, all in `store`.
fn fully_limited(store: RedisStore, fail: FailMode) -> Hardened<App> {
    builder("redis-e2e-full", store, fail)
        .tool::<tally>()
        .global_rate::<tally>(Rate::per_minute(1000))
        .principal_rate(Rate::per_minute(1000))
        .build()
        .expect("builds")
}

/// A server named `name` whose caller is alice, its limits in `store`.
fn builder(name: &str, store: RedisStore, fail: FailMode) -> HardenedBuilder<App> {
    Hardened::builder(App)
        .server_info(name, "1")
        .local_principal(Principal::local("alice", ["count"]))
        .rate_limit_store(store, fail)
}

fn server(store: RedisStore, fail: FailMode) -> Hardened<App> {
    builder("redis-e2e", store, fail)
        .tool::<count>()
        .build()
        .expect("builds")
}

async fn call(c: &rmcp::Peer<RoleClient>, tool: &'static str) -> CallToolResult {
    c.call_tool(CallToolRequestParams::new(tool))
        .await
        .expect("the call answers")
}

fn error_code(r: &CallToolResult) -> Option<String> {
    let v: &Value = r.structured_content.as_ref()?;
    v["error"]["code"].as_str().map(str::to_owned)
}

/// One decision over one limit: `key`'s.
async fn one(
    store: &RedisStore,
    key: &str,
    quota: GcraQuota,
) -> Result<StoreDecision, mcp_harden::limits::StoreError> {
    store.check(&[StoreLimit { key, quota }]).await
}

#[tokio::test]
async fn one_gcra_decision_per_call_with_an_exact_wait() {
    let Some(redis) = Redis::start() else { return };
    let store = redis.store();
    let quota = GcraQuota {
        emission: Duration::from_secs(1),
        burst: 3,
    };
    for i in 0..3 {
        assert_eq!(
            one(&store, "k", quota).await.expect("decides"),
            StoreDecision::Allow,
            "call {i} is within the burst"
        );
    }
    match one(&store, "k", quota).await.expect("decides") {
        StoreDecision::Deny { wait, .. } => assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        ),
        other => panic!("the fourth call is over the burst: {other:?}"),
    }
    assert_eq!(
        one(&store, "other", quota).await.expect("decides"),
        StoreDecision::Allow,
        "keys are independent"
    );
}

/// A call's limits are one decision in Redis, all or nothing: a refusal by one takes no
/// cell of the others, names the first refusing, and waits for the longest; the cells of a
/// call refused afterwards come back.
#[tokio::test]
async fn a_calls_limits_are_decided_together() {
    let Some(redis) = Redis::start() else { return };
    let store = redis.store();
    let minute = GcraQuota {
        emission: Duration::from_secs(60),
        burst: 2,
    };
    let hour = GcraQuota {
        emission: Duration::from_secs(3600),
        burst: 1,
    };
    let mine = StoreLimit {
        key: "mine",
        quota: minute,
    };
    let shared = StoreLimit {
        key: "shared",
        quota: hour,
    };
    let both = [mine, shared];
    assert_eq!(store.check(&both).await.ok(), Some(StoreDecision::Allow));
    let tat = |key: &str| -> u64 { redis.query(&["GET", key]) };
    let mine_after_one = tat("mine");
    for _ in 0..5 {
        match store.check(&both).await.expect("decides") {
            StoreDecision::Deny { limit, wait } => {
                assert_eq!(limit, 1, "the shared limit refused");
                assert!(wait > Duration::from_secs(3590), "{wait:?}");
            }
            other => panic!("the shared limit is spent: {other:?}"),
        }
    }
    assert_eq!(tat("mine"), mine_after_one, "no cell of mine taken");
    // Mine alone: its second cell, then spent; given back at once, exactly as before.
    assert_eq!(store.check(&[mine]).await.ok(), Some(StoreDecision::Allow));
    assert!(matches!(
        store.check(&[mine]).await,
        Ok(StoreDecision::Deny { limit: 0, .. })
    ));
    store
        .refund(&[mine], Duration::ZERO)
        .await
        .expect("gives back");
    assert_eq!(tat("mine"), mine_after_one, "one interval given back");
    assert_eq!(store.check(&[mine]).await.ok(), Some(StoreDecision::Allow));
    // Given back 20 s after it was taken: 40 s of the minute.
    store
        .refund(&[mine], Duration::from_secs(20))
        .await
        .expect("gives back");
    assert_eq!(tat("mine"), mine_after_one + 20_000_000);
    // Given back a minute or more after: nothing (time repaid it).
    store
        .refund(&[mine], Duration::from_secs(60))
        .await
        .expect("gives back");
    assert_eq!(tat("mine"), mine_after_one + 20_000_000);
    // Both spent: named by the first, the wait the longest (the hour's, not the minute's).
    match store.check(&both).await.expect("decides") {
        StoreDecision::Deny { limit, wait } => {
            assert_eq!(limit, 0);
            assert!(wait > Duration::from_secs(3590), "{wait:?}");
        }
        other => panic!("{other:?}"),
    }
    // A key given back to before now is deleted: an idle caller costs nothing.
    store
        .refund(&[shared], Duration::ZERO)
        .await
        .expect("gives back");
    assert_eq!(redis.query::<u64>(&["EXISTS", "shared"]), 0);
}

/// Starts a call of `hold` in the background, and returns once it runs.
async fn start_hold(c: &RunningService<RoleClient, ()>) -> tokio::task::JoinHandle<CallToolResult> {
    let held = || HELD.load(std::sync::atomic::Ordering::SeqCst);
    let before = held();
    let peer = c.peer().clone();
    let running = tokio::spawn(async move { call(&peer, "hold").await });
    common::eventually("hold runs", Duration::from_secs(10), || held() > before).await;
    running
}

/// Through the pipeline with Redis: calls refused as busy give back the cells their rate
/// limits took in Redis, the caller's total and the tool's global rate alike.
#[tokio::test]
async fn busy_refusals_give_their_cells_back() {
    let Some(redis) = Redis::start() else { return };
    let server = builder("redis-e2e-busy", redis.store(), FailMode::Closed)
        .tool::<hold>()
        .principal_rate(Rate::per_minute(2))
        .global_rate::<hold>(Rate::per_minute(2))
        .build()
        .expect("builds");
    let c = connect(server).await;
    let first = start_hold(&c).await;
    for _ in 0..3 {
        let r = call(&c, "hold").await;
        assert_eq!(error_code(&r).as_deref(), Some("UNAVAILABLE"), "{r:?}");
    }
    RELEASE.notify_one();
    assert_eq!(first.await.expect("joins").is_error, Some(false));
    // One cell of each spent by the call that ran: the next runs, the one after is refused,
    // named by the caller's total (the first of the two without a cell).
    let second = start_hold(&c).await;
    RELEASE.notify_one();
    assert_eq!(second.await.expect("joins").is_error, Some(false));
    let r = call(&c, "hold").await;
    assert_eq!(error_code(&r).as_deref(), Some("RATE_LIMITED"), "{r:?}");
    assert_eq!(
        common::error_of(&r)["message"],
        "rate limit exceeded across tools for this caller"
    );
}

#[tokio::test]
async fn two_replicas_share_one_callers_quota() {
    let Some(redis) = Redis::start() else { return };
    let a = connect(server(redis.store(), FailMode::Closed)).await;
    let b = connect(server(redis.store(), FailMode::Closed)).await;
    for c in [&a, &b, &a, &b] {
        let r = call(c, "count").await;
        assert_eq!(r.is_error, Some(false), "{r:?}");
    }
    for c in [&a, &b] {
        let r = call(c, "count").await;
        assert_eq!(error_code(&r).as_deref(), Some("RATE_LIMITED"), "{r:?}");
        let retry = r
            .structured_content
            .as_ref()
            .and_then(|v| v["error"]["retry_after_ms"].as_u64());
        assert!(retry.is_some_and(|ms| ms > 0 && ms <= 15_000), "{r:?}");
    }
}

#[tokio::test]
async fn redis_going_away_fails_closed_by_default_and_open_on_request() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let closed = server(redis.store(), FailMode::Closed);
    let open = server(redis.store(), FailMode::Open);
    let (c, o) = (connect(closed.clone()).await, connect(open.clone()).await);
    assert_eq!(call(&c, "count").await.is_error, Some(false));
    assert_eq!(call(&o, "count").await.is_error, Some(false));

    redis.stop();
    let r = call(&c, "count").await;
    assert_eq!(error_code(&r).as_deref(), Some("UNAVAILABLE"), "{r:?}");
    assert_eq!(
        r.structured_content
            .as_ref()
            .map(|v| v["error"]["retryable"].clone()),
        Some(Value::Bool(true))
    );
    assert!(closed.rate_store_errors() >= 1);
    for _ in 0..6 {
        // Over the 4/min quota, yet admitted: the store cannot say no.
        let r = call(&o, "count").await;
        assert_eq!(r.is_error, Some(false), "fail open admits: {r:?}");
    }
    assert!(open.rate_store_errors() >= 6, "every failure is counted");

    // Redis comes back on the same port: decisions resume (state was lost with it).
    let _redis = Redis::on(redis.port).expect("restarts");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = call(&c, "count").await;
        if r.is_error == Some(false) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "decisions resume after Redis returns: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A hung Redis (connections open, nothing answers) costs a decision one timeout, however it
/// hangs: before the first connection (a connect, its retry and the backoff between them
/// took 650 ms against a 250 ms timeout) or after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_costs_a_decision_one_timeout() {
    let Some(redis) = Redis::start() else { return };
    let quota = GcraQuota {
        emission: Duration::from_millis(10),
        burst: 1000,
    };
    let timed = |store: RedisStore| async move {
        let started = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(20), one(&store, "k", quota))
            .await
            .expect("a decision ends");
        (started.elapsed(), r)
    };
    let before_first_use = redis.store();
    let connected = redis.store();
    assert_eq!(
        one(&connected, "k", quota).await.expect("decides"),
        StoreDecision::Allow
    );
    redis.pause();
    for store in [&before_first_use, &connected] {
        for _ in 0..3 {
            let (took, r) = timed(store.clone()).await;
            assert!(r.is_err(), "a hung Redis decides nothing: {r:?}");
            // 250 ms, with room for a loaded machine: the whole, not each attempt.
            assert!(took < Duration::from_millis(500), "{took:?}");
        }
    }
    redis.resume();
    let deadline = Instant::now() + Duration::from_secs(10);
    for store in [&before_first_use, &connected] {
        while !matches!(timed(store.clone()).await.1, Ok(StoreDecision::Allow)) {
            assert!(Instant::now() < deadline, "decisions resume after SIGCONT");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A call's limits are one question to the store, so a failed store is asked once per call
/// and each call counts one decision the store did not make, in every fail mode: failing
/// open, the call goes on without its limits; failing closed, it is refused; deciding
/// locally, its limits are decided in memory.
#[tokio::test]
async fn a_call_asks_a_failed_store_once() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let open = fully_limited(redis.store(), FailMode::Open);
    let closed = fully_limited(redis.store(), FailMode::Closed);
    let local = fully_limited(redis.store(), FailMode::Local);
    let (o, c) = (connect(open.clone()).await, connect(closed.clone()).await);
    let l = connect(local.clone()).await;
    let tally = || CallToolRequestParams::new("tally");
    for client in [&o, &c, &l] {
        let r = client.call_tool(tally()).await.expect("answers");
        assert_eq!(r.is_error, Some(false), "{r:?}");
    }
    redis.stop();
    for n in 1..=3 {
        let r = o.call_tool(tally()).await.expect("answers");
        assert_eq!(r.is_error, Some(false), "fail open admits: {r:?}");
        assert_eq!(
            open.rate_store_errors(),
            n,
            "one failure per call, not three"
        );
        let r = c.call_tool(tally()).await.expect("answers");
        assert_eq!(error_code(&r).as_deref(), Some("UNAVAILABLE"), "{r:?}");
        assert_eq!(closed.rate_store_errors(), n);
        let r = l.call_tool(tally()).await.expect("answers");
        assert_eq!(r.is_error, Some(false), "decided locally: {r:?}");
        assert_eq!(
            local.rate_store_errors(),
            n,
            "its three limits, one decision, in memory"
        );
    }
}

/// Deciding locally while Redis is down: the caller's quota holds in this process (its burst
/// anew: the in-memory limiter starts empty), and once Redis answers again (after the
/// store's rest) decisions are Redis's again.
#[tokio::test]
async fn redis_going_away_decides_locally_on_request() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let local = server(redis.store(), FailMode::Local);
    let c = connect(local.clone()).await;
    for _ in 0..4 {
        assert_eq!(call(&c, "count").await.is_error, Some(false));
    }
    let r = call(&c, "count").await;
    assert_eq!(
        error_code(&r).as_deref(),
        Some("RATE_LIMITED"),
        "in Redis: {r:?}"
    );
    assert_eq!(local.rate_store_errors(), 0);

    redis.stop();
    for _ in 0..4 {
        let r = call(&c, "count").await;
        assert_eq!(r.is_error, Some(false), "within the quota in memory: {r:?}");
    }
    let r = call(&c, "count").await;
    assert_eq!(
        error_code(&r).as_deref(),
        Some("RATE_LIMITED"),
        "over it: {r:?}"
    );
    let retry = r
        .structured_content
        .as_ref()
        .and_then(|v| v["error"]["retry_after_ms"].as_u64());
    assert!(retry.is_some_and(|ms| ms > 0 && ms <= 15_000), "{r:?}");
    assert_eq!(
        local.rate_store_errors(),
        5,
        "each decision made locally is counted"
    );

    // Redis returns empty: alice's quota there is whole, and it decides again.
    let _redis = Redis::on(redis.port).expect("restarts");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = local.rate_store_errors();
        let r = call(&c, "count").await;
        if local.rate_store_errors() == before {
            assert_eq!(r.is_error, Some(false), "a fresh quota in Redis: {r:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "decisions go back to Redis: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deciding locally, the tool's global rate holds in memory too, and the refusals are
/// counted by reason in the metrics.
#[tokio::test]
async fn deciding_locally_keeps_the_global_rate() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let metrics_addr = common::serve_metrics();
    let local = builder("redis-e2e-global", redis.store(), FailMode::Local)
        .tool::<count>()
        .global_rate::<count>(Rate::per_minute(2))
        .build()
        .expect("builds");
    let c = connect(local.clone()).await;
    let overall = |r: &CallToolResult| {
        r.structured_content
            .as_ref()
            .and_then(|v| v["error"]["message"].as_str())
            .is_some_and(|m| m.contains("overall"))
    };
    for _ in 0..2 {
        assert_eq!(call(&c, "count").await.is_error, Some(false));
    }
    let r = call(&c, "count").await;
    assert!(overall(&r), "the global rate, in Redis: {r:?}");
    redis.stop();
    for _ in 0..2 {
        let r = call(&c, "count").await;
        assert_eq!(r.is_error, Some(false), "in memory: {r:?}");
    }
    let r = call(&c, "count").await;
    assert_eq!(error_code(&r).as_deref(), Some("RATE_LIMITED"), "{r:?}");
    assert!(overall(&r), "the global rate, in memory: {r:?}");
    // Three failed decisions (one per call) rest the store; still the global rate, in
    // memory.
    let r = call(&c, "count").await;
    assert!(
        overall(&r),
        "the global rate, in memory, the store resting: {r:?}"
    );

    let page = common::scrape(metrics_addr).await;
    for reason in ["failed", "resting"] {
        assert!(
            page.lines()
                .any(|l| l.starts_with("mcp_harden_rate_store_unavailable_total")
                    && l.contains("fail=\"local\"")
                    && l.contains(&format!("reason=\"{reason}\""))),
            "{page}"
        );
    }
}

/// Outside a Tokio runtime the store cannot start its connection: an error, not a panic.
#[test]
fn a_store_made_outside_a_runtime_is_an_error() {
    let e = RedisStore::new("redis://127.0.0.1:6379").expect_err("no runtime");
    assert!(e.to_string().contains("Tokio runtime"), "{e}");
}

/// Calls of each command `redis` has run (`INFO commandstats`).
fn command_calls(redis: &Redis) -> std::collections::BTreeMap<String, u64> {
    let info: String = redis.query(&["INFO", "commandstats"]);
    info.lines()
        .filter_map(|l| {
            let (name, stats) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// Through the pipeline, a call with three rate limits (the caller's for the tool, its total
/// and the tool's global rate) is one command in Redis: one script run, one round trip.
#[tokio::test]
async fn a_call_with_three_limits_is_one_redis_command() {
    let Some(redis) = Redis::start() else { return };
    let server = fully_limited(redis.store(), FailMode::Closed);
    let c = connect(server).await;
    let tally = || c.call_tool(CallToolRequestParams::new("tally"));
    // The first call loads the script (a miss, then the load).
    assert_eq!(tally().await.expect("answers").is_error, Some(false));
    let before = command_calls(&redis);
    const CALLS: u64 = 20;
    for _ in 0..CALLS {
        assert_eq!(tally().await.expect("answers").is_error, Some(false));
    }
    let after = command_calls(&redis);
    let ran: std::collections::BTreeMap<&str, u64> = after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .map(|(name, n)| (name.as_str(), n - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    // `commandstats` also counts the commands a script runs: per call, the script reads
    // Redis's clock once and reads and writes each of the three keys once. Anything else
    // sent (a second round trip) would show as a count beyond these.
    assert_eq!(
        ran,
        [
            ("evalsha", CALLS),
            ("time", CALLS),
            ("get", 3 * CALLS),
            ("set", 3 * CALLS)
        ]
        .into_iter()
        .collect(),
        "one script run per call, nothing else"
    );
}

/// Intervals are whole microseconds in Redis, rounded up (stricter, never looser): at
/// 300 000 a second (3.33 µs a call) a caller's theoretical arrival time moves 4 µs a call.
#[tokio::test]
async fn fractional_intervals_round_up() {
    let Some(redis) = Redis::start() else { return };
    let store = redis.store();
    let quota = GcraQuota::from_rate(Rate::per_second(300_000)).expect("quota");
    // A burst large enough to admit a caller whose arrival time is far ahead of now.
    let quota = GcraQuota {
        burst: 500_000_000,
        ..quota
    };
    let (seconds, micros): (u64, u64) = redis.query(&["TIME"]);
    let now = seconds * 1_000_000 + micros;
    let ahead = (now + 1_000_000_000).to_string();
    redis.query::<()>(&["SET", "k", &ahead]);
    assert_eq!(
        one(&store, "k", quota).await.expect("decides"),
        StoreDecision::Allow
    );
    let after: u64 = redis.query(&["GET", "k"]);
    assert_eq!(after - (now + 1_000_000_000), 4);
}
