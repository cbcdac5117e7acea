use mcp_harden::prelude::*;

struct App;

/// Lists users.
#[tool(scopes = "users:read", rate = "60/min")]
async fn list_users(_ctx: Ctx<App>, #[arg(range = 1..=100, default = "twenty")] limit: u32) -> Result<String, std::io::Error> {
    Ok(limit.to_string())
}

fn main() {
    let _ = Hardened::builder(App).tool::<list_users>().build();
}
