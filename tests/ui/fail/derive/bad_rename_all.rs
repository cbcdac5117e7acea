use mcp_harden::prelude::*;

/// A colour.
#[derive(ToolArgs)]
#[arg(rename_all = "snake-case")]
pub enum Colour {
    DarkRed,
    LightGreen,
}

fn main() {}
