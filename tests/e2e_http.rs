//! End-to-end over Streamable HTTP: real servers on loopback port 0, attacked with raw
//! requests and used with the real rmcp client. Every refusal is checked three ways: the
//! HTTP answer, the tool never running, and the audit record.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mcp_harden::audit::{AuditEvent, Outcome};
use mcp_harden::auth::{ApiKey, ApiKeyAuthenticator, JwtAuthenticator};
use mcp_harden::prelude::*;
use mcp_harden::server::http::{HttpConfig, HttpError, ScopeChallenge};
use mcp_harden::AuditRecord;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

mod common;
use common::{capture_logs, logs, Collect};

// ---------------------------------------------------------------------------------------
// The application: every tool counts its runs, so a refusal provably ran nothing.

#[derive(Default)]
struct App {
    runs: AtomicUsize,
    napping: Notify,
}

#[derive(Serialize, schemars::JsonSchema)]
struct Rows {
    table: String,
    rows: usize,
}

/// Read rows from a table.
#[tool(scopes = "db:read", rate = "unlimited", read_only)]
async fn read_rows(ctx: Ctx<App>, #[arg(max_len = 32)] table: String) -> Rows {
    let rows = ctx.runs.fetch_add(1, Ordering::SeqCst) + 1;
    Rows { table, rows }
}

/// Write one row.
#[tool(scopes = "db:write", rate = "unlimited")]
async fn write_row(ctx: Ctx<App>, #[arg(max_len = 32)] table: String) -> Rows {
    let rows = ctx.runs.fetch_add(1, Ordering::SeqCst) + 1;
    Rows { table, rows }
}

/// Reset everything.
#[tool(scopes = "admin", rate = "unlimited", destructive)]
async fn admin_reset(ctx: Ctx<App>) -> Rows {
    let rows = ctx.runs.fetch_add(1, Ordering::SeqCst) + 1;
    Rows {
        table: "*".into(),
        rows,
    }
}

/// Take a short nap, then count.
#[tool(scopes = "db:read", rate = "unlimited", timeout = "10s")]
async fn nap(ctx: Ctx<App>) -> Rows {
    ctx.napping.notify_one();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = ctx.runs.fetch_add(1, Ordering::SeqCst) + 1;
    Rows {
        table: "nap".into(),
        rows,
    }
}

// ---------------------------------------------------------------------------------------
// Audit and log capture.

impl Collect {
    /// The records of this event.
    fn events(&self, event: AuditEvent) -> Vec<AuditRecord> {
        self.records()
            .into_iter()
            .filter(|r| r.event == event)
            .collect()
    }

    /// The one denied record with this event and reason.
    fn denied(&self, event: AuditEvent, reason: &str) -> AuditRecord {
        let all = self.records();
        let found: Vec<_> = all
            .iter()
            .filter(|r| r.event == event && r.reason == Some(reason))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one {event:?}/{reason} record in {all:#?}"
        );
        check_denied(found[0], event, reason);
        found[0].clone()
    }
}

/// A security event recorded over HTTP with its source address.
fn check_denied(r: &AuditRecord, event: AuditEvent, reason: &str) {
    assert_eq!(r.event, event, "{r:?}");
    assert_eq!(r.reason, Some(reason), "{r:?}");
    assert_eq!(r.outcome, Outcome::Denied);
    assert_eq!(r.transport, "http");
    assert!(
        r.source
            .is_some_and(|s| s.ip().is_loopback() && s.port() != 0),
        "source address recorded: {r:?}"
    );
}

/// Neither the audit trail nor any log line holds `secret`.
fn assert_never_recorded(audit: &Collect, secret: &str) {
    for r in audit.records() {
        assert!(
            !r.to_json().contains(secret),
            "an audit record holds a credential: {r:?}"
        );
    }
    let logs = logs();
    assert!(logs.contains("mcp_harden::http"), "logs are captured");
    assert!(!logs.contains(secret), "a log line holds a credential");
}

// ---------------------------------------------------------------------------------------
// Servers.

const SECRET: &[u8] = b"an HS256 secret for tests, 32+ bytes long";
const ISSUER: &str = "https://issuer.example";
const RSA_PRIVATE: &[u8] = include_bytes!("keys/rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("keys/rsa_public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("keys/ec_private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("keys/ec_public.pem");
const ED_PRIVATE: &[u8] = include_bytes!("keys/ed_private.pem");
const ED_PUBLIC: &[u8] = include_bytes!("keys/ed_public.pem");
const JWKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/jwks.json");

struct Srv {
    addr: SocketAddr,
    resource: String,
    metadata: String,
    app: Arc<App>,
    audit: Collect,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), HttpError>>,
}

impl Srv {
    fn runs(&self) -> usize {
        self.app.runs.load(Ordering::SeqCst)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A JWT for this server (audience = its resource URL), signed with [`SECRET`].
    fn token(&self, sub: &str, scope: &str) -> String {
        hs256(&self.claims(sub, scope))
    }

    fn claims(&self, sub: &str, scope: &str) -> Value {
        json!({"sub": sub, "scope": scope, "iss": ISSUER, "aud": self.resource, "exp": now() + 600})
    }

    /// The rmcp Streamable HTTP client, authenticated with `credential`.
    async fn client(&self, credential: &str) -> RunningService<RoleClient, ()> {
        let t = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(self.resource.as_str())
                .auth_header(credential),
        );
        ().serve(t).await.expect("the rmcp client connects")
    }

    /// A bare TCP connection to the server, for requests no HTTP client would send.
    async fn tcp(
        &self,
    ) -> (
        tokio::net::tcp::OwnedReadHalf,
        tokio::net::tcp::OwnedWriteHalf,
    ) {
        tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect")
            .into_split()
    }

    /// A `tools/call` of `read_rows` over a bare connection, for request heads no HTTP client
    /// sends: `target` as the request target, a Host line for each of `hosts`; the answer,
    /// read until the server closes the connection.
    async fn bare_call(&self, target: &str, hosts: &[&str], authorization: &str) -> String {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": "read_rows", "arguments": {"table": "users"}}})
        .to_string();
        let hosts: String = hosts.iter().map(|h| format!("host: {h}\r\n")).collect();
        let request = format!(
            "POST {target} HTTP/1.1\r\n{hosts}authorization: {authorization}\r\n\
             accept: application/json, text/event-stream\r\ncontent-type: application/json\r\n\
             mcp-protocol-version: 2025-11-25\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let (read, mut write) = self.tcp().await;
        write.write_all(request.as_bytes()).await.expect("write");
        let (answer, _) = until_closed(read).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// A raw `tools/call` POST of `tool` with `headers`.
    async fn raw_call(&self, tool: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                          "params": {"name": tool, "arguments": {"table": "users"}}});
        self.raw_post(&body.to_string(), headers).await
    }

    /// A raw POST of `body` with `headers`, which replace the defaults of the same name
    /// (`accept` both media types, `content-type` JSON, `mcp-protocol-version` 2025-11-25).
    async fn raw_post(&self, body: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut given = reqwest::header::HeaderMap::new();
        for (k, v) in headers {
            given.append(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                reqwest::header::HeaderValue::from_str(v).expect("header value"),
            );
        }
        http_client()
            .post(&self.resource)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2025-11-25")
            .headers(given)
            .body(body.to_owned())
            .send()
            .await
            .expect("the server answers")
    }

    /// Stops the server and waits for `serve_until` to return.
    async fn stop(mut self) -> Result<(), HttpError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("serve_until returns within a few seconds")
            .expect("the server task does not panic")
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("reqwest client")
}

/// The default HS256 authenticator: [`SECRET`], issuer [`ISSUER`].
fn hs_auth() -> JwtAuthenticator {
    JwtAuthenticator::builder()
        .hs256(SECRET)
        .issuer(ISSUER)
        .build()
        .expect("valid JWT configuration")
}

/// A loopback config on port 0, with a generous failure limit so attack batteries are not
/// throttled (the throttling test sets its own).
fn config() -> HttpConfig {
    HttpConfig::new("127.0.0.1:0".parse().expect("address")).auth_failure_limit(1000, 1000)
}

async fn start(config: HttpConfig) -> Srv {
    start_with(config, |b| b).await
}

/// [`start`], the server's builder set up further by `setup`.
async fn start_with(
    config: HttpConfig,
    setup: impl FnOnce(mcp_harden::HardenedBuilder<App>) -> mcp_harden::HardenedBuilder<App>,
) -> Srv {
    capture_logs("trace");
    let app = Arc::new(App::default());
    let audit = Collect::default();
    let hardened = setup(
        Hardened::builder(app.clone())
            .tool::<read_rows>()
            .tool::<write_row>()
            .tool::<admin_reset>()
            .tool::<nap>()
            .audit_sink(audit.clone()),
    )
    .build()
    .expect("the server builds");
    let server = hardened.bind_http(config).await.expect("binds");
    let (stop, stopped) = oneshot::channel::<()>();
    let srv = Srv {
        addr: server.local_addr(),
        resource: server.resource_url().to_owned(),
        metadata: server.metadata_url().to_owned(),
        app,
        audit,
        stop: Some(stop),
        task: tokio::spawn(server.serve_until(async move {
            let _ = stopped.await;
        })),
    };
    assert!(
        srv.resource.ends_with(&format!("://{}/mcp", srv.addr)),
        "{}",
        srv.resource
    );
    srv
}

/// A stateless HS256 server (a bare `tools/call` needs no session).
async fn stateless() -> Srv {
    start(config().stateless().authenticator(hs_auth())).await
}

// ---------------------------------------------------------------------------------------
// Tokens.

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("token signs")
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(SECRET),
        claims,
    )
}

fn b64(json: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

// ---------------------------------------------------------------------------------------
// Responses.

/// The JSON-RPC message of a response body, whether plain JSON or SSE.
fn jsonrpc(body: &str) -> Value {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        return v;
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("result").is_some() || v.get("error").is_some())
        .unwrap_or_else(|| panic!("no JSON-RPC response in {body:?}"))
}

fn www_authenticate(r: &reqwest::Response) -> String {
    r.headers()
        .get("www-authenticate")
        .expect("a WWW-Authenticate challenge")
        .to_str()
        .expect("ASCII challenge")
        .to_owned()
}

fn call_args(tool: &'static str) -> CallToolRequestParams {
    common::params(tool, json!({"table": "users"}))
}

async fn call(c: &RunningService<RoleClient, ()>, tool: &'static str) -> CallToolResult {
    c.call_tool(call_args(tool)).await.expect("call answers")
}

