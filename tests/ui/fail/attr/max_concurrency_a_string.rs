use mcp_harden::prelude::*;

struct App;

/// Looks up a user by name.
#[tool(max_concurrency = "4", scopes = "users:read", rate = "10/min")]
async fn lookup(_ctx: Ctx<App>, #[arg(max_len = 64)] name: String) -> Result<String, std::io::Error> {
    Ok(name)
}

fn main() {
    let _ = Hardened::builder(App).tool::<lookup>().build();
}
