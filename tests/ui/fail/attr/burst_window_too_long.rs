use mcp_harden::prelude::*;

struct App;

/// Looks up a user by name.
#[tool(scopes = "users:read", rate = "1/hour", burst = 100000)]
async fn lookup(_ctx: Ctx<App>, #[arg(max_len = 64)] name: String) -> Result<String, std::io::Error> {
    Ok(name)
}

fn main() {
    let _ = Hardened::builder(App).tool::<lookup>().build();
}
