//! Attribute values forwarded by `macro_rules!` (`$x:literal`, `$x:expr`) arrive in invisible
//! groups: they are read as if written in place.
use mcp_harden::prelude::*;

struct App;

macro_rules! literal_tool {
    ($name:ident, $rate:literal, $burst:literal, $n:literal, $t:literal, $q:literal, $title:literal) => {
        /// Does a thing.
        #[tool(scopes = "x:y", rate = $rate, burst = $burst, max_concurrency = $n,
               timeout = $t, queue_timeout = $q, title = $title)]
        async fn $name(_ctx: Ctx<App>) -> String {
            String::new()
        }
    };
}

macro_rules! expr_tool {
    ($name:ident, $rate:expr, $tool_name:expr) => {
        /// Does another thing.
        #[tool(scopes = "x:y", rate = $rate, name = $tool_name)]
        async fn $name(_ctx: Ctx<App>) -> String {
            String::new()
        }
    };
}

literal_tool!(by_literal, "5/sec", 2, 3, "2s", "1s", "By literal");
expr_tool!(by_expr, "5/sec", "renamed");

fn main() {
    let _ = Hardened::builder(App)
        .tool::<by_literal>()
        .tool::<by_expr>()
        .build();
}
