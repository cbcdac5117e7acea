use mcp_harden::prelude::*;

struct App;

/// Looks up a user by name.
#[tool(scopes = "users:read", rate = "60/min")]
async fn lookup(_ctx: Ctx<App>, payload: serde_json::Value) -> Result<String, std::io::Error> {
    Ok(payload.to_string())
}

fn main() {
    let _ = Hardened::builder(App).tool::<lookup>().build();
}
