//! `#[derive(ToolArgs)]` on a struct, an allow-list enum and a one-of enum, used as
//! arguments (directly, optional, and in collections).

use mcp_harden::prelude::*;

struct App;

/// A sort order.
#[derive(ToolArgs, Debug, Clone, Copy)]
#[arg(rename_all = "snake_case")]
pub enum Order {
    /// Oldest first.
    OldestFirst,
    /// Newest first.
    #[arg(rename = "newest")]
    NewestFirst,
}

/// A user, by id or by name.
#[derive(ToolArgs, Debug)]
pub enum UserRef {
    /// The numeric id.
    Id(#[arg(range = 1..=1_000_000)] u64),
    /// The login name.
    Name(#[arg(max_len = 64, pattern = "^[a-z0-9_]+$")] String),
}

/// One filter on a column.
#[derive(ToolArgs, Debug)]
pub struct Filter {
    /// The column name.
    #[arg(max_len = 32)]
    pub column: String,
    /// The value to compare with.
    #[arg(max_len = 256, desc = "Compared for equality.")]
    pub value: String,
    /// Whether to negate the filter.
    pub negate: bool,
}

/// A whole query.
#[derive(ToolArgs, Debug)]
pub struct Query {
    /// The filters, all of which must hold.
    #[arg(max_items = 10)]
    pub filters: Vec<Filter>,
    /// The order of the results.
    pub order: Option<Order>,
    /// At most this many rows.
    #[arg(range = 1..=100, default = 20)]
    pub limit: u32,
    /// Who asks, under its JSON name `askedBy`.
    #[arg(max_len = 32, rename = "askedBy")]
    pub asked_by: Option<String>,
    /// A credential, redacted from audit records.
    #[arg(max_len = 128, secret)]
    pub token: Option<String>,
}

/// Finds users matching a query.
#[tool(scopes = "users:read", rate = "30/min", read_only)]
async fn find_users(
    _ctx: Ctx<App>,
    query: Query,
    who: Option<UserRef>,
    order: Order,
    #[arg(max_items = 5)] also: Vec<UserRef>,
) -> Result<Vec<String>, std::io::Error> {
    Ok(vec![format!("{query:?} {who:?} {order:?} {also:?}")])
}

fn main() {
    Hardened::builder(App)
        .tool::<find_users>()
        .build()
        .expect("the server builds");
}
