use mcp_harden::prelude::*;

struct App;

/// Looks up a user by name.
#[tool(scopes = "users:read", rate = "60/min")]
async fn lookup(_ctx: Ctx<App>, #[arg(range = 0.0..)] ratio: f64) -> Result<String, std::io::Error> {
    Ok(ratio.to_string())
}

fn main() {
    let _ = Hardened::builder(App).tool::<lookup>().build();
}
