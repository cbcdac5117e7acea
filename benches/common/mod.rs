//! What the benchmarks share: one tool (`search`) served three ways — by mcp-harden with
//! every stage on, by plain rmcp with its default `#[tool_handler]` (which rebuilds the
//! router on every call), and by plain rmcp with a prebuilt router — plus tokens and runtimes.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mcp_harden::prelude::*;
use mcp_harden::{AuditRecord, AuditSink};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolRequestParams, CallToolResult, JsonObject};
use rmcp::service::{RoleClient, RunningService};
use rmcp::{Json, ServerHandler, ServiceExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// The tool, hardened: a string with a pattern, a range, a nested vector of structs.

/// The application state (unused by the tool; every call still carries it in `Ctx`).
pub struct App;

/// A comparison operator.
#[derive(ToolArgs, Debug, Clone, Copy, PartialEq, Eq)]
#[arg(rename_all = "snake_case")]
pub enum Op {
    /// Equal.
    Eq,
    /// Less than.
    Lt,
    /// Greater than.
    Gt,
}

/// One condition on a column.
#[derive(ToolArgs, Debug, Clone, PartialEq)]
pub struct Filter {
    /// The column to compare.
    #[arg(max_len = 64, pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")]
    pub column: String,
    /// How to compare.
    pub op: Op,
    /// What to compare with.
    #[arg(max_len = 128)]
    pub value: String,
}

/// What a search found.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Found {
    /// The query.
    pub query: String,
    /// How many filters were applied.
    pub filters: usize,
    /// How many hits there were.
    pub hits: u32,
}

impl Found {
    /// What every variant of the tool answers, whoever serves it.
    pub fn new(query: String, filters: usize, limit: u32) -> Self {
        Self {
            query,
            filters,
            hits: limit / 2,
        }
    }
}

/// Search the catalogue with a query and structured filters.
///
/// The rate is limited but high enough never to trip during a benchmark (100 000 calls per
/// second per caller, bursts of a million): the limiter runs on every call, as in production.
#[tool(
    scopes = "catalog:read",
    rate = "100000/sec",
    burst = 1000000,
    read_only
)]
pub async fn search(
    _ctx: Ctx<App>,
    #[arg(max_len = 64, pattern = r"^[A-Za-z0-9 _-]+$")] query: String,
    #[arg(max_items = 8, default = Vec::new())] filters: Vec<Filter>,
    #[arg(range = 1..=100, default = 20)] limit: u32,
) -> Found {
    Found::new(query, filters.len(), limit)
}

/// The same tool without a rate limit, to see the limiter's share of a round trip.
#[tool(
    name = "search_unlimited",
    scopes = "catalog:read",
    rate = "unlimited",
    read_only
)]
pub async fn search_unlimited(
    _ctx: Ctx<App>,
    #[arg(max_len = 64, pattern = r"^[A-Za-z0-9 _-]+$")] query: String,
    #[arg(max_items = 8, default = Vec::new())] filters: Vec<Filter>,
    #[arg(range = 1..=100, default = 20)] limit: u32,
) -> Found {
    Found::new(query, filters.len(), limit)
}

/// An audit sink that drops every record (the record is still built: that is the pipeline's
/// work, and it is measured).
#[derive(Clone, Copy, Default)]
pub struct NullSink;

impl AuditSink for NullSink {
    fn record(&self, _: &AuditRecord) {}
}

/// An audit sink that keeps the last record.
#[derive(Clone, Default)]
pub struct LastRecord(pub Arc<Mutex<Option<AuditRecord>>>);

impl AuditSink for LastRecord {
    fn record(&self, record: &AuditRecord) {
        *self.0.lock().expect("lock") = Some(record.clone());
    }
}

/// The scopes every caller of the benches holds (the tokens' `scope` claim, space-separated).
pub const SCOPES: [&str; 3] = ["catalog:read", "catalog:write", "orders:read"];

/// The caller on in-process transports: a local principal with [`SCOPES`].
pub fn local_principal() -> Principal {
    Principal::local("bench-user", SCOPES)
}

/// The hardened server: every stage on, audit to a null sink.
pub fn hardened() -> Hardened<App> {
    hardened_with(NullSink)
}

pub fn hardened_with(sink: impl AuditSink) -> Hardened<App> {
    Hardened::builder(App)
        .tool::<search>()
        .tool::<search_unlimited>()
        .local_principal(local_principal())
        .audit_sink(sink)
        .build()
        .expect("the hardened server builds")
}

// ---------------------------------------------------------------------------------------
// The tool, plain rmcp: the same arguments and result, no checks at all.

/// A comparison operator.
#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlainOp {
    /// Equal.
    Eq,
    /// Less than.
    Lt,
    /// Greater than.
    Gt,
}

/// One condition on a column.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct PlainFilter {
    /// The column to compare.
    pub column: String,
    /// How to compare.
    pub op: PlainOp,
    /// What to compare with.
    pub value: String,
}

fn twenty() -> u32 {
    20
}

