use mcp_harden::prelude::*;

struct App;

const MAX: u32 = 100;

/// Looks up a user by name.
#[tool(scopes = "users:read", rate = "60/min")]
async fn lookup(_ctx: Ctx<App>, #[arg(range = 1..=MAX)] limit: u32) -> Result<String, std::io::Error> {
    Ok(limit.to_string())
}

fn main() {
    let _ = Hardened::builder(App).tool::<lookup>().build();
}