/// Sends a `tools/call` of `read_rows` with `headers` and checks that it was refused with
/// 401 and a challenge, ran nothing, and left one audit record with `reason`.
async fn refused(srv: &Srv, headers: &[(&str, &str)], reason: &str) {
    let before = srv.runs();
    let seen = srv.audit.records().len();
    let r = srv.raw_call("read_rows", headers).await;
    assert_eq!(r.status(), 401, "{reason}: {:?}", r.text().await);
    let challenge = www_authenticate(&r);
    assert!(challenge.starts_with("Bearer"), "{reason}: {challenge}");
    assert!(
        challenge.contains(&format!("resource_metadata=\"{}\"", srv.metadata)),
        "{reason}: {challenge}"
    );
    assert_eq!(srv.runs(), before, "{reason}: the tool did not run");
    let new = srv.audit.records().split_off(seen);
    assert_eq!(new.len(), 1, "{reason}: one record per refusal: {new:#?}");
    let record = &new[0];
    check_denied(record, AuditEvent::Authentication, reason);
    assert_eq!(record.principal.subject, None);
    assert_eq!(record.error_code, Some("UNAUTHENTICATED"));
}

// ---------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn happy_path_with_the_rmcp_client() {
    let srv = start(config().authenticator(hs_auth())).await;
    let token = srv.token("alice", "db:read");
    let c = srv.client(&token).await;

    let names: Vec<String> = c
        .list_all_tools()
        .await
        .expect("tools/list")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(names, ["read_rows", "nap"], "only what db:read may call");

    let r = call(&c, "read_rows").await;
    assert_eq!(r.is_error, Some(false), "{r:?}");
    assert_eq!(
        r.structured_content,
        Some(json!({"table": "users", "rows": 1}))
    );
    assert_eq!(srv.runs(), 1);

    let records = srv.audit.records();
    assert_eq!(records.len(), 1, "{records:#?}");
    let rec = &records[0];
    assert_eq!(rec.event, AuditEvent::ToolCall);
    assert_eq!(rec.outcome, Outcome::Success);
    assert_eq!(rec.tool.as_deref(), Some("read_rows"));
    assert_eq!(rec.transport, "http");
    assert!(
        rec.source
            .is_some_and(|s| s.ip().is_loopback() && s.port() != 0),
        "{rec:?}"
    );
    assert_eq!(rec.principal.subject.as_deref(), Some("alice"));
    assert_eq!(rec.principal.auth_method, "jwt");
    assert_eq!(rec.principal.key_id, None);

    // A second caller with more scopes sees more; the first one's view is unchanged.
    let admin = srv
        .client(&srv.token("root", "db:read db:write admin"))
        .await;
    assert_eq!(admin.list_all_tools().await.expect("list").len(), 4);
    assert_eq!(c.list_all_tools().await.expect("list").len(), 2);

    c.cancel().await.expect("client stops");
    admin.cancel().await.expect("client stops");
    assert_never_recorded(&srv.audit, &token);
    srv.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn every_jwt_algorithm_and_jwks_kid_is_accepted() {
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("RSA key");
    let ec = EncodingKey::from_ec_pem(EC_PRIVATE).expect("EC key");
    let ed = EncodingKey::from_ed_pem(ED_PRIVATE).expect("Ed25519 key");
    let hmac = EncodingKey::from_secret(SECRET);

    let pems = JwtAuthenticator::builder()
        .hs256(SECRET)
        .rs256_pem(RSA_PUBLIC)
        .es256_pem(EC_PUBLIC)
        .eddsa_pem(ED_PUBLIC)
        .issuer(ISSUER)
        .build()
        .expect("PEM keys");
    let jwks = JwtAuthenticator::builder()
        .jwks_file(JWKS)
        .issuer(ISSUER)
        .build()
        .expect("JWKS file");
    let by_pem = start(config().stateless().authenticator(pems)).await;
    let by_kid = start(config().stateless().authenticator(jwks)).await;

    let cases: [(&Srv, Algorithm, Option<&str>, &EncodingKey); 7] = [
        (&by_pem, Algorithm::HS256, None, &hmac),
        (&by_pem, Algorithm::RS256, None, &rsa),
        (&by_pem, Algorithm::ES256, None, &ec),
        (&by_pem, Algorithm::EdDSA, None, &ed),
        (&by_kid, Algorithm::RS256, Some("rsa-1"), &rsa),
        (&by_kid, Algorithm::ES256, Some("ec-1"), &ec),
        (&by_kid, Algorithm::EdDSA, Some("ed-1"), &ed),
    ];
    for (srv, alg, kid, key) in cases {
        let before = srv.runs();
        let token = sign(alg, kid, key, &srv.claims("alice", "db:read"));
        let r = srv
            .raw_call("read_rows", &[("authorization", &bearer(&token))])
            .await;
        assert_eq!(r.status(), 200, "{alg:?} {kid:?}");
        let msg = jsonrpc(&r.text().await.expect("body"));
        assert_eq!(
            msg["result"]["isError"],
            json!(false),
            "{alg:?} {kid:?}: {msg}"
        );
        assert_eq!(srv.runs(), before + 1, "{alg:?} {kid:?}");
    }

    // The rmcp client too, with a JWKS-selected key.
    let token = sign(
        Algorithm::EdDSA,
        Some("ed-1"),
        &ed,
        &by_kid.claims("bob", "db:read"),
    );
    let c = by_kid.client(&token).await;
    assert_eq!(call(&c, "read_rows").await.is_error, Some(false));
    let last = by_kid.audit.records().pop().expect("a record");
    assert_eq!(last.principal.subject.as_deref(), Some("bob"));
    assert_eq!(last.outcome, Outcome::Success);
}

#[tokio::test]
async fn forged_and_invalid_tokens_get_401_and_run_nothing() {
    let srv = stateless().await;
    let good = srv.claims("alice", "db:read");
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };

    let expired = hs256(&with("exp", json!(now() - 86_400)));
    refused(&srv, &[("authorization", &bearer(&expired))], "expired").await;

    let early = hs256(&with("nbf", json!(now() + 86_400)));
    refused(&srv, &[("authorization", &bearer(&early))], "not_yet_valid").await;

    let foreign_iss = hs256(&with("iss", json!("https://evil.example")));
    refused(
        &srv,
        &[("authorization", &bearer(&foreign_iss))],
        "wrong_issuer",
    )
    .await;

    let foreign_aud = hs256(&with("aud", json!("http://127.0.0.1:1/mcp")));
    refused(
        &srv,
        &[("authorization", &bearer(&foreign_aud))],
        "wrong_audience",
    )
    .await;

    // A genuine token whose payload is swapped for an escalated one.
    let genuine = hs256(&good);
    let parts: Vec<&str> = genuine.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&with("scope", json!("db:read db:write admin"))),
        parts[2]
    );
    refused(
        &srv,
        &[("authorization", &bearer(&tampered))],
        "bad_signature",
    )
    .await;

    // `alg: none` with an empty signature.
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&good)
    );
    refused(
        &srv,
        &[("authorization", &bearer(&unsigned))],
        "malformed_token",
    )
    .await;

    let garbage = "zzGarbageNotAJwt-Q1w2E3.%%not-base64%%.tailXYZ987".to_owned();
    refused(
        &srv,
        &[("authorization", &bearer(&garbage))],
        "malformed_token",
    )
    .await;

    let huge = format!("{}.{}.sig", "h".repeat(10_000), "p".repeat(10_000));
    refused(
        &srv,
        &[("authorization", &bearer(&huge))],
        "oversized_credentials",
    )
    .await;

    let unprefixed = hs256(&good);
    refused(&srv, &[("authorization", &unprefixed)], "malformed_header").await;

    refused(&srv, &[], "missing_credentials").await;

    // Two Authorization headers (a valid one smuggled next to garbage): ambiguous, refused.
    let valid = srv.token("alice", "db:read");
    refused(
        &srv,
        &[
            ("authorization", &bearer(&valid)),
            ("authorization", "Bearer x.y.z"),
        ],
        "malformed_header",
    )
    .await;
    assert_eq!(srv.runs(), 0);

    // Positive control: the same server and request with a valid token do run the tool.
    let r = srv
        .raw_call("read_rows", &[("authorization", &bearer(&valid))])
        .await;
    assert_eq!(r.status(), 200);
    let msg = jsonrpc(&r.text().await.expect("body"));
    assert_eq!(
        msg["result"]["structuredContent"],
        json!({"table": "users", "rows": 1})
    );
    assert_eq!(srv.runs(), 1);

    let sent = [
        &expired,
        &early,
        &foreign_iss,
        &foreign_aud,
        &genuine,
        &tampered,
        &unsigned,
        &garbage,
        &huge,
        &unprefixed,
        &valid,
    ];
    for token in sent {
        assert_never_recorded(&srv.audit, token);
    }
}

#[tokio::test]
async fn key_confusion_and_unknown_kids_are_refused() {
    // HS256 "signed" with the RSA public key, against a server that holds only that key.
    let rsa_only = JwtAuthenticator::builder()
        .rs256_pem(RSA_PUBLIC)
        .issuer(ISSUER)
        .build()
        .expect("RSA key");
    let srv = start(config().stateless().authenticator(rsa_only)).await;
    let claims = srv.claims("mallory", "db:read");
    let confused = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(RSA_PUBLIC),
        &claims,
    );
    refused(
        &srv,
        &[("authorization", &bearer(&confused))],
        "algorithm_mismatch",
    )
    .await;
    // The same confusion with a kid, against the JWKS server.
    let jwks = JwtAuthenticator::builder()
        .jwks_file(JWKS)
        .issuer(ISSUER)
        .build()
        .expect("JWKS");
    let by_kid = start(config().stateless().authenticator(jwks)).await;
    let claims = by_kid.claims("mallory", "db:read");
    let confused_kid = sign(
        Algorithm::HS256,
        Some("rsa-1"),
        &EncodingKey::from_secret(RSA_PUBLIC),
        &claims,
    );
    refused(
        &by_kid,
        &[("authorization", &bearer(&confused_kid))],
        "algorithm_mismatch",
    )
    .await;

    // A kid the JWKS does not hold, and a real key under the wrong kid.
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("RSA key");
    let unknown = sign(Algorithm::RS256, Some("rsa-2"), &rsa, &claims);
    refused(
        &by_kid,
        &[("authorization", &bearer(&unknown))],
        "unknown_key",
    )
    .await;
    let ec = EncodingKey::from_ec_pem(EC_PRIVATE).expect("EC key");
    let wrong_kid = sign(Algorithm::ES256, Some("rsa-1"), &ec, &claims);
    let r = by_kid
        .raw_call("read_rows", &[("authorization", &bearer(&wrong_kid))])
        .await;
    assert_eq!(r.status(), 401);
    assert_eq!(by_kid.runs(), 0);

    // Control: the right kid passes.
    let good = sign(Algorithm::RS256, Some("rsa-1"), &rsa, &claims);
    let r = by_kid
        .raw_call("read_rows", &[("authorization", &bearer(&good))])
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(by_kid.runs(), 1);
    for t in [&confused, &confused_kid, &unknown, &wrong_kid, &good] {
        assert_never_recorded(&srv.audit, t);
        assert_never_recorded(&by_kid.audit, t);
    }
}

