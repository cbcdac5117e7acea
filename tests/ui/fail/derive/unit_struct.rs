use mcp_harden::prelude::*;

/// Nothing.
#[derive(ToolArgs)]
pub struct Nothing;

fn main() {}