/// The search arguments.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct PlainArgs {
    /// The query.
    pub query: String,
    /// The filters.
    #[serde(default)]
    pub filters: Vec<PlainFilter>,
    /// At most this many hits.
    #[serde(default = "twenty")]
    pub limit: u32,
}

/// Plain rmcp as its documentation shows it: `#[tool_router]` plus the default
/// `#[tool_handler]`, which calls `Self::tool_router()` — rebuilding the router — per call.
#[derive(Debug, Clone, Default)]
pub struct PlainDefault;

#[rmcp::tool_router]
impl PlainDefault {
    /// Search the catalogue with a query and structured filters.
    #[rmcp::tool(name = "search", annotations(read_only_hint = true))]
    async fn search(&self, Parameters(a): Parameters<PlainArgs>) -> Json<Found> {
        Json(Found::new(a.query, a.filters.len(), a.limit))
    }
}

#[rmcp::tool_handler]
impl ServerHandler for PlainDefault {}

/// Plain rmcp with the router built once and kept in a field
/// (`#[tool_handler(router = self.tool_router)]`).
#[derive(Debug, Clone)]
pub struct PlainPrebuilt {
    tool_router: Arc<ToolRouter<Self>>,
    /// Busy work added to every call (zero but in the HTTP bench's calibration variant).
    spin: std::time::Duration,
}

impl Default for PlainPrebuilt {
    fn default() -> Self {
        Self::spinning(std::time::Duration::ZERO)
    }
}

impl PlainPrebuilt {
    /// The same server, burning `spin` of CPU in every call: a known cost, to see how a
    /// benchmark reports it.
    pub fn spinning(spin: std::time::Duration) -> Self {
        Self {
            tool_router: Arc::new(Self::tool_router()),
            spin,
        }
    }
}

#[rmcp::tool_router]
impl PlainPrebuilt {
    /// Search the catalogue with a query and structured filters.
    #[rmcp::tool(name = "search", annotations(read_only_hint = true))]
    async fn search(&self, Parameters(a): Parameters<PlainArgs>) -> Json<Found> {
        if !self.spin.is_zero() {
            let started = std::time::Instant::now();
            while started.elapsed() < self.spin {
                std::hint::spin_loop();
            }
        }
        Json(Found::new(a.query, a.filters.len(), a.limit))
    }
}

#[rmcp::tool_handler(router = self.tool_router)]
impl ServerHandler for PlainPrebuilt {}

// ---------------------------------------------------------------------------------------
// Calls.

/// The arguments of every benchmarked call: realistic, valid, every rule exercised.
pub fn arguments() -> JsonObject {
    let Value::Object(o) = json!({
        "query": "red running shoes",
        "filters": [
            {"column": "brand", "op": "eq", "value": "acme"},
            {"column": "price", "op": "lt", "value": "120"},
            {"column": "size_eu", "op": "gt", "value": "41"}
        ],
        "limit": 25
    }) else {
        unreachable!()
    };
    o
}

pub fn request(tool: &'static str, args: &JsonObject) -> CallToolRequestParams {
    CallToolRequestParams::new(tool).with_arguments(args.clone())
}

/// Checks that a call did what the benchmark means to measure: a successful search.
pub fn check(result: &CallToolResult) {
    assert_ne!(result.is_error, Some(true), "the call failed: {result:?}");
    let found: Found = serde_json::from_value(
        result
            .structured_content
            .clone()
            .expect("structured content"),
    )
    .expect("a Found");
    assert_eq!((found.filters, found.hits), (3, 12), "{found:?}");
}

pub type Client = RunningService<RoleClient, ()>;

/// A plain rmcp server and an rmcp client over an in-process duplex stream, on the current
/// runtime.
pub async fn connect_plain<S: ServerHandler>(server: S) -> Client {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        if let Ok(running) = server.serve(server_io).await {
            let _ = running.waiting().await;
        }
    });
    ().serve(client_io).await.expect("the client connects")
}

/// The hardened server (local principal) and an rmcp client over a duplex stream.
pub async fn connect_hardened(server: Hardened<App>) -> Client {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        if let Ok(running) = server.serve_transport(server_io).await {
            let _ = running.waiting().await;
        }
    });
    ().serve(client_io).await.expect("the client connects")
}

pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

// ---------------------------------------------------------------------------------------
// Tokens.

pub const SECRET: &[u8] = b"an HS256 secret for benchmarks, 32+ bytes";
pub const ISSUER: &str = "https://issuer.example";
pub const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/keys/rsa_private.pem");
pub const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/keys/rsa_public.pem");
pub const EC_PRIVATE: &[u8] = include_bytes!("../../tests/keys/ec_private.pem");
pub const EC_PUBLIC: &[u8] = include_bytes!("../../tests/keys/ec_public.pem");
pub const ED_PRIVATE: &[u8] = include_bytes!("../../tests/keys/ed_private.pem");
pub const ED_PUBLIC: &[u8] = include_bytes!("../../tests/keys/ed_public.pem");

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Claims like an authorization server's: subject, scopes, issuer, audience, an hour left.
pub fn claims(sub: &str, audience: &str) -> Value {
    json!({
        "sub": sub,
        "scope": SCOPES.join(" "),
        "iss": ISSUER,
        "aud": audience,
        "iat": now(),
        "nbf": now(),
        "exp": now() + 3600,
        "jti": format!("{sub}-{}", now()),
    })
}

