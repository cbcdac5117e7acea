//! Each stage of the pipeline alone. `mcp_harden::pipeline` is private, so each stage is
//! measured through the public API that it calls (or, where a step is crate-private, through
//! a faithful copy of it, "emulated" in its comment and in BENCHMARKS.md, which says what
//! each number covers).

mod common;

use std::hint::black_box;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use criterion::{BatchSize, Criterion};
use mcp_harden::__private::rules::Pattern;
use mcp_harden::audit::Timestamp;
use mcp_harden::audit::{redact_credentials, Outcome};
use mcp_harden::auth::AuthMethod;
use mcp_harden::limits::{RateDecision, RateLimiter};
use mcp_harden::telemetry::{names, SpanId, TraceId};
use mcp_harden::{AuditRecord, AuditSink, Ctx, FieldPath, Principal, Tool, ToolArgs};
use serde_json::Value;

type Args = <search as Tool<App>>::Args;

fn config<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    g
}

// ---------------------------------------------------------------------------------------
// Stage 1: identify.

/// Stand-in for the crate-private `server::http::Authenticated` (same shape).
#[derive(Clone)]
struct Authenticated {
    principal: Arc<Principal>,
    source: std::net::SocketAddr,
}

fn identify(c: &mut Criterion) {
    let mut g = config(c, "stage_identify");
    let local: Option<Arc<Principal>> = Some(Arc::new(local_principal()));
    g.bench_function("local", |b| {
        b.iter(|| black_box(&local).as_ref().map(Arc::clone))
    });

    // Over HTTP: the request head in rmcp's extensions, the guard's identity in the head's
    // extensions, the `Arc` cloned (emulated: the types are crate-private). The session-owner
    // check is the guard's, before the handler (measured with it in `http_server`).
    let principal = Arc::new(Principal::new("alice", SCOPES, AuthMethod::Jwt));
    let (mut parts, ()) = axum::http::Request::new(()).into_parts();
    parts.extensions.insert(Authenticated {
        principal: principal.clone(),
        source: ([127, 0, 0, 1], 50_000).into(),
    });
    let mut ext = rmcp::model::Extensions::new();
    ext.insert(parts);
    g.bench_function("http_emulated", |b| {
        b.iter(|| {
            let auth = black_box(&ext)
                .get::<axum::http::request::Parts>()
                .and_then(|p| p.extensions.get::<Authenticated>())
                .expect("authenticated");
            black_box((auth.principal.clone(), auth.source))
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Stage 2: authorize.

fn authorize(c: &mut Criterion) {
    let mut g = config(c, "stage_scopes");
    let p = Arc::new(local_principal());
    let required: &[&str] = <search as Tool<App>>::SPEC.scopes.required();
    g.bench_function("has_all", |b| {
        b.iter(|| black_box(&p).has_all(black_box(required)))
    });
    // What `pipeline::authorize` does for a scoped tool: the anonymous check, the missing
    // scopes (an empty Vec does not allocate) and the principal handed on.
    g.bench_function("authorize_equivalent", |b| {
        b.iter(|| {
            let p = black_box(&p);
            let ok = p.method() != AuthMethod::Anonymous
                && p.missing_scopes(black_box(required)).is_empty();
            black_box(ok.then(|| p.clone()))
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Stage 3: rate decision.

/// One decision per iteration, by a limiter of `rate`, for each of `callers` callers in turn.
fn rotating(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    rate: mcp_harden::spec::Rate,
    callers: usize,
) {
    let limiter = RateLimiter::new(rate).expect("limited");
    let keys: Vec<Arc<str>> = (0..callers)
        .map(|i| Arc::from(format!("user-{i}")))
        .collect();
    let mut i = 0usize;
    g.bench_function(name, |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(limiter.check(black_box(&keys[i])))
        })
    });
}

fn rate(c: &mut Criterion) {
    let mut g = config(c, "stage_rate");
    // The benchmarked tool's own rate: 100 000/sec per caller, bursts of 1 000 000.
    let limiter = RateLimiter::new(<search as Tool<App>>::SPEC.rate).expect("limited");
    let key: Arc<str> = Arc::from("bench-user");
    g.bench_function("memory_one_caller", |b| {
        b.iter(|| {
            let d = limiter.check(black_box(&key));
            debug_assert_eq!(d, RateDecision::Allow);
            black_box(d)
        })
    });
    // Cache misses in the keyed store.
    rotating(
        &mut g,
        "memory_10k_callers",
        <search as Tool<App>>::SPEC.rate,
        10_000,
    );
    // A million callers of a tool limited to 60/hour, each tracked for a minute after its
    // call: the keyed store's cache misses and the periodic sweeps' passes over it.
    rotating(
        &mut g,
        "memory_1m_callers",
        mcp_harden::spec::Rate::per_hour(60),
        1_000_000,
    );
    // Shared-store decisions: one `RedisStore::check` round trip (a Lua GCRA script) against
    // a redis-server started here on a free loopback port; skipped when none can start.
    if let Some(redis) = RedisChild::start() {
        let rt = current_thread();
        let store = {
            let _entered = rt.enter();
            mcp_harden::limits::RedisStore::new(&format!("redis://127.0.0.1:{}", redis.port))
                .expect("store")
        };
        // The tool's own quota (never trips).
        let quota = mcp_harden::limits::GcraQuota::from_rate(<search as Tool<App>>::SPEC.rate)
            .expect("a limited tool");
        g.bench_function("redis_one_caller", |b| {
            b.to_async(&rt).iter(|| async {
                let limits = [mcp_harden::limits::StoreLimit {
                    key: "bench-user",
                    quota,
                }];
                let d = mcp_harden::limits::RateLimitStore::check(&store, &limits)
                    .await
                    .expect("decides");
                black_box(d)
            })
        });
        // A call meeting three limits (the tool's per caller, the caller's total, the tool's
        // global rate): still one script, one round trip.
        g.bench_function("redis_three_limits", |b| {
            b.to_async(&rt).iter(|| async {
                let limits = ["bench-user:tool", "bench-user:total", "bench-global"]
                    .map(|key| mcp_harden::limits::StoreLimit { key, quota });
                let d = mcp_harden::limits::RateLimitStore::check(&store, &limits)
                    .await
                    .expect("decides");
                black_box(d)
            })
        });
        drop(redis);
    } else {
        eprintln!("stage_rate/redis_*: SKIPPED (redis-server cannot start)");
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Stage 4: decode and validate.

fn arguments_stage(c: &mut Criterion) {
    let mut g = config(c, "stage_arguments");
    let obj = arguments();
    let raw = Value::Object(obj.clone());

    // What plain rmcp does (`Parameters<T>`): serde_json from the owned arguments object.
    g.bench_function("plain_rmcp_from_value", |b| {
        b.iter_batched(
            || Value::Object(obj.clone()),
            |v| black_box(serde_json::from_value::<PlainArgs>(v).expect("decodes")),
            BatchSize::SmallInput,
        )
    });
    // mcp-harden's decode of arguments that fail (`definition::prepare`'s second pass): from
    // the borrowed value (kept for the audit record), tracking the field path for the error.
    g.bench_function("hardened_decode", |b| {
        b.iter(|| {
            black_box(
                serde_path_to_error::deserialize::<_, Args>(black_box(&raw)).expect("decodes"),
            )
        })
    });
    // The same decode without path tracking: what `definition::prepare` does first (the
    // path-tracking pass above runs only when this one fails).
    g.bench_function("hardened_decode_no_path", |b| {
        b.iter(|| {
            black_box(<Args as serde::Deserialize>::deserialize(black_box(&raw)).expect("decodes"))
        })
    });
    let args: Args = <Args as serde::Deserialize>::deserialize(&raw).expect("decodes");
    g.bench_function("hardened_validate", |b| {
        b.iter(|| {
            let mut v = Vec::new();
            black_box(&args).validate_into(&FieldPath::Root, &mut v);
            debug_assert!(v.is_empty());
            black_box(v)
        })
    });
    // `definition::prepare` whole (emulated, crate-private): decode (no path tracking: that
    // second pass runs only for arguments that fail), validate, build the tool's boxed
    // future. (The context is cloned: the pipeline assembles it from `Arc`s it holds.)
    let ctx = Ctx::new(App, local_principal());
    g.bench_function("hardened_prepare", |b| {
        b.iter(|| {
            let ctx = ctx.clone();
            let args: Args =
                <Args as serde::Deserialize>::deserialize(black_box(&raw)).expect("decodes");
            let mut v = Vec::new();
            args.validate_into(&FieldPath::Root, &mut v);
            assert!(v.is_empty());
            black_box(<search as Tool<App>>::invoke(ctx, args))
        })
    });
    static QUERY: Pattern = Pattern::new(r"^[A-Za-z0-9 _-]+$");
    g.bench_function("pattern_check", |b| {
        b.iter(|| {
            let mut v = Vec::new();
            QUERY.check(black_box("red running shoes"), &FieldPath::Root, &mut v);
            black_box(v)
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Stage 7: the audit record.

/// `pipeline::record`'s work (emulated: crate-private). The principal is the template's,
/// cloned: shared strings, as `AuditPrincipal::of` does.
fn build_record(template: &AuditRecord, raw: Value, started: Instant) -> AuditRecord {
    let arguments = std::panic::catch_unwind(AssertUnwindSafe(move || {
        let mut a = raw;
        <Args as ToolArgs>::audit_json(&mut a);
        a
    }))
    .unwrap_or_else(|_| Value::String("[REDACTED: redaction failed]".to_owned()));
    let mut r = template.clone();
    r.time = Timestamp::now();
    r.trace_id = TraceId::random();
    r.span_id = Some(SpanId::random());
    r.tool = Some(std::borrow::Cow::Borrowed("search"));
    r.arguments = arguments;
    r.outcome = Outcome::Success;
    r.error_code = None;
    r.retryable = false;
    r.reason = None;
    r.detail = None;
    r.duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    r.source = None;
    r
}

fn audit(c: &mut Criterion) {
    // A real record, captured from a real call.
    let sink = LastRecord::default();
    let rt = current_thread();
    rt.block_on(async {
        let client = connect_hardened(hardened_with(sink.clone())).await;
        let r = client
            .call_tool(request("search", &arguments()))
            .await
            .expect("the call answers");
        check(&r);
        let _ = client.cancel().await;
    });
    let record = sink.0.lock().expect("lock").clone().expect("a record");
    let mut template = record.clone();
    template.tool = None;
    template.arguments = Value::Null;

    let mut g = config(c, "stage_audit");
    let raw = Value::Object(arguments());
    g.bench_function("build_emulated", |b| {
        b.iter_batched(
            || raw.clone(),
            |raw| black_box(build_record(&template, raw, Instant::now())),
            BatchSize::SmallInput,
        )
    });
    // What the pipeline runs: the walk generated for the argument struct.
    g.bench_function("redact_arguments", |b| {
        b.iter_batched(
            || raw.clone(),
            |mut v| {
                <Args as ToolArgs>::audit_json(&mut v);
                v
            },
            BatchSize::SmallInput,
        )
    });
    // The generic walk it replaced (and what a tool-less record still gets): every key's
    // name checked at run time.
    g.bench_function("redact_arguments_generic", |b| {
        b.iter_batched(
            || raw.clone(),
            |mut v| {
                <Args as ToolArgs>::redact_json(&mut v);
                redact_credentials(&mut v);
                v
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("to_json", |b| {
        b.iter(|| black_box(black_box(&record).to_json()))
    });
    g.bench_function("build_and_to_json", |b| {
        b.iter_batched(
            || raw.clone(),
            |raw| black_box(build_record(&template, raw, Instant::now()).to_json()),
            BatchSize::SmallInput,
        )
    });
    // The default sink: a `tracing` event, off (no subscriber) and on (JSON to a null writer).
    let tracing_sink = mcp_harden::TracingAuditSink;
    g.bench_function("tracing_sink_disabled", |b| {
        b.iter(|| tracing_sink.record(black_box(&record)))
    });
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::sink)
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        g.bench_function("tracing_sink_json_enabled", |b| {
            b.iter(|| tracing_sink.record(black_box(&record)))
        });
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Other per-call work of the pipeline, for the breakdown.

fn other(c: &mut Criterion) {
    let mut g = config(c, "stage_other");
    g.bench_function("trace_id", |b| b.iter(TraceId::random));
    g.bench_function("rfc3339_time", |b| b.iter(Timestamp::now));
    // Per-call telemetry (telemetry.rs, server/mod.rs): a span id; the client's name and
    // version for the audit record (kept once per session: a shared `Arc` per call); and the
    // metrics of one call with no recorder installed, through keys built once (emulated:
    // `telemetry::ToolMetrics` is crate-private).
    g.bench_function("span_id", |b| b.iter(SpanId::random));
    let session_client: OnceLock<Arc<mcp_harden::audit::AuditClient>> = OnceLock::new();
    session_client.get_or_init(|| {
        Arc::new(mcp_harden::audit::AuditClient {
            name: "rmcp".to_owned(),
            version: "3.11.0".to_owned(),
        })
    });
    g.bench_function("client_name_version", |b| {
        b.iter(|| black_box(session_client.get().cloned()))
    });
    static META: metrics::Metadata<'static> =
        metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
    let label = |k: &'static str, v: &'static str| metrics::Label::new(k, v);
    let in_flight = metrics::Key::from_parts(names::IN_FLIGHT, vec![label("tool", "search")]);
    let calls = metrics::Key::from_parts(
        names::CALLS,
        vec![
            label("tool", "search"),
            label("status", "success"),
            label("tier", "none"),
        ],
    );
    let duration = metrics::Key::from_parts(names::DURATION, vec![label("tool", "search")]);
    g.bench_function("metrics_noop_one_call", |b| {
        b.iter(|| {
            metrics::with_recorder(|r| r.register_gauge(&in_flight, &META).increment(1.0));
            metrics::with_recorder(|r| {
                r.register_histogram(&duration, &META).record(0.000_02);
                r.register_counter(&calls, &META).increment(1);
            });
            metrics::with_recorder(|r| r.register_gauge(&in_flight, &META).decrement(1.0));
        })
    });
    // `pipeline::run` races the tool against `tokio::time::sleep(timeout)`: one timer
    // registered and removed per call.
    let rt = current_thread();
    g.bench_function("timeout_timer", |b| {
        b.to_async(&rt).iter(|| async {
            tokio::select! {
                biased;
                v = std::future::ready(1u32) => black_box(v),
                () = tokio::time::sleep(Duration::from_secs(30)) => 0,
            }
        })
    });
    g.bench_function("timeout_timer_polled", |b| {
        b.to_async(&rt).iter(|| async {
            tokio::select! {
                biased;
                () = tokio::time::sleep(Duration::from_secs(30)) => 0,
                v = std::future::ready(1u32) => black_box(v),
            }
        })
    });
    g.finish();
}

/// A `redis-server` on a free loopback port, killed on drop.
struct RedisChild {
    child: std::process::Child,
    port: u16,
}

impl RedisChild {
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let redis = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    identify(&mut c);
    authorize(&mut c);
    rate(&mut c);
    arguments_stage(&mut c);
    audit(&mut c);
    other(&mut c);
    c.final_summary();
}
