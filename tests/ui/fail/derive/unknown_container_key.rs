use mcp_harden::prelude::*;

/// A colour.
#[derive(ToolArgs)]
#[arg(rename_al = "snake_case")]
pub enum Colour {
    DarkRed,
    LightGreen,
}

fn main() {}
