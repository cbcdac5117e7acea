use mcp_harden::prelude::*;

/// A user name.
#[derive(ToolArgs)]
pub struct UserName(pub String);

fn main() {}
