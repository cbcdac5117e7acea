//! End-to-end tests of the limits as a client sees them: tier-scaled, global and per-principal
//! rates over Streamable HTTP with real JWTs; the exact retry hint, concurrency limits,
//! timeouts and client cancellation over an in-process duplex stream; and the memory bound of
//! the in-memory rate limiter under a million distinct callers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{eventually, params};
use mcp_harden::auth::JwtAuthenticator;
use mcp_harden::limits::{GcraQuota, RateDecision, RateLimiter};
use mcp_harden::prelude::*;
use mcp_harden::server::http::HttpConfig;
use mcp_harden::spec::{Concurrency, Rate};
use mcp_harden::{BuildError, HardenedBuilder};
use rmcp::model::{CallToolRequest, CallToolResult, ClientRequest};
use rmcp::service::{PeerRequestOptions, RequestHandle, RoleClient, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------
// The application: holding tools count their runs and wait to be released, so a test knows
// when a call provably runs (and holds its concurrency slot) and that a refused call ran
// nothing.

#[derive(Default)]
struct App {
    entered: AtomicUsize,
    /// Runs whose work was dropped unfinished (a [`Drops`] went with it).
    dropped: AtomicUsize,
    /// Runs that went on to their end.
    finished: AtomicUsize,
    release: Notify,
}

/// Counts its drop: held by a tool's run, it says that run's work was dropped.
struct Drops<'a>(&'a AtomicUsize);

impl Drop for Drops<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl App {
    fn entered(&self) -> usize {
        self.entered.load(Ordering::SeqCst)
    }

    /// Counts the run, then waits until the test releases it.
    async fn hold(&self) -> String {
        self.entered.fetch_add(1, Ordering::SeqCst);
        self.release.notified().await;
        "released".to_owned()
    }
}

/// Answer with the caller's subject.
#[tool(scopes = "limits:call", rate = "2/min")]
async fn tiered(ctx: Ctx<App>) -> String {
    ctx.principal().subject().to_owned()
}

/// Answer with the caller's subject; generous per caller.
#[tool(scopes = "limits:call", rate = "100/min")]
async fn shared(ctx: Ctx<App>) -> String {
    ctx.principal().subject().to_owned()
}

/// Answer with the caller's subject (first of a pair).
#[tool(scopes = "limits:call", rate = "100/min")]
async fn alpha(ctx: Ctx<App>) -> String {
    ctx.principal().subject().to_owned()
}

/// Answer with the caller's subject (second of a pair).
#[tool(scopes = "limits:call", rate = "100/min")]
async fn beta(ctx: Ctx<App>) -> String {
    ctx.principal().subject().to_owned()
}

/// Answer at once, one call per second.
#[tool(scopes = "limits:call", rate = "60/min", burst = 1)]
async fn paced() -> String {
    "paced".to_owned()
}

/// Hold until released; one at a time, the next refused.
#[tool(scopes = "limits:call", rate = "unlimited", max_concurrency = 1)]
async fn exclusive(ctx: Ctx<App>) -> String {
    ctx.hold().await
}

/// Hold until released; one at a time, the next waiting up to 5 s.
#[tool(
    scopes = "limits:call",
    rate = "unlimited",
    max_concurrency = 1,
    queue_timeout = "5s"
)]
async fn queued(ctx: Ctx<App>) -> String {
    ctx.hold().await
}

/// Hold until released; one at a time, the next waiting up to 100 ms.
#[tool(
    scopes = "limits:call",
    rate = "unlimited",
    max_concurrency = 1,
    queue_timeout = "100ms"
)]
async fn impatient(ctx: Ctx<App>) -> String {
    ctx.hold().await
}

/// Hold until released, without a declared concurrency limit.
#[tool(scopes = "limits:call", rate = "unlimited")]
async fn unbounded(ctx: Ctx<App>) -> String {
    ctx.hold().await
}

/// Sleep beyond the timeout, then count the run finished; one at a time.
#[tool(
    scopes = "limits:call",
    rate = "unlimited",
    max_concurrency = 1,
    timeout = "200ms"
)]
async fn stuck(ctx: Ctx<App>) -> String {
    ctx.entered.fetch_add(1, Ordering::SeqCst);
    let work = Drops(&ctx.dropped);
    tokio::time::sleep(Duration::from_millis(600)).await;
    std::mem::forget(work);
    ctx.finished.fetch_add(1, Ordering::SeqCst);
    "woke".to_owned()
}

/// Hold until released; one at a time, the next waiting up to 5 s; six calls a minute per
/// caller, in bursts of two.
#[tool(
    scopes = "limits:call",
    rate = "6/min",
    burst = 2,
    max_concurrency = 1,
    queue_timeout = "5s"
)]
async fn rationed(ctx: Ctx<App>) -> String {
    ctx.hold().await
}

