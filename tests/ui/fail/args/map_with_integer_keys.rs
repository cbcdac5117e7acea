use mcp_harden::prelude::*;

struct App;

/// Looks up a user by name.
#[tool(scopes = "users:read", rate = "60/min")]
async fn lookup(_ctx: Ctx<App>, #[arg(max_items = 10, max_len = 64)] names: std::collections::HashMap<u32, String>) -> Result<String, std::io::Error> {
    Ok(format!("{names:?}"))
}

fn main() {
    let _ = Hardened::builder(App).tool::<lookup>().build();
}