#[tokio::test]
async fn foreign_origin_and_host_get_403() {
    let srv = stateless().await;
    let auth = bearer(&srv.token("alice", "db:read"));

    let r = srv
        .raw_call(
            "read_rows",
            &[("authorization", &auth), ("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(srv.runs(), 0);
    let rec = srv.audit.denied(AuditEvent::Transport, "foreign_origin");
    assert_eq!(rec.principal.subject, None, "refused before authentication");

    let r = srv
        .raw_call(
            "read_rows",
            &[("authorization", &auth), ("host", "evil.example:1234")],
        )
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(srv.runs(), 0);
    srv.audit.denied(AuditEvent::Transport, "foreign_host");

    // DNS rebinding reaches the metadata route too, and an unknown path (a 404 otherwise);
    // a Host with a userinfo part or a port that is not a number never matches an allowed one.
    for path in ["/.well-known/oauth-protected-resource", "/nowhere"] {
        let r = http_client()
            .get(srv.url(path))
            .header("host", "evil.example")
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 403, "{path}");
    }
    for host in ["evil@127.0.0.1", "127.0.0.1:80x", "127.0.0.1:+80"] {
        let r = srv
            .raw_call("read_rows", &[("authorization", &auth), ("host", host)])
            .await;
        assert_eq!(r.status(), 403, "{host}");
    }
    assert_eq!(srv.runs(), 0);

    // Two Host headers, the first one allowed: refused whatever the order (another hop may
    // route by the other one).
    let here = srv.addr.to_string();
    for hosts in [
        [here.as_str(), "evil.example"],
        ["evil.example", here.as_str()],
    ] {
        let answer = srv.bare_call("/mcp", &hosts, &auth).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{hosts:?}: {answer}");
    }
    assert_eq!(srv.runs(), 0);
    let foreign = srv
        .audit
        .records()
        .into_iter()
        .filter(|r| r.reason == Some("foreign_host"))
        .count();
    assert_eq!(
        foreign, 8,
        "the two double-Host requests are recorded as foreign hosts (six before them)"
    );

    // An absolute-form target names the host that counts: a foreign one is refused even
    // with an allowed Host header; an allowed one passes.
    for (target, status) in [
        ("http://evil.example", "403"),
        ("http://localhost:1", "200"),
    ] {
        let answer = srv
            .bare_call(&format!("{target}/mcp"), &[&here], &auth)
            .await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{target}: {answer}"
        );
    }
    assert_eq!(srv.runs(), 1);

    // A loopback browser origin (e.g. the MCP Inspector) passes.
    let r = srv
        .raw_call(
            "read_rows",
            &[
                ("authorization", &auth),
                ("origin", "http://localhost:6274"),
            ],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(srv.runs(), 2);
}

#[tokio::test]
async fn api_keys_alone_and_next_to_jwt() {
    let key = ApiKey::generate();
    let keys = ApiKeyAuthenticator::new([key.entry("ci-bot", ["db:read"])]).expect("keys");
    let srv = start(config().authenticator(keys).authenticator(hs_auth())).await;

    let c = srv.client(key.expose()).await;
    let r = call(&c, "read_rows").await;
    assert_eq!(r.is_error, Some(false), "{r:?}");
    assert_eq!(srv.runs(), 1);
    let rec = srv.audit.records().pop().expect("a record");
    assert_eq!(rec.outcome, Outcome::Success);
    assert_eq!(rec.principal.subject.as_deref(), Some("ci-bot"));
    assert_eq!(rec.principal.auth_method, "api_key");
    assert_eq!(rec.principal.key_id.as_deref(), Some(key.id()));

    // JWTs work on the same server.
    let token = srv.token("alice", "db:read");
    let jc = srv.client(&token).await;
    assert_eq!(call(&jc, "read_rows").await.is_error, Some(false));
    assert_eq!(srv.runs(), 2);
    let rec = srv.audit.records().pop().expect("a record");
    assert_eq!(rec.principal.auth_method, "jwt");
    assert_eq!(rec.principal.subject.as_deref(), Some("alice"));

    // One character changed in the secret part.
    let mut tampered = key.expose().to_owned();
    let last = tampered.pop().expect("non-empty key");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    refused(
        &srv,
        &[("authorization", &bearer(&tampered))],
        "unknown_api_key",
    )
    .await;

    c.cancel().await.expect("stop");
    jc.cancel().await.expect("stop");
    for secret in [key.expose(), &tampered, &token] {
        assert_never_recorded(&srv.audit, secret);
    }
}

#[tokio::test]
async fn repeated_failures_throttle_the_source_even_with_a_valid_token() {
    let srv = start(
        config()
            .stateless()
            .authenticator(hs_auth())
            .auth_failure_limit(1, 3),
    )
    .await;
    let bad = bearer(&hs256(&json!({"sub": "x", "aud": srv.resource, "exp": 1})));
    for _ in 0..3 {
        let r = srv.raw_call("read_rows", &[("authorization", &bad)]).await;
        assert_eq!(r.status(), 401);
    }
    let r = srv.raw_call("read_rows", &[("authorization", &bad)]).await;
    assert_eq!(r.status(), 429, "the 4th attempt is throttled");
    let retry: u64 = r
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("delay in seconds");
    assert!((1..=60).contains(&retry), "{retry}");

    let good = bearer(&srv.token("alice", "db:read"));
    let r = srv.raw_call("read_rows", &[("authorization", &good)]).await;
    assert_eq!(
        r.status(),
        429,
        "credentials are not even checked while throttled"
    );
    assert_eq!(srv.runs(), 0);
    let throttled: Vec<_> = srv
        .audit
        .records()
        .into_iter()
        .filter(|r| r.reason == Some("throttled"))
        .collect();
    assert_eq!(throttled.len(), 2, "{throttled:#?}");
    assert!(throttled
        .iter()
        .all(|r| r.event == AuditEvent::Authentication && r.outcome == Outcome::Denied));
}

/// The refusals summed up in `audit`'s summary records, in order.
fn summaries(audit: &Collect) -> Vec<AuditRecord> {
    audit.events(AuditEvent::Unrecorded)
}

/// Waits (up to 20 s) until `audit` holds `n` summary records.
async fn until_summaries(audit: &Collect, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while summaries(audit).len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{n} summaries recorded on time: {:#?}",
            audit.records()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A flood of refused requests is answered in full but recorded within the source's budget;
/// the rest is summed up in one record when due, and once more when serving ends. An
/// authenticated caller's security events and calls are never held back (nor counted in the
/// budget per source).
#[tokio::test]
async fn a_flood_of_refusals_is_recorded_within_a_budget_and_summed_up() {
    let srv = start(
        config()
            .stateless()
            .authenticator(hs_auth())
            .authorization_server("https://auth.example")
            .refusal_records_per_source(1, 4)
            .refusal_summary_interval(Duration::from_secs(1)),
    )
    .await;
    let expired = bearer(&hs256(
        &json!({"sub": "x", "iss": ISSUER, "aud": srv.resource, "exp": 1}),
    ));
    // Requests 0-3 use up the budget of 4; of the rest, those with an expired token (every
    // third: 6, 9, ... 27) and those without any are held back.
    for i in 0..30 {
        let headers: &[(&str, &str)] = if i % 3 == 0 {
            &[("authorization", &expired)]
        } else {
            &[]
        };
        let r = srv.raw_call("read_rows", headers).await;
        assert_eq!(r.status(), 401, "every refusal is still answered");
    }
    // An authenticated caller, from the same address: its calls and its refusal (a scope
    // it lacks) are recorded whatever the budget.
    let good = bearer(&srv.token("alice", "db:read"));
    for _ in 0..3 {
        let r = srv.raw_call("read_rows", &[("authorization", &good)]).await;
        assert_eq!(r.status(), 200);
    }
    let r = srv
        .raw_call("admin_reset", &[("authorization", &good)])
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(srv.runs(), 3);
    let refusals = srv
        .audit
        .records()
        .into_iter()
        .filter(|r| r.event == AuditEvent::Authentication)
        .count();
    assert_eq!(refusals, 4, "the burst is recorded one by one");
    let calls = srv
        .audit
        .records()
        .into_iter()
        .filter(|r| r.event == AuditEvent::ToolCall)
        .map(|r| (r.principal.subject.as_deref().map(str::to_owned), r.outcome))
        .collect::<Vec<_>>();
    let alice = Some("alice".to_owned());
    assert_eq!(
        calls,
        [
            (alice.clone(), Outcome::Success),
            (alice.clone(), Outcome::Success),
            (alice.clone(), Outcome::Success),
            (alice, Outcome::Denied)
        ],
        "the authenticated caller's records are not held back by the budget per source"
    );

    // Due a second after the first refusal held back, with no later refusal to bring it.
    until_summaries(&srv.audit, 1).await;
    // Held back after it: summed up when serving ends.
    for _ in 0..2 {
        assert_eq!(srv.raw_call("read_rows", &[]).await.status(), 401);
    }
    let audit = srv.audit.clone();
    srv.stop().await.expect("serves until stopped");
    let summaries = summaries(&audit);
    assert_eq!(summaries.len(), 2, "{summaries:#?}");
    let last = summaries[1]
        .unrecorded
        .as_deref()
        .expect("the last summary");
    assert_eq!(
        (last.count, last.reasons[0].reason),
        (2, "missing_credentials")
    );
    let summary = &summaries[0];
    assert_eq!(summary.reason, Some("record_budget"));
    assert_eq!(summary.outcome, Outcome::Denied);
    assert_eq!(summary.source, None);
    let u = summary
        .unrecorded
        .as_deref()
        .expect("what the summary stands for");
    assert_eq!(u.count, 26);
    assert_eq!(u.distinct_sources, 1);
    assert_eq!(u.top_sources.len(), 1);
    assert!(u.top_sources[0].source.is_loopback());
    assert_eq!(u.top_sources[0].count, 26);
    let by_reason: std::collections::BTreeMap<&str, u64> =
        u.reasons.iter().map(|r| (r.reason, r.count)).collect();
    assert_eq!(
        by_reason,
        [("expired", 8), ("missing_credentials", 18)].into(),
        "{u:?}"
    );
    assert!(u
        .reasons
        .iter()
        .all(|r| r.event == AuditEvent::Authentication));
    assert!(u.first <= u.last && summary.time == u.first);
    let json = summary.to_json();
    assert!(json.contains(r#""event":"unrecorded""#), "{json}");
    assert!(json.contains(r#""unrecorded":{"count":26"#), "{json}");
}

/// A server bound and driven without `serve` (its router alone), then dropped: what it held
/// back is summed up as it goes.
#[tokio::test]
async fn refusals_held_back_are_summed_up_when_an_unserved_server_is_dropped() {
    let audit = Collect::default();
    let hardened = Hardened::builder(Arc::new(App::default()))
        .tool::<read_rows>()
        .audit_sink(audit.clone())
        .build()
        .expect("the server builds");
    let server = hardened
        .bind_http(
            config()
                .authenticator(hs_auth())
                .refusal_records_per_source(1, 1),
        )
        .await
        .expect("binds");
    let app = server.router();
    for _ in 0..3 {
        let mut req = axum::http::Request::post("/mcp")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(axum::body::Body::from("{}"))
            .expect("a request");
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(SocketAddr::from((
                [192, 0, 2, 9],
                5000,
            ))));
        let r = tower::ServiceExt::oneshot(app.clone(), req)
            .await
            .expect("infallible");
        assert_eq!(r.status(), 401);
    }
    assert_eq!(audit.records().len(), 1, "one recorded, two held back");
    drop(app);
    drop(server);
    let summaries = summaries(&audit);
    assert_eq!(summaries.len(), 1, "{:#?}", audit.records());
    let u = summaries[0].unrecorded.as_deref().expect("the summary");
    assert_eq!(u.count, 2);
    assert_eq!(
        u.top_sources[0].source,
        std::net::IpAddr::from([192, 0, 2, 9])
    );
}

/// An anonymous caller's refused calls (a tool that does not exist, one it may not call) are
/// recorded within the same budget as refused requests.
#[tokio::test]
async fn an_anonymous_callers_refused_calls_are_recorded_within_the_budget() {
    let srv = start(
        config()
            .stateless()
            .authenticator(hs_auth())
            .allow_anonymous()
            .refusal_records_per_source(1, 2),
    )
    .await;
    for _ in 0..6 {
        let r = srv.raw_call("no_such_tool", &[]).await;
        assert_eq!(r.status(), 200, "a JSON-RPC error");
        assert!(r.text().await.expect("body").contains("unknown tool"));
    }
    // A denied call (a tool that needs a scope): held back too.
    let r = srv.raw_call("read_rows", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(srv.runs(), 0);
    let recorded: Vec<_> = srv.audit.events(AuditEvent::ToolCall);
    assert_eq!(recorded.len(), 2, "{recorded:#?}");
    assert!(recorded
        .iter()
        .all(|r| r.principal.auth_method == "anonymous"
            && r.outcome == Outcome::Rejected
            && r.reason == Some("unknown_tool")));
    let audit = srv.audit.clone();
    srv.stop().await.expect("serves until stopped");
    let summaries = summaries(&audit);
    assert_eq!(summaries.len(), 1, "{summaries:#?}");
    let u = summaries[0].unrecorded.as_deref().expect("the summary");
    let reasons: Vec<_> = u
        .reasons
        .iter()
        .map(|r| (r.event, r.reason, r.count))
        .collect();
    assert_eq!(
        reasons,
        [
            (AuditEvent::ToolCall, "unknown_tool", 4),
            (AuditEvent::ToolCall, "unauthenticated", 1)
        ]
    );
    assert_eq!(summaries[0].outcome, Outcome::Denied);
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_is_throttled_alone() {
    // The test's requests come from 127.0.0.1: here, the proxy.
    let srv = start(
        config()
            .stateless()
            .authenticator(hs_auth())
            .auth_failure_limit(1, 2)
            .trusted_proxies(["127.0.0.0/8", "::1"]),
    )
    .await;
    let bad = bearer(&hs256(&json!({"sub": "x", "aud": srv.resource, "exp": 1})));
    let good = bearer(&srv.token("alice", "db:read"));
    let from = |client: &'static str| ("x-forwarded-for", client);

    // Mallory, behind the proxy, spends her failures and is throttled, also when she puts
    // another address in front of her own...
    for _ in 0..2 {
        let r = srv
            .raw_call("read_rows", &[("authorization", &bad), from("203.0.113.7")])
            .await;
        assert_eq!(r.status(), 401);
    }
    for forwarded in ["203.0.113.7", "198.51.100.99, 203.0.113.7"] {
        let r = srv
            .raw_call("read_rows", &[("authorization", &good), from(forwarded)])
            .await;
        assert_eq!(r.status(), 429, "{forwarded}");
    }
    // ...while Alice, behind the same proxy, is served.
    let r = srv
        .raw_call("read_rows", &[("authorization", &good), from("192.0.2.10")])
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(srv.runs(), 1);
    // Without the header, a trusted proxy's request is its own (and not Mallory's).
    let r = srv.raw_call("read_rows", &[("authorization", &good)]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(srv.runs(), 2);

    // The records name the forwarded clients (port 0: the header has none).
    let records = srv.audit.records();
    let sources = |reason: Option<&str>| -> Vec<String> {
        records
            .iter()
            .filter(|r| r.reason == reason)
            .filter_map(|r| r.source.map(|s| s.to_string()))
            .collect()
    };
    assert_eq!(
        sources(Some("missing_claim")),
        ["203.0.113.7:0", "203.0.113.7:0"]
    );
    assert_eq!(
        sources(Some("throttled")),
        ["203.0.113.7:0", "203.0.113.7:0"]
    );
    let served = sources(None);
    assert_eq!(served.len(), 2, "{records:#?}");
    assert_eq!(served[0], "192.0.2.10:0");
    assert!(
        served[1].starts_with("127.0.0.1:") && !served[1].ends_with(":0"),
        "{served:?}"
    );
}

#[tokio::test]
async fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
    let configs = [
        config().stateless(),
        // A proxy elsewhere: this peer (127.0.0.1) is not it.
        config().stateless().trusted_proxies(["10.0.0.0/8"]),
    ];
    for cfg in configs {
        let srv = start(cfg.authenticator(hs_auth()).auth_failure_limit(1, 1)).await;
        let bad = bearer(&hs256(&json!({"sub": "x", "aud": srv.resource, "exp": 1})));
        // Another forwarded address does not escape this peer's limit.
        for (forwarded, status) in [("203.0.113.7", 401), ("192.0.2.10", 429)] {
            let r = srv
                .raw_call(
                    "read_rows",
                    &[("authorization", &bad), ("x-forwarded-for", forwarded)],
                )
                .await;
            assert_eq!(r.status(), status, "{forwarded}");
        }
        let record = srv
            .audit
            .denied(AuditEvent::Authentication, "missing_claim");
        check_denied(&record, AuditEvent::Authentication, "missing_claim");
    }
}

#[tokio::test]
async fn protected_resource_metadata() {
    let plain = stateless().await;
    let with_as = start(
        config()
            .authenticator(hs_auth())
            .authorization_server("https://auth.example"),
    )
    .await;
    for (srv, servers) in [
        (&plain, None),
        (&with_as, Some(json!(["https://auth.example"]))),
    ] {
        assert_eq!(
            srv.metadata,
            srv.url("/.well-known/oauth-protected-resource/mcp")
        );
        for path in [
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-protected-resource/mcp",
        ] {
            let r = http_client()
                .get(srv.url(path))
                .send()
                .await
                .expect("answer");
            assert_eq!(r.status(), 200, "{path}: no credentials needed");
            assert!(r.headers()["content-type"]
                .to_str()
                .is_ok_and(|c| c.starts_with("application/json")));
            let m: Value = r.json().await.expect("JSON");
            assert_eq!(m["resource"], json!(srv.resource));
            assert_eq!(
                m["scopes_supported"],
                json!(["admin", "db:read", "db:write"])
            );
            assert_eq!(m["bearer_methods_supported"], json!(["header"]));
            assert_eq!(m.get("authorization_servers"), servers.as_ref(), "{m}");
        }
    }
}

#[tokio::test]
async fn step_up_challenge_when_an_authorization_server_is_known() {
    let srv = start(
        config()
            .stateless()
            .authenticator(hs_auth())
            .authorization_server("https://auth.example"),
    )
    .await;
    let auth = bearer(&srv.token("alice", "db:read"));
    let r = srv.raw_call("write_row", &[("authorization", &auth)]).await;
    assert_eq!(r.status(), 403);
    let challenge = www_authenticate(&r);
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("scope=\"db:write db:read\""),
        "required first, then granted: {challenge}"
    );
    assert!(
        challenge.contains(&format!("resource_metadata=\"{}\"", srv.metadata)),
        "{challenge}"
    );
    let body: Value = r.json().await.expect("JSON-RPC error body");
    assert_eq!(body["id"], 7);
    assert_eq!(body["error"]["data"]["error"]["code"], "FORBIDDEN");
    assert_eq!(srv.runs(), 0);
    let rec = srv.audit.denied(AuditEvent::ToolCall, "insufficient_scope");
    assert_eq!(rec.tool.as_deref(), Some("write_row"));
    assert_eq!(rec.principal.subject.as_deref(), Some("alice"));

    // A call the token does cover is untouched by the challenge.
    let r = srv.raw_call("read_rows", &[("authorization", &auth)]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(srv.runs(), 1);
}

#[tokio::test]
async fn without_an_authorization_server_a_missing_scope_is_a_tool_error() {
    let srv = start(config().authenticator(hs_auth())).await;
    let c = srv.client(&srv.token("alice", "db:read")).await;
    let r = call(&c, "write_row").await;
    assert_eq!(r.is_error, Some(true), "{r:?}");
    let s = r.structured_content.expect("structured error");
    assert_eq!(s["error"]["code"], "FORBIDDEN", "{s}");
    assert_eq!(srv.runs(), 0);
    let rec = srv.audit.records().pop().expect("a record");
    assert_eq!(rec.event, AuditEvent::ToolCall);
    assert_eq!(rec.outcome, Outcome::Denied);
    assert_eq!(rec.error_code, Some("FORBIDDEN"));

    // ScopeChallenge::Http forces the 403 even without an authorization server.
    let forced = start(
        config()
            .stateless()
            .authenticator(hs_auth())
            .scope_challenge(ScopeChallenge::Http),
    )
    .await;
    let auth = bearer(&forced.token("alice", "db:read"));
    let r = forced
        .raw_call("write_row", &[("authorization", &auth)])
        .await;
    assert_eq!(r.status(), 403);
    let challenge = www_authenticate(&r);
    assert!(challenge.contains("error=\"insufficient_scope\""));
    assert!(challenge.contains("scope=\"db:write db:read\""));
    assert!(challenge.contains(&format!("resource_metadata=\"{}\"", forced.metadata)));
    assert_eq!(forced.runs(), 0);
    forced
        .audit
        .denied(AuditEvent::ToolCall, "insufficient_scope");
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    for with_as in [false, true] {
        let mut cfg = config()
            .stateless()
            .authenticator(hs_auth())
            .max_body_bytes(1024);
        if with_as {
            // The scope challenge reads the body itself.
            cfg = cfg.authorization_server("https://auth.example");
        }
        let srv = start(cfg).await;
        let auth = bearer(&srv.token("alice", "db:read"));
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "read_rows", "arguments": {"table": "x".repeat(4096)}}});
        let r = srv
            .raw_post(&body.to_string(), &[("authorization", &auth)])
            .await;
        assert_eq!(r.status(), 413, "authorization server: {with_as}");
        // The same refusal on both paths (rmcp's reads the body, or the scope check).
        assert_refusal(r, 413, "payload_too_large").await;
        assert_eq!(srv.runs(), 0);

        // A small call still works.
        let r = srv.raw_call("read_rows", &[("authorization", &auth)]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(srv.runs(), 1);
    }
}

/// Checks a transport refusal: `status`, one `Content-Type` (JSON), the guard's shape with
/// `error`, and none of rmcp's own text (a parser's, its type names, the body limit).
async fn assert_refusal(r: reqwest::Response, status: u16, error: &str) -> Value {
    assert_eq!(r.status(), status);
    let types: Vec<_> = r
        .headers()
        .get_all("content-type")
        .iter()
        .cloned()
        .collect();
    let text = r.text().await.expect("a body");
    assert_eq!(types, ["application/json"], "{text}");
    let body: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(body["error"], error, "{text}");
    assert!(body["error_description"].is_string(), "{text}");
    for internal in [
        "deserialize",
        "JsonRpcMessage",
        "Encounter",
        "line 1",
        "1024",
    ] {
        assert!(!text.contains(internal), "{internal:?} in {text}");
    }
    body
}

/// Checks a 405 refusal of a `method` request (see [`assert_refusal`]) that keeps rmcp's
/// `Allow: allow`.
async fn assert_not_allowed(r: reqwest::Response, method: &str, allow: &str) {
    let allowed = r.headers().get("allow").cloned();
    assert_refusal(r, 405, "method_not_allowed").await;
    assert_eq!(
        allowed.as_ref().map(|v| v.as_bytes()),
        Some(allow.as_bytes()),
        "{method}"
    );
}

#[tokio::test]
async fn rmcp_refusals_get_fixed_descriptions() {
    let srv = start(config().authenticator(hs_auth())).await;
    let auth = bearer(&srv.token("alice", "db:read"));
    let auth = ("authorization", auth.as_str());
    let tool_call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_rows","arguments":{"table":"t"}}}"#;

    // Not JSON: rmcp's answer named its own types and quoted the parser.
    let r = srv.raw_post("{not json", &[auth]).await;
    assert_refusal(r, 415, "unsupported_media_type").await;
    let r = srv.raw_post(r#"{"jsonrpc":"2.0","id":1}"#, &[auth]).await;
    assert_refusal(r, 415, "unsupported_media_type").await;
    let r = srv
        .raw_post(tool_call, &[auth, ("content-type", "text/plain")])
        .await;
    assert_refusal(r, 415, "unsupported_media_type").await;
    // An Accept rmcp cannot serve.
    let r = srv
        .raw_post(tool_call, &[auth, ("accept", "application/json")])
        .await;
    assert_refusal(r, 406, "not_acceptable").await;
    // A call without a session (this server keeps sessions).
    let r = srv.raw_post(tool_call, &[auth]).await;
    assert_refusal(r, 400, "invalid_request").await;
    // An unknown protocol version, which rmcp's text quoted back.
    let r = srv
        .raw_post(
            tool_call,
            &[auth, ("mcp-protocol-version", "1999-01-01-<b>quoted</b>")],
        )
        .await;
    let body = assert_refusal(r, 400, "invalid_request").await;
    assert!(!body.to_string().contains("quoted"), "{body}");
    // A method rmcp does not serve: its Allow header stays.
    let r = http_client()
        .put(&srv.resource)
        .header(auth.0, auth.1)
        .send()
        .await
        .expect("answers");
    assert_not_allowed(r, "PUT", "GET, POST, DELETE").await;
    assert_eq!(srv.runs(), 0, "nothing ran");

    // rmcp's JSON-RPC errors pass as they are: an initialize whose MCP-Protocol-Version
    // header disagrees with its body keeps its id and rmcp's message.
    let init = r#"{"jsonrpc":"2.0","id":9,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let r = srv
        .raw_post(init, &[auth, ("mcp-protocol-version", "2025-06-18")])
        .await;
    assert_eq!(r.status(), 400);
    let body: Value = serde_json::from_str(&r.text().await.expect("a body")).expect("JSON");
    assert_eq!(body["id"], 9, "{body}");
    let said = body["error"]["message"].as_str().expect("a message");
    assert!(said.contains("does not match"), "{body}");

    // A stream (GET) that does not accept an event stream.
    let r = http_client()
        .get(&srv.resource)
        .header(auth.0, auth.1)
        .header("accept", "application/json")
        .send()
        .await
        .expect("answers");
    assert_refusal(r, 406, "not_acceptable").await;

    // And the server still serves.
    let client = srv.client(&srv.token("alice", "db:read")).await;
    assert_eq!(call(&client, "read_rows").await.is_error, Some(false));
    assert_eq!(srv.runs(), 1);
    drop(client);
    srv.stop().await.expect("stops");

    // Stateless, rmcp serves POST alone: GET and DELETE get 405 with `Allow: POST`.
    let srv = stateless().await;
    let auth = bearer(&srv.token("alice", "db:read"));
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let r = http_client()
            .request(method.clone(), &srv.resource)
            .header("authorization", &auth)
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("answers");
        assert_not_allowed(r, method.as_str(), "POST").await;
    }
    srv.stop().await.expect("stops");
}

/// rmcp's client drops a JSON-RPC error without an id and waits for ever: a refusal it
/// reads must fail its call at once, on rmcp's path and on the scope check's.
#[tokio::test]
async fn the_rmcp_client_sees_a_refused_call_fail() {
    for with_as in [false, true] {
        let mut cfg = config().authenticator(hs_auth()).max_body_bytes(2048);
        if with_as {
            cfg = cfg.authorization_server("https://auth.example");
        }
        let srv = start(cfg).await;
        let client = srv.client(&srv.token("alice", "db:read")).await;
        let big = common::params("read_rows", json!({"table": "x".repeat(4096)}));
        let answer = tokio::time::timeout(Duration::from_secs(10), client.call_tool(big))
            .await
            .unwrap_or_else(|_| panic!("the call fails at once (authorization server: {with_as})"));
        let error = answer.expect_err("an oversized call fails").to_string();
        assert!(error.contains("413"), "{error}");
        assert!(!error.contains("2048"), "{error}");
        assert_eq!(srv.runs(), 0);
        drop(client);
        srv.stop().await.expect("stops");
    }
}

#[tokio::test]
async fn unusable_configurations_are_refused_at_bind() {
    let hardened = Hardened::builder(Arc::new(App::default()))
        .tool::<read_rows>()
        .build()
        .expect("the server builds");
    let jwt = || config().authenticator(hs_auth());
    let cases: Vec<(HttpConfig, &str)> = vec![
        (config(), "no authenticator"),
        // A second of a kind would never be asked: the first decides every credential.
        (jwt().authenticator(hs_auth()), "two JwtAuthenticators"),
        (
            config()
                .authenticator(ApiKeyAuthenticator::new([]).expect("keys"))
                .authenticator(hs_auth())
                .authenticator(ApiKeyAuthenticator::new([]).expect("keys")),
            "two ApiKeyAuthenticators",
        ),
        (jwt().path("mcp"), "must start with /"),
        (
            jwt().header_read_timeout(Duration::ZERO),
            "request-head timeout",
        ),
        (
            jwt().header_read_timeout(Duration::MAX),
            "request-head timeout",
        ),
        (
            jwt().body_read_timeout(Duration::ZERO),
            "request-body timeout",
        ),
        (
            jwt().body_read_timeout(Duration::MAX),
            "request-body timeout",
        ),
        (
            HttpConfig::new("0.0.0.0:0".parse().expect("address")).authenticator(hs_auth()),
            "set .resource_url",
        ),
        (
            jwt().resource_url("ftp://example.com/mcp"),
            "must be http(s)",
        ),
        (jwt().allowed_hosts(["a b"]), "is not a host"),
        (jwt().auth_failure_limit(0, 1), "at least 1/min"),
        (jwt().refusal_records_per_source(0, 1), "at least 1/min"),
        (jwt().refusal_records_total(0, 0), "at least 1/min"),
        (
            jwt().refusal_summary_interval(Duration::from_millis(500)),
            "at least 1 s",
        ),
        (
            jwt().refusal_summary_interval(Duration::from_secs(3601)),
            "at most an hour",
        ),
        (jwt().trusted_proxies(["10.0.0.0/33"]), "trusted proxy"),
        (jwt().trusted_proxies(["proxy"]), "trusted proxy"),
        (jwt().trusted_proxies(["10.0.0.5/8"]), "host bits"),
        (jwt().trusted_proxies(["::/0"]), "every address"),
        (jwt().max_sessions(0), "at least 1"),
        (jwt().max_sessions_per_caller(0), "at least 1"),
        (jwt().max_anonymous_sessions(0), "at least 1"),
        (
            jwt().session_idle_timeout(Duration::ZERO),
            "session idle timeout",
        ),
        (
            jwt().session_idle_timeout(Duration::from_secs(2 * 86_400)),
            "session idle timeout",
        ),
    ];
    for (cfg, expected) in cases {
        match hardened.bind_http(cfg).await {
            Err(HttpError::Config(message)) => {
                assert!(message.contains(expected), "{expected}: {message}")
            }
            Err(other) => panic!("{expected}: {other}"),
            Ok(_) => panic!("{expected}: the configuration was accepted"),
        }
    }
}

/// Reads `stream` until the server closes it (or resets it): what it sent, and when.
async fn until_closed(mut stream: tokio::net::tcp::OwnedReadHalf) -> (Vec<u8>, std::time::Instant) {
    let (got, closed) = receive_for(&mut stream, Duration::from_secs(10)).await;
    assert!(closed, "the server closes the connection");
    (got, std::time::Instant::now())
}

/// What `stream` receives within `wait`, and whether the server closed it by then.
async fn receive_for(
    stream: &mut tokio::net::tcp::OwnedReadHalf,
    wait: Duration,
) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(wait, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (got, closed)
}

#[tokio::test]
async fn slow_request_heads_and_idle_connections_are_cut_off() {
    let limit = Duration::from_secs(1);
    let srv = start(config().authenticator(hs_auth()).header_read_timeout(limit)).await;

    // A head trickled a line at a time, never finished (slowloris): closed without an answer
    // once the time for the head has run out, although bytes keep coming.
    let started = std::time::Instant::now();
    let (read, mut write) = srv.tcp().await;
    let head = format!("POST /mcp HTTP/1.1\r\nhost: {}\r\n", srv.addr);
    write.write_all(head.as_bytes()).await.expect("write");
    let trickle = tokio::spawn(async move {
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if write
                .write_all(format!("x-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let (answer, closed) = until_closed(read).await;
    trickle.abort();
    assert!(
        closed - started >= limit,
        "closed after {:?}",
        closed - started
    );
    assert_eq!(String::from_utf8_lossy(&answer), "");

    // A connection that never sends anything is closed too.
    let started = std::time::Instant::now();
    let (read, _write) = srv.tcp().await;
    let (_, closed) = until_closed(read).await;
    assert!(
        closed - started >= limit,
        "closed after {:?}",
        closed - started
    );

    // A kept-alive connection is answered, then closed once idle for as long.
    let (read, mut write) = srv.tcp().await;
    let get = format!(
        "GET /.well-known/oauth-protected-resource HTTP/1.1\r\nhost: {}\r\n\r\n",
        srv.addr
    );
    write.write_all(get.as_bytes()).await.expect("write");
    let started = std::time::Instant::now();
    let (answer, closed) = until_closed(read).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(&srv.resource), "{answer}");
    assert!(
        closed - started >= limit,
        "closed after {:?}",
        closed - started
    );

    // Nothing ran, and a caller that sends its requests in time is served.
    assert_eq!(srv.runs(), 0);
    let client = srv.client(&srv.token("alice", "db:read")).await;
    assert_ne!(call(&client, "read_rows").await.is_error, Some(true));
    assert_eq!(srv.runs(), 1);
    client.cancel().await.expect("the client closes");
}

#[tokio::test]
async fn slow_request_bodies_get_408_and_run_nothing() {
    let limit = Duration::from_secs(2);
    // Stateless without an authorization server rmcp reads the body; with one, the scope
    // check does; stateful, the body opens a session (or would).
    for (stateful, with_as) in [(false, false), (false, true), (true, false)] {
        let mut cfg = config().authenticator(hs_auth()).body_read_timeout(limit);
        if !stateful {
            cfg = cfg.stateless();
        }
        if with_as {
            cfg = cfg.authorization_server("https://auth.example");
        }
        let case = format!("stateful: {stateful}, authorization server: {with_as}");
        let srv = start(cfg).await;
        let alice = srv.token("alice", "db:read");
        let body = if stateful {
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "slow", "version": "1"}}})
        } else {
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                   "params": {"name": "read_rows", "arguments": {"table": "users"}}})
        }
        .to_string();
        let head = |framing: &str| {
            format!(
                "POST /mcp HTTP/1.1\r\nhost: {}\r\nauthorization: {}\r\n\
                 accept: application/json, text/event-stream\r\ncontent-type: application/json\r\n\
                 mcp-protocol-version: 2025-11-25\r\n\
                 traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\
                 {framing}\r\n\r\n",
                srv.addr,
                bearer(&alice)
            )
        };
        let length = format!("content-length: {}", body.len());

        // The head at once, then the body a byte every 50 ms (it would take more than 5 s):
        // answered 408 once the time for the body has run out, and the connection closed,
        // although bytes keep coming.
        let started = std::time::Instant::now();
        let (read, mut write) = srv.tcp().await;
        write
            .write_all(head(&length).as_bytes())
            .await
            .expect("write");
        let trickled = body.clone();
        let trickle = tokio::spawn(async move {
            for b in trickled.bytes() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if write.write_all(&[b]).await.is_err() {
                    break;
                }
            }
        });
        let (answer, closed) = until_closed(read).await;
        trickle.abort();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{case}: {answer}");
        assert!(answer.contains("connection: close"), "{answer}");
        assert!(answer.contains(r#""error":"request_timeout""#), "{answer}");
        assert!(!answer.contains("mcp-session-id"), "{case}: {answer}");
        let took = closed - started;
        assert!(
            took >= limit && took < limit * 2,
            "{case}: closed after {took:?}"
        );
        let record = srv
            .audit
            .records()
            .into_iter()
            .find(|r| r.reason == Some("request_body_timeout"))
            .unwrap_or_else(|| panic!("{case}: no record in {:#?}", srv.audit.records()));
        assert_eq!(record.event, AuditEvent::Transport);
        assert_eq!(record.outcome, Outcome::Rejected, "not a security event");
        assert_eq!(record.error_code, Some("TIMEOUT"));
        assert!(record.retryable);
        assert_eq!(record.principal.subject.as_deref(), Some("alice"));
        assert!(record.source.is_some_and(|s| s.ip().is_loopback()));
        assert_eq!(
            &*record.trace_id, "0af7651916cd43dd8448eb211c80319c",
            "the record continues the request's trace"
        );
        assert!(record.duration_us >= 2_000_000, "{record:?}");

        // A malformed chunked body: a plain 400, not the parser's words, and nothing recorded.
        let (mut read, mut write) = srv.tcp().await;
        write
            .write_all(format!("{}zz\r\n", head("transfer-encoding: chunked")).as_bytes())
            .await
            .expect("write");
        let (answer, _) = receive_for(&mut read, Duration::from_secs(5)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{case}: {answer}");
        assert!(answer.contains(r#""error":"invalid_request""#), "{answer}");
        assert!(!answer.to_lowercase().contains("chunk"), "{answer}");

        // A body that pauses but arrives within the limit is served.
        let (read, mut write) = srv.tcp().await;
        let (first, rest) = body.as_bytes().split_at(body.len() / 2);
        write
            .write_all(head(&format!("{length}\r\nconnection: close")).as_bytes())
            .await
            .expect("write");
        write.write_all(first).await.expect("write");
        tokio::time::sleep(Duration::from_millis(200)).await;
        write.write_all(rest).await.expect("write");
        let (answer, _) = until_closed(read).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{case}: {answer}");
        if stateful {
            assert!(answer.contains("mcp-session-id"), "{answer}");
        } else {
            assert!(answer.contains(r#""rows":1"#), "{answer}");
            assert_eq!(srv.runs(), 1);
        }
        let records = srv.audit.records();
        assert_eq!(
            records.len(),
            if stateful { 1 } else { 2 },
            "{case}: {records:#?}"
        );
    }
}

#[tokio::test]
async fn cleartext_http2_is_not_served() {
    let srv = start(config().authenticator(hs_auth())).await;
    let (mut read, mut write) = srv.tcp().await;
    // The HTTP/2 connection preface and an empty SETTINGS frame (prior knowledge, "h2c").
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    write.write_all(&preface).await.expect("write");
    let (answer, closed) = receive_for(&mut read, Duration::from_secs(5)).await;
    // An HTTP/2 server answers with a SETTINGS frame of its own (type 4, the 4th byte) and
    // keeps the connection open; HTTP/1.1 refuses the preface and closes.
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 "),
        "{answer:?}"
    );
    assert!(closed, "the connection is closed");
    assert_eq!(srv.runs(), 0);
}

/// A raw JSON-RPC exchange on a stateful server: the response head and message.
async fn exchange(
    srv: &Srv,
    token: &str,
    session: Option<&str>,
    body: Value,
) -> (reqwest::StatusCode, Option<String>, String) {
    let auth = bearer(token);
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(s) = session {
        headers.push(("mcp-session-id", s));
    }
    let r = srv.raw_post(&body.to_string(), &headers).await;
    let status = r.status();
    let sid = r
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, sid, r.text().await.expect("body"))
}

/// A session opened with raw requests (`initialize`, then `notifications/initialized`) by
/// the holder of `token`, as client `name`: its id.
async fn open_session(srv: &Srv, token: &str, name: &str) -> String {
    let (status, sid, _) = try_initialize(srv, token, name).await;
    assert_eq!(status, 200);
    let sid = sid.expect("a stateful server hands out a session id");
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let (status, _, _) = exchange(srv, token, Some(&sid), note).await;
    assert!(status.is_success(), "{status}");
    sid
}

#[tokio::test]
async fn a_session_belongs_to_the_principal_that_opened_it() {
    let srv = start(config().authenticator(hs_auth())).await;
    let alice = srv.token("alice", "db:read");
    let bob = srv.token("bob", "db:read db:write admin");
    let sid = open_session(&srv, &alice, "alice-client").await;

    // Bob, validly authenticated, rides alice's session: as if it did not exist.
    for body in [
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
               "params": {"name": "read_rows", "arguments": {"table": "users"}}}),
    ] {
        let (status, _, text) = exchange(&srv, &bob, Some(&sid), body).await;
        assert_eq!(status, 404, "{text}");
        let msg = jsonrpc(&text);
        assert!(
            msg.get("error").is_some() && msg.get("result").is_none(),
            "{msg}"
        );
    }
    // Nor may he read its stream or close it.
    let auth = bearer(&bob);
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let r = http_client()
            .request(method.clone(), &srv.resource)
            .header("accept", "text/event-stream")
            .header("authorization", &auth)
            .header("mcp-session-id", &sid)
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 404, "{method}");
    }
    assert_eq!(srv.runs(), 0);
    let intrusions: Vec<_> = srv.audit.events(AuditEvent::Session);
    assert_eq!(intrusions.len(), 4, "{intrusions:#?}");
    for r in &intrusions {
        check_denied(r, AuditEvent::Session, "session_owned_by_another_principal");
        assert_eq!(r.principal.subject.as_deref(), Some("bob"));
    }

    // Alice's session survived and still works.
    let (_, _, body) = exchange(
        &srv,
        &alice,
        Some(&sid),
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
               "params": {"name": "read_rows", "arguments": {"table": "users"}}}),
    )
    .await;
    let msg = jsonrpc(&body);
    assert_eq!(
        msg["result"]["structuredContent"],
        json!({"table": "users", "rows": 1}),
        "{msg}"
    );
    assert_eq!(srv.runs(), 1);
    assert_never_recorded(&srv.audit, &bob);
}

/// A raw `initialize` by the holder of `token`, as client `name`: the status, the session
/// id handed out, and the body.
async fn try_initialize(
    srv: &Srv,
    token: &str,
    name: &str,
) -> (reqwest::StatusCode, Option<String>, String) {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": name, "version": "1"}}});
    exchange(srv, token, None, init).await
}

/// The status of a `tools/list` in session `sid` by the holder of `token`.
async fn list_in_session(srv: &Srv, token: &str, sid: &str) -> reqwest::StatusCode {
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    exchange(srv, token, Some(sid), list).await.0
}

/// Checks that a new session was refused with `status` and a `too_many_sessions` body, and
/// audited with `reason` for `subject`.
async fn assert_no_room(srv: &Srv, token: &str, subject: &str, status: u16, reason: &str) {
    let seen = srv.audit.records().len();
    let (got, sid, body) = try_initialize(srv, token, "probe").await;
    assert_eq!(got, status, "{body}");
    assert_eq!(sid, None, "no session handed out");
    let body: Value = serde_json::from_str(&body).expect("a JSON refusal");
    assert_eq!(body["error"], "too_many_sessions", "{body}");
    let new = srv.audit.records().split_off(seen);
    assert_eq!(new.len(), 1, "one record per refusal: {new:#?}");
    let r = &new[0];
    assert_eq!(
        (r.event, r.reason, r.outcome, r.transport),
        (AuditEvent::Session, Some(reason), Outcome::Rejected, "http"),
        "{r:?}"
    );
    let code = if status == 429 {
        "RATE_LIMITED"
    } else {
        "UNAVAILABLE"
    };
    assert_eq!((r.error_code, r.retryable), (Some(code), true), "{r:?}");
    assert_eq!(r.principal.subject.as_deref(), Some(subject));
}

#[tokio::test]
async fn sessions_are_bounded_per_caller_and_in_all() {
    let srv = start(
        config()
            .authenticator(hs_auth())
            .max_sessions(3)
            .max_sessions_per_caller(2),
    )
    .await;
    let alice = srv.token("alice", "db:read");
    let bob = srv.token("bob", "db:read");
    let carol = srv.token("carol", "db:read");

    // Alice holds two sessions (the real client's, and one opened by hand): her bound.
    let client = srv.client(&alice).await;
    let second = open_session(&srv, &alice, "alice-2").await;
    assert_no_room(&srv, &alice, "alice", 429, "too_many_sessions_for_caller").await;
    // Bob is not affected, and his session fills the server.
    let _bobs = open_session(&srv, &bob, "bob").await;
    assert_no_room(&srv, &carol, "carol", 503, "too_many_sessions").await;
    // Alice's sessions still serve her.
    assert_eq!(call(&client, "read_rows").await.is_error, Some(false));

    // The real client ends its session (a DELETE): its place is free, for carol.
    client.cancel().await.expect("the client closes");
    let carols = open_session(&srv, &carol, "carol").await;
    assert_no_room(&srv, &alice, "alice", 503, "too_many_sessions").await;
    // A DELETE by hand frees one too; the session is gone for its owner.
    let r = http_client()
        .delete(&srv.resource)
        .header("authorization", bearer(&carol))
        .header("mcp-session-id", &carols)
        .send()
        .await
        .expect("answer");
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(list_in_session(&srv, &carol, &carols).await, 404);
    let third = open_session(&srv, &alice, "alice-3").await;
    assert_ne!(third, second);
    assert_eq!(srv.runs(), 1);
}

/// An identified caller re-initializing past its session bound (an agent that drops its
/// session id): each refusal answered, recorded within its budget for rejected calls, the
/// rest summed up under its name.
#[tokio::test]
async fn an_identified_callers_session_refusals_are_recorded_within_its_budget() {
    let srv = start_with(
        config().authenticator(hs_auth()).max_sessions_per_caller(1),
        |b| b.rejected_records_per_caller(1, 2),
    )
    .await;
    let alice = srv.token("alice", "db:read");
    open_session(&srv, &alice, "alice").await;
    for _ in 0..6 {
        let (status, _, _) = try_initialize(&srv, &alice, "alice").await;
        assert_eq!(status, 429);
    }
    assert_eq!(
        srv.audit.events(AuditEvent::Session).len(),
        2,
        "the burst of 2"
    );
    let audit = srv.audit.clone();
    srv.stop().await.expect("serves until stopped");
    let summaries = summaries(&audit);
    assert_eq!(summaries.len(), 1, "{summaries:#?}");
    let u = summaries[0].unrecorded.as_deref().expect("the summary");
    assert_eq!(u.count, 4);
    assert_eq!((u.distinct_callers, u.distinct_sources), (1, 0));
    assert_eq!(u.top_callers[0].caller.subject.as_deref(), Some("alice"));
    assert_eq!(
        (u.reasons[0].event, u.reasons[0].reason),
        (AuditEvent::Session, "too_many_sessions_for_caller")
    );
    assert_eq!(summaries[0].transport, "http");
}

#[tokio::test]
async fn a_request_that_opens_no_session_takes_no_place() {
    let srv = start(config().authenticator(hs_auth()).max_sessions_per_caller(1)).await;
    let alice = srv.token("alice", "db:read");
    let _held = open_session(&srv, &alice, "alice").await;
    let seen = srv.audit.records().len();
    // Served by rmcp without a session: not refused for want of one.
    let r = srv
        .raw_post(
            &json!({"jsonrpc": "2.0", "id": 5, "method": "server/discover", "params": {"_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {}}}})
            .to_string(),
            &[
                ("authorization", &bearer(&alice)),
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "server/discover"),
            ],
        )
        .await;
    let status = r.status();
    let body = r.text().await.expect("body");
    assert_eq!(status, 200, "{body}");
    assert!(jsonrpc(&body).get("result").is_some(), "{body}");
    let sessions: Vec<_> = srv
        .audit
        .records()
        .split_off(seen)
        .into_iter()
        .filter(|r| r.event == AuditEvent::Session)
        .collect();
    assert!(sessions.is_empty(), "{sessions:#?}");
    // And an initialize still is.
    assert_no_room(&srv, &alice, "alice", 429, "too_many_sessions_for_caller").await;
}

/// An `initialize` without credentials from `client`, as named by a trusted proxy.
async fn anonymous_initialize(srv: &Srv, client: &str) -> reqwest::Response {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "anon", "version": "1"}}});
    srv.raw_post(&init.to_string(), &[("x-forwarded-for", client)])
        .await
}

