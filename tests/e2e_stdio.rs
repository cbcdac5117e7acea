//! End-to-end against the `query_database` example running as a stdio child process, with a
//! real rmcp client and a real SQLite file.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use rmcp::model::CallToolResult;
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::ServiceExt;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

mod common;
use common::error_of;

/// `cargo test` builds the examples before running tests, next to the test binaries.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let bin = dir
        .join("examples")
        .join(format!("query_database{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run `cargo test`, which builds the examples",
        bin.display()
    );
    bin
}

struct Server {
    client: RunningService<RoleClient, ()>,
    stderr: tokio::task::JoinHandle<Vec<String>>,
}

async fn spawn(db: &Path, scopes: &[&str]) -> Server {
    spawn_with(db, scopes, &[]).await
}

async fn spawn_with(db: &Path, scopes: &[&str], extra: &[&str]) -> Server {
    let cmd = Command::new(example_binary()).configure(|c| {
        c.args(extra);
        c.arg("--stdio")
            .arg("--db")
            .arg(db)
            .arg("--subject")
            .arg("e2e");
        if !scopes.is_empty() {
            c.arg("--scopes").args(scopes);
        }
        c.env("RUST_LOG", "info");
    });
    let (transport, stderr) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn example");
    let stderr = stderr.expect("piped stderr");
    let stderr = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut out = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            out.push(l);
        }
        out
    });
    let client = ().serve(transport).await.expect("MCP handshake with the example");
    Server { client, stderr }
}

impl Server {
    async fn call(&self, tool: &'static str, args: Value) -> CallToolResult {
        self.client
            .call_tool(common::params(tool, args))
            .await
            .expect("call returns a result")
    }

    /// Stops the server and returns every JSON log line it wrote (to stderr).
    async fn stop_logging(self) -> Vec<Value> {
        let _ = self.client.cancel().await;
        let lines = self.stderr.await.expect("stderr reader");
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    }

    /// Stops the server and returns its audit records (from stderr).
    async fn stop(self) -> Vec<Value> {
        self.stop_logging()
            .await
            .into_iter()
            .filter(|v| v["target"] == "mcp_harden::audit")
            .filter_map(|v| {
                v["fields"]["record"]
                    .as_str()
                    .and_then(|r| serde_json::from_str(r).ok())
            })
            .collect()
    }
}

fn rows(r: &CallToolResult) -> Vec<Value> {
    assert_eq!(r.is_error, Some(false), "expected rows: {r:?}");
    r.structured_content.as_ref().expect("structured rows")["rows"]
        .as_array()
        .expect("rows array")
        .clone()
}

fn db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shop.sqlite3");
    (dir, path)
}

#[tokio::test]
async fn lists_only_permitted_tools_with_their_schemas() {
    let (_d, path) = db();
    let reader = spawn(&path, &["db:read"]).await;
    let tools = reader.client.list_all_tools().await.expect("list");
    assert_eq!(
        tools.iter().map(|t| t.name.to_string()).collect::<Vec<_>>(),
        ["query_database"]
    );
    let s = Value::Object((*tools[0].input_schema).clone());
    assert_eq!(
        s["$defs"]["Table"]["enum"],
        json!(["users", "orders", "products"])
    );
    assert_eq!(s["properties"]["filters"]["maxItems"], 10);
    assert_eq!(
        s["properties"]["limit"],
        json!({"default": 20, "description": "Maximum number of rows.", "maximum": 100, "minimum": 1, "type": "integer"})
    );
    assert_eq!(
        s["$defs"]["Filter"]["properties"]["column"]["pattern"],
        "^[A-Za-z_][A-Za-z0-9_]*$"
    );
    assert_eq!(
        s["$defs"]["Operator"]["enum"],
        json!(["eq", "ne", "gt", "gte", "lt", "lte", "like"])
    );
    assert!(tools[0].output_schema.is_some());
    reader.stop().await;

    let writer = spawn(&path, &["db:read", "db:write"]).await;
    let tools = writer.client.list_all_tools().await.expect("list");
    assert_eq!(tools.len(), 3);
    let update = tools
        .iter()
        .find(|t| t.name == "update_order_status")
        .expect("listed");
    let ann = update.annotations.as_ref().expect("annotations");
    assert_eq!(
        (ann.destructive_hint, ann.idempotent_hint),
        (Some(true), Some(true))
    );
    writer.stop().await;
}

