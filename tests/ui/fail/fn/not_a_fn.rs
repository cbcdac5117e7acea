use mcp_harden::prelude::*;

struct App;

/// Looks up a user by name.
#[tool(scopes = "users:read", rate = "60/min")]
struct Lookup {
    name: String,
}

fn main() {
    let _ = Lookup { name: String::new() }.name;
}