/// Sleep for an hour when asked to, one at a time.
#[tool(scopes = "limits:call", rate = "unlimited", max_concurrency = 1)]
async fn blocker(ctx: Ctx<App>, forever: bool) -> String {
    ctx.entered.fetch_add(1, Ordering::SeqCst);
    if forever {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    "done".to_owned()
}

/// Needs a scope the local principal lacks.
#[tool(scopes = "limits:admin", rate = "unlimited")]
async fn guarded() -> String {
    "guarded".to_owned()
}

/// Never registered with any server.
#[tool(scopes = "limits:call", rate = "unlimited")]
async fn orphan() -> String {
    "orphan".to_owned()
}

const SCOPE: &str = "limits:call";

fn builder(app: &Arc<App>) -> HardenedBuilder<App> {
    Hardened::builder(app.clone()).local_principal(Principal::local("tester", [SCOPE]))
}

// ---------------------------------------------------------------------------------------
// Results.

async fn call(c: &rmcp::Peer<RoleClient>, tool: &'static str) -> CallToolResult {
    call_with(c, tool, json!({})).await
}

async fn call_with(c: &rmcp::Peer<RoleClient>, tool: &'static str, args: Value) -> CallToolResult {
    tokio::time::timeout(Duration::from_secs(30), c.call_tool(params(tool, args)))
        .await
        .unwrap_or_else(|_| panic!("a call of {tool} answers within 30 s"))
        .unwrap_or_else(|e| panic!("a call of {tool} returns a result: {e}"))
}

/// The text of a successful result.
fn ok_text(r: &CallToolResult) -> String {
    assert_eq!(r.is_error, Some(false), "expected a success: {r:?}");
    r.content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .expect("text content")
}

/// The `error` object of a refused call, after checking its code.
fn refusal(r: &CallToolResult, code: &str) -> Value {
    let error = common::error_of(r);
    assert_eq!(error["code"], code, "{error}");
    error
}

/// A retryable refusal with code `code` and its `retry_after_ms`, which must be present.
fn retryable(r: &CallToolResult, code: &str) -> u64 {
    let e = refusal(r, code);
    assert_eq!(e["retryable"], true, "{e}");
    let ms = e["retry_after_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("a retry hint: {e}"));
    assert!(ms > 0, "{e}");
    ms
}

/// Calls `tool` until the first refusal (at most `max` calls): the number of successes, the
/// refusal's retry hint (a `RATE_LIMITED` refusal is required) and the time taken.
async fn successes_until_limited(
    c: &rmcp::Peer<RoleClient>,
    tool: &'static str,
    max: usize,
) -> (usize, u64, Duration) {
    let started = Instant::now();
    for n in 0..=max {
        let r = call(c, tool).await;
        if r.is_error == Some(true) {
            return (n, retryable(&r, "RATE_LIMITED"), started.elapsed());
        }
        ok_text(&r);
    }
    panic!("{max} calls of {tool} were never limited")
}

/// Sends a call of `tool` whose handle can cancel it (`notifications/cancelled`).
async fn send_cancellable(
    c: &RunningService<RoleClient, ()>,
    tool: &'static str,
    args: Value,
) -> RequestHandle<RoleClient> {
    c.peer()
        .send_cancellable_request(
            ClientRequest::CallToolRequest(CallToolRequest::new(params(tool, args))),
            PeerRequestOptions::no_options(),
        )
        .await
        .expect("the request is sent")
}

async fn join(h: JoinHandle<CallToolResult>) -> CallToolResult {
    tokio::time::timeout(Duration::from_secs(30), h)
        .await
        .expect("the background call answers within 30 s")
        .expect("the background call does not panic")
}

// ---------------------------------------------------------------------------------------
// Servers and clients.

/// Serves `server` over an in-process duplex stream; every caller is the local principal.
async fn connect(server: &Hardened<App>) -> RunningService<RoleClient, ()> {
    common::connect(server.clone()).await
}

/// Starts a call of `tool` in the background and returns once it provably runs (holding its
/// concurrency slot, if any).
async fn start_holding(
    c: &RunningService<RoleClient, ()>,
    app: &Arc<App>,
    tool: &'static str,
) -> JoinHandle<CallToolResult> {
    let before = app.entered();
    let peer = c.peer().clone();
    let h = tokio::spawn(async move { call(&peer, tool).await });
    eventually(&format!("{tool} runs"), Duration::from_secs(10), || {
        app.entered() > before
    })
    .await;
    h
}

const SECRET: &[u8] = b"an HS256 secret for the limits tests, 32+ bytes";

/// An HTTP server on loopback port 0 that reads tiers from the `tier` claim; its resource URL.
async fn serve_http(server: &Hardened<App>) -> String {
    let jwt = JwtAuthenticator::builder()
        .hs256(SECRET)
        .tier_claim("tier")
        .build()
        .expect("valid JWT configuration");
    let config = HttpConfig::new("127.0.0.1:0".parse().expect("address")).authenticator(jwt);
    let http = server.bind_http(config).await.expect("binds");
    let resource = http.resource_url().to_owned();
    tokio::spawn(http.serve_until(std::future::pending::<()>()));
    resource
}

/// An HS256 JWT for `resource`, with a `tier` claim when given.
fn token(resource: &str, sub: &str, tier: Option<&str>) -> String {
    let mut t = mcp_harden::auth::DevToken::new(sub, resource).scopes([SCOPE]);
    if let Some(tier) = tier {
        t = t.tier(tier);
    }
    t.sign_hs256(SECRET).expect("the token signs")
}

/// The rmcp Streamable HTTP client, authenticated as `sub` (with `tier`).
async fn http_client(
    resource: &str,
    sub: &str,
    tier: Option<&str>,
) -> RunningService<RoleClient, ()> {
    let t = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(resource)
            .auth_header(token(resource, sub, tier)),
    );
    ().serve(t).await.expect("the rmcp client connects")
}

// ---------------------------------------------------------------------------------------
// Rates over HTTP.

#[tokio::test]
async fn tiers_scale_the_per_caller_rate() {
    common::capture_logs("mcp_harden=info");
    let app = Arc::new(App::default());
    let server = builder(&app)
        .tool::<tiered>()
        .tier("enterprise", 10.0)
        .build()
        .expect("builds");
    let resource = serve_http(&server).await;

    // No tier claim: the declared 2/min, burst 2. The next cell is 30 s away at most.
    let free = http_client(&resource, "free-user", None).await;
    let (n, hint, _) = successes_until_limited(&free, "tiered", 40).await;
    assert_eq!(n, 2, "a caller without a tier gets the declared burst");
    assert!(hint <= 30_000, "one cell of 2/min is 30 s: {hint}");

    // Enterprise: ten times the rate and the burst, i.e. 20 at once, then one cell every 3 s;
    // a slow run may earn back one cell per 3 s it takes, no more.
    let big = http_client(&resource, "big-corp", Some("enterprise")).await;
    let (n, hint, took) = successes_until_limited(&big, "tiered", 60).await;
    let earned = (took.as_millis() / 3000) as usize;
    assert!(
        (20..=20 + earned).contains(&n),
        "an enterprise caller gets a burst of 20: {n} successes in {took:?}"
    );
    assert!(hint <= 3_000, "one enterprise cell is 3 s: {hint}");

    // A tier the server does not know gets the declared rate, not a bigger one.
    let gold = http_client(&resource, "gold-user", Some("gold")).await;
    let (n, hint, _) = successes_until_limited(&gold, "tiered", 40).await;
    assert_eq!(n, 2, "an unknown tier gets the declared burst");
    assert!(hint <= 30_000, "{hint}");
    // And the operator is told, once (not once per call).
    let logs = common::logs();
    let warned = logs
        .lines()
        .filter(|l| l.contains("tier is not configured"))
        .collect::<Vec<_>>();
    assert_eq!(warned.len(), 1, "{logs}");
    assert!(warned[0].contains("gold"), "{}", warned[0]);

    // The limited callers stay limited; each caller has a budget of its own.
    retryable(&call(&free, "tiered").await, "RATE_LIMITED");
    let newcomer = http_client(&resource, "newcomer", None).await;
    assert_eq!(ok_text(&call(&newcomer, "tiered").await), "newcomer");
}

#[tokio::test]
async fn a_global_rate_is_shared_by_all_callers() {
    let app = Arc::new(App::default());
    let server = builder(&app)
        .tool::<shared>()
        .global_rate::<shared>(Rate::per_minute(3))
        .build()
        .expect("builds");
    let resource = serve_http(&server).await;
    let alice = http_client(&resource, "alice", None).await;
    let bob = http_client(&resource, "bob", None).await;

    assert_eq!(ok_text(&call(&alice, "shared").await), "alice");
    assert_eq!(ok_text(&call(&alice, "shared").await), "alice");
    assert_eq!(ok_text(&call(&bob, "shared").await), "bob");
    // Three calls of 3/min spent the tool's budget: whoever calls next waits (20 s a cell).
    for c in [&alice, &bob, &http_client(&resource, "carol", None).await] {
        let hint = retryable(&call(c, "shared").await, "RATE_LIMITED");
        assert!(hint <= 20_000, "one cell of 3/min is 20 s: {hint}");
    }
}

#[tokio::test]
async fn a_principal_rate_counts_calls_across_tools() {
    let app = Arc::new(App::default());
    let server = builder(&app)
        .tool::<alpha>()
        .tool::<beta>()
        .principal_rate(Rate::per_minute(3))
        .build()
        .expect("builds");
    let resource = serve_http(&server).await;
    let alice = http_client(&resource, "alice", None).await;

    ok_text(&call(&alice, "alpha").await);
    ok_text(&call(&alice, "alpha").await);
    ok_text(&call(&alice, "beta").await);
    for tool in ["alpha", "beta"] {
        let hint = retryable(&call(&alice, tool).await, "RATE_LIMITED");
        assert!(hint <= 20_000, "one cell of 3/min is 20 s: {hint}");
    }

    let bob = http_client(&resource, "bob", None).await;
    assert_eq!(ok_text(&call(&bob, "alpha").await), "bob");
    assert_eq!(ok_text(&call(&bob, "beta").await), "bob");
}

/// A caller held to 1/min by the principal rate cannot drain the tool's global budget with
/// refused calls: its total, asked before the global rate, refuses them first. (That cells
/// a later limit's refusal leaves are given back: `busy_refusals_spend_no_rate` and the unit
/// test `a_refused_call_costs_no_limit_a_cell`.)
#[tokio::test]
async fn a_refused_call_spends_no_other_limit() {
    let app = Arc::new(App::default());
    let server = builder(&app)
        .tool::<shared>()
        .global_rate::<shared>(Rate::per_minute(3))
        .principal_rate(Rate::per_minute(1))
        .build()
        .expect("builds");
    let resource = serve_http(&server).await;
    let mallory = http_client(&resource, "mallory", None).await;
    ok_text(&call(&mallory, "shared").await);
    for _ in 0..3 {
        retryable(&call(&mallory, "shared").await, "RATE_LIMITED");
    }
    // One call of the tool ran: two of the three global cells are left.
    let bob = http_client(&resource, "bob", None).await;
    assert_eq!(ok_text(&call(&bob, "shared").await), "bob");
}

// ---------------------------------------------------------------------------------------
// The retry hint.

#[tokio::test]
async fn retrying_after_the_hint_succeeds() {
    let app = Arc::new(App::default());
    let server = builder(&app).tool::<paced>().build().expect("builds");
    let c = connect(&server).await;

    let mut started = Instant::now();
    ok_text(&call(&c, "paced").await);
    for round in 0..3 {
        // One cell per second, burst 1: the hint is what is left of the second since the
        // last admitted call, which happened at most `elapsed` ago.
        let hint = retryable(&call(&c, "paced").await, "RATE_LIMITED");
        let elapsed = started.elapsed().as_millis() as u64;
        assert!(hint <= 1000, "round {round}: {hint} ms");
        assert!(
            hint + elapsed + 1 >= 1000,
            "round {round}: a hint of {hint} ms, {elapsed} ms after the admitted call"
        );
        tokio::time::sleep(Duration::from_millis(hint + 3)).await;
        started = Instant::now();
        ok_text(&call(&c, "paced").await);
    }
}

// ---------------------------------------------------------------------------------------
// Concurrency.

/// With `tool` held by one call, the next is refused at once; after the release it is
/// admitted again.
async fn rejects_a_second_call(server: &Hardened<App>, app: &Arc<App>, tool: &'static str) {
    let c = connect(server).await;
    let first = start_holding(&c, app, tool).await;
    assert_eq!(server.running(tool), 1);
    let runs = app.entered();

    let hint = retryable(&call(&c, tool).await, "UNAVAILABLE");
    assert!(hint <= 60_000, "{hint}");
    assert_eq!(app.entered(), runs, "the refused call never ran");
    assert_eq!(server.running(tool), 1);

    app.release.notify_one();
    assert_eq!(ok_text(&join(first).await), "released");
    assert_eq!(server.running(tool), 0, "the answered call freed its slot");

    let again = start_holding(&c, app, tool).await;
    assert_eq!(server.running(tool), 1);
    app.release.notify_one();
    assert_eq!(ok_text(&join(again).await), "released");
    assert_eq!(server.running(tool), 0);
}

/// A call refused as busy never ran: it gives back the cells its rate limits took, the
/// caller's own as well as the tool's global rate, which every caller shares. (A retry at
/// the busy hint would otherwise spend the caller's quota on calls that never ran.)
#[tokio::test]
async fn busy_refusals_spend_no_rate() {
    let app = Arc::new(App::default());
    let server = builder(&app)
        .tool::<exclusive>()
        .global_rate::<exclusive>(Rate::per_minute(2))
        .principal_rate(Rate::per_minute(2))
        .build()
        .expect("builds");
    let c = connect(&server).await;
    let first = start_holding(&c, &app, "exclusive").await;
    for _ in 0..3 {
        retryable(&call(&c, "exclusive").await, "UNAVAILABLE");
    }
    app.release.notify_one();
    ok_text(&join(first).await);
    // One call of a 2/min tool ran: the next runs, and the one after is rate limited.
    let second = start_holding(&c, &app, "exclusive").await;
    app.release.notify_one();
    ok_text(&join(second).await);
    // Both spent now: the refusal is named by the first, the caller's total.
    let e = refusal(&call(&c, "exclusive").await, "RATE_LIMITED");
    assert_eq!(
        e["message"],
        "rate limit exceeded across tools for this caller"
    );
}

#[tokio::test]
async fn max_concurrency_refuses_the_next_call_at_once() {
    let app = Arc::new(App::default());
    let server = builder(&app).tool::<exclusive>().build().expect("builds");
    rejects_a_second_call(&server, &app, "exclusive").await;
}

#[tokio::test]
async fn queue_timeout_waits_for_a_slot() {
    let app = Arc::new(App::default());
    let server = builder(&app)
        .tool::<queued>()
        .tool::<impatient>()
        .build()
        .expect("builds");
    let c = connect(&server).await;

    // Up to 5 s: the second call waits while the first holds the slot, then runs.
    let first = start_holding(&c, &app, "queued").await;
    let peer = c.peer().clone();
    let second = tokio::spawn(async move { call(&peer, "queued").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "the second call waits for the slot");
    assert_eq!(app.entered(), 1, "and does not run meanwhile");
    assert_eq!(server.running("queued"), 1);
    app.release.notify_one();
    assert_eq!(ok_text(&join(first).await), "released");
    eventually("the waiting call runs", Duration::from_secs(10), || {
        app.entered() == 2
    })
    .await;
    assert_eq!(server.running("queued"), 1);
    app.release.notify_one();
    assert_eq!(ok_text(&join(second).await), "released");
    assert_eq!(server.running("queued"), 0);

    // Up to 100 ms: with the slot held throughout, the wait ends in a refusal.
    let first = start_holding(&c, &app, "impatient").await;
    let asked = Instant::now();
    retryable(&call(&c, "impatient").await, "UNAVAILABLE");
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(100),
        "the call waited before being refused: {waited:?}"
    );
    // Bounded: refused once its wait is over, not when the slot frees (a generous bound,
    // for a loaded machine).
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(app.entered(), 3, "the refused call never ran");
    app.release.notify_one();
    assert_eq!(ok_text(&join(first).await), "released");
    assert_eq!(server.running("impatient"), 0);
}

#[tokio::test]
async fn the_builder_sets_and_checks_concurrency() {
    // Without a limit, two calls hold at once (and `running` reports nothing to count).
    let app = Arc::new(App::default());
    let server = builder(&app).tool::<unbounded>().build().expect("builds");
    let c = connect(&server).await;
    let one = start_holding(&c, &app, "unbounded").await;
    let two = start_holding(&c, &app, "unbounded").await;
    assert_eq!(server.running("unbounded"), 0);
    // Both wait on `release` (a holding call registers in the poll that counts it).
    app.release.notify_one();
    app.release.notify_one();
    ok_text(&join(one).await);
    ok_text(&join(two).await);

    // The builder's limit applies to a tool declared without one.
    let app = Arc::new(App::default());
    let server = builder(&app)
        .tool::<unbounded>()
        .concurrency::<unbounded>(Concurrency::reject_over(1))
        .build()
        .expect("builds");
    rejects_a_second_call(&server, &app, "unbounded").await;

    // Mistakes are build errors.
    let app = Arc::new(App::default());
    let err = |b: HardenedBuilder<App>| b.build().err();
    assert_eq!(
        err(builder(&app)
            .tool::<unbounded>()
            .concurrency::<orphan>(Concurrency::reject_over(1))),
        Some(BuildError::UnknownTool("orphan"))
    );
    assert_eq!(
        err(builder(&app)
            .tool::<unbounded>()
            .global_rate::<orphan>(Rate::per_minute(1))),
        Some(BuildError::UnknownTool("orphan"))
    );
    for b in [
        builder(&app)
            .tool::<unbounded>()
            .rejected_records_per_caller(0, 1),
        builder(&app)
            .tool::<unbounded>()
            .rejected_records_total(0, 0),
    ] {
        assert_eq!(err(b), Some(BuildError::InvalidRecordBudget));
    }
    for interval in [Duration::from_millis(999), Duration::from_secs(3601)] {
        assert_eq!(
            err(builder(&app)
                .tool::<unbounded>()
                .rejected_summary_interval(interval)),
            Some(BuildError::InvalidSummaryInterval(interval))
        );
    }
    assert_eq!(
        err(builder(&app)
            .tool::<unbounded>()
            .store_outage(mcp_harden::limits::StoreOutage::new(
                0,
                Duration::from_secs(1)
            ))),
        Some(BuildError::InvalidStoreOutage)
    );
    assert!(matches!(
        err(builder(&app)
            .tool::<unbounded>()
            .concurrency::<unbounded>(Concurrency::reject_over(0))),
        Some(BuildError::InvalidConcurrency { tool: "unbounded", reason, .. })
            if reason == "it must be at least 1"
    ));
    assert!(
        matches!(
            err(builder(&app)
                .tool::<exclusive>()
                .concurrency::<exclusive>(Concurrency::wait_up_to(0, Duration::from_secs(1)))),
            Some(BuildError::InvalidConcurrency { tool: "exclusive", reason, .. })
                if reason == "it must be at least 1"
        ),
        "an override of a declared limit is checked too"
    );
    // Queue waits as `#[tool]` allows them: more than zero, at most an hour.
    for wait in [Duration::ZERO, Duration::from_secs(3601), Duration::MAX] {
        assert!(
            matches!(
                err(builder(&app)
                    .tool::<unbounded>()
                    .concurrency::<unbounded>(Concurrency::wait_up_to(1, wait))),
                Some(BuildError::InvalidConcurrency { tool: "unbounded", reason, .. })
                    if reason.contains("queue wait")
            ),
            "{wait:?}"
        );
    }
    for factor in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert_eq!(
            err(builder(&app).tool::<tiered>().tier("x", factor)),
            Some(BuildError::InvalidTier("x".to_owned())),
            "factor {factor}"
        );
    }
}

