use mcp_harden::prelude::*;

struct App;

/// A filter that forgot `#[derive(ToolArgs)]`.
#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Filter {
    column: String,
}

/// Looks up a user by name.
#[tool(scopes = "users:read", rate = "60/min")]
async fn lookup(_ctx: Ctx<App>, filter: Filter) -> Result<String, std::io::Error> {
    Ok(filter.column)
}

fn main() {
    let _ = Hardened::builder(App).tool::<lookup>().build();
}
