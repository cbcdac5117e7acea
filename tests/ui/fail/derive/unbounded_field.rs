use mcp_harden::prelude::*;

/// A query.
#[derive(ToolArgs)]
pub struct Query {
    #[arg(max_len = 64)]
    pub text: String,
    pub limit: u32,
}

fn main() {}
