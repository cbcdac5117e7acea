use mcp_harden::prelude::*;

struct App;

/// Looks up a user by name.
#[tool(scopes = "users:read", rate = "60/min")]
async fn lookup(_ctx: Ctx<App>, flags: Vec<bool>) -> Result<String, std::io::Error> {
    Ok(format!("{flags:?}"))
}

fn main() {
    let _ = Hardened::builder(App).tool::<lookup>().build();
}
