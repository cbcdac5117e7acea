use mcp_harden::prelude::*;

struct App;

/// Looks up a user by name.
#[tool(scopes = "users:read", rate = "60/min")]
async fn lookup(_ctx: Ctx<App>, #[arg(max_items = 16)] labels: std::collections::HashMap<String, bool>) -> Result<String, std::io::Error> {
    Ok(format!("{labels:?}"))
}

fn main() {
    let _ = Hardened::builder(App).tool::<lookup>().build();
}
