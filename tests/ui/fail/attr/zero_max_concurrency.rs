use mcp_harden::prelude::*;

struct App;

/// Look something up.
#[tool(scopes = "db:read", rate = "10/min", max_concurrency = 0)]
async fn lookup(_ctx: Ctx<App>, #[arg(max_len = 10)] key: String) -> String {
    key
}

fn main() {
    let _ = Hardened::builder(App).tool::<lookup>().build();
}
