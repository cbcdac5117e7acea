//! A secret passed as an argument, a credential-named field and the bearer token itself appear
//! in no sink, no log line and no metric: everything is captured and grepped.

use std::net::TcpListener;

use mcp_harden::audit::{FileAuditConfig, TracingAuditSink};
use mcp_harden::auth::{DevToken, JwtAuthenticator};
use mcp_harden::prelude::*;
use mcp_harden::server::http::HttpConfig;

mod common;

struct App;

/// Sign in to a remote service.
#[tool(scopes = "login", rate = "unlimited")]
async fn sign_in(
    _ctx: Ctx<App>,
    #[arg(max_len = 32)] user: String,
    #[arg(max_len = 64, secret)] passphrase: String,
    #[arg(max_len = 64)] api_key: String,
    #[arg(max_len = 200)] note: String,
    #[arg(max_len = 400)] body: String,
) -> String {
    let _ = (passphrase, api_key, note, body);
    format!("signed in {user}")
}

const SECRET: &[u8] = b"a redaction test secret, 32+ bytes long";

#[tokio::test]
async fn secrets_reach_no_sink_log_or_metric() {
    // Everything mcp-harden logs, at every level; rmcp capped at info as the README says
    // (its debug events print raw requests).
    common::capture_logs("trace,rmcp=info");
    let metrics_addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    mcp_harden::telemetry::install_prometheus(metrics_addr).expect("exporter");

    let dir = tempfile::tempdir().expect("tempdir");
    let audit_path = dir.path().join("audit.jsonl");
    let file = FileAuditConfig::new(&audit_path).open().expect("audit log");
    let server = Hardened::builder(App)
        .tool::<sign_in>()
        .audit_sink((file.clone(), TracingAuditSink))
        .build()
        .expect("builds");
    let jwt = JwtAuthenticator::builder()
        .hs256(SECRET)
        .build()
        .expect("jwt");
    let http = server
        .bind_http(
            HttpConfig::new("127.0.0.1:0".parse().expect("addr"))
                .stateless()
                .authenticator(jwt),
        )
        .await
        .expect("binds");
    let url = http.resource_url().to_owned();
    let token = DevToken::new("redactor", &url)
        .scopes(["login"])
        .sign_hs256(SECRET)
        .expect("token");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(http.serve_until(async move {
        let _ = stopped.await;
    }));

    let passphrase = "correct-horse-battery-staple-4711";
    let api_key = "sk-live-0123456789abcdef";
    // A credential inside an ordinary string: its value masked, the rest kept.
    let db_password = "Tr0ub4dor-and-3";
    // .NET appSettings: the value beside a key naming a credential.
    let app_key = "ak-7d3e19c0b2";
    let note = format!(
        "dsn host=db user=app password={db_password} dbname=crm \
         <add key=\"ApiKey\" value=\"{app_key}\"/><add key=\"Timeout\" value=\"30\"/>"
    );
    // In XML, and URL-encoded in a query string.
    let xml_key = "xk-5f0c2a9e7b1d";
    let encoded_secret = "cs-93be41d07a6f";
    // And a Kubernetes manifest's environment.
    let k8s_secret = "k8-e40b6a21f9";
    let body = format!(
        "<Config><ns:ApiKey>{xml_key}</ns:ApiKey></Config> \
         cb?state=ok&data=client_secret%3D{encoded_secret}%26next%3D1\n\
         env:\n- name: DB_PASSWORD\n  value: {k8s_secret}\n- name: LOG_LEVEL\n  value: debug"
    );
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let post = |auth: String| {
        let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "sign_in", "arguments": {"user": "ann", "passphrase": passphrase, "api_key": api_key, "note": note, "body": body}}});
        client
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2025-11-25")
            .header("authorization", auth)
            .body(body.to_string())
            .send()
    };
    let ok = post(format!("Bearer {token}")).await.expect("answers");
    assert_eq!(ok.status(), 200);
    let text = ok.text().await.expect("body");
    assert!(text.contains("signed in ann"), "{text}");
    // A refused token is logged and audited as a security event, never as itself.
    let forged = format!("{token}x");
    let refused = post(format!("Bearer {forged}")).await.expect("answers");
    assert_eq!(refused.status(), 401);

    common::eventually(
        "two records written",
        std::time::Duration::from_secs(10),
        || file.written() >= 2,
    )
    .await;
    let audit = std::fs::read_to_string(&audit_path).expect("audit log");
    let metrics = common::scrape(metrics_addr).await;
    let logs = common::logs();

    assert!(audit.contains("\"passphrase\":\"[REDACTED]\""), "{audit}");
    assert!(audit.contains("\"api_key\":\"[REDACTED]\""), "{audit}");
    assert!(
        audit.contains("host=db user=app password=[REDACTED] dbname=crm"),
        "{audit}"
    );
    assert!(
        audit.contains(
            r#"<add key=\"ApiKey\" value=\"[REDACTED]\"/><add key=\"Timeout\" value=\"30\"/>"#
        ),
        "{audit}"
    );
    assert!(
        audit.contains(
            r"env:\n- name: DB_PASSWORD\n  value: [REDACTED]\n- name: LOG_LEVEL\n  value: debug"
        ),
        "{audit}"
    );
    assert!(
        audit.contains(
            "<Config><ns:ApiKey>[REDACTED]</ns:ApiKey></Config> \
             cb?state=ok&data=client_secret%3D[REDACTED]%26next%3D1"
        ),
        "{audit}"
    );
    assert!(
        logs.contains("mcp_harden::audit"),
        "the tracing sink logged the call"
    );
    assert!(metrics.contains("mcp_harden_tool_calls_total"), "{metrics}");
    for (what, haystack) in [
        ("audit log", &audit),
        ("logs", &logs),
        ("metrics", &metrics),
    ] {
        for secret in [
            passphrase,
            api_key,
            db_password,
            xml_key,
            encoded_secret,
            app_key,
            k8s_secret,
            token.as_str(),
            forged.as_str(),
        ] {
            assert!(!haystack.contains(secret), "{what} hold a secret");
        }
        // Not even a piece of the token's signature.
        let signature = token.rsplit('.').next().expect("signature");
        assert!(
            !haystack.contains(signature),
            "{what} hold the token's signature"
        );
    }
    let _ = stop.send(());
    task.await.expect("joins").expect("serves");
}