pub fn sign(
    alg: jsonwebtoken::Algorithm,
    key: &jsonwebtoken::EncodingKey,
    claims: &Value,
) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), claims, key).expect("the token signs")
}

// ---------------------------------------------------------------------------------------
// Latency statistics for the custom (non-criterion) measurements.

/// Sorted per-call latencies.
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn new(mut v: Vec<Duration>) -> Self {
        v.sort_unstable();
        Self(v)
    }
    pub fn quantile(&self, q: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.0.len() as f64 - 1.0) * q).round() as usize;
        self.0[i]
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// First quartile, median and third quartile of `v` (not empty).
pub fn quartiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let q = |f: f64| v[((v.len() - 1) as f64 * f).round() as usize];
    (q(0.25), q(0.5), q(0.75))
}

/// CPU time used so far by the threads of this process whose name starts with `prefix`
/// (all threads for `""`), from Linux `schedstat` (nanoseconds); zero where unavailable.
/// Less sensitive than wall time to other processes' load.
pub fn cpu_of_threads(prefix: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// Microseconds with one decimal.
pub fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// Times one future.
pub async fn timed<F: std::future::Future>(f: F) -> (F::Output, Duration) {
    let start = Instant::now();
    let out = f.await;
    (out, start.elapsed())
}

/// The machine's load average over the last minute (Linux), for the record.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// A middleware doing only what mcp-harden's HTTP guard does to every request besides its
/// checks: an axum `from_fn` layer, and the event-stream reply re-wrapped in a stream of its
/// own (the guard does it to learn when the reply ends).
pub async fn passthrough(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use futures::StreamExt as _;
    let response = next.run(req).await;
    let (parts, body) = response.into_parts();
    let stream = futures::stream::unfold(body.into_data_stream(), |mut s| async move {
        Some((s.next().await?, s))
    });
    axum::response::Response::from_parts(parts, axum::body::Body::from_stream(stream))
}

/// Plain rmcp over Streamable HTTP: `StreamableHttpService` (stateful, rmcp's defaults) routed
/// at `/mcp` as mcp-harden routes its own, and with `wrapped`, behind [`passthrough`].
pub fn plain_http_router<S>(
    make: impl Fn() -> S + Send + Sync + 'static,
    wrapped: bool,
) -> axum::Router
where
    S: ServerHandler + Send + 'static,
{
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let service = StreamableHttpService::new(
        move || Ok(make()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let router = axum::Router::new().route_service("/mcp", service);
    if wrapped {
        router.layer(axum::middleware::from_fn(passthrough))
    } else {
        router
    }
}

/// Whether `MH_BENCH_ONLY` (a comma-separated list of variant names; unset: all) selects
/// `name`.
pub fn selected(name: &str) -> bool {
    std::env::var("MH_BENCH_ONLY").is_err() || named(name)
}

/// Whether `MH_BENCH_ONLY` names `name` explicitly (for variants that run only when asked).
pub fn named(name: &str) -> bool {
    std::env::var("MH_BENCH_ONLY").is_ok_and(|only| only.split(',').any(|v| v.trim() == name))
}

/// The environment variable `name` parsed, or `default` when it is unset or does not parse.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The number of rounds: `MH_BENCH_ROUNDS` if set (a few suffice under callgrind), else
/// `default`.
pub fn rounds(default: usize) -> usize {
    env_or("MH_BENCH_ROUNDS", default)
}

// ---------------------------------------------------------------------------------------
// mcp-harden's HTTP endpoint, driven without a listener.

/// mcp-harden's HTTP endpoint (guard included) serving `search`, a JWT (HS256) through the
/// token cache, audit to the null sink; `configure` adjusts the rest of the configuration.
pub async fn hardened_router(
    configure: impl FnOnce(mcp_harden::server::http::HttpConfig) -> mcp_harden::server::http::HttpConfig,
) -> axum::Router {
    let server = Hardened::builder(App)
        .tool::<search>()
        .audit_sink(NullSink)
        .build()
        .expect("the hardened server builds");
    let jwt = mcp_harden::auth::JwtAuthenticator::builder()
        .hs256(SECRET)
        .issuer(ISSUER)
        .build()
        .expect("valid JWT configuration");
    let config = mcp_harden::server::http::HttpConfig::new("127.0.0.1:0".parse().expect("address"))
        .resource_url(RESOURCE)
        .authenticator(jwt);
    server
        .bind_http(configure(config))
        .await
        .expect("binds")
        .router()
}

/// The resource URL the hardened endpoint names (tokens carry it as their audience).
pub const RESOURCE: &str = "http://127.0.0.1:8080/mcp";

/// A valid token for `subject` at [`RESOURCE`].
pub fn token(subject: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
    sign(
        jsonwebtoken::Algorithm::HS256,
        &key,
        &claims(subject, RESOURCE),
    )
}
