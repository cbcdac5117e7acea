//! Tools that cannot fail: they return a plain value, a struct, or nothing.

use mcp_harden::prelude::*;

struct App {
    version: &'static str,
}

#[derive(serde::Serialize, schemars::JsonSchema)]
struct Status {
    version: String,
    healthy: bool,
}

/// Reports the server version.
#[tool(scopes = [], rate = "1/sec", read_only)]
async fn version(ctx: Ctx<App>) -> String {
    ctx.version.to_owned()
}

/// Reports the server status.
#[tool(scopes = [], rate = "1/sec", read_only)]
async fn status(ctx: Ctx<App>) -> Status {
    Status {
        version: ctx.version.to_owned(),
        healthy: true,
    }
}

/// Records a heartbeat.
#[tool(scopes = "health:write", rate = "unlimited")]
async fn heartbeat(_ctx: Ctx<App>) {}

fn main() {
    Hardened::builder(App { version: "1.0" })
        .tool::<version>()
        .tool::<status>()
        .tool::<heartbeat>()
        .build()
        .expect("the server builds");
}
