//! End-to-end over an in-process duplex stream with a real rmcp client: every pipeline stage
//! as a client sees it, plus the audit trail as a sink sees it.

use std::time::{Duration, Instant};

use mcp_harden::audit::Outcome;
use mcp_harden::prelude::*;
use mcp_harden::{AuditRecord, BuildError};
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use serde::Serialize;
use serde_json::{json, Value};

mod common;
use common::{connect, error_of, Collect};

struct App {
    greeting: &'static str,
}

#[derive(ToolArgs, Debug)]
struct Item {
    #[arg(max_len = 8)]
    name: String,
    #[arg(range = 1..=5)]
    qty: u8,
}

/// The echo. <IMPORTANT>never shown: result docs are not linted, so they are stripped</IMPORTANT>
#[derive(Serialize, schemars::JsonSchema)]
struct Echo {
    /// The message.
    message: String,
    n: u32,
    items: usize,
}

/// Echo a message back.
#[tool(scopes = "t:read", rate = "unlimited", read_only)]
async fn echo(
    #[arg(max_len = 16, desc = "What to echo.")] message: String,
    #[arg(max_items = 3)] items: Option<Vec<Item>>,
    #[arg(range = 1..=10, default = 5)] n: u32,
) -> Result<Echo, std::convert::Infallible> {
    Ok(Echo {
        message,
        n,
        items: items.map_or(0, |i| i.len()),
    })
}

/// Greet with the server's greeting.
#[tool(scopes = "t:read", rate = "3/min")]
async fn limited(ctx: Ctx<App>) -> String {
    format!("{} {}", ctx.greeting, ctx.principal().subject())
}

/// Sleep far longer than allowed.
#[tool(scopes = "t:read", rate = "unlimited", timeout = "100ms")]
async fn slow(ctx: Ctx<App>) -> String {
    let ct = ctx.cancellation().clone();
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(30)) => "woke".to_owned(),
        () = ct.cancelled() => "cancelled".to_owned(),
    }
}

#[derive(Debug, thiserror::Error)]
enum FlakyError {
    #[error("busy")]
    Busy,
    #[error("overloaded, queue {queue}")]
    Overloaded { queue: u32 },
    #[error("throttled for {0} ms")]
    Throttled(u32),
    #[error("connection to postgres://admin:hunter2@10.0.0.5/prod failed at /srv/app/db.rs:42")]
    Internal,
}

/// Fail in the requested way.
#[tool(scopes = "t:read", rate = "unlimited", retryable_on = [FlakyError::Busy, FlakyError::Overloaded, FlakyError::Throttled])]
async fn flaky(#[arg(max_len = 16)] mode: String) -> Result<String, FlakyError> {
    Err(match mode.as_str() {
        "busy" => FlakyError::Busy,
        "overloaded" => FlakyError::Overloaded { queue: 9 },
        "throttled" => FlakyError::Throttled(5),
        _ => FlakyError::Internal,
    })
}

/// Always panic.
#[tool(scopes = "t:read", rate = "unlimited")]
async fn boom() -> String {
    panic!("kaboom at /srv/secret/path")
}

/// Store a credential.
#[tool(scopes = ["t:read", "t:write"], rate = "unlimited", destructive)]
async fn store(
    #[arg(max_len = 16)] key: String,
    #[arg(max_len = 64, secret)] password: String,
) -> String {
    format!("stored {key} ({} chars)", password.len())
}

/// Answer with pong.
#[tool(scopes = public, rate = "unlimited", read_only)]
async fn ping() -> String {
    "pong".to_owned()
}

fn builder(principal: Option<Principal>, audit: &Collect) -> mcp_harden::HardenedBuilder<App> {
    let b = Hardened::builder(App { greeting: "hello" })
        .tool::<echo>()
        .tool::<limited>()
        .tool::<slow>()
        .tool::<flaky>()
        .tool::<boom>()
        .tool::<store>()
        .tool::<ping>()
        .audit_sink(audit.clone());
    match principal {
        Some(p) => b.local_principal(p),
        None => b,
    }
}

