use mcp_harden::prelude::*;

struct App;

/// Looks up a user by name.
#[tool(scopes = "users:read", rate = "60/min")]
async fn lookup(_ctx: Ctx<App>, #[arg(max_items = 10)] grid: Vec<Vec<u8>>) -> Result<String, std::io::Error> {
    Ok(format!("{grid:?}"))
}

fn main() {
    let _ = Hardened::builder(App).tool::<lookup>().build();
}
