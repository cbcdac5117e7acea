use mcp_harden::prelude::*;

/// Who to look up.
#[derive(ToolArgs)]
pub enum Target {
    Everyone,
    Named(#[arg(max_len = 64)] String),
}

fn main() {}
