//! Helpers shared by the end-to-end suites (each suite uses some of them).
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mcp_harden::Hardened;
use rmcp::service::{RoleClient, RunningService};
use rmcp::ServiceExt;

/// The parameters of a `tools/call` of `tool` with `args` (a JSON object).
pub fn params(tool: &'static str, args: serde_json::Value) -> rmcp::model::CallToolRequestParams {
    let serde_json::Value::Object(args) = args else {
        panic!("arguments must be a JSON object")
    };
    rmcp::model::CallToolRequestParams::new(tool).with_arguments(args)
}

/// The `error` object of a refused call, checked for the wire shape of DESIGN.md: an error
/// result whose text is its structured content.
pub fn error_of(r: &rmcp::model::CallToolResult) -> serde_json::Value {
    assert_eq!(r.is_error, Some(true), "expected an error result: {r:?}");
    let structured = r.structured_content.clone().expect("structured error");
    let text = r
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .expect("text content");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).expect("text is JSON"),
        structured,
        "text mirrors structured content"
    );
    structured["error"].clone()
}

/// Serves `server` over an in-process duplex stream (its local principal is the caller) and
/// connects a real rmcp client to it.
pub async fn connect<S: Send + Sync + 'static>(
    server: Hardened<S>,
) -> RunningService<RoleClient, ()> {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        if let Ok(running) = server.serve_transport(server_io).await {
            let _ = running.waiting().await;
        }
    });
    ().serve(client_io).await.expect("client connects")
}

/// A `redis-server` child on a loopback port, killed on drop. `.ci/run` installs the binary;
/// without it a test is skipped, unless `MCP_HARDEN_REQUIRE_REDIS` is set (as in CI).
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    /// Starts one on a free port, or `None` (skip) when it cannot start and is not required.
    pub fn start() -> Option<Redis> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Self::on(port)
    }

    /// Starts one on `port`.
    pub fn on(port: u16) -> Option<Redis> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if std::env::var_os("MCP_HARDEN_REQUIRE_REDIS").is_some() => {
                panic!("redis-server is required (MCP_HARDEN_REQUIRE_REDIS) but cannot start: {e}")
            }
            Err(e) => {
                // Straight to stderr, not `eprintln!`: the test harness captures that for a
                // passing test, and a skip must be seen.
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: redis-server cannot start ({e}); install it to run this test"
                );
                return None;
            }
        };
        let redis = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A rate-limit store on it (made within a Tokio runtime, as `RedisStore` requires).
    pub fn store(&self) -> mcp_harden::limits::RedisStore {
        mcp_harden::limits::RedisStore::new(&self.url()).expect("store")
    }

    /// One command (`args[0]` with the rest as its arguments), on a connection of its own;
    /// its reply as `T`.
    pub fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut conn = redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connects");
        let (name, rest) = args.split_first().expect("a command");
        redis::cmd(name)
            .arg(rest)
            .query(&mut conn)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// Freezes it (`SIGSTOP`): connections stay open and nothing answers, as a hung server.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused one go on (`SIGCONT`).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal}");
    }

    /// Kills it (as an outage would).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An audit sink that keeps every record, for assertions, and counts its flushes.
#[derive(Clone, Default)]
pub struct Collect(
    pub std::sync::Arc<std::sync::Mutex<Vec<mcp_harden::AuditRecord>>>,
    pub std::sync::Arc<std::sync::atomic::AtomicUsize>,
);

impl mcp_harden::AuditSink for Collect {
    fn record(&self, record: &mcp_harden::AuditRecord) {
        self.0.lock().expect("audit lock").push(record.clone());
    }
    fn flush(&self, _timeout: std::time::Duration) -> bool {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        true
    }
}

impl Collect {
    /// The records so far.
    pub fn records(&self) -> Vec<mcp_harden::AuditRecord> {
        self.0.lock().expect("audit lock").clone()
    }

    /// How many times the sink was flushed.
    pub fn flushes(&self) -> usize {
        self.1.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Every log line of the test binary, to prove no secret is ever logged.
static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures every log event passing `filter` (e.g. `"trace"`) for [`logs`]. One filter per
/// test binary: asking for another fails rather than capture less than asked.
pub fn capture_logs(filter: &str) {
    static INIT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let installed = INIT.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .try_init();
        filter.to_owned()
    });
    assert_eq!(
        installed, filter,
        "logs are already captured with another filter"
    );
}

/// Everything logged so far.
pub fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

/// A minimal OTLP/HTTP collector on 127.0.0.1, on a runtime of its own (so that a test may
/// block its own thread flushing spans): it keeps every request body posted to `/v1/traces`.
pub fn collector() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
) {
    let bodies: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Default::default();
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
    listener.set_nonblocking(true).expect("non-blocking");
    let addr = listener.local_addr().expect("address");
    let kept = bodies.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/v1/traces",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let kept = kept.clone();
                    async move {
                        kept.lock().expect("lock").push(body.to_vec());
                        (
                            [("content-type", "application/x-protobuf")],
                            Vec::<u8>::new(),
                        )
                    }
                }),
            );
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = axum::serve(listener, app).await;
        });
    });
    (addr, bodies)
}

/// Waits up to 10 s for the collector's first request body.
pub async fn first_export(bodies: &std::sync::Mutex<Vec<Vec<u8>>>) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(b) = bodies.lock().expect("lock").first().cloned() {
            return b;
        }
        assert!(Instant::now() < deadline, "no export reached the collector");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Serves the metrics for scraping on a free loopback port (once per test binary: the
/// recorder is the process's).
pub fn serve_metrics() -> std::net::SocketAddr {
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    mcp_harden::telemetry::install_prometheus(addr).expect("exporter");
    addr
}

/// The metrics page served at `addr`.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("page")
}

/// Waits (polling) until `cond` holds, failing after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether `haystack` holds `needle` anywhere.
pub fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// 32 hex digits as the 16 bytes of a trace id.
pub fn trace_id_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}