#[tokio::test]
async fn anonymous_callers_share_a_pool_of_their_own() {
    let srv = start(
        config()
            .authenticator(hs_auth())
            .allow_anonymous()
            .trusted_proxies(["127.0.0.1"])
            .max_sessions(3)
            .max_anonymous_sessions(2),
    )
    .await;
    // Three anonymous callers (three forwarded addresses): the third finds the pool full.
    for client in ["192.0.2.1", "192.0.2.2"] {
        assert_eq!(
            anonymous_initialize(&srv, client).await.status(),
            200,
            "{client}"
        );
    }
    let seen = srv.audit.records().len();
    let r = anonymous_initialize(&srv, "192.0.2.3").await;
    assert_eq!(r.status(), 503);
    let new = srv.audit.records().split_off(seen);
    assert_eq!(new.len(), 1, "{new:#?}");
    assert_eq!(new[0].reason, Some("too_many_anonymous_sessions"));
    assert_eq!(
        new[0].principal.subject.as_deref(),
        Some("anonymous@192.0.2.3")
    );
    // A caller with credentials still has the server's last place.
    let alice = srv.token("alice", "db:read");
    open_session(&srv, &alice, "alice").await;
    assert_no_room(
        &srv,
        &srv.token("bob", "db:read"),
        "bob",
        503,
        "too_many_sessions",
    )
    .await;
}