/// A rate that cannot be enforced, as declared or once a tier scales it, is `InvalidRate`
/// naming the limit (and the tier) and saying why: never a panic or an overflow in
/// `build()`, and never a silent default.
#[test]
fn unusable_rates_are_build_errors_that_say_why() {
    let app = Arc::new(App::default());
    let build = |b: HardenedBuilder<App>| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.build().err()))
            .unwrap_or_else(|_| panic!("build() panicked"))
    };
    let invalid = |e: Option<BuildError>| match e {
        Some(BuildError::InvalidRate { limit, reason, .. }) => (limit, reason),
        other => panic!("expected InvalidRate: {other:?}"),
    };
    // `tiered` is 2/min: a factor of 1e9 makes it 33 million a second.
    let (limit, reason) = invalid(build(builder(&app).tool::<tiered>().tier("x", 1e9)));
    assert_eq!(limit, "the rate of tool `tiered` for tier `x`");
    assert!(reason.contains("one call per microsecond"), "{reason}");
    for factor in [1e-300, 1e-9] {
        let (limit, reason) = invalid(build(builder(&app).tool::<tiered>().tier("x", factor)));
        assert_eq!(limit, "the rate of tool `tiered` for tier `x`", "{factor}");
        assert!(!reason.contains("microsecond"), "{factor}: {reason}");
        assert!(
            reason.contains("use a larger multiplier"),
            "{factor}: {reason}"
        );
    }
    // 1/hour with a burst of 1000 scaled by 5 million: 0.72 ms a call, a burst of 5e9.
    let (limit, reason) = invalid(build(
        builder(&app)
            .tool::<tiered>()
            .principal_rate(Rate::per_hour(1).with_burst(1000))
            .tier("x", 5e6),
    ));
    assert_eq!(limit, "`principal_rate` for tier `x`");
    assert!(reason.contains("use a smaller multiplier"), "{reason}");
    let principal =
        |rate: Rate| invalid(build(builder(&app).tool::<tiered>().principal_rate(rate)));
    let (limit, reason) = principal(Rate::per_hour(1).with_burst(10_000_000));
    assert_eq!(limit, "`principal_rate`");
    assert!(reason.contains("ten years"), "{reason}");
    let (_, reason) = principal(Rate::per_minute(0));
    assert!(reason.contains("a rate of 0"), "{reason}");
    // A burst of 0 is refused, not read as "the count" (as `#[tool(burst = 0)]` is).
    let (_, reason) = principal(Rate::per_minute(3).with_burst(0));
    assert!(reason.contains("a burst of 0"), "{reason}");
    let (limit, reason) = invalid(build(
        builder(&app)
            .tool::<shared>()
            .global_rate::<shared>(Rate::per_second(1_000_001)),
    ));
    assert_eq!(limit, "the global rate of tool `shared`");
    assert!(reason.contains("one call per microsecond"), "{reason}");
    let e = build(
        builder(&app)
            .tool::<tiered>()
            .principal_rate(Rate::per_minute(0)),
    );
    assert_eq!(
        e.map(|e| e.to_string()).as_deref(),
        Some("`principal_rate` cannot be enforced: a rate of 0 admits no call (for no limit, use `unlimited`)")
    );
}

