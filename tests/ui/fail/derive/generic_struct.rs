use mcp_harden::prelude::*;

/// A page of items.
#[derive(ToolArgs)]
pub struct Page<T> {
    #[arg(max_items = 100)]
    pub items: Vec<T>,
}

fn main() {}