#[tokio::test]
async fn idle_sessions_expire_and_free_their_place() {
    let srv = start(
        config()
            .authenticator(hs_auth())
            .max_sessions_per_caller(1)
            .session_idle_timeout(Duration::from_millis(300)),
    )
    .await;
    let alice = srv.token("alice", "db:read");
    let first = open_session(&srv, &alice, "alice-1").await;
    assert_no_room(&srv, &alice, "alice", 429, "too_many_sessions_for_caller").await;
    // Unused past the idle timeout, the session ends and its place is free.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let second = loop {
        let (status, sid, body) = try_initialize(&srv, &alice, "probe").await;
        if status == 200 {
            break sid.expect("a session id");
        }
        assert_eq!(status, 429, "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "the idle session never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(first, second);
    assert_eq!(
        list_in_session(&srv, &alice, &first).await,
        404,
        "the expired session is gone"
    );
}

#[tokio::test]
async fn concurrent_initializes_never_exceed_the_bound() {
    let srv = Arc::new(start(config().authenticator(hs_auth()).max_sessions_per_caller(5)).await);
    let alice = srv.token("alice", "db:read");
    let attempts: Vec<_> = (0..20)
        .map(|_| {
            let (srv, alice) = (srv.clone(), alice.clone());
            tokio::spawn(async move { try_initialize(&srv, &alice, "probe").await.0 })
        })
        .collect();
    let mut opened = 0;
    for a in attempts {
        match a.await.expect("no panic").as_u16() {
            200 => opened += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(
        opened, 5,
        "exactly the bound, however the requests interleave"
    );
}

/// A server with JWT authentication and a 10-second shutdown grace.
async fn start_with_grace() -> Srv {
    start(
        config()
            .authenticator(hs_auth())
            .shutdown_grace(Duration::from_secs(10)),
    )
    .await
}

#[tokio::test]
async fn graceful_shutdown_lets_a_running_call_finish() {
    let srv = start_with_grace().await;
    let c = srv.client(&srv.token("alice", "db:read")).await;
    let napping = srv.app.napping.notified();
    let call = tokio::spawn(async move {
        let r = c.call_tool(CallToolRequestParams::new("nap")).await;
        drop(c);
        r
    });
    tokio::time::timeout(Duration::from_secs(10), napping)
        .await
        .expect("the tool starts");
    let addr = srv.addr;
    let app = srv.app.clone();
    let audit = srv.audit.clone();
    assert_eq!(audit.flushes(), 0, "not before the shutdown");
    let stopped = tokio::spawn(srv.stop());

    let r = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call finishes")
        .expect("no panic")
        .expect("the in-flight call is answered");
    assert_eq!(r.is_error, Some(false), "{r:?}");
    assert_eq!(r.structured_content.expect("result")["table"], "nap");
    assert_eq!(app.runs.load(Ordering::SeqCst), 1);

    stopped
        .await
        .expect("no panic")
        .expect("serve_until returns Ok");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "nothing listens any more"
    );
    assert_eq!(
        audit.flushes(),
        1,
        "the audit sink is flushed before serve_until returns"
    );
}

#[tokio::test]
async fn graceful_shutdown_waits_for_a_call_whose_client_left() {
    let srv = start_with_grace().await;
    let alice = srv.token("alice", "db:read");
    let sid = open_session(&srv, &alice, "leaver").await;

    // The call's reply stream is opened, then dropped with its connection: no cancellation
    // reaches the server, and in a stateful session the call runs on.
    let napping = srv.app.napping.notified();
    let auth = bearer(&alice);
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                      "params": {"name": "nap", "arguments": {}}});
    let reply = srv
        .raw_post(
            &call.to_string(),
            &[("authorization", &auth), ("mcp-session-id", &sid)],
        )
        .await;
    assert_eq!(reply.status(), 200);
    tokio::time::timeout(Duration::from_secs(10), napping)
        .await
        .expect("the tool starts");
    drop(reply);

    let app = srv.app.clone();
    let audit = srv.audit.clone();
    srv.stop().await.expect("serve_until returns Ok");
    assert_eq!(
        app.runs.load(Ordering::SeqCst),
        1,
        "shutdown waited for the call, though nobody reads its reply"
    );
    assert!(
        audit
            .records()
            .iter()
            .any(|r| r.tool.as_deref() == Some("nap") && r.outcome == Outcome::Success),
        "and the call was recorded"
    );
}

