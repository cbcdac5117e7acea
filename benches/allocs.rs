//! Heap allocations per `tools/call` round trip in process (client and server together, on
//! one current-thread runtime): plain rmcp against mcp-harden with every stage on. Not a
//! timing: a count, exact and reproducible, of the work malloc does.
//!
//! A second table: the heap an open Streamable HTTP session holds (live bytes after opening
//! sessions, over how many), plain rmcp's endpoint against mcp-harden's, each driven without
//! sockets (`ServiceExt::oneshot`). See BENCHMARKS.md.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use common::*;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Bytes allocated and not yet freed.
static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: every method forwards to the system allocator with the caller's arguments.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CALLS: u64 = 2_000;

async fn per_call(client: &Client, tool: &'static str) -> (f64, f64) {
    let args = arguments();
    for _ in 0..100 {
        let _ = client.call_tool(request(tool, &args)).await;
    }
    let (a0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    for _ in 0..CALLS {
        let r = client
            .call_tool(request(tool, &args))
            .await
            .expect("the call answers");
        check(&r);
    }
    let (a1, b1) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    (
        (a1 - a0) as f64 / CALLS as f64,
        (b1 - b0) as f64 / CALLS as f64,
    )
}

/// Sessions opened per endpoint for the second table.
const SESSIONS: usize = 2_000;

/// Opens a session on `router` (`initialize`, `notifications/initialized`), as the holder of
/// `token` if any.
async fn open_session(router: &axum::Router, token: Option<&str>) {
    use axum::http::{header, Request, StatusCode};
    use tower::ServiceExt;
    let post = |session: Option<&str>, body: serde_json::Value| {
        let mut b = Request::post(RESOURCE)
            .header(header::HOST, "127.0.0.1:8080")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25");
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(s) = session {
            b = b.header("mcp-session-id", s);
        }
        let mut req = b
            .body(axum::body::Body::from(body.to_string()))
            .expect("a request");
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                40_000,
            ))));
        req
    };
    let init = serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"}}});
    let r = router
        .clone()
        .oneshot(post(None, init))
        .await
        .expect("answers");
    assert_eq!(r.status(), StatusCode::OK, "initialize");
    let id = r.headers()["mcp-session-id"]
        .to_str()
        .expect("an id")
        .to_owned();
    let _ = axum::body::to_bytes(r.into_body(), 1 << 20).await;
    let note = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let r = router
        .clone()
        .oneshot(post(Some(&id), note))
        .await
        .expect("answers");
    assert!(r.status().is_success(), "initialized");
    let _ = axum::body::to_bytes(r.into_body(), 1 << 20).await;
}

/// Lets the sessions' tasks run until they wait.
async fn settle() {
    for _ in 0..1_000 {
        tokio::task::yield_now().await;
    }
}

/// The live heap per open session: `SESSIONS` opened on a fresh endpoint, after a few to
/// warm it up.
async fn heap_per_session(router: axum::Router, token: Option<&str>) -> f64 {
    for _ in 0..20 {
        open_session(&router, token).await;
    }
    settle().await;
    let before = LIVE.load(Ordering::Relaxed);
    for _ in 0..SESSIONS {
        open_session(&router, token).await;
    }
    settle().await;
    (LIVE.load(Ordering::Relaxed) - before) as f64 / SESSIONS as f64
}

fn main() {
    let rt = current_thread();
    rt.block_on(async {
        let default = connect_plain(PlainDefault).await;
        let prebuilt = connect_plain(PlainPrebuilt::default()).await;
        let hardened = connect_hardened(hardened()).await;
        let rows = [
            ("plain_rmcp_default", per_call(&default, "search").await),
            ("plain_rmcp_prebuilt", per_call(&prebuilt, "search").await),
            ("hardened", per_call(&hardened, "search").await),
            (
                "hardened_unlimited",
                per_call(&hardened, "search_unlimited").await,
            ),
        ];
        let base = rows[1].1;
        println!("allocations per call, in process, client and server ({CALLS} calls each):");
        println!("| variant | allocations | bytes | allocations over plain prebuilt |");
        println!("|---|---|---|---|");
        for (name, (a, b)) in rows {
            println!("| {name} | {a:.1} | {b:.0} | {:+.1} |", a - base.0);
        }
        for c in [default, prebuilt, hardened] {
            let _ = c.cancel().await;
        }

        let prebuilt = PlainPrebuilt::default();
        let plain =
            heap_per_session(plain_http_router(move || prebuilt.clone(), false), None).await;
        let token = token("bench-caller");
        let hardened = heap_per_session(
            hardened_router(|c| {
                c.max_sessions(SESSIONS * 2)
                    .max_sessions_per_caller(SESSIONS * 2)
            })
            .await,
            Some(&token),
        )
        .await;
        println!();
        println!(
            "heap held per open Streamable HTTP session ({SESSIONS} sessions each, one caller):"
        );
        println!("| variant | bytes per session | ratio |");
        println!("|---|---|---|");
        println!("| plain_rmcp_prebuilt | {plain:.0} | 1.000 |");
        println!(
            "| hardened_jwt_cached | {hardened:.0} | {:.3} |",
            hardened / plain
        );
    });
}
