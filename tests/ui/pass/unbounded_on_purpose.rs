//! `#[arg(unbounded)]` opts out of bounding, on a JSON value and on ordinary types.

use mcp_harden::prelude::*;

struct App;

/// Stores a document as given.
#[tool(scopes = "docs:write", rate = "10/min", timeout = "2m")]
async fn store(
    _ctx: Ctx<App>,
    #[arg(unbounded)] document: serde_json::Value,
    #[arg(unbounded)] note: String,
    #[arg(unbounded)] counters: Vec<u64>,
    #[arg(unbounded)] matrix: Vec<Vec<u8>>,
    #[arg(unbounded)] meta: serde_json::Map<String, serde_json::Value>,
) -> Result<String, std::io::Error> {
    Ok(format!(
        "{document} {note} {counters:?} {matrix:?} {meta:?}"
    ))
}

fn main() {
    Hardened::builder(App)
        .tool::<store>()
        .build()
        .expect("the server builds");
}
