use mcp_harden::prelude::*;

struct App;

/// Looks up a user by name.
#[tool(scopes = "users:read", rate = "60/min")]
async fn lookup(_ctx: Ctx<App>, #[arg(max_len = 64)] __name: String) -> Result<String, std::io::Error> {
    Ok(__name)
}

fn main() {
    let _ = Hardened::builder(App).tool::<lookup>().build();
}
