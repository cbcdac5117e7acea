//! A tool whose error type opts in to showing its own message, and one whose error type
//! implements neither `Display` nor `PublicError`.

use std::borrow::Cow;

use mcp_harden::prelude::*;

struct App;

#[derive(Debug, thiserror::Error)]
enum OrderError {
    #[error("order {0} does not exist")]
    NotFound(u64),
    #[error("database is busy")]
    Busy,
    #[error("database error: {0}")]
    Db(String),
}

impl PublicError for OrderError {
    fn public_message(&self) -> Option<Cow<'_, str>> {
        match self {
            OrderError::NotFound(id) => Some(format!("order {id} does not exist").into()),
            OrderError::Busy | OrderError::Db(_) => None,
        }
    }
}

struct Opaque;

/// Fetches an order by id.
#[tool(scopes = "orders:read", rate = "100/min", retryable_on = [OrderError::Busy])]
async fn get_order(
    _ctx: Ctx<App>,
    #[arg(range = 1..=1_000_000)] id: u64,
) -> Result<String, OrderError> {
    match id {
        1 => Err(OrderError::Busy),
        2 => Err(OrderError::Db("disk full".into())),
        3..=9 => Err(OrderError::NotFound(id)),
        _ => Ok(format!("order {id}")),
    }
}

/// Cancels an order.
#[tool(scopes = "orders:write", rate = "10/min", destructive)]
async fn cancel_order(_ctx: Ctx<App>, #[arg(range = 1..=1_000_000)] id: u64) -> Result<(), Opaque> {
    if id == 1 {
        return Err(Opaque);
    }
    Ok(())
}

fn main() {
    Hardened::builder(App)
        .tool::<get_order>()
        .tool::<cancel_order>()
        .build()
        .expect("the server builds");
}