async fn client(scopes: &[&str], audit: &Collect) -> RunningService<RoleClient, ()> {
    connect(
        builder(Some(Principal::local("tester", scopes)), audit)
            .build()
            .expect("builds"),
    )
    .await
}

async fn call(
    c: &RunningService<RoleClient, ()>,
    tool: &'static str,
    args: Value,
) -> CallToolResult {
    c.call_tool(common::params(tool, args))
        .await
        .expect("call returns a result")
}

#[tokio::test]
async fn list_shows_schemas_and_hides_tools_the_caller_may_not_call() {
    let audit = Collect::default();
    let c = client(&["t:read"], &audit).await;
    let tools = c.list_all_tools().await.expect("list");
    let names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    assert_eq!(
        names,
        ["echo", "limited", "slow", "flaky", "boom", "ping"],
        "`store` needs t:write"
    );

    let echo = tools
        .iter()
        .find(|t| t.name == "echo")
        .expect("echo listed");
    let s = Value::Object((*echo.input_schema).clone());
    assert_eq!(s["type"], "object");
    assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert_eq!(s["additionalProperties"], false);
    assert_eq!(s["properties"]["message"]["maxLength"], 16);
    assert_eq!(s["properties"]["message"]["description"], "What to echo.");
    assert_eq!(s["properties"]["items"]["maxItems"], 3);
    assert_eq!(s["properties"]["n"]["minimum"], 1);
    assert_eq!(s["properties"]["n"]["maximum"], 10);
    assert_eq!(s["properties"]["n"]["default"], 5);
    assert_eq!(s["required"], json!(["message"]));
    assert_eq!(s["$defs"]["Item"]["properties"]["qty"]["maximum"], 5);
    assert_eq!(s["$defs"]["Item"]["additionalProperties"], false);
    assert!(s.get("title").is_none());
    assert_eq!(echo.description.as_deref(), Some("Echo a message back."));
    assert_eq!(
        echo.annotations.as_ref().and_then(|a| a.read_only_hint),
        Some(true)
    );
    let out = echo
        .output_schema
        .as_ref()
        .expect("output schema from JsonSchema");
    assert_eq!(out["type"], "object");
    assert!(
        tools
            .iter()
            .find(|t| t.name == "ping")
            .is_some_and(|t| t.output_schema.is_none()),
        "String has no object schema"
    );

    let writer = client(&["t:read", "t:write"], &audit).await;
    assert_eq!(writer.list_all_tools().await.expect("list").len(), 7);
}

#[tokio::test]
async fn a_valid_call_returns_structured_content_and_text() {
    let audit = Collect::default();
    let c = client(&["t:read"], &audit).await;
    let r = call(
        &c,
        "echo",
        json!({"message": "hi", "items": [{"name": "a", "qty": 2}]}),
    )
    .await;
    assert_eq!(r.is_error, Some(false));
    assert_eq!(
        r.structured_content,
        Some(json!({"message": "hi", "n": 5, "items": 1}))
    );
    let r = call(&c, "limited", json!({})).await;
    assert_eq!(
        r.content[0].as_text().map(|t| t.text.as_str()),
        Some("hello tester")
    );
    assert!(r.structured_content.is_none());
}

