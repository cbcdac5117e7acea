//! A public, unlimited tool that takes no `Ctx`: it registers with any state type.

use mcp_harden::prelude::*;

struct App {
    _greeting: &'static str,
}

/// Adds two small numbers.
#[tool(scopes = public, rate = "unlimited", read_only, idempotent)]
async fn add(
    #[arg(range = 0..=1000)] a: u32,
    #[arg(range = 0..=1000)] b: u32,
) -> Result<u32, std::io::Error> {
    Ok(a + b)
}

/// Echoes a short text.
#[tool(scopes = [], rate = "10/sec", timeout = "500ms")]
async fn echo(#[arg(max_len = 256)] text: String) -> Result<String, std::io::Error> {
    Ok(text)
}

fn main() {
    Hardened::builder(App { _greeting: "hi" })
        .tool::<add>()
        .tool::<echo>()
        .build()
        .expect("the server builds");
    // The same tools register with another state type.
    Hardened::builder(())
        .tool::<add>()
        .build()
        .expect("the server builds");
}
