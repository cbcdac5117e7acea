//! One `tools/call` round trip in process (rmcp client ⇄ `tokio::io::duplex` ⇄ server) on a
//! current-thread runtime: plain rmcp (default `#[tool_handler]`, and a prebuilt router)
//! against mcp-harden with every stage on. See BENCHMARKS.md.
//!
//! Two measurements: criterion (`inprocess_call/*`), then an interleaved per-call latency
//! table (p50/p99; variants alternate in blocks, so drift in machine load hits them alike).

mod common;

use std::time::{Duration, Instant};

use common::*;
use criterion::Criterion;

const VARIANTS: [(&str, &str); 4] = [
    ("plain_rmcp_default", "search"),
    ("plain_rmcp_prebuilt", "search"),
    ("hardened", "search"),
    ("hardened_unlimited", "search_unlimited"),
];

struct Clients {
    default: Client,
    prebuilt: Client,
    hardened: Client,
}

impl Clients {
    async fn new() -> Self {
        Self {
            default: connect_plain(PlainDefault).await,
            prebuilt: connect_plain(PlainPrebuilt::default()).await,
            hardened: connect_hardened(hardened()).await,
        }
    }

    fn get(&self, variant: &str) -> &Client {
        match variant {
            "plain_rmcp_default" => &self.default,
            "plain_rmcp_prebuilt" => &self.prebuilt,
            _ => &self.hardened,
        }
    }

    async fn close(self) {
        for c in [self.default, self.prebuilt, self.hardened] {
            let _ = c.cancel().await;
        }
    }
}

fn criterion_part(c: &mut Criterion, rt: &tokio::runtime::Runtime, clients: &Clients) {
    let args = arguments();
    let mut g = c.benchmark_group("inprocess_call");
    g.warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
        .sample_size(50);
    for (name, tool) in VARIANTS {
        let client = clients.get(name);
        let args = &args;
        g.bench_function(name, |b| {
            b.to_async(rt).iter(|| async move {
                client
                    .call_tool(request(tool, args))
                    .await
                    .expect("the call answers")
            })
        });
    }
    g.finish();
}

/// Per-call latencies, variants interleaved in blocks of `block` calls for `rounds` rounds.
async fn latency_part(clients: &Clients, rounds: usize, block: usize) {
    let args = arguments();
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds * block); VARIANTS.len()];
    // Warm-up.
    for (name, tool) in VARIANTS {
        for _ in 0..block {
            let _ = clients.get(name).call_tool(request(tool, &args)).await;
        }
    }
    // `MH_BENCH_ONLY=hardened` runs only the named variants (for a profiler; the ratio
    // columns are then meaningless).
    let started = Instant::now();
    for round in 0..rounds {
        for k in 0..VARIANTS.len() {
            // Rotate the order every round: no variant always follows another.
            let i = (k + round) % VARIANTS.len();
            let (name, tool) = VARIANTS[i];
            if !selected(name) {
                continue;
            }
            let client = clients.get(name);
            for _ in 0..block {
                let (r, d) = timed(client.call_tool(request(tool, &args))).await;
                r.expect("the call answers");
                samples[i].push(d);
            }
        }
    }
    let elapsed = started.elapsed();
    let stats: Vec<Latencies> = samples.into_iter().map(Latencies::new).collect();
    let p50 = |name: &str| {
        let i = VARIANTS
            .iter()
            .position(|(n, _)| *n == name)
            .expect("variant");
        stats[i].quantile(0.5)
    };
    let (default, prebuilt) = (p50("plain_rmcp_default"), p50("plain_rmcp_prebuilt"));
    println!();
    println!(
        "inprocess_latency: current-thread runtime, {rounds} rounds x {block} calls per variant, interleaved ({:.1} s, load {})",
        elapsed.as_secs_f64(),
        load_average()
    );
    println!(
        "| variant | calls | p50 (us) | p99 (us) | p50 / plain prebuilt | p50 / plain default |"
    );
    println!("|---|---|---|---|---|---|");
    for (i, (name, _)) in VARIANTS.iter().enumerate() {
        let s = &stats[i];
        println!(
            "| {name} | {} | {} | {} | {:.3} | {:.3} |",
            s.len(),
            us(s.quantile(0.5)),
            us(s.quantile(0.99)),
            s.quantile(0.5).as_secs_f64() / prebuilt.as_secs_f64(),
            s.quantile(0.5).as_secs_f64() / default.as_secs_f64(),
        );
    }
    let hardened = p50("hardened");
    println!(
        "pipeline overhead at p50: {} us over plain prebuilt, {} us over plain default (negative: faster)",
        signed_us(hardened, prebuilt),
        signed_us(hardened, default),
    );
}

fn signed_us(a: Duration, b: Duration) -> String {
    format!("{:+.2}", (a.as_secs_f64() - b.as_secs_f64()) * 1e6)
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    let rt = current_thread();
    let clients = rt.block_on(async {
        let clients = Clients::new().await;
        let args = arguments();
        for (name, tool) in VARIANTS {
            let r = clients
                .get(name)
                .call_tool(request(tool, &args))
                .await
                .expect("the call answers");
            check(&r);
        }
        clients
    });

    let mut c = Criterion::default().configure_from_args();
    criterion_part(&mut c, &rt, &clients);
    c.final_summary();

    if "inprocess_latency".contains(filter.as_str()) {
        // `MH_BENCH_ROUNDS=N` sets the number of rounds (for callgrind: a few suffice).
        let (rounds, block) = if bench_mode {
            (rounds(40), 1000)
        } else {
            (1, 10)
        };
        rt.block_on(latency_part(&clients, rounds, block));
    }
    rt.block_on(clients.close());
}
