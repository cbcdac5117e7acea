//! Every `#[tool]` key and every `#[arg]` key at once.

use mcp_harden::prelude::*;

struct App;

#[derive(Debug)]
enum DbError {
    Busy,
    Timeout,
    Corrupt,
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DbError::Busy => "busy",
            DbError::Timeout => "timeout",
            DbError::Corrupt => "corrupt",
        })
    }
}

#[derive(serde::Serialize, schemars::JsonSchema)]
struct Rows {
    rows: Vec<String>,
}

/// Searches the user table.
///
/// Returns at most `limit` rows whose name matches `query`.
#[tool(
    scopes = ["db:read", "db:admin"],
    rate = "50/min",
    burst = 10,
    retryable_on = [DbError::Busy, DbError::Timeout],
    timeout = "5s",
    name = "search-users",
    title = "Search users",
    read_only,
    idempotent,
    open_world,
    crate = "::mcp_harden"
)]
async fn search_users(
    ctx: Ctx<App>,
    #[arg(
        min_len = 1,
        max_len = 64,
        pattern = "^[a-z ]+$",
        desc = "Text to look for."
    )]
    query: String,
    #[arg(range = 1..=100, default = 20)] limit: u32,
    #[arg(range = -10..=10)] offset: i64,
    #[arg(range = 0.0..=1.0)] threshold: f64,
    #[arg(min_items = 1, max_items = 8, max_len = 32)] columns: Vec<String>,
    #[arg(max_len = 128, secret)] api_key: String,
    #[arg(unbounded)] extra: serde_json::Value,
    verbose: bool,
) -> Result<Rows, DbError> {
    let _ = (
        &ctx.principal(),
        limit,
        offset,
        threshold,
        &api_key,
        &extra,
        verbose,
    );
    if query == "busy" {
        return Err(DbError::Busy);
    }
    if query == "corrupt" {
        return Err(DbError::Corrupt);
    }
    if query == "slow" {
        return Err(DbError::Timeout);
    }
    Ok(Rows { rows: columns })
}

fn main() {
    let server = Hardened::builder(App)
        .tool::<search_users>()
        .build()
        .expect("the server builds");
    let specs = server.tool_specs();
    assert_eq!(specs[0].name, "search-users");
    assert_eq!(specs[0].title, Some("Search users"));
}
