//! Heap allocations per `tools/call` round trip in process (client and server together, on
//! one current-thread runtime): plain rmcp against mcp-harden with every stage on. Not a
//! timing: a count, exact and reproducible, of the work malloc does. See BENCHMARKS.md.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to the system allocator with the caller's arguments.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
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
    });
}