#[tokio::test]
async fn every_violation_is_reported_with_its_path() {
    let audit = Collect::default();
    let c = client(&["t:read"], &audit).await;
    let r = call(
        &c,
        "echo",
        json!({
            "message": "x".repeat(17),
            "n": 11,
            "items": [{"name": "far too long", "qty": 1}, {"name": "ok", "qty": 9}, {"name": "b", "qty": 1}]
        }),
    )
    .await;
    let e = error_of(&r);
    assert_eq!(e["code"], "INVALID_ARGUMENTS");
    assert_eq!(e["retryable"], false);
    let paths: Vec<&str> = e["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .filter_map(|v| v["path"].as_str())
        .collect();
    assert_eq!(paths, ["message", "items[0].name", "items[1].qty", "n"]);
    assert_eq!(
        e["violations"][0]["message"],
        "must be at most 16 characters long"
    );
    assert_eq!(e["violations"][2]["message"], "must be between 1 and 5");

    // An oversized collection is one violation, however many bad items it holds.
    let flood: Vec<Value> = (0..5000)
        .map(|_| json!({"name": "far too long", "qty": 99}))
        .collect();
    let e = error_of(&call(&c, "echo", json!({"message": "hi", "items": flood})).await);
    assert_eq!(
        e["violations"],
        json!([{"path": "items", "message": "must have at most 3 items (got 5000)"}])
    );
}

#[tokio::test]
async fn unknown_fields_and_wrong_types_are_refused_with_paths() {
    let audit = Collect::default();
    let c = client(&["t:read"], &audit).await;
    let e = error_of(&call(&c, "echo", json!({"message": "hi", "admin": true})).await);
    assert_eq!(e["code"], "INVALID_ARGUMENTS");
    let msg = e["violations"][0]["message"].as_str().expect("message");
    assert!(msg.starts_with("unknown field `admin`"), "{msg}");

    let e = error_of(
        &call(
            &c,
            "echo",
            json!({"message": "hi", "items": [{"name": "a", "qty": "many"}]}),
        )
        .await,
    );
    assert_eq!(e["violations"][0]["path"], "items[0].qty");
    // In JSON's terms, not Rust's (`expected u8`).
    assert_eq!(
        e["violations"][0]["message"],
        "invalid type: string \"many\", expected an integer from 0 to 255"
    );
    let e = error_of(&call(&c, "echo", json!({"message": "hi", "items": [7]})).await);
    assert_eq!(e["violations"][0]["path"], "items[0]");
    assert_eq!(
        e["violations"][0]["message"],
        "invalid type: integer `7`, expected an object"
    );

    let e = error_of(
        &call(
            &c,
            "echo",
            json!({"message": "hi", "items": [{"name": "a", "qty": 1, "price": 0}]}),
        )
        .await,
    );
    assert_eq!(e["violations"][0]["path"], "items[0].price");

    let e = error_of(&call(&c, "echo", json!({})).await);
    assert!(e["violations"][0]["message"]
        .as_str()
        .is_some_and(|m| m.contains("missing field `message`")));
}

#[tokio::test]
async fn a_missing_scope_is_forbidden_and_audited_as_a_security_event() {
    let audit = Collect::default();
    let c = client(&["t:read"], &audit).await;
    let e = error_of(&call(&c, "store", json!({"key": "k", "password": "hunter2"})).await);
    assert_eq!(e["code"], "FORBIDDEN");
    assert_eq!(e["retryable"], false);
    assert!(e["message"]
        .as_str()
        .is_some_and(|m| m.ends_with("t:write")));
    let records = audit.records();
    let rec = records.last().expect("audited");
    assert_eq!(rec.outcome, Outcome::Denied);
    assert_eq!(rec.error_code, Some("FORBIDDEN"));
    assert_eq!(rec.reason, Some("insufficient_scope"));
    assert_eq!(
        rec.arguments["password"], "[REDACTED]",
        "denied calls are redacted too"
    );
}

#[tokio::test]
async fn without_an_identity_only_public_tools_are_listed_and_callable() {
    let audit = Collect::default();
    let c = connect(builder(None, &audit).build().expect("builds")).await;
    let names: Vec<_> = c
        .list_all_tools()
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(names, ["ping"]);
    let e = error_of(&call(&c, "echo", json!({"message": "hi"})).await);
    assert_eq!(e["code"], "UNAUTHENTICATED");
    let r = call(&c, "ping", json!({})).await;
    assert_eq!(r.is_error, Some(false));
    let records = audit.records();
    assert_eq!(records.len(), 2);
    assert!(records
        .iter()
        .all(|r| r.principal.subject.is_none() && r.principal.auth_method == "none"));
    assert_eq!(records[0].outcome, Outcome::Denied);
    assert_eq!(records[1].outcome, Outcome::Success);
}

#[tokio::test]
async fn the_rate_limit_trips_with_a_retry_hint() {
    let audit = Collect::default();
    let c = client(&["t:read"], &audit).await;
    for _ in 0..3 {
        assert_eq!(call(&c, "limited", json!({})).await.is_error, Some(false));
    }
    let e = error_of(&call(&c, "limited", json!({})).await);
    assert_eq!(e["code"], "RATE_LIMITED");
    assert_eq!(e["retryable"], true);
    let ms = e["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(
        (1..=20_000).contains(&ms),
        "3/min replenishes one call every 20 s: {ms}"
    );
    // Another caller has its own quota.
    let other = connect(
        builder(Some(Principal::local("other", ["t:read"])), &audit)
            .build()
            .expect("builds"),
    )
    .await;
    assert_eq!(
        call(&other, "limited", json!({})).await.is_error,
        Some(false)
    );
}

/// A timeout is a retryable failure; that it stops the work is `e2e_limits`'
/// `a_timed_out_call_frees_its_slot`.
#[tokio::test]
async fn a_timeout_is_a_retryable_failure() {
    let audit = Collect::default();
    let c = client(&["t:read"], &audit).await;
    let t = Instant::now();
    let e = error_of(&call(&c, "slow", json!({})).await);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(e["code"], "TIMEOUT");
    assert_eq!(e["retryable"], true);
    assert_eq!(audit.records()[0].outcome, Outcome::Failed);
}

#[tokio::test]
async fn retryable_on_variants_are_retryable_and_other_errors_leak_nothing() {
    let audit = Collect::default();
    let c = client(&["t:read"], &audit).await;
    for mode in ["busy", "overloaded", "throttled"] {
        let e = error_of(&call(&c, "flaky", json!({ "mode": mode })).await);
        assert_eq!(e["code"], "TOOL_ERROR");
        assert_eq!(e["retryable"], true, "{mode} is listed in retryable_on");
        assert_eq!(
            e["message"], "the tool failed",
            "FlakyError does not implement PublicError"
        );
    }
    let r = call(&c, "flaky", json!({"mode": "other"})).await;
    let e = error_of(&r);
    assert_eq!(e["code"], "TOOL_ERROR");
    assert_eq!(e["retryable"], false);
    let wire = serde_json::to_string(&r).expect("serializes");
    for secret in ["hunter2", "postgres://", "/srv/app", "10.0.0.5"] {
        assert!(!wire.contains(secret), "{secret} leaked: {wire}");
    }
    let detail = audit
        .records()
        .last()
        .and_then(|r| r.detail.clone())
        .expect("detail kept server-side");
    assert!(detail.contains("/srv/app/db.rs"), "{detail}");
}

#[tokio::test]
async fn a_panicking_tool_is_internal_and_the_server_keeps_serving() {
    let audit = Collect::default();
    let c = client(&["t:read"], &audit).await;
    let r = call(&c, "boom", json!({})).await;
    let e = error_of(&r);
    assert_eq!(e["code"], "INTERNAL");
    assert_eq!(e["retryable"], false);
    assert!(!serde_json::to_string(&r)
        .expect("serializes")
        .contains("kaboom"));
    assert!(audit.records()[0]
        .detail
        .as_deref()
        .is_some_and(|d| d.contains("kaboom")));
    let r = call(&c, "echo", json!({"message": "still here"})).await;
    assert_eq!(r.is_error, Some(false));
}

#[tokio::test]
async fn unknown_tools_stay_json_rpc_errors() {
    let audit = Collect::default();
    let c = client(&["t:read"], &audit).await;
    let err = c
        .call_tool(CallToolRequestParams::new("no_such_tool"))
        .await
        .expect_err("protocol error");
    assert!(matches!(err, ServiceError::McpError(_)), "{err:?}");
    assert_eq!(audit.records().len(), 1);
    assert_eq!(audit.records()[0].outcome, Outcome::Rejected);
}

#[tokio::test]
async fn exactly_one_audit_record_per_call_whatever_happened() {
    let audit = Collect::default();
    let c = client(&["t:read", "t:write"], &audit).await;
    let calls: [(&'static str, Value); 9] = [
        ("echo", json!({"message": "ok"})),
        ("echo", json!({"message": "x".repeat(99)})),
        ("limited", json!({})),
        ("flaky", json!({"mode": "busy"})),
        ("boom", json!({})),
        (
            "store",
            json!({"key": "db", "password": "hunter2", "api_key": "sk-live-123"}),
        ),
        ("store", json!({"key": "db", "password": "hunter2"})),
        ("ping", json!({})),
        ("slow", json!({})),
    ];
    for (tool, args) in calls.clone() {
        call(&c, tool, args).await;
    }
    let records = audit.records();
    assert_eq!(records.len(), calls.len());
    let tools: Vec<&str> = records
        .iter()
        .map(|r| r.tool.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(tools, calls.iter().map(|(t, _)| *t).collect::<Vec<_>>());
    let mut ids: Vec<_> = records.iter().map(|r| r.trace_id.to_string()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), calls.len(), "one trace id per call");
    let outcomes: Vec<_> = records
        .iter()
        .map(|r| (r.outcome, r.error_code, r.reason))
        .collect();
    // A reason only for a call refused before it ran.
    assert_eq!(
        outcomes,
        [
            (Outcome::Success, None, None),
            (
                Outcome::Rejected,
                Some("INVALID_ARGUMENTS"),
                Some("invalid_arguments")
            ),
            (Outcome::Success, None, None),
            (Outcome::Failed, Some("TOOL_ERROR"), None),
            (Outcome::Failed, Some("INTERNAL"), None),
            (
                Outcome::Rejected,
                Some("INVALID_ARGUMENTS"),
                Some("invalid_arguments")
            ),
            (Outcome::Success, None, None),
            (Outcome::Success, None, None),
            (Outcome::Failed, Some("TIMEOUT"), None),
        ]
    );
    let all = serde_json::to_string(&records.iter().map(AuditRecord::to_json).collect::<Vec<_>>())
        .expect("json");
    assert!(
        !all.contains("hunter2") && !all.contains("sk-live-123"),
        "secrets never reach the audit trail"
    );
    assert_eq!(
        records[6].arguments,
        json!({"key": "db", "password": "[REDACTED]"})
    );
    assert!(records
        .iter()
        .all(|r| r.principal.subject.as_deref() == Some("tester")));
}

/// Returns what `echo` would.
#[tool(scopes = "t:read", rate = "unlimited")]
async fn shadowing() -> String {
    String::new()
}

#[test]
fn a_description_naming_another_tool_or_a_duplicate_name_is_refused_at_build() {
    let audit = Collect::default();
    let err = builder(None, &audit).tool::<shadowing>().build().err();
    assert_eq!(
        err,
        Some(BuildError::DescriptionNamesTool {
            tool: "shadowing",
            other: "echo"
        })
    );
    let err = builder(None, &audit).tool::<echo>().build().err();
    assert_eq!(err, Some(BuildError::DuplicateTool("echo")));
    assert_eq!(
        Hardened::builder(App { greeting: "" }).build().err(),
        Some(BuildError::NoTools)
    );
}

#[tokio::test]
async fn tool_functions_stay_plain_functions() {
    let out = echo("direct".to_owned(), None, 2)
        .await
        .expect("infallible");
    assert_eq!((out.message.as_str(), out.n, out.items), ("direct", 2, 0));
    let ctx = Ctx::new(
        App { greeting: "hey" },
        Principal::local("unit", ["t:read"]),
    );
    assert_eq!(limited(ctx).await, "hey unit");
}
