//! Metrics scraped over HTTP from the Prometheus endpoint match the calls made, and no
//! argument or credential ever becomes a label.

use std::net::TcpListener;
use std::time::Duration;

use mcp_harden::prelude::*;

mod common;
use common::connect;

struct App;

/// Look a word up.
#[tool(scopes = "read", rate = "3/min")]
async fn lookup(
    _ctx: Ctx<App>,
    #[arg(max_len = 32)] word: String,
    #[arg(max_len = 64, secret)] token: String,
) -> String {
    let _ = token;
    word
}

/// Change a word.
#[tool(scopes = "write", rate = "unlimited")]
async fn change(_ctx: Ctx<App>, #[arg(max_len = 32)] word: String) -> String {
    word
}

/// The value of the sample `name{labels}` in a Prometheus text page (labels in any order;
/// summed over the series that match). A series that is not there fails the test: a zero
/// must be exported, not absent.
fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let values: Vec<f64> = page
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .collect();
    assert!(!values.is_empty(), "no {name}{labels:?} in:\n{page}");
    values.iter().sum()
}

#[tokio::test]
async fn scraped_metrics_match_the_calls() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    mcp_harden::telemetry::install_prometheus(addr).expect("exporter starts");
    let server = Hardened::builder(App)
        .tool::<lookup>()
        .tool::<change>()
        .tier("gold", 2.0)
        .local_principal(Principal::local("metrics-user", ["read"]).with_tier("gold"))
        .build()
        .expect("builds");
    let c = connect(server.clone()).await;
    let secret = "tok-3f9a-never-a-label";
    let mut ok = 0;
    let mut limited = 0;
    // gold: 2 x 3/min = 6 calls, then RATE_LIMITED.
    for i in 0..8 {
        let r = c
            .call_tool(common::params(
                "lookup",
                serde_json::json!({"word": format!("w{i}"), "token": secret}),
            ))
            .await
            .expect("answers");
        if r.is_error == Some(true) {
            limited += 1;
        } else {
            ok += 1;
        }
    }
    assert_eq!((ok, limited), (6, 2));
    let r = c
        .call_tool(common::params("change", serde_json::json!({"word": "x"})))
        .await
        .expect("answers");
    assert_eq!(r.is_error, Some(true), "no write scope");

    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");

    // Over HTTP, one session per caller: the second is refused.
    let key = mcp_harden::auth::ApiKey::generate();
    let keys = mcp_harden::auth::ApiKeyAuthenticator::new([key.entry("metrics-user", ["read"])])
        .expect("keys");
    let http = server
        .bind_http(
            mcp_harden::server::http::HttpConfig::new("127.0.0.1:0".parse().expect("address"))
                .authenticator(keys)
                .max_sessions_per_caller(1)
                // Two refusals of unknown callers recorded one by one, the rest summed up
                // (an authenticated caller's, the session refused, counts against its own
                // budget for rejected calls, far from spent).
                .refusal_records_per_source(1, 2),
        )
        .await
        .expect("binds");
    let url = http.resource_url().to_owned();
    tokio::spawn(http.serve_until(std::future::pending()));
    let init = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "metrics", "version": "1"}}});
    let initialize = |credential: String| {
        client
            .post(&url)
            .header("authorization", format!("Bearer {credential}"))
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(init.to_string())
            .send()
    };
    for expected in [200, 429] {
        let r = initialize(key.expose().to_owned()).await.expect("answers");
        assert_eq!(r.status(), expected);
    }
    // Security events: audited like calls, the first two; the next two are over the
    // record budget.
    for _ in 0..4 {
        let r = initialize("not-a-key".to_owned()).await.expect("answers");
        assert_eq!(r.status(), 401);
    }
    let mut page = String::new();
    for _ in 0..50 {
        page = common::scrape(addr).await;
        if page.contains("mcp_harden_tool_calls_total") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calls = "mcp_harden_tool_calls_total";
    assert_eq!(
        sample(
            &page,
            calls,
            &[("tool", "lookup"), ("status", "success"), ("tier", "gold")]
        ),
        6.0,
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            calls,
            &[("tool", "lookup"), ("status", "RATE_LIMITED")]
        ),
        2.0,
        "{page}"
    );
    assert_eq!(
        sample(&page, calls, &[("tool", "change"), ("status", "FORBIDDEN")]),
        1.0,
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            "mcp_harden_tool_errors_total",
            &[("tool", "lookup"), ("code", "RATE_LIMITED")]
        ),
        2.0
    );
    assert_eq!(
        sample(
            &page,
            "mcp_harden_rate_limited_total",
            &[("tool", "lookup"), ("limit", "tool")]
        ),
        2.0
    );
    assert_eq!(
        sample(
            &page,
            "mcp_harden_tool_call_duration_seconds_count",
            &[("tool", "lookup")]
        ),
        8.0
    );
    assert_eq!(
        sample(
            &page,
            "mcp_harden_tool_calls_in_flight",
            &[("tool", "lookup")]
        ),
        0.0
    );
    assert_eq!(
        sample(
            &page,
            "mcp_harden_audit_records_total",
            &[("result", "recorded")]
        ),
        12.0,
        "nine calls, a session refused, two credentials refused"
    );
    assert_eq!(
        sample(
            &page,
            "mcp_harden_audit_records_total",
            &[("result", "unrecorded")]
        ),
        2.0,
        "two refusals over the budget"
    );
    assert_eq!(
        sample(
            &page,
            "mcp_harden_auth_failures_total",
            &[("reason", "unrecognized_credentials")]
        ),
        4.0,
        "refusals over the budget are counted all the same: {page}"
    );
    assert_eq!(sample(&page, "mcp_harden_http_sessions", &[]), 1.0);
    assert_eq!(
        sample(
            &page,
            "mcp_harden_http_sessions_refused_total",
            &[("limit", "caller")]
        ),
        1.0
    );
    assert!(
        !page.contains(secret),
        "a secret argument reached the metrics"
    );
    assert!(!page.contains("metrics-user"), "subjects are not labels");
}
