//! Optional values, sequences, sets and maps with their rules.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use mcp_harden::prelude::*;

struct App;

/// Tags documents.
#[tool(scopes = "docs:write", rate = "5/sec", destructive)]
async fn tag_documents(
    _ctx: Ctx<App>,
    #[arg(max_len = 64)] title: Option<String>,
    #[arg(range = 1..=50)] priority: Option<u8>,
    #[arg(max_items = 100, range = 1..=1_000_000)] ids: Vec<u64>,
    #[arg(max_items = 20, max_len = 32)] tags: HashSet<String>,
    #[arg(max_items = 20, max_len = 32)] ordered_tags: BTreeSet<String>,
    #[arg(max_items = 20, max_len = 32)] queue: VecDeque<String>,
    #[arg(max_items = 20, max_len = 64)] labels: HashMap<String, String>,
    #[arg(max_items = 20, max_len = 64, range = 0..=10)] weights: BTreeMap<String, u32>,
    #[arg(max_items = 10, max_len = 64)] aliases: Option<Vec<String>>,
    #[arg(min_items = 1, max_items = 10, max_len = 16)] nicknames: Vec<Option<String>>,
    #[arg(max_items = 10)] flags: Vec<bool>,
) -> Result<usize, std::io::Error> {
    let _ = (
        title,
        priority,
        &tags,
        &ordered_tags,
        &queue,
        &labels,
        &weights,
        &aliases,
        &nicknames,
        &flags,
    );
    Ok(ids.len())
}

fn main() {
    Hardened::builder(App)
        .tool::<tag_documents>()
        .build()
        .expect("the server builds");
}
