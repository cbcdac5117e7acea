use mcp_harden::prelude::*;

/// Nothing at all.
#[derive(ToolArgs)]
pub enum Never {}

fn main() {}