#[tokio::test]
async fn queries_filter_with_bound_parameters() {
    let (_d, path) = db();
    let s = spawn(&path, &["db:read"]).await;
    let r = s.call("query_database", json!({"table": "users", "filters": [{"column": "name", "operator": "eq", "value": "Ada"}]})).await;
    let found = rows(&r);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["email"], "ada@example.com");
    let r = s.call("query_database", json!({"table": "products", "filters": [{"column": "price", "operator": "gt", "value": 60}], "limit": 2})).await;
    let found = rows(&r);
    assert_eq!(found.len(), 2);
    assert!(found
        .iter()
        .all(|p| p["price"].as_f64().is_some_and(|x| x > 60.0)));
    assert_eq!(
        rows(&s.call("query_database", json!({"table": "users"})).await).len(),
        12
    );
    s.stop().await;
}

#[tokio::test]
async fn bad_arguments_are_refused_with_paths() {
    let (_d, path) = db();
    let s = spawn(&path, &["db:read"]).await;
    let eleven: Vec<Value> = (0..11)
        .map(|_| json!({"column": "id", "operator": "gt", "value": 0}))
        .collect();
    let e = error_of(
        &s.call(
            "query_database",
            json!({"table": "users", "filters": eleven, "limit": 0}),
        )
        .await,
    );
    assert_eq!(e["code"], "INVALID_ARGUMENTS");
    let paths: Vec<_> = e["violations"]
        .as_array()
        .expect("list")
        .iter()
        .map(|v| v["path"].clone())
        .collect();
    assert_eq!(paths, [json!("filters"), json!("limit")]);
    let e = error_of(
        &s.call(
            "query_database",
            json!({"table": "users", "orderBy": "name"}),
        )
        .await,
    );
    assert!(e["violations"][0]["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("unknown field `orderBy`")));
    let e = error_of(&s.call("query_database", json!({"table": "users", "filters": [{"column": "name", "operator": "eq", "value": "x".repeat(300)}]})).await);
    assert_eq!(e["code"], "INVALID_ARGUMENTS");
    assert_eq!(e["violations"][0]["path"], "filters[0].value");
    s.stop().await;
}

#[tokio::test]
async fn sql_injection_through_every_string_field_has_no_effect_and_leaks_nothing() {
    let (_d, path) = db();
    let s = spawn(&path, &["db:read", "db:write"]).await;
    let f = |column: &str, operator: &str, value: &str| json!({"table": "users", "filters": [{"column": column, "operator": operator, "value": value}]});
    let attempts = [
        ("column", f("name; DROP TABLE users", "eq", "x")),
        ("column", f("name = name OR 1", "eq", "x")),
        ("column", f("sqlite_master", "eq", "x")),
        ("operator", f("name", "= name OR 1=1 --", "x")),
        ("table", json!({"table": "users; DROP TABLE users"})),
        ("table", json!({"table": "sqlite_master"})),
    ];
    for (field, args) in attempts {
        let r = s.call("query_database", args.clone()).await;
        let e = error_of(&r);
        let code = e["code"].as_str().expect("code");
        assert!(
            code == "INVALID_ARGUMENTS" || code == "TOOL_ERROR",
            "{field}: {e}"
        );
        assert_eq!(e["retryable"], false);
        let wire = serde_json::to_string(&r).expect("json").to_lowercase();
        for leak in ["select ", "sqlite:", "syntax error", "no such"] {
            assert!(
                !wire.contains(leak),
                "{field} attempt leaked `{leak}`: {wire}"
            );
        }
    }
    for value in [
        "' OR '1'='1",
        "Ada'; DROP TABLE users; --",
        "%' OR 1=1 --",
        "\" OR \"\"=\"",
    ] {
        for op in ["eq", "like"] {
            assert!(
                rows(&s.call("query_database", f("name", op, value)).await).is_empty(),
                "{op} {value}"
            );
        }
    }
    let e = error_of(
        &s.call(
            "update_order_status",
            json!({"order_id": 1, "status": "paid' WHERE 1=1; --"}),
        )
        .await,
    );
    assert_eq!(e["code"], "INVALID_ARGUMENTS");
    // Nothing changed: all users and orders are still there, and no order was rewritten.
    assert_eq!(
        rows(
            &s.call("query_database", json!({"table": "users", "limit": 100}))
                .await
        )
        .len(),
        12
    );
    let paid = rows(&s.call("query_database", json!({"table": "orders", "limit": 100, "filters": [{"column": "status", "operator": "eq", "value": "paid"}]})).await);
    assert_eq!(paid.len(), 8, "seeded orders keep their statuses");
    s.stop().await;
}

#[tokio::test]
async fn writes_need_the_write_scope() {
    let (_d, path) = db();
    let reader = spawn(&path, &["db:read"]).await;
    let e = error_of(
        &reader
            .call(
                "update_order_status",
                json!({"order_id": 1, "status": "shipped"}),
            )
            .await,
    );
    assert_eq!(e["code"], "FORBIDDEN");
    let audit = reader.stop().await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["outcome"], "denied");

    let writer = spawn(&path, &["db:read", "db:write"]).await;
    let r = writer
        .call(
            "update_order_status",
            json!({"order_id": 1, "status": "shipped"}),
        )
        .await;
    assert_eq!(
        r.structured_content,
        Some(json!({"order_id": 1, "previous_status": "pending", "status": "shipped"}))
    );
    let e = error_of(
        &writer
            .call(
                "update_order_status",
                json!({"order_id": 999, "status": "paid"}),
            )
            .await,
    );
    assert_eq!(
        (
            e["code"].as_str(),
            e["message"].as_str(),
            e["retryable"].as_bool()
        ),
        (
            Some("TOOL_ERROR"),
            Some("order 999 does not exist"),
            Some(false)
        )
    );
    writer.stop().await;
}

#[tokio::test]
async fn a_busy_database_is_retryable_and_a_broken_one_leaks_nothing() {
    let (_d, path) = db();
    let s = spawn(&path, &["db:read", "db:write"]).await;
    assert_eq!(
        s.call("restock_product", json!({"product_id": 1, "quantity": 1}))
            .await
            .is_error,
        Some(false)
    );

    // Another writer holds the lock: SQLite reports busy.
    let other = rusqlite::Connection::open(&path).expect("open");
    other
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let e = error_of(
        &s.call("restock_product", json!({"product_id": 1, "quantity": 1}))
            .await,
    );
    assert_eq!(
        (e["code"].as_str(), e["retryable"].as_bool()),
        (Some("TOOL_ERROR"), Some(true))
    );
    assert_eq!(e["message"], "the database is busy");
    other.execute_batch("ROLLBACK").expect("release");
    let r = s
        .call("restock_product", json!({"product_id": 1, "quantity": 1}))
        .await;
    assert_eq!(
        r.structured_content,
        Some(json!({"product_id": 1, "stock": 12})),
        "the retry succeeds"
    );

    // A broken schema is an internal error: generic message, not retryable.
    other
        .execute_batch("PRAGMA foreign_keys = OFF; DROP TABLE products")
        .expect("drop");
    let r = s.call("query_database", json!({"table": "products"})).await;
    let e = error_of(&r);
    assert_eq!(
        (
            e["code"].as_str(),
            e["retryable"].as_bool(),
            e["message"].as_str()
        ),
        (Some("TOOL_ERROR"), Some(false), Some("the tool failed"))
    );
    assert!(!serde_json::to_string(&r)
        .expect("json")
        .contains("no such table"));
    let audit = s.stop().await;
    assert!(
        audit
            .last()
            .and_then(|a| a["detail"].as_str())
            .is_some_and(|d| d.contains("no such table")),
        "the detail stays server-side"
    );
}

#[tokio::test]
async fn the_rate_limit_trips_over_stdio() {
    let (_d, path) = db();
    let s = spawn(&path, &["db:write"]).await;
    for _ in 0..5 {
        assert_eq!(
            s.call("restock_product", json!({"product_id": 2, "quantity": 1}))
                .await
                .is_error,
            Some(false)
        );
    }
    let e = error_of(
        &s.call("restock_product", json!({"product_id": 2, "quantity": 1}))
            .await,
    );
    assert_eq!(e["code"], "RATE_LIMITED");
    assert!(
        e["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| (1..=6000).contains(&ms)),
        "{e}"
    );
    s.stop().await;
}

#[tokio::test]
async fn exactly_one_audit_record_per_call_on_stderr() {
    let (_d, path) = db();
    let s = spawn(&path, &["db:read"]).await;
    let calls = [
        ("query_database", json!({"table": "users", "limit": 1})),
        ("query_database", json!({"table": "nope"})),
        (
            "update_order_status",
            json!({"order_id": 1, "status": "paid"}),
        ),
        (
            "query_database",
            json!({"table": "orders", "filters": [{"column": "bogus", "operator": "eq", "value": 1}]}),
        ),
    ];
    for (tool, args) in calls.clone() {
        s.call(tool, args).await;
    }
    let audit = s.stop().await;
    assert_eq!(audit.len(), calls.len(), "{audit:#?}");
    let outcomes: Vec<_> = audit
        .iter()
        .map(|a| {
            (
                a["outcome"].as_str().unwrap_or(""),
                a["error_code"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("success", None),
            ("rejected", Some("INVALID_ARGUMENTS")),
            ("denied", Some("FORBIDDEN")),
            ("failed", Some("TOOL_ERROR"))
        ]
    );
    assert!(audit.iter().all(|a| a["principal"]["subject"] == "e2e"
        && a["transport"] == "stdio"
        && a["version"] == mcp_harden::audit::AUDIT_RECORD_VERSION
        && a["client"]["name"].is_string()
        && a["span_id"].as_str().is_some_and(|s| s.len() == 16)));
}

/// The audit log holds every call's record once the server has exited: the records still
/// queued when the client left are written before the process ends.
#[tokio::test]
async fn the_audit_log_holds_every_record_after_the_server_exits() {
    let (dir, path) = db();
    let log = dir.path().join("audit.jsonl");
    let s = spawn_with(
        &path,
        &["db:read"],
        &["--audit-log", log.to_str().expect("a UTF-8 path")],
    )
    .await;
    const CALLS: usize = 300;
    let calls = (0..CALLS).map(|i| {
        s.client.call_tool(common::params(
            "query_database",
            json!({"table": "users", "limit": 1 + i % 5}),
        ))
    });
    let answers = futures::future::join_all(calls).await;
    assert!(answers.iter().all(Result::is_ok));
    // Gone at once: the server exits when its stdin closes (its stderr then ends).
    let _ = s.client.cancel().await;
    let _ = s.stderr.await;
    let v = mcp_harden::audit::file::verify(std::slice::from_ref(&log)).expect("a valid chain");
    // 50 a minute: the rejections beyond are recorded within the caller's budget, the rest
    // summed up when the server exits; every call is on disk, on its own or in the summary.
    let records: Vec<Value> = std::fs::read_to_string(&log)
        .expect("the log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect();
    assert_eq!(v.records, records.len() as u64);
    let own = records.iter().filter(|r| r["event"] == "tool_call").count() as u64;
    let summed: u64 = records
        .iter()
        .filter(|r| r["event"] == "unrecorded")
        .map(|r| r["unrecorded"]["count"].as_u64().expect("a count"))
        .sum();
    assert!(summed > 0, "the rate limit tripped and the budget held");
    assert_eq!(own + summed, CALLS as u64, "every call's record is on disk");
}

#[test]
fn print_manifest_describes_every_tool() {
    let out = std::process::Command::new(example_binary())
        .arg("--print-manifest")
        .output()
        .expect("run");
    assert!(out.status.success());
    let m: Value = serde_json::from_slice(&out.stdout).expect("manifest is JSON");
    let tools = m["tools"].as_array().expect("tools");
    assert_eq!(tools.len(), 3);
    let q = &tools[0];
    assert_eq!(q["name"], "query_database");
    assert_eq!(q["scopes"], json!(["db:read"]));
    assert_eq!(q["rate"], json!({"count": 50, "per": "min", "burst": 50}));
    assert_eq!(q["timeout_ms"], 5000);
    assert!(q["description"]
        .as_str()
        .is_some_and(|d| d.starts_with("Query a table")));
    assert!(
        q["input_schema"]["properties"]["table"].is_object()
            && q["output_schema"]["type"] == "object"
    );
}

/// `--otlp`: the example exports each call's span to a collector, flushed when it exits, and
/// the span carries the audit record's trace id.
#[tokio::test]
async fn the_example_exports_spans_over_otlp() {
    let (addr, bodies) = common::collector();
    let (_dir, db) = db();
    let url = format!("http://{addr}");
    let server = spawn_with(&db, &["db:read"], &["--otlp", &url]).await;
    let r = server
        .call("query_database", json!({"table": "users", "limit": 2}))
        .await;
    assert_eq!(rows(&r).len(), 2);
    let records = server.stop().await;
    let trace_id = records
        .iter()
        .find(|r| r["tool"] == "query_database")
        .and_then(|r| r["trace_id"].as_str())
        .expect("an audit record with a trace id")
        .to_owned();
    let body = common::first_export(&bodies).await;
    assert!(common::holds(&body, b"tools/call query_database"));
    assert!(common::holds(&body, b"mcp-harden-example"), "service name");
    assert!(
        common::holds(&body, &common::trace_id_bytes(&trace_id)),
        "the exported span has the record's trace id"
    );
}

/// `--redis`: two example servers share one caller's quota through Redis
/// (`restock_product` allows a burst of 5 per caller: 5 calls are admitted across both, not
/// 10). With Redis gone, the next call is refused as the default fail mode says
/// (`UNAVAILABLE`, retryable), and the server logs it.
#[tokio::test]
async fn the_example_shares_its_limits_through_redis() {
    let Some(mut redis) = common::Redis::start() else {
        return;
    };
    let (_dir, db) = db();
    let url = redis.url();
    let replicas = [
        spawn_with(&db, &["db:write"], &["--redis", &url]).await,
        spawn_with(&db, &["db:write"], &["--redis", &url]).await,
    ];
    let restock = json!({"product_id": 1, "quantity": 1});
    let mut admitted = 0;
    for i in 0..10 {
        let r = replicas[i % 2]
            .call("restock_product", restock.clone())
            .await;
        if r.is_error == Some(true) {
            let e = error_of(&r);
            assert_eq!(e["code"], "RATE_LIMITED", "{e}");
            assert_eq!(e["retryable"], true, "{e}");
            break;
        }
        admitted += 1;
    }
    assert_eq!(admitted, 5, "one quota across both replicas");

    redis.stop();
    let [first, second] = replicas;
    let e = error_of(&first.call("restock_product", restock.clone()).await);
    assert_eq!(e["code"], "UNAVAILABLE", "{e}");
    assert_eq!(e["retryable"], true, "{e}");
    let logs = first.stop_logging().await;
    let _ = second.stop_logging().await;
    assert!(
        logs.iter().any(|l| l["target"] == "mcp_harden::limits"
            && l["level"] == "WARN"
            && l["fields"]["fail"] == "closed"),
        "the failed decision is logged: {logs:?}"
    );
}
