use mcp_harden::prelude::*;

/// Bits.
#[derive(ToolArgs)]
pub union Bits {
    pub a: u32,
    pub b: f32,
}

fn main() {}
