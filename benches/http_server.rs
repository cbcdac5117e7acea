//! The HTTP server's own work per `tools/call`, without sockets, clients or other threads:
//! each request is handed straight to the endpoint's axum router (`ServiceExt::oneshot`) on
//! one current-thread runtime and its reply read to the end. Plain rmcp
//! (`StreamableHttpService`, stateful, a prebuilt router) against mcp-harden's endpoint (Host
//! and Origin checks, the bearer token through the JWT cache, the session-owner check, the
//! pipeline). Variants interleaved in blocks. See BENCHMARKS.md.
//!
//! A second table drives 16 sessions at once on a two-worker runtime, to see whether threads
//! contending for shared state make hardening dearer.
//!
//! `MH_BENCH_ONLY=hardened_jwt_cached` runs one variant (for a profiler); `MH_BENCH_ROUNDS=N`
//! sets the number of rounds.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, StatusCode};
use common::*;
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

/// The endpoints, each with its own router (and so its own sessions).
/// rmcp's HTTP service calls its factory for every POST: the plain ones hand out a clone of
/// one prebuilt server (as the socket bench's do), not a server with a router built anew.
async fn routers() -> Vec<(&'static str, axum::Router, bool)> {
    let prebuilt = PlainPrebuilt::default();
    let plain = |wrapped| {
        let prebuilt = prebuilt.clone();
        plain_http_router(move || prebuilt.clone(), wrapped)
    };
    vec![
        ("plain_rmcp_prebuilt", plain(false), false),
        ("plain_rmcp_prebuilt_wrapped", plain(true), false),
        // The plain endpoint sent the hardened one's bearer token, which it ignores: what
        // carrying the credential costs the server without a socket (hyper is not in this
        // bench, so only what the service does with a longer header map).
        ("plain_rmcp_prebuilt_token", plain(false), true),
        ("hardened_jwt_cached", hardened_router(|c| c).await, true),
    ]
    .into_iter()
    .filter(|(name, _, _)| selected(name))
    .collect()
}

/// One thread: the server's work per call, alone.
fn sequential(rounds: usize, block: usize) {
    let rt = current_thread();
    rt.block_on(async {
        let mut endpoints = Vec::new();
        for (name, router, auth) in routers().await {
            endpoints.push(Endpoint::open(name, router, auth.then(|| token("bench"))).await);
        }
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

/// Sessions driven at once from the tasks of a two-worker runtime: what the socket bench's
/// server runtime sees, without the sockets and the clients. One session per simulated
/// client, and (hardened) one caller each, as in `benches/http.rs`.
const SESSIONS: usize = 16;
const WORKERS: &str = "mh-bench";

/// One round of one variant: every session makes `calls` calls, all sessions at once.
/// Returns the wall time and the CPU time of the runtime's workers, per call.
async fn concurrent_round(
    sessions: Vec<Endpoint>,
    args: &std::sync::Arc<rmcp::model::JsonObject>,
    calls: usize,
) -> (Vec<Endpoint>, f64, f64) {
    let cpu = cpu_of_threads(WORKERS);
    let started = Instant::now();
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|mut e| {
            let args = args.clone();
            tokio::spawn(async move {
                for _ in 0..calls {
                    e.call(&args).await;
                }
                e
            })
        })
        .collect();
    let mut back = Vec::with_capacity(tasks.len());
    for t in tasks {
        back.push(t.await.expect("a session task"));
    }
    let n = (calls * back.len()) as f64;
    let wall = started.elapsed().as_secs_f64() * 1e6 / n;
    let cpu = cpu_of_threads(WORKERS).saturating_sub(cpu).as_secs_f64() * 1e6 / n;
    (back, wall, cpu)
}

fn concurrent(rounds: usize, calls: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(WORKERS)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut variants: Vec<(&'static str, Vec<Endpoint>)> = Vec::new();
        for (name, router, auth) in routers().await {
            let mut sessions = Vec::new();
            for i in 0..SESSIONS {
                let token = auth.then(|| token(&format!("client-{i}")));
                sessions.push(Endpoint::open(name, router.clone(), token).await);
            }
            variants.push((name, sessions));
        }
        let args = std::sync::Arc::new(arguments());
        for (_, sessions) in &mut variants {
            let (back, _, _) = concurrent_round(std::mem::take(sessions), &args, calls).await;
            *sessions = back;
        }
        let started = Instant::now();
        // Per variant, per round: (wall, CPU) per call.
        let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); variants.len()];
        for round in 0..rounds {
            for k in 0..variants.len() {
                let i = (k + round) % variants.len();
                let sessions = std::mem::take(&mut variants[i].1);
                let (back, wall, cpu) = concurrent_round(sessions, &args, calls).await;
                variants[i].1 = back;
                results[i].push((wall, cpu));
            }
        }
        println!();
        println!(
            "http_server, concurrent: {SESSIONS} sessions at once on a two-worker runtime, no sockets, {rounds} rounds x {calls} calls per session per variant, interleaved ({:.1} s, load {})",
            started.elapsed().as_secs_f64(),
            load_average()
        );
        println!("| variant | calls | wall per call (us) | CPU per call (us) | paired wall ratio | paired CPU ratio |");
        println!("|---|---|---|---|---|---|");
        let base = variants
            .iter()
            .position(|(name, _)| *name == "plain_rmcp_prebuilt");
        for ((name, _), rs) in variants.iter().zip(&results) {
            let paired = |f: fn(&(f64, f64)) -> f64| match base {
                Some(b) => {
                    let (q1, m, q3) = quartiles(
                        rs.iter()
                            .zip(&results[b])
                            .map(|(r, b)| f(r) / f(b))
                            .collect(),
                    );
                    format!("{m:.3} [{q1:.3}, {q3:.3}]")
                }
                None => "-".to_owned(),
            };
            println!(
                "| {name} | {} | {:.2} | {:.2} | {} | {} |",
                rs.len() * SESSIONS * calls,
                quartiles(rs.iter().map(|r| r.0).collect()).1,
                quartiles(rs.iter().map(|r| r.1).collect()).1,
                paired(|r| r.0),
                paired(|r| r.1),
            );
        }
        println!("(per call: medians of the rounds; paired: each round against the same round of plain_rmcp_prebuilt, median [first quartile, third quartile])");
    });
    rt.shutdown_timeout(Duration::from_secs(1));
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    // `MH_BENCH_ROUNDS=N` sets the number of rounds of both parts.
    let (rounds, block) = if bench_mode {
        (rounds(40), 1000)
    } else {
        (1, 10)
    };
    sequential(rounds, block);
    let calls = if bench_mode { 60 } else { 2 };
    concurrent(rounds, calls);
}
