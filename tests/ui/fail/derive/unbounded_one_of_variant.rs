use mcp_harden::prelude::*;

/// A user id or name.
#[derive(ToolArgs)]
pub enum UserRef {
    Id(#[arg(range = 1..=1_000_000)] u64),
    Name(String),
}

fn main() {}
