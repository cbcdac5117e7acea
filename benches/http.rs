//! Streamable HTTP on loopback: 16 concurrent rmcp clients, each calling `search` in a loop,
//! against plain rmcp (`StreamableHttpService` in axum, no authentication) and mcp-harden
//! (`Hardened::bind_http`, a JWT authenticator, a valid HS256 token per client; or an API-key
//! authenticator, one `mhk_` key per client).
//!
//! A custom measurement (`harness = false`), not criterion: what matters here is calls per
//! second and the per-call latency distribution (p50/p99) under concurrency, and criterion
//! measures one routine's mean time. The variants alternate round by round, so drift in the
//! machine's load hits them alike; the table reports the median of the rounds' figures.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mcp_harden::auth::{ApiKey, ApiKeyAuthenticator, Authenticator, JwtAuthenticator};
use mcp_harden::server::http::HttpConfig;
use mcp_harden::Hardened;
use rmcp::model::JsonObject;
use rmcp::service::{Peer, RoleClient};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use tokio::sync::oneshot;

const CLIENTS: usize = 16;

/// Calibration: plain rmcp plus a known amount of busy work per call (`MH_BENCH_SPIN_US`,
/// default 4 µs), run only when `MH_BENCH_ONLY` names it. It shows how this benchmark reports
/// a known server-side cost: what a ratio of the hardened variant means.
const SPIN_VARIANT: &str = "plain_rmcp_prebuilt_spin";

fn spin() -> Duration {
    Duration::from_secs_f64(env_or("MH_BENCH_SPIN_US", 4.0) / 1e6)
}

struct Variant {
    name: &'static str,
    url: String,
    /// One bearer token per client, or none.
    tokens: Vec<Option<String>>,
}

impl Variant {
    /// A variant whose clients send no credential.
    fn plain(name: &'static str, url: String) -> Self {
        Self {
            name,
            url,
            tokens: vec![None; CLIENTS],
        }
    }
}

/// Serves plain rmcp's `server` with axum-server (as mcp-harden serves its endpoint) on a
/// loopback port until told to stop; its endpoint URL. With `wrapped`, behind the
/// [`passthrough`] middleware and with the peer address in each request, as the guard takes
/// it. With `http1`, HTTP/1.1 only, as mcp-harden serves (no protocol sniffing); otherwise
/// axum-server's default, which is also `axum::serve`'s, the way rmcp's examples serve:
/// HTTP/1.1 or cleartext HTTP/2, told apart by a first read of 24 bytes on every connection.
fn serve_plain<S>(server: S, wrapped: bool, http1: bool) -> (String, oneshot::Sender<()>)
where
    S: rmcp::ServerHandler + Clone + Send + Sync + 'static,
{
    let app = plain_http_router(move || server.clone(), wrapped);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = axum_server::Handle::<SocketAddr>::new();
    let mut server = axum_server::from_tcp(listener)
        .expect("server")
        .handle(handle.clone());
    if http1 {
        server = server.http1_only();
    }
    let server = if wrapped {
        Box::pin(server.serve(app.into_make_service_with_connect_info::<SocketAddr>()))
            as std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>
    } else {
        Box::pin(server.serve(app.into_make_service()))
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = server => {}
            _ = stopped => handle.shutdown(),
        }
    });
    (format!("http://{addr}/mcp"), stop)
}

/// mcp-harden over HTTP with a JWT authenticator (cache on or off), audit to a null sink.
async fn hardened_http(cache: Option<usize>) -> (String, oneshot::Sender<()>) {
    let mut jwt = JwtAuthenticator::builder().hs256(SECRET).issuer(ISSUER);
    if let Some(n) = cache {
        jwt = jwt.cache(n);
    }
    hardened_http_with(jwt.build().expect("valid JWT configuration")).await
}

/// mcp-harden over HTTP with an API-key authenticator holding one key per client, audit to
/// a null sink; its URL, and the keys to send.
async fn hardened_http_apikeys() -> (String, oneshot::Sender<()>, Vec<Option<String>>) {
    let keys: Vec<ApiKey> = (0..CLIENTS).map(|_| ApiKey::generate()).collect();
    let auth = ApiKeyAuthenticator::new(
        keys.iter()
            .enumerate()
            .map(|(i, k)| k.entry(format!("client-{i}"), SCOPES)),
    )
    .expect("valid API keys");
    let (url, stop) = hardened_http_with(auth).await;
    let keys = keys.iter().map(|k| Some(k.expose().to_owned())).collect();
    (url, stop, keys)
}

