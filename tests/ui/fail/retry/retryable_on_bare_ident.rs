use mcp_harden::prelude::*;

struct App;

#[derive(Debug)]
enum LookupError {
    Busy,
    NotFound,
}

impl std::fmt::Display for LookupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LookupError::Busy => "busy",
            LookupError::NotFound => "not found",
        })
    }
}

/// Looks up a user by name.
#[tool(scopes = "users:read", rate = "60/min", retryable_on = [Busy])]
async fn lookup(_ctx: Ctx<App>, #[arg(max_len = 64)] name: String) -> Result<String, LookupError> {
    if name.is_empty() { Err(LookupError::Busy) } else { Ok(name) }
}

fn main() {
    let _ = Hardened::builder(App).tool::<lookup>().build();
}