#[tokio::test]
async fn graceful_shutdown_waits_for_a_body_the_scope_check_is_reading() {
    // With an authorization server the guard reads the body itself (to challenge a missing
    // scope): shutdown must wait for a request from its head on there too.
    let srv = start(
        config()
            .authenticator(hs_auth())
            .authorization_server("https://auth.example")
            .shutdown_grace(Duration::from_secs(10)),
    )
    .await;
    let alice = srv.token("alice", "db:read");
    let sid = open_session(&srv, &alice, "slow-uploader").await;
    let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                      "params": {"name": "read_rows", "arguments": {"table": "users"}}})
    .to_string();
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);
    let (read, mut write) = srv.tcp().await;
    let head = format!(
        "POST /mcp HTTP/1.1\r\nhost: {}\r\nauthorization: {}\r\nmcp-session-id: {sid}\r\n\
         accept: application/json, text/event-stream\r\ncontent-type: application/json\r\n\
         mcp-protocol-version: 2025-11-25\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        srv.addr,
        bearer(&alice),
        body.len()
    );
    write.write_all(head.as_bytes()).await.expect("write");
    write.write_all(first).await.expect("write");
    // The guard is reading the body when shutdown begins; the rest comes later.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let app = srv.app.clone();
    let stopped = tokio::spawn(srv.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    write.write_all(rest).await.expect("write");
    let (answer, _) = until_closed(read).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""rows":1"#), "{answer}");
    assert_eq!(app.runs.load(Ordering::SeqCst), 1);
    stopped
        .await
        .expect("no panic")
        .expect("serve_until returns Ok");
}

