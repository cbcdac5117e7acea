use mcp_harden::prelude::*;

/// A query.
#[derive(ToolArgs)]
#[arg(rename_all = "camelCase")]
pub struct Query {
    #[arg(max_len = 64)]
    pub user_name: String,
}

fn main() {}
