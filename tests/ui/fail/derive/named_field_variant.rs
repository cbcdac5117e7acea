use mcp_harden::prelude::*;

/// Who to look up.
#[derive(ToolArgs)]
pub enum Target {
    Id(#[arg(range = 1..=1000)] u32),
    Named {
        #[arg(max_len = 64)]
        name: String,
    },
}

fn main() {}