// ---------------------------------------------------------------------------------------
// TLS.

fn tls_client(
    cert: &rcgen::Certificate,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// GETs the metadata over TLS: the negotiated version and the raw response.
async fn tls_get(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
) -> (rustls::ProtocolVersion, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let version = tls.get_ref().1.protocol_version().expect("negotiated");
    let req = format!(
        "GET /.well-known/oauth-protected-resource HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    // The server may close without close_notify: keep what arrived.
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf)).await;
    (version, String::from_utf8_lossy(&buf).into_owned())
}

#[tokio::test]
async fn tls_13_preferred_12_accepted_plain_http_refused() {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("self-signed certificate");
    let srv = start(
        config()
            .authenticator(hs_auth())
            .tls_pem(cert.pem(), signing_key.serialize_pem()),
    )
    .await;
    let port = srv.addr.port();
    let expected = format!("\"resource\":\"https://127.0.0.1:{port}/mcp\"");

    let (version, response) = tls_get(&tls_client(&cert, rustls::ALL_VERSIONS), srv.addr).await;
    assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(&expected), "{response}");

    let (version, response) =
        tls_get(&tls_client(&cert, &[&rustls::version::TLS12]), srv.addr).await;
    assert_eq!(version, rustls::ProtocolVersion::TLSv1_2);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let plain = http_client()
        .get(format!(
            "http://{}/.well-known/oauth-protected-resource",
            srv.addr
        ))
        .send()
        .await;
    assert!(
        plain.as_ref().map_or(true, |r| !r.status().is_success()),
        "plain HTTP must not be served: {plain:?}"
    );
}