/// Setting a tier again replaces its factor (as every other builder setting is replaced).
#[tokio::test]
async fn a_tier_set_twice_keeps_the_last_factor() {
    let app = Arc::new(App::default());
    let server = builder(&app)
        .tool::<tiered>()
        .tier("gold", 10.0)
        .tier("gold", 2.0)
        .build()
        .expect("builds");
    let resource = serve_http(&server).await;
    let gold = http_client(&resource, "gilda", Some("gold")).await;
    // 2/min scaled by 2: a burst of 4, not 20.
    let (admitted, _, _) = successes_until_limited(&gold, "tiered", 30).await;
    assert_eq!(admitted, 4);
}

/// A limiter never tracks more callers than its bound: newcomers beyond it are `Full`.
#[test]
fn a_limiter_never_tracks_more_callers_than_its_bound() {
    let quota = GcraQuota::from_rate(Rate::per_hour(10)).expect("quota");
    let limiter = RateLimiter::with_quota(quota, 100).expect("limiter");
    let allowed = (0..5000)
        .filter(|i| limiter.check(&Arc::from(format!("k{i}"))) == RateDecision::Allow)
        .count();
    assert!(
        limiter.tracked_keys() <= 100,
        "{} tracked",
        limiter.tracked_keys()
    );
    assert_eq!(allowed, 100, "newcomers beyond the bound are refused");
}

