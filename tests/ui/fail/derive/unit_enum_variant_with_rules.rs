use mcp_harden::prelude::*;

/// A colour.
#[derive(ToolArgs)]
pub enum Colour {
    #[arg(max_len = 5)]
    Red,
    Green,
}

fn main() {}
