//! The HTTP server's own work per `tools/call`, without sockets, clients or other threads:
//! each request is handed straight to the endpoint's axum router (`ServiceExt::oneshot`) on
//! one current-thread runtime and its reply read to the end. Plain rmcp
//! (`StreamableHttpService`, stateful, a prebuilt router) against mcp-harden's endpoint (Host
//! and Origin checks, the bearer token through the JWT cache, the session-owner check, the
//! pipeline). Variants interleaved in blocks. See BENCHMARKS.md.
//!
//! `MH_BENCH_ONLY=hardened_jwt_cached` runs one variant (for a profiler).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, StatusCode};
use common::*;
use mcp_harden::auth::JwtAuthenticator;
use mcp_harden::server::http::HttpConfig;
use mcp_harden::Hardened;
use serde_json::json;
use tower::ServiceExt;

const PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40_000);

struct Endpoint {
    name: &'static str,
    router: axum::Router,
    token: Option<String>,
    session: String,
    next_id: u64,
}

impl Endpoint {
    fn request(&self, session: Option<&str>, body: serde_json::Value) -> Request<Body> {
        let mut b = Request::post("http://127.0.0.1:8080/mcp")
            .header(header::HOST, "127.0.0.1:8080")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25");
        if let Some(t) = &self.token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(s) = session {
            b = b.header("mcp-session-id", s);
        }
        let mut req = b
            .body(Body::from(body.to_string()))
            .expect("a valid request");
        req.extensions_mut().insert(ConnectInfo(PEER));
        req
    }

    /// Sends one request and reads the whole reply.
    async fn send(&self, req: Request<Body>) -> (StatusCode, Option<String>, axum::body::Bytes) {
        let response = self
            .router
            .clone()
            .oneshot(req)
            .await
            .expect("the router answers");
        let status = response.status();
        let session = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("the whole reply");
        (status, session, body)
    }

    async fn open(name: &'static str, router: axum::Router, token: Option<String>) -> Self {
        let mut e = Self {
            name,
            router,
            token,
            session: String::new(),
            next_id: 1,
        };
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"}}});
        let (status, session, _) = e.send(e.request(None, init)).await;
        assert_eq!(status, StatusCode::OK, "{name}: initialize");
        e.session = session.expect("a session id");
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let (status, _, _) = e.send(e.request(Some(&e.session), note)).await;
        assert!(status.is_success(), "{name}: initialized: {status}");
        e
    }

    async fn call(&mut self, args: &rmcp::model::JsonObject) {
        let id = self.next_id;
        self.next_id += 1;
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                          "params": {"name": "search", "arguments": args}});
        let (status, _, reply) = self.send(self.request(Some(&self.session), body)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            reply.windows(6).any(|w| w == b"\"hits\""),
            "{}: {}",
            self.name,
            String::from_utf8_lossy(&reply)
        );
    }
}

async fn hardened_router() -> (axum::Router, String) {
    let server = Hardened::builder(App)
        .tool::<search>()
        .audit_sink(NullSink)
        .build()
        .expect("the hardened server builds");
    let jwt = JwtAuthenticator::builder()
        .hs256(SECRET)
        .issuer(ISSUER)
        .build()
        .expect("valid JWT configuration");
    let config = HttpConfig::new("127.0.0.1:0".parse().expect("address"))
        .resource_url("http://127.0.0.1:8080/mcp")
        .authenticator(jwt);
    let bound = server.bind_http(config).await.expect("binds");
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
    let token = sign(
        jsonwebtoken::Algorithm::HS256,
        &key,
        &claims("bench", bound.resource_url()),
    );
    (bound.router(), token)
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let (rounds, block) = if bench_mode { (40, 1000) } else { (1, 10) };
    let rt = current_thread();
    rt.block_on(async {
        let (hardened, token) = hardened_router().await;
        let mut endpoints = vec![
            Endpoint::open(
                "plain_rmcp_prebuilt",
                plain_http_router(PlainPrebuilt::default, false),
                None,
            )
            .await,
            Endpoint::open(
                "plain_rmcp_prebuilt_wrapped",
                plain_http_router(PlainPrebuilt::default, true),
                None,
            )
            .await,
            Endpoint::open("hardened_jwt_cached", hardened, Some(token)).await,
        ];
        endpoints.retain(|e| selected(e.name));
        let args = arguments();
        for e in &mut endpoints {
            for _ in 0..block {
                e.call(&args).await;
            }
        }
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); endpoints.len()];
        let started = Instant::now();
        for round in 0..rounds {
            for k in 0..endpoints.len() {
                let i = (k + round) % endpoints.len();
                for _ in 0..block {
                    let t = Instant::now();
                    endpoints[i].call(&args).await;
                    samples[i].push(t.elapsed());
                }
            }
        }
        println!();
        println!(
            "http_server: requests handed to the router, no sockets, current-thread runtime, {rounds} rounds x {block} calls per variant, interleaved ({:.1} s, load {})",
            started.elapsed().as_secs_f64(),
            load_average()
        );
        println!("| variant | calls | p50 (us) | p99 (us) | p50 / plain prebuilt |");
        println!("|---|---|---|---|---|");
        let stats: Vec<Latencies> = samples.into_iter().map(Latencies::new).collect();
        // The baseline, when it ran (`MH_BENCH_ONLY` may leave it out: no ratios then).
        let base = endpoints
            .iter()
            .position(|e| e.name == "plain_rmcp_prebuilt")
            .map(|i| stats[i].quantile(0.5).as_secs_f64());
        for (e, s) in endpoints.iter().zip(&stats) {
            println!(
                "| {} | {} | {} | {} | {} |",
                e.name,
                s.len(),
                us(s.quantile(0.5)),
                us(s.quantile(0.99)),
                base.map_or("-".to_owned(), |b| format!(
                    "{:.3}",
                    s.quantile(0.5).as_secs_f64() / b
                )),
            );
        }
        let hardened = endpoints.iter().position(|e| e.name == "hardened_jwt_cached");
        if let (Some(h), Some(base)) = (hardened, base) {
            let d = stats[h].quantile(0.5).as_secs_f64() - base;
            println!("hardening over HTTP at p50: {:+.2} us per call", d * 1e6);
        }
    });
}
