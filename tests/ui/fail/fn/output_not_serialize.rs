use mcp_harden::prelude::*;

struct App;

struct User {
    name: String,
}

/// Looks up a user by name.
#[tool(scopes = "users:read", rate = "60/min")]
async fn lookup(_ctx: Ctx<App>, #[arg(max_len = 64)] name: String) -> Result<User, std::io::Error> {
    Ok(User { name })
}

fn main() {
    let _ = Hardened::builder(App).tool::<lookup>().build();
}
