//! JWT verification through `JwtAuthenticator::authenticate_shared` (what the HTTP guard calls for
//! every request): HS256, RS256, ES256 and EdDSA with the cache off (full verification),
//! a warm cache hit, and a miss with the cache on (verification plus insertion).

mod common;

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use criterion::{BatchSize, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey};
use mcp_harden::auth::{AuthContext, Authenticator, JwtAuthenticator, JwtBuilder};

const RESOURCE: &str = "http://127.0.0.1:8080/mcp";

struct Alg {
    name: &'static str,
    alg: Algorithm,
    encoding: EncodingKey,
    builder: fn() -> JwtBuilder,
}

fn algorithms() -> Vec<Alg> {
    vec![
        Alg {
            name: "hs256",
            alg: Algorithm::HS256,
            encoding: EncodingKey::from_secret(SECRET),
            builder: || JwtAuthenticator::builder().hs256(SECRET),
        },
        Alg {
            name: "rs256",
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("RSA key"),
            builder: || JwtAuthenticator::builder().rs256_pem(RSA_PUBLIC),
        },
        Alg {
            name: "es256",
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_pem(EC_PRIVATE).expect("EC key"),
            builder: || JwtAuthenticator::builder().es256_pem(EC_PUBLIC),
        },
        Alg {
            name: "eddsa",
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_pem(ED_PRIVATE).expect("Ed25519 key"),
            builder: || JwtAuthenticator::builder().eddsa_pem(ED_PUBLIC),
        },
    ]
}

fn build(a: &Alg, cache: Option<usize>) -> JwtAuthenticator {
    let b = (a.builder)().issuer(ISSUER);
    match cache {
        Some(n) => b.cache(n),
        None => b,
    }
    .build()
    .expect("valid JWT configuration")
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let source: SocketAddr = ([127, 0, 0, 1], 50_000).into();
    let cx = AuthContext::new(RESOURCE, source);
    let algs = algorithms();

    let mut g = c.benchmark_group("jwt_verify_uncached");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    for a in &algs {
        let auth = build(a, Some(0));
        let token = sign(a.alg, &a.encoding, &claims("alice", RESOURCE));
        let p = auth
            .authenticate_shared(&token, &cx)
            .expect("a JWT")
            .expect("valid");
        assert_eq!(p.subject(), "alice");
        g.bench_function(a.name, |b| {
            b.iter(|| black_box(auth.authenticate_shared(black_box(&token), &cx)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("jwt_cache_hit");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    for a in &algs {
        let auth = build(a, None);
        let token = sign(a.alg, &a.encoding, &claims("alice", RESOURCE));
        auth.authenticate_shared(&token, &cx)
            .expect("a JWT")
            .expect("valid");
        g.bench_function(a.name, |b| {
            b.iter(|| black_box(auth.authenticate_shared(black_box(&token), &cx)))
        });
    }
    // A warm cache holding 5 000 callers' tokens (half the default capacity, so that every
    // lookup hits): memory effects of a large working set.
    let hs = &algs[0];
    let auth = build(hs, None);
    let tokens: Vec<String> = (0..5_000)
        .map(|i| {
            sign(
                hs.alg,
                &hs.encoding,
                &claims(&format!("user-{i}"), RESOURCE),
            )
        })
        .collect();
    for t in &tokens {
        auth.authenticate_shared(t, &cx)
            .expect("a JWT")
            .expect("valid");
    }
    let mut i = 0usize;
    g.bench_function("hs256_5k_callers", |b| {
        b.iter(|| {
            i = (i + 7919) % tokens.len();
            black_box(auth.authenticate_shared(black_box(&tokens[i]), &cx))
        })
    });
    g.finish();

    // A first sight with the cache on: SHA-256, lookup, full verification, insertion.
    let mut g = c.benchmark_group("jwt_cache_miss");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    let auth = build(hs, None);
    let mut n = 0u64;
    g.bench_function("hs256", |b| {
        b.iter_batched(
            || {
                n += 1;
                sign(
                    hs.alg,
                    &hs.encoding,
                    &claims(&format!("fresh-{n}"), RESOURCE),
                )
            },
            |t| black_box(auth.authenticate_shared(&t, &cx)),
            BatchSize::SmallInput,
        )
    });
    let token = sign(hs.alg, &hs.encoding, &claims("alice", RESOURCE));
    g.bench_function("sha256_of_token", |b| {
        b.iter(|| {
            use sha2::Digest as _;
            black_box(sha2::Sha256::digest(black_box(token.as_bytes())))
        })
    });
    g.finish();
    println!("token length: {} bytes", token.len());

    c.final_summary();
}
