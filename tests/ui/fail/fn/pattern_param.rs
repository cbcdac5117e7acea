use mcp_harden::prelude::*;

struct App;

/// Looks up a user by name.
#[tool(scopes = "users:read", rate = "60/min")]
async fn lookup(_ctx: Ctx<App>, (name, _n): (String, u32)) -> Result<String, std::io::Error> {
    Ok(name)
}

fn main() {
    let _ = Hardened::builder(App).tool::<lookup>().build();
}
