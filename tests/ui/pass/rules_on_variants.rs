use mcp_harden::prelude::*;

/// A user, by id or by name. Rules may sit on a variant as well as on its field.
#[derive(ToolArgs)]
pub enum UserRef {
    #[arg(range = 1..=1_000_000)]
    Id(u64),
    #[arg(max_len = 64)]
    Name(String),
}

fn main() {}