async fn hardened_http_with(auth: impl Authenticator) -> (String, oneshot::Sender<()>) {
    let server = Hardened::builder(App)
        .tool::<search>()
        .audit_sink(NullSink)
        .build()
        .expect("the hardened server builds");
    let config = HttpConfig::new("127.0.0.1:0".parse().expect("address")).authenticator(auth);
    let bound = server.bind_http(config).await.expect("binds");
    let url = bound.resource_url().to_owned();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(bound.serve_until(async move {
        let _ = stopped.await;
    }));
    (url, stop)
}

async fn connect(url: &str, token: Option<&str>) -> Client {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url);
    if let Some(t) = token {
        config = config.auth_header(t);
    }
    ().serve(StreamableHttpClientTransport::from_config(config))
        .await
        .expect("the rmcp client connects")
}

struct Round {
    calls: usize,
    elapsed: Duration,
    /// CPU time of the whole process (clients and server) during the round.
    cpu: Duration,
    /// CPU time of the server runtime's threads during the round.
    server_cpu: Duration,
    latencies: Vec<Duration>,
}

/// The servers run on their own runtime, whose threads are named so.
const SERVER_THREADS: &str = "mh-server";

/// `calls` calls from each client, all clients at once.
async fn round(clients: &[Client], args: &Arc<JsonObject>, calls: usize) -> Round {
    let peers: Vec<Peer<RoleClient>> = clients.iter().map(|c| c.peer().clone()).collect();
    let (cpu, server_cpu) = (cpu_of_threads(""), cpu_of_threads(SERVER_THREADS));
    let started = Instant::now();
    let tasks: Vec<_> = peers
        .into_iter()
        .map(|peer| {
            let args = args.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(calls);
                for _ in 0..calls {
                    let (r, d) = timed(peer.call_tool(request("search", &args))).await;
                    let r = r.expect("the call answers");
                    assert_ne!(r.is_error, Some(true), "{r:?}");
                    lat.push(d);
                }
                lat
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(calls * clients.len());
    for t in tasks {
        latencies.extend(t.await.expect("client task"));
    }
    Round {
        calls: latencies.len(),
        elapsed: started.elapsed(),
        cpu: cpu_of_threads("").saturating_sub(cpu),
        server_cpu: cpu_of_threads(SERVER_THREADS).saturating_sub(server_cpu),
        latencies,
    }
}

async fn run(server_rt: &tokio::runtime::Runtime, rounds: usize, calls: usize) {
    // The servers, on their runtime, and the variants that call them.
    let (variants, _stops) = server_rt
        .spawn(async {
            let prebuilt = PlainPrebuilt::default();
            let (default_url, s1) = serve_plain(PlainDefault, false, false);
            let (prebuilt_url, s2) = serve_plain(prebuilt.clone(), false, false);
            let (http1_url, s3) = serve_plain(prebuilt.clone(), false, true);
            let (wrapped_url, s4) = serve_plain(prebuilt, true, false);
            let (spin_url, s5) = serve_plain(PlainPrebuilt::spinning(spin()), false, false);
            let (cached_url, s6) = hardened_http(None).await;
            let (uncached_url, s7) = hardened_http(Some(0)).await;
            let (apikey_url, s8, apikeys) = hardened_http_apikeys().await;
            let tokens = |url: &str| -> Vec<Option<String>> {
                let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
                (0..CLIENTS)
                    .map(|i| {
                        Some(sign(
                            jsonwebtoken::Algorithm::HS256,
                            &key,
                            &claims(&format!("client-{i}"), url),
                        ))
                    })
                    .collect()
            };
            let variants = [
                Variant::plain("plain_rmcp_default", default_url),
                Variant::plain("plain_rmcp_prebuilt", prebuilt_url.clone()),
                // Plain rmcp served as mcp-harden serves (HTTP/1.1 only, no protocol
                // sniffing): the same transport; hardened's ratio divided by this one's is
                // hardening's own cost.
                Variant::plain("plain_rmcp_prebuilt_http1", http1_url),
                // The same plain server, sent the same bearer tokens as the hardened one
                // (which it ignores): what carrying a credential costs the client, the wire
                // and hyper.
                Variant {
                    name: "plain_rmcp_prebuilt_token",
                    url: prebuilt_url.clone(),
                    tokens: tokens(&cached_url),
                },
                // The same, sent the hardened API-key variant's keys (64 bytes each).
                Variant {
                    name: "plain_rmcp_prebuilt_apikey",
                    url: prebuilt_url.clone(),
                    tokens: apikeys.clone(),
                },
                Variant::plain("plain_rmcp_prebuilt_wrapped", wrapped_url),
                Variant {
                    name: "hardened_jwt_cached",
                    tokens: tokens(&cached_url),
                    url: cached_url,
                },
                Variant {
                    name: "hardened_jwt_uncached",
                    tokens: tokens(&uncached_url),
                    url: uncached_url,
                },
                // mcp-harden's own credential: an API key, checked by its SHA-256 on every
                // request (no cache), the whole pipeline otherwise the same.
                Variant {
                    name: "hardened_apikey",
                    url: apikey_url,
                    tokens: apikeys,
                },
                Variant::plain(SPIN_VARIANT, spin_url),
            ];
            (variants, [s1, s2, s3, s4, s5, s6, s7, s8])
        })
        .await
        .expect("the servers start");
    // `MH_BENCH_ONLY=plain_rmcp_prebuilt,hardened_jwt_cached` runs only those variants
    // (`MH_BENCH_ROUNDS=N` sets the number of rounds).
    // The calibration variant runs only when named.
    let variants: Vec<Variant> = variants
        .into_iter()
        .filter(|v| selected(v.name) && (v.name != SPIN_VARIANT || named(SPIN_VARIANT)))
        .collect();
    let mut peers = Vec::new();
    for v in &variants {
        let mut p = Vec::new();
        for t in &v.tokens {
            p.push(connect(&v.url, t.as_deref()).await);
        }
        peers.push(p);
    }
    let args = Arc::new(arguments());
    // Warm-up, and a check that every variant does the work.
    for p in &peers {
        check(
            &p[0]
                .call_tool(request("search", &args))
                .await
                .expect("call"),
        );
        round(p, &args, calls / 5 + 1).await;
    }
    let started = Instant::now();
    let mut results: Vec<Vec<Round>> = variants.iter().map(|_| Vec::new()).collect();
    for r in 0..rounds {
        for k in 0..variants.len() {
            let i = (k + r) % variants.len();
            results[i].push(round(&peers[i], &args, calls).await);
        }
    }
    println!();
    println!(
        "http: Streamable HTTP on loopback, {CLIENTS} concurrent clients, {rounds} rounds x {calls} calls per client per variant, interleaved ({:.1} s, load {})",
        started.elapsed().as_secs_f64(),
        load_average()
    );
    println!("| variant | calls | calls/s | p50 (us) | p99 (us) | CPU/call, all (us) | CPU/call, server (us) | p50 ratio | calls/s ratio | CPU ratio, all | CPU ratio, server |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    struct Summary {
        rate: f64,
        p50: Duration,
        p99: Duration,
        cpu_us: f64,
        server_us: f64,
        calls: usize,
    }
    // Paired per-round ratios: each round of a variant against the same round of the base
    // (run minutes apart at most), so that drifts in machine load cancel out.
    let base_index = variants
        .iter()
        .position(|v| v.name == "plain_rmcp_prebuilt")
        .unwrap_or(0);
    let paired: Vec<[(f64, f64, f64); 3]> = results
        .iter()
        .map(|rs| {
            let b = &results[base_index];
            let per_call = |r: &Round, d: Duration| d.as_secs_f64() / r.calls as f64;
            let ratios = |f: &dyn Fn(&Round, &Round) -> f64| {
                quartiles(rs.iter().zip(b).map(|(r, b)| f(r, b)).collect())
            };
            [
                ratios(&|r, b| {
                    r.elapsed.as_secs_f64()
                        / r.calls as f64
                        / (b.elapsed.as_secs_f64() / b.calls as f64)
                }),
                ratios(&|r, b| per_call(r, r.cpu) / per_call(b, b.cpu)),
                ratios(&|r, b| per_call(r, r.server_cpu) / per_call(b, b.server_cpu)),
            ]
        })
        .collect();
    // Whole-run ratios: every round's time (and CPU) summed, against the base's sums.
    let sums: Vec<[f64; 3]> = results
        .iter()
        .map(|rs| {
            let calls: usize = rs.iter().map(|r| r.calls).sum();
            let total = |f: &dyn Fn(&Round) -> Duration| {
                rs.iter().map(|r| f(r).as_secs_f64()).sum::<f64>() / calls as f64
            };
            [
                total(&|r| r.elapsed),
                total(&|r| r.cpu),
                total(&|r| r.server_cpu),
            ]
        })
        .collect();
    let summary: Vec<Summary> = results
        .into_iter()
        .map(|rs| {
            let rate = quartiles(
                rs.iter()
                    .map(|r| r.calls as f64 / r.elapsed.as_secs_f64())
                    .collect(),
            )
            .1;
            let cpu_us = quartiles(
                rs.iter()
                    .map(|r| r.cpu.as_secs_f64() * 1e6 / r.calls as f64)
                    .collect(),
            )
            .1;
            let server_us = quartiles(
                rs.iter()
                    .map(|r| r.server_cpu.as_secs_f64() * 1e6 / r.calls as f64)
                    .collect(),
            )
            .1;
            let calls = rs.iter().map(|r| r.calls).sum();
            let lat = Latencies::new(rs.into_iter().flat_map(|r| r.latencies).collect());
            Summary {
                rate,
                p50: lat.quantile(0.5),
                p99: lat.quantile(0.99),
                cpu_us,
                server_us,
                calls,
            }
        })
        .collect();
    // Ratios against plain rmcp with a prebuilt router (or the first variant run).
    let base = &summary[base_index];
    for (v, s) in variants.iter().zip(&summary) {
        println!(
            "| {} | {} | {:.0} | {} | {} | {:.1} | {:.1} | {:.3} | {:.3} | {:.3} | {:.3} |",
            v.name,
            s.calls,
            s.rate,
            us(s.p50),
            us(s.p99),
            s.cpu_us,
            s.server_us,
            s.p50.as_secs_f64() / base.p50.as_secs_f64(),
            base.rate / s.rate,
            s.cpu_us / base.cpu_us,
            s.server_us / base.server_us,
        );
    }
    println!("(calls/s and CPU per call: medians of the rounds; ratios: variant / plain_rmcp_prebuilt, above 1 = slower)");
    println!();
    println!("paired per-round ratios to plain_rmcp_prebuilt, median [first quartile, third quartile] over {rounds} rounds:");
    println!("| variant | time per call | CPU per call, all | CPU per call, server |");
    println!("|---|---|---|---|");
    for (v, p) in variants.iter().zip(&paired) {
        let f = |(q1, m, q3): (f64, f64, f64)| format!("{m:.3} [{q1:.3}, {q3:.3}]");
        println!("| {} | {} | {} | {} |", v.name, f(p[0]), f(p[1]), f(p[2]));
    }
    println!();
    println!("whole-run ratios to plain_rmcp_prebuilt (sums over all rounds):");
    println!("| variant | time per call | CPU per call, all | CPU per call, server |");
    println!("|---|---|---|---|");
    let b = sums[base_index];
    for (v, s) in variants.iter().zip(&sums) {
        println!(
            "| {} | {:.3} | {:.3} | {:.3} |",
            v.name,
            s[0] / b[0],
            s[1] / b[1],
            s[2] / b[2]
        );
    }
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let (rounds, calls) = if bench_mode {
        (rounds(8), env_or("MH_BENCH_CALLS", 300))
    } else {
        (1, 5)
    };
    // Servers and clients on runtimes of their own (two workers each unless
    // `MH_BENCH_WORKERS` says otherwise, sharing the machine's cores), so that the server's
    // CPU time can be told apart from the clients'.
    let workers: usize = env_or("MH_BENCH_WORKERS", 2).max(1);
    let runtime = |name: &'static str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name(name)
            .enable_all()
            .build()
            .expect("runtime")
    };
    let server_rt = runtime(SERVER_THREADS);
    let client_rt = runtime("mh-client");
    client_rt.block_on(run(&server_rt, rounds, calls));
    // The client sessions and the servers end with their runtimes.
    client_rt.shutdown_timeout(Duration::from_secs(1));
    server_rt.shutdown_timeout(Duration::from_secs(1));
}
