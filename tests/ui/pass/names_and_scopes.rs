//! Tool names from raw identifiers and `name = "..."`, the scope forms and the duration units.

use mcp_harden::prelude::*;

struct App;

/// Reports the type of a value.
#[tool(scopes = "a:read b:read", rate = "1_000/hour", timeout = "1500ms")]
async fn r#type(
    _ctx: Ctx<App>,
    #[arg(max_len = 16)] r#value: String,
) -> Result<String, std::io::Error> {
    Ok(r#value)
}

/// Pings the server.
#[tool(name = "ping.v2", scopes = public, rate = "2/s", timeout = "60m")]
async fn ping() -> &'static str {
    "pong"
}

/// Lists nothing, for any authenticated caller.
#[tool(scopes = [], rate = "3/minute", timeout = "1min")]
async fn list_nothing(_ctx: Ctx<App>) -> Vec<String> {
    Vec::new()
}

fn main() {
    let server = Hardened::builder(App)
        .tool::<r#type>()
        .tool::<ping>()
        .tool::<list_nothing>()
        .build()
        .expect("the server builds");
    let names: Vec<_> = server.tool_specs().iter().map(|s| s.name).collect();
    assert_eq!(names, ["type", "ping.v2", "list_nothing"]);
}
