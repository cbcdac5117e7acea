use mcp_harden::prelude::*;

/// A search query.
#[derive(ToolArgs)]
pub struct Query {
    #[arg(max_len = 64, desc = "The text.​")]
    pub text: String,
}

fn main() {}