#[tokio::test]
async fn a_timed_out_call_frees_its_slot() {
    let app = Arc::new(App::default());
    let server = builder(&app).tool::<stuck>().build().expect("builds");
    let c = connect(&server).await;

    let e = refusal(&call(&c, "stuck").await, "TIMEOUT");
    assert_eq!(e["retryable"], true, "{e}");
    assert_eq!(
        app.dropped.load(Ordering::SeqCst),
        1,
        "the timed-out work was dropped before the reply"
    );
    assert_eq!(
        server.running("stuck"),
        0,
        "the timed-out call freed its slot"
    );
    // The next call runs (and times out) instead of being refused as busy.
    refusal(&call(&c, "stuck").await, "TIMEOUT");
    assert_eq!(app.entered(), 2);
    assert_eq!(app.dropped.load(Ordering::SeqCst), 2);
    assert_eq!(server.running("stuck"), 0);
    // Past the end the work would have reached (600 ms after each start), neither run did:
    // the work was stopped, not left running unanswered.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        app.finished.load(Ordering::SeqCst),
        0,
        "no timed-out run finished"
    );
}

/// A call cancelled while it waits for a slot never starts its tool, and gives back the rate
/// cell it took: the next call is admitted where it would otherwise be refused.
#[tokio::test]
async fn a_call_cancelled_in_the_queue_never_runs_and_gives_its_cell_back() {
    let app = Arc::new(App::default());
    let audit = common::Collect::default();
    let server = builder(&app)
        .tool::<rationed>()
        .audit_sink(audit.clone())
        .build()
        .expect("builds");
    let c = connect(&server).await;

    // The first call runs and holds the slot: one of the burst's two cells.
    let first = start_holding(&c, &app, "rationed").await;
    // The second takes the other cell and waits for the slot.
    let queued = send_cancellable(&c, "rationed", json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Both cells are taken (so the queued call provably holds one): a third call is refused.
    retryable(&call(&c, "rationed").await, "RATE_LIMITED");

    queued
        .cancel(Some("the test gave up".to_owned()))
        .await
        .expect("the cancellation is sent");
    // The queued call ends, refused, once it has given its cell back.
    eventually(
        "the cancelled call is recorded",
        Duration::from_secs(10),
        || audit.records().len() == 2,
    )
    .await;
    let mut codes: Vec<_> = audit.records().iter().map(|r| r.error_code).collect();
    codes.sort();
    assert_eq!(codes, [Some("RATE_LIMITED"), Some("UNAVAILABLE")]);

    // Its cell is back: the next call is admitted (and waits for the slot).
    let peer = c.peer().clone();
    let next = tokio::spawn(async move { call(&peer, "rationed").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!next.is_finished(), "the next call waits for the slot");
    app.release.notify_one();
    assert_eq!(ok_text(&join(first).await), "released");
    eventually("the next call runs", Duration::from_secs(10), || {
        app.entered() == 2
    })
    .await;
    app.release.notify_one();
    assert_eq!(ok_text(&join(next).await), "released");
    assert_eq!(app.entered(), 2, "the cancelled call never ran");
}

#[tokio::test]
async fn a_cancelled_call_frees_its_slot() {
    let app = Arc::new(App::default());
    let server = builder(&app).tool::<blocker>().build().expect("builds");
    let c = connect(&server).await;
    let quick = || call_with(&c, "blocker", json!({"forever": false}));
    let runs_and_holds = |what: &'static str, runs: usize| {
        let (app, server) = (&app, &server);
        async move {
            eventually(what, Duration::from_secs(10), || app.entered() == runs).await;
            assert_eq!(
                server.running("blocker"),
                1,
                "{what}: the call holds the slot"
            );
        }
    };
    let frees = || {
        eventually(
            "the cancelled call frees its slot",
            Duration::from_secs(5),
            || server.running("blocker") == 0,
        )
    };

    // Dropping the call future: the rmcp client sends `notifications/cancelled`.
    {
        let pending = c.call_tool(params("blocker", json!({"forever": true})));
        tokio::pin!(pending);
        tokio::select! {
            r = &mut pending => panic!("the blocking call answered: {r:?}"),
            () = runs_and_holds("the first blocking call runs", 1) => {}
        }
    }
    frees().await;
    assert_eq!(ok_text(&quick().await), "done", "a new call is admitted");

    // Cancelling a request handle explicitly.
    let handle = send_cancellable(&c, "blocker", json!({"forever": true})).await;
    runs_and_holds("the second blocking call runs", 3).await;
    handle
        .cancel(Some("the test gave up".to_owned()))
        .await
        .expect("the cancellation is sent");
    frees().await;
    assert_eq!(ok_text(&quick().await), "done", "a new call is admitted");
    assert_eq!(app.entered(), 4);
}

// ---------------------------------------------------------------------------------------
// Memory.

const CHILD: &str = "MCP_HARDEN_E2E_LIMITS_CHILD";

/// The resident set of this process, in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// A million distinct callers, each calling once: every caller is idle again 1 ms after its
/// call, so the sweeps (every 4096 decisions; in the call at this size, as the limiter's unit
/// tests show a large limiter's running on the blocking pool) keep the limiter at a few
/// thousand keys, below its bound of 10 000, and at most 1 % are refused as `Full` (racing
/// the sweep on a loaded machine).
#[test]
fn a_million_distinct_callers_stay_bounded() {
    // The resident set is the whole process's, and other tests allocate concurrently:
    // measure in a child process running only this test.
    if std::env::var_os(CHILD).is_none() {
        let name = "a_million_distinct_callers_stay_bounded";
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .expect("the child runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("{stdout}{stderr}");
        assert!(
            out.status.success(),
            "the child failed:\n{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains("1 passed"),
            "the child ran the test: {stdout}"
        );
        return;
    }

    const CALLERS: usize = 1_000_000;
    const MAX: usize = 10_000;
    let quota = GcraQuota::from_rate(Rate::per_second(1000).with_burst(1)).expect("quota");
    let limiter = RateLimiter::with_quota(quota, MAX).expect("limiter");
    // Within a runtime, as a server decides.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let _inside = runtime.enter();
    let before = resident_bytes();
    let started = Instant::now();
    let (mut allowed, mut full, mut peak) = (0usize, 0usize, 0usize);
    for i in 0..CALLERS {
        let key: Arc<str> = Arc::from(format!("caller-{i}"));
        match limiter.check(&key) {
            RateDecision::Allow => allowed += 1,
            RateDecision::Full => full += 1,
            other => panic!("caller {i} called once and got {other:?}"),
        }
        if i % 4096 == 0 {
            let tracked = limiter.tracked_keys();
            peak = peak.max(tracked);
            assert!(tracked <= MAX, "{tracked} callers tracked after {i}");
        }
    }
    let tracked = limiter.tracked_keys();
    let grown = resident_bytes().saturating_sub(before);
    println!(
        "{CALLERS} callers in {:?}: {allowed} allowed, {full} full, peak {peak} tracked, \
         {tracked} at the end, resident set grew by {} KiB",
        started.elapsed(),
        grown / 1024
    );
    assert!(tracked <= MAX, "{tracked} callers tracked at the end");
    assert!(
        allowed >= CALLERS * 99 / 100,
        "idle callers are evicted to make room: {allowed} of {CALLERS} admitted, {full} refused"
    );
    assert!(
        grown < 64 << 20,
        "the resident set grew by {} MiB",
        grown >> 20
    );
}

/// An agent looping past its rate limit: every call is answered, but the rejections are
/// recorded within the caller's budget and the rest summed up when the audit is flushed.
#[tokio::test]
async fn a_caller_looping_past_its_limit_is_recorded_within_a_budget() {
    let app = Arc::new(App::default());
    let audit = common::Collect::default();
    let server = builder(&app)
        .tool::<tiered>()
        .tool::<guarded>()
        .tool::<blocker>()
        .audit_sink(audit.clone())
        .rejected_records_per_caller(1, 5)
        .build()
        .expect("the server builds");
    let c = connect(&server).await;
    let mut limited = 0;
    for _ in 0..40 {
        let r = call(&c, "tiered").await;
        if r.is_error == Some(true) {
            retryable(&r, "RATE_LIMITED");
            limited += 1;
        }
    }
    assert_eq!(limited, 38, "two calls a minute");
    let records = audit.records();
    let outcomes: Vec<_> = records
        .iter()
        .map(|r| (r.outcome, r.reason))
        .collect::<Vec<_>>();
    let mut expected = vec![(mcp_harden::audit::Outcome::Success, None); 2];
    expected.extend([(mcp_harden::audit::Outcome::Rejected, Some("rate_limited")); 5]);
    assert_eq!(outcomes, expected, "the calls that ran, and the burst of 5");

    // The budget spent: a denial (a security event), a call that runs, and a rejection of
    // another kind are each recorded all the same.
    refusal(&call(&c, "guarded").await, "FORBIDDEN");
    ok_text(&call_with(&c, "blocker", json!({"forever": false})).await);
    refusal(
        &call_with(&c, "blocker", json!({"forever": "no"})).await,
        "INVALID_ARGUMENTS",
    );
    let outcomes: Vec<_> = audit.records()[7..]
        .iter()
        .map(|r| (r.outcome, r.reason))
        .collect();
    assert_eq!(
        outcomes,
        [
            (
                mcp_harden::audit::Outcome::Denied,
                Some("insufficient_scope")
            ),
            (mcp_harden::audit::Outcome::Success, None),
            (
                mcp_harden::audit::Outcome::Rejected,
                Some("invalid_arguments")
            ),
        ]
    );

    assert!(server.flush_audit(Duration::from_secs(5)).await);
    let records = audit.records();
    assert_eq!(records.len(), 11, "{records:#?}");
    let summary = &records[10];
    assert_eq!(summary.event, mcp_harden::audit::AuditEvent::Unrecorded);
    assert_eq!(summary.transport, "local");
    let u = summary.unrecorded.as_deref().expect("the summary");
    assert_eq!(u.count, 33);
    assert_eq!(u.distinct_callers, 1);
    assert_eq!(u.top_callers[0].caller.subject.as_deref(), Some("tester"));
    assert_eq!(u.top_callers[0].count, 33);
    assert_eq!(
        u.reasons
            .iter()
            .map(|r| (r.reason, r.tool, r.count))
            .collect::<Vec<_>>(),
        [("rate_limited", Some("tiered"), 33)]
    );
    // Flushed again: nothing more to sum up.
    assert!(server.flush_audit(Duration::from_secs(5)).await);
    assert_eq!(audit.records().len(), 11);
}

/// The per-caller budget's summary comes when its interval says, not at the default 10 s.
#[tokio::test]
async fn rejections_are_summed_up_after_the_configured_interval() {
    let app = Arc::new(App::default());
    let audit = common::Collect::default();
    let server = builder(&app)
        .tool::<tiered>()
        .audit_sink(audit.clone())
        .rejected_records_per_caller(1, 1)
        .rejected_summary_interval(Duration::from_secs(1))
        .build()
        .expect("the server builds");
    let c = connect(&server).await;
    for _ in 0..5 {
        call(&c, "tiered").await;
    }
    // Two calls ran, one rejection recorded, two held back.
    assert_eq!(audit.records().len(), 3);
    let held = std::time::Instant::now();
    let summary = loop {
        if let Some(r) = audit
            .records()
            .into_iter()
            .find(|r| r.event == mcp_harden::audit::AuditEvent::Unrecorded)
        {
            break r;
        }
        assert!(
            held.elapsed() < Duration::from_secs(6),
            "no summary 6 s after the rejections held back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        held.elapsed() >= Duration::from_millis(800),
        "{:?}",
        held.elapsed()
    );
    assert_eq!(summary.unrecorded.as_deref().map(|u| u.count), Some(2));
}
