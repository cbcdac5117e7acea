use mcp_harden::prelude::*;

struct App;

/// Looks up a user by name.
#[tool(scopes = "users:read", rate = "60/min")]
async fn lookup(_ctx: Ctx<App>, #[arg(range = ..=100)] offset: i64) -> Result<String, std::io::Error> {
    Ok(offset.to_string())
}

fn main() {
    let _ = Hardened::builder(App).tool::<lookup>().build();
}
