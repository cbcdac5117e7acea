use mcp_harden::prelude::*;

struct App;

/// Looks up a user by name.
#[tool(scopes = "users:read", rate = "60/min")]
async fn lookup(_ctx: Ctx<App>, #[arg(range = 0.5..=10.0)] limit: u32) -> Result<String, std::io::Error> {
    Ok(limit.to_string())
}

fn main() {
    let _ = Hardened::builder(App).tool::<lookup>().build();
}
