use mcp_harden::prelude::*;

struct App;

#[tool(scopes = "users:read", rate = "lots", timout = "5s")]
async fn lookup(_ctx: Ctx<App>, name: String, #[arg(max_len = 10)] limit: u32) -> Result<String, std::io::Error> {
    Ok(format!("{name}{limit}"))
}

fn main() {
    let _ = Hardened::builder(App).tool::<lookup>().build();
}