/// Answer anyone.
#[tool(scopes = public, rate = "unlimited", read_only)]
async fn ping(ctx: Ctx<App>, #[arg(max_len = 32)] table: String) -> Rows {
    let rows = ctx.runs.fetch_add(1, Ordering::SeqCst) + 1;
    Rows {
        table: format!("ping {table}"),
        rows,
    }
}

/// Behind a proxy: the public resource URL names the server (metadata, audience, Host),
/// and an anonymous caller reaches public tools only.
#[tokio::test]
async fn a_proxied_resource_url_and_anonymous_callers() {
    capture_logs("trace");
    const PUBLIC: &str = "https://mcp.example.com/tools/mcp";
    let app = Arc::new(App::default());
    let audit = Collect::default();
    let hardened = Hardened::builder(app.clone())
        .tool::<ping>()
        .tool::<read_rows>()
        .audit_sink(audit.clone())
        .build()
        .expect("the server builds");
    let server = hardened
        .bind_http(
            config()
                .stateless()
                .resource_url(PUBLIC)
                .allow_anonymous()
                .authenticator(hs_auth()),
        )
        .await
        .expect("binds");
    assert_eq!(server.resource_url(), PUBLIC);
    assert_eq!(
        server.metadata_url(),
        "https://mcp.example.com/.well-known/oauth-protected-resource/tools/mcp"
    );
    let url = format!("http://{}/mcp", server.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve_until(async move {
        let _ = stopped.await;
    }));
    let post = |tool: &str, headers: Vec<(&'static str, String)>| {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": tool, "arguments": {"table": "users"}}});
        let mut req = http_client()
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2025-11-25")
            .body(body.to_string());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };
    let claims = |aud: &str| json!({"sub": "carol", "scope": "db:read", "iss": ISSUER, "aud": aud, "exp": now() + 600});

    // The public host is accepted in Host; a token for the public URL works.
    let good = bearer(&hs256(&claims(PUBLIC)));
    let r = post(
        "read_rows",
        vec![("host", "mcp.example.com".into()), ("authorization", good)],
    )
    .await
    .expect("answers");
    assert_eq!(r.status(), 200);
    let v = jsonrpc(&r.text().await.expect("body"));
    assert_eq!(v["result"]["isError"], json!(false), "{v}");
    assert_eq!(app.runs.load(Ordering::SeqCst), 1);

    // A token for the loopback URL is for another resource.
    let local = bearer(&hs256(&claims(&url)));
    let r = post("read_rows", vec![("authorization", local)])
        .await
        .expect("answers");
    assert_eq!(r.status(), 401);
    audit.denied(AuditEvent::Authentication, "wrong_audience");

    // Another host is not.
    let r = post("ping", vec![("host", "other.example.com".into())])
        .await
        .expect("answers");
    assert_eq!(r.status(), 403);

    // Anonymous: a public tool answers, a scoped one is UNAUTHENTICATED and does not run.
    let r = post("ping", vec![]).await.expect("answers");
    assert_eq!(r.status(), 200);
    let v = jsonrpc(&r.text().await.expect("body"));
    assert_eq!(
        v["result"]["structuredContent"]["table"],
        json!("ping users"),
        "{v}"
    );
    let r = post("read_rows", vec![]).await.expect("answers");
    assert_eq!(r.status(), 200);
    let v = jsonrpc(&r.text().await.expect("body"));
    assert_eq!(v["result"]["isError"], json!(true), "{v}");
    assert_eq!(
        v["result"]["structuredContent"]["error"]["code"],
        json!("UNAUTHENTICATED"),
        "{v}"
    );
    assert_eq!(
        app.runs.load(Ordering::SeqCst),
        2,
        "ping ran, read_rows did not"
    );
    let anonymous: Vec<_> = audit
        .records()
        .into_iter()
        .filter(|r| r.event == AuditEvent::ToolCall && r.principal.auth_method == "anonymous")
        .collect();
    assert_eq!(anonymous.len(), 2, "{anonymous:#?}");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("stops")
        .expect("no panic")
        .expect("serves cleanly");
}

/// A caller's W3C trace context continues into the call: from the `traceparent` header, or
/// from the request's `_meta`; the audit record carries the trace, its parent and a new span.
#[tokio::test]
async fn trace_context_continues_from_the_header_or_meta() {
    let srv = stateless().await;
    let auth = bearer(&srv.token("tracer", "db:read"));
    let from_header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = srv
        .raw_call(
            "read_rows",
            &[("authorization", &auth), ("traceparent", from_header)],
        )
        .await;
    assert_eq!(r.status(), 200);
    let body = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
                      "params": {"name": "read_rows", "arguments": {"table": "t"},
                                 "_meta": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}});
    let r = srv
        .raw_post(&body.to_string(), &[("authorization", &auth)])
        .await;
    assert_eq!(r.status(), 200);
    let r = srv
        .raw_call(
            "read_rows",
            &[
                ("authorization", &auth),
                ("traceparent", "00-zz-nonsense-01"),
            ],
        )
        .await;
    assert_eq!(r.status(), 200);

    let calls: Vec<_> = srv.audit.events(AuditEvent::ToolCall);
    assert_eq!(calls.len(), 3, "{calls:#?}");
    assert_eq!(&*calls[0].trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(calls[0].parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
    assert_eq!(&*calls[1].trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(calls[1].parent_span_id.as_deref(), Some("b7ad6b7169203331"));
    assert_eq!(
        calls[2].parent_span_id, None,
        "a malformed traceparent starts a new trace"
    );
    assert_eq!(calls[2].trace_id.len(), 32);
    assert_ne!(calls[2].trace_id, calls[0].trace_id);
    assert_ne!(calls[2].trace_id, calls[1].trace_id);
    // A refused request's security event continues the caller's trace too.
    let r = srv
        .raw_call("read_rows", &[("traceparent", from_header)])
        .await;
    assert_eq!(r.status(), 401);
    let refused = srv
        .audit
        .denied(AuditEvent::Authentication, "missing_credentials");
    assert_eq!(&*refused.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(refused.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
    for c in &calls {
        let span = c.span_id.as_deref().expect("a span id");
        assert_eq!(span.len(), 16);
        assert!(span.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    srv.stop().await.expect("stops");
}
