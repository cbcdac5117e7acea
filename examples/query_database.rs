//! `query_database`: an MCP server over an embedded SQLite database, hardened by mcp-harden.
//!
//! ```sh
//! cargo run --example query_database                      # HTTP on 127.0.0.1:8080, prints a dev token
//! cargo run --example query_database -- --stdio --scopes db:read
//! cargo run --example query_database -- --print-manifest
//! cargo run --example query_database -- --redis redis://127.0.0.1:6379 \
//!     --audit-log audit.jsonl --metrics 127.0.0.1:9090       # replicas, audit chain, Prometheus
//! cargo run --example query_database -- --otlp http://127.0.0.1:4318   # traces to a collector
//! ```
//!
//! Over HTTP it authenticates bearer tokens: HS256 JWTs signed with `MCP_HARDEN_JWT_SECRET`
//! (optional `MCP_HARDEN_JWT_ISSUER`, `MCP_HARDEN_JWT_AUDIENCE`, default the resource URL),
//! and API keys from `--api-keys FILE`. Without a secret it makes up a random one for the run
//! and prints one short-lived development token.
//!
//! The database (tables `users`, `products`, `orders`) is created and seeded on first run
//! at `--db PATH`. SQL is built only from allow-listed identifiers and bound parameters.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use mcp_harden::prelude::*;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection, OpenFlags};
use schemars::JsonSchema;
use serde::Serialize;

/// Shared state: where the database lives. Each call opens its own connection, so SQLite's
/// locking, not a process-wide mutex, arbitrates concurrent writers.
pub struct App {
    db: PathBuf,
}

impl App {
    fn open(&self) -> Result<Connection, DbError> {
        let conn = Connection::open_with_flags(
            &self.db,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_millis(200))?;
        Ok(conn)
    }

    /// Runs blocking database work off the async runtime.
    async fn with_db<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let app = self.clone();
        tokio::task::spawn_blocking(move || f(&mut app.open()?))
            .await
            .map_err(|_| DbError::Worker)?
    }
}

/// The tools' error. Only the variants that carry nothing internal expose their text.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite reported the database busy or locked: worth retrying.
    #[error("the database is busy")]
    Busy,
    /// The order does not exist.
    #[error("order {0} does not exist")]
    OrderNotFound(i64),
    /// The product does not exist.
    #[error("product {0} does not exist")]
    ProductNotFound(i64),
    /// A filter named a column the table does not have.
    #[error("filters[{index}].column: `{column}` is not a column of `{table}`")]
    UnknownColumn {
        index: usize,
        column: String,
        table: &'static str,
    },
    /// Anything else from SQLite: internal, never shown to a client.
    #[error("sqlite: {0}")]
    Sql(rusqlite::Error),
    /// The blocking worker failed.
    #[error("database worker failed")]
    Worker,
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                DbError::Busy
            }
            _ => DbError::Sql(e),
        }
    }
}

impl PublicError for DbError {
    fn public_message(&self) -> Option<Cow<'_, str>> {
        match self {
            DbError::Sql(_) | DbError::Worker => None,
            other => Some(other.to_string().into()),
        }
    }
}

/// A table that can be queried.
#[derive(ToolArgs, Debug, Clone, Copy, PartialEq, Eq)]
#[arg(rename_all = "snake_case")]
pub enum Table {
    /// Registered users.
    Users,
    /// Customer orders.
    Orders,
    /// The product catalogue.
    Products,
}

impl Table {
    fn sql_name(self) -> &'static str {
        match self {
            Table::Users => "users",
            Table::Orders => "orders",
            Table::Products => "products",
        }
    }

    fn columns(self) -> &'static [&'static str] {
        match self {
            Table::Users => &["id", "name", "email", "country", "created_at"],
            Table::Orders => &[
                "id",
                "user_id",
                "product_id",
                "quantity",
                "status",
                "created_at",
            ],
            Table::Products => &["id", "name", "price", "stock"],
        }
    }
}

/// A comparison operator.
#[derive(ToolArgs, Debug, Clone, Copy, PartialEq, Eq)]
#[arg(rename_all = "snake_case")]
pub enum Operator {
    /// Equal.
    Eq,
    /// Not equal.
    Ne,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Gte,
    /// Less than.
    Lt,
    /// Less than or equal.
    Lte,
    /// SQL LIKE pattern (`%` any run, `_` one character).
    Like,
}

impl Operator {
    fn sql(self) -> &'static str {
        match self {
            Operator::Eq => "=",
            Operator::Ne => "<>",
            Operator::Gt => ">",
            Operator::Gte => ">=",
            Operator::Lt => "<",
            Operator::Lte => "<=",
            Operator::Like => "LIKE",
        }
    }
}

/// A value to compare with.
#[derive(ToolArgs, Debug, Clone, PartialEq)]
pub enum FilterValue {
    /// A boolean.
    Bool(bool),
    /// A number.
    Number(#[arg(range = -1e15..=1e15)] f64),
    /// A string.
    Text(#[arg(max_len = 256)] String),
}

/// One condition on a column.
#[derive(ToolArgs, Debug, Clone, PartialEq)]
pub struct Filter {
    /// The column to compare.
    #[arg(max_len = 64, pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")]
    pub column: String,
    /// How to compare.
    pub operator: Operator,
    /// What to compare with.
    pub value: FilterValue,
}

/// Rows returned by a query.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Rows {
    /// The table queried.
    pub table: String,
    /// Column names, in order.
    pub columns: Vec<String>,
    /// One object per row.
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
    /// How many rows were returned.
    pub count: usize,
}

/// Query a table of the shop database with structured filters (combined with AND).
///
/// Returns at most `limit` rows ordered by id, starting at `offset`.
#[tool(scopes = "db:read", rate = "50/min", timeout = "5s", retryable_on = [DbError::Busy], read_only, idempotent)]
pub async fn query_database(
    ctx: Ctx<App>,
    #[arg(desc = "The table to query.")] table: Table,
    #[arg(max_items = 10, default = Vec::new(), desc = "Conditions that every returned row meets (none: all rows).")]
    filters: Vec<Filter>,
    #[arg(range = 1..=100, default = 20, desc = "Maximum number of rows.")] limit: u32,
    #[arg(range = 0..=100_000, default = 0, desc = "Rows to skip.")] offset: u32,
) -> Result<Rows, DbError> {
    let columns = table.columns();
    let mut sql = format!("SELECT {} FROM {}", columns.join(", "), table.sql_name());
    let mut params: Vec<SqlValue> = Vec::with_capacity(filters.len() + 2);
    for (index, f) in filters.iter().enumerate() {
        // The identifier comes from the allow-list, never from the request.
        let Some(column) = columns.iter().find(|c| **c == f.column) else {
            return Err(DbError::UnknownColumn {
                index,
                column: f.column.clone(),
                table: table.sql_name(),
            });
        };
        sql.push_str(if index == 0 { " WHERE " } else { " AND " });
        sql.push_str(&format!("{column} {} ?", f.operator.sql()));
        params.push(match &f.value {
            FilterValue::Bool(b) => SqlValue::Integer(i64::from(*b)),
            FilterValue::Number(n) => SqlValue::Real(*n),
            FilterValue::Text(s) => SqlValue::Text(s.clone()),
        });
    }
    sql.push_str(" ORDER BY id LIMIT ? OFFSET ?");
    params.push(SqlValue::Integer(i64::from(limit)));
    params.push(SqlValue::Integer(i64::from(offset)));

    ctx.state()
        .with_db(move |conn| {
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt
                .query_map(params_from_iter(params.iter()), |row| {
                    let mut obj = serde_json::Map::new();
                    for (i, c) in columns.iter().enumerate() {
                        let v = match row.get::<_, SqlValue>(i)? {
                            SqlValue::Null => serde_json::Value::Null,
                            SqlValue::Integer(n) => n.into(),
                            SqlValue::Real(x) => serde_json::json!(x),
                            SqlValue::Text(s) => s.into(),
                            SqlValue::Blob(_) => serde_json::Value::Null,
                        };
                        obj.insert((*c).to_owned(), v);
                    }
                    Ok(obj)
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Rows {
                table: table.sql_name().to_owned(),
                columns: columns.iter().map(|c| (*c).to_owned()).collect(),
                count: rows.len(),
                rows,
            })
        })
        .await
}

/// The status of an order.
#[derive(ToolArgs, Debug, Clone, Copy, PartialEq, Eq)]
#[arg(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Placed, not yet paid.
    Pending,
    /// Paid.
    Paid,
    /// Handed to the carrier.
    Shipped,
    /// Received by the customer.
    Delivered,
    /// Cancelled.
    Cancelled,
}

impl OrderStatus {
    fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Paid => "paid",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
        }
    }
}

/// The result of a status change.
#[derive(Debug, Serialize, JsonSchema)]
pub struct StatusChange {
    /// The order.
    pub order_id: i64,
    /// The status before the change.
    pub previous_status: String,
    /// The status now.
    pub status: String,
}

/// Set the status of one order.
#[tool(scopes = "db:write", rate = "20/min", timeout = "5s", retryable_on = [DbError::Busy], destructive, idempotent)]
pub async fn update_order_status(
    ctx: Ctx<App>,
    #[arg(range = 1..=1_000_000_000, desc = "The order's id.")] order_id: i64,
    #[arg(desc = "The new status.")] status: OrderStatus,
) -> Result<StatusChange, DbError> {
    ctx.state()
        .with_db(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let previous: String =
                match tx.query_row("SELECT status FROM orders WHERE id = ?1", [order_id], |r| {
                    r.get(0)
                }) {
                    Ok(s) => s,
                    Err(rusqlite::Error::QueryReturnedNoRows) => {
                        return Err(DbError::OrderNotFound(order_id))
                    }
                    Err(e) => return Err(e.into()),
                };
            tx.execute(
                "UPDATE orders SET status = ?1 WHERE id = ?2",
                rusqlite::params![status.as_str(), order_id],
            )?;
            tx.commit()?;
            Ok(StatusChange {
                order_id,
                previous_status: previous,
                status: status.as_str().to_owned(),
            })
        })
        .await
}

/// The stock of a product after a restock.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Stock {
    /// The product.
    pub product_id: i64,
    /// Units in stock now.
    pub stock: i64,
}

/// Add units to a product's stock.
///
/// Reports a busy database as a retryable error.
#[tool(scopes = "db:write", rate = "10/min", burst = 5, timeout = "3s", retryable_on = [DbError::Busy])]
pub async fn restock_product(
    ctx: Ctx<App>,
    #[arg(range = 1..=1_000_000, desc = "The product's id.")] product_id: i64,
    #[arg(range = 1..=1000, desc = "Units to add.")] quantity: u32,
) -> Result<Stock, DbError> {
    ctx.state()
        .with_db(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "UPDATE products SET stock = stock + ?1 WHERE id = ?2",
                rusqlite::params![quantity, product_id],
            )?;
            if n == 0 {
                return Err(DbError::ProductNotFound(product_id));
            }
            let stock = tx.query_row(
                "SELECT stock FROM products WHERE id = ?1",
                [product_id],
                |r| r.get(0),
            )?;
            tx.commit()?;
            Ok(Stock { product_id, stock })
        })
        .await
}

/// Creates and seeds the database if it does not exist yet.
fn ensure_database(path: &Path) -> Result<(), rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, country TEXT NOT NULL, created_at TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL NOT NULL, stock INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id), product_id INTEGER NOT NULL REFERENCES products(id), quantity INTEGER NOT NULL, status TEXT NOT NULL, created_at TEXT NOT NULL);",
    )?;
    let seeded: i64 = conn.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?;
    if seeded > 0 {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    const NAMES: [&str; 12] = [
        "Ada", "Grace", "Alan", "Barbara", "Edsger", "Donald", "Frances", "Ken", "Margaret",
        "Niklaus", "Radia", "Tony",
    ];
    const COUNTRIES: [&str; 4] = ["DE", "FR", "GB", "US"];
    for (i, name) in NAMES.iter().enumerate() {
        tx.execute(
            "INSERT INTO users (id, name, email, country, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![
                i as i64 + 1,
                name,
                format!("{}@example.com", name.to_lowercase()),
                COUNTRIES[i % 4],
                format!("2026-0{}-1{}", 1 + i % 9, i % 10)
            ],
        )?;
    }
    const PRODUCTS: [(&str, f64); 8] = [
        ("Keyboard", 49.0),
        ("Mouse", 19.5),
        ("Monitor", 229.0),
        ("Laptop stand", 35.0),
        ("USB-C cable", 9.9),
        ("Webcam", 64.0),
        ("Headset", 89.0),
        ("Desk lamp", 27.5),
    ];
    for (i, (name, price)) in PRODUCTS.iter().enumerate() {
        tx.execute(
            "INSERT INTO products (id, name, price, stock) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![i as i64 + 1, name, price, 10 + 7 * i as i64],
        )?;
    }
    const STATUSES: [&str; 5] = ["pending", "paid", "shipped", "delivered", "cancelled"];
    for i in 0..40i64 {
        tx.execute(
            "INSERT INTO orders (id, user_id, product_id, quantity, status, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![i + 1, 1 + i % 12, 1 + (i * 3) % 8, 1 + i % 4, STATUSES[(i % 5) as usize], format!("2026-10-{:02}", 1 + i % 28)],
        )?;
    }
    tx.commit()
}

/// Command line of the example.
#[derive(Parser, Debug)]
#[command(about = "An MCP server over an embedded SQLite shop database, hardened by mcp-harden")]
struct Cli {
    /// Serve Streamable HTTP on this address (the default transport).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Serve MCP over stdin/stdout instead, as a local principal with `--scopes`.
    #[arg(long)]
    stdio: bool,
    /// Scopes of the local principal (stdio) or of the development token (HTTP, default:
    /// every scope the tools use), e.g. `--scopes db:read db:write`.
    #[arg(long, num_args = 0.., value_delimiter = ',')]
    scopes: Vec<String>,
    /// The public resource URL, when clients reach the server under another name (a proxy).
    #[arg(long)]
    public_url: Option<String>,
    /// Accept this `Host` too (repeatable); loopback names are always accepted.
    #[arg(long)]
    allowed_host: Vec<String>,
    /// A proxy (address or network, repeatable) whose `X-Forwarded-For` names the client.
    #[arg(long)]
    trusted_proxy: Vec<String>,
    /// An OAuth authorization server for this resource (published in the metadata; turns
    /// a missing scope into an HTTP 403 step-up challenge).
    #[arg(long)]
    authorization_server: Vec<String>,
    /// A JSON file of hashed API keys (made by `mcp-harden api-key --keys-file`).
    #[arg(long)]
    api_keys: Option<PathBuf>,
    /// Share rate limits with other replicas through this Redis (e.g. redis://127.0.0.1:6379).
    #[arg(long)]
    redis: Option<String>,
    /// What calls get while Redis cannot decide: `closed` refuses them (UNAVAILABLE,
    /// retryable), `local` limits them in this process, `open` lets them through unlimited.
    #[arg(long, value_enum, default_value = "closed", requires = "redis")]
    redis_fail: RedisFail,
    /// Also write the audit trail to this hash-chained JSON-lines file (rotated at 64 MiB;
    /// check it with `mcp-harden audit verify`).
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// With --audit-log: a file holding the audit chain's key (at least 32 bytes, e.g. from
    /// `mcp-harden secret`): every record then carries its MAC (verify with --key-file).
    #[arg(long, requires = "audit_log")]
    audit_key_file: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9090), at /metrics.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Export each call's span over OTLP/HTTP to this collector (e.g. http://127.0.0.1:4318).
    #[arg(long)]
    otlp: Option<String>,
    /// Stateless Streamable HTTP (no sessions).
    #[arg(long)]
    stateless: bool,
    /// TLS certificate chain (PEM); with --tls-key, serves HTTPS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Subject recorded in audit records for the local principal.
    #[arg(long, default_value = "local-user")]
    subject: String,
    /// The SQLite database; created and seeded if missing.
    #[arg(long, default_value_os_t = default_db())]
    db: PathBuf,
    /// Print every tool's manifest (description, scopes, rate, schemas) as JSON and exit.
    #[arg(long)]
    print_manifest: bool,
}

/// `--redis-fail`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum RedisFail {
    Closed,
    Local,
    Open,
}

fn rmcp_log_cap() -> tracing_subscriber::filter::Directive {
    // A constant directive; should it ever fail to parse, silence rmcp entirely.
    "rmcp=error"
        .parse()
        .unwrap_or_else(|_| tracing_subscriber::filter::LevelFilter::OFF.into())
}

fn default_db() -> PathBuf {
    std::env::temp_dir().join("mcp-harden-query_database.sqlite3")
}

fn build(cli: &Cli) -> Result<Hardened<App>, Box<dyn std::error::Error>> {
    let mut builder = Hardened::builder(App { db: cli.db.clone() })
        .server_info("mcp-harden-query-database", env!("CARGO_PKG_VERSION"))
        .tool::<query_database>()
        .tool::<update_order_status>()
        .tool::<restock_product>()
        // A principal whose token says `"tier": "enterprise"` gets ten times every rate.
        .tier("enterprise", 10.0)
        .local_principal(Principal::local(cli.subject.as_str(), &cli.scopes));
    if let Some(path) = &cli.audit_log {
        let mut config = mcp_harden::audit::FileAuditConfig::new(path);
        if let Some(key_file) = &cli.audit_key_file {
            config = config.chain_key(mcp_harden::audit::file::ChainKey::from_file(key_file)?);
        }
        let file = config.open()?;
        builder = builder.audit_sink((file, mcp_harden::TracingAuditSink));
    }
    if let Some(url) = &cli.redis {
        let store = mcp_harden::limits::RedisStore::new(url)?;
        let fail = match cli.redis_fail {
            RedisFail::Closed => mcp_harden::limits::FailMode::Closed,
            RedisFail::Local => mcp_harden::limits::FailMode::Local,
            RedisFail::Open => mcp_harden::limits::FailMode::Open,
        };
        builder = builder.rate_limit_store(store, fail);
    }
    Ok(builder.build()?)
}

#[tokio::main]
async fn main() -> ExitCode {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;

    let cli = Cli::parse();
    let otel = match cli.otlp.as_deref().map(|url| {
        mcp_harden::telemetry::otel::Otlp::http(url)
            .service_name("mcp-harden-example")
            .build()
    }) {
        None => None,
        Some(Ok(otel)) => Some(otel),
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Logs and audit records go to stderr: on stdio, stdout carries only the protocol.
    let logs = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        // rmcp logs raw request arguments (secrets included) at debug level, and some
        // refused requests at warn, one line each with the client's text: never let
        // RUST_LOG put them on stderr.
        .add_directive(rmcp_log_cap());
    // Spans (and the events inside them) at INFO for the collector, with the same cap.
    let traces = tracing_subscriber::EnvFilter::new("info").add_directive(rmcp_log_cap());
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .with_filter(logs),
        )
        .with(otel.as_ref().map(|o| o.layer().with_filter(traces)))
        .init();
    let code = run(cli).await;
    if let Some(otel) = otel {
        // Flush the last spans (blocking: off the runtime's threads).
        let flushed = tokio::task::spawn_blocking(move || otel.shutdown()).await;
        if let Ok(Err(e)) = flushed {
            eprintln!("warning: {e}");
        }
    }
    code
}

async fn run(cli: Cli) -> ExitCode {
    let server = match build(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.print_manifest {
        println!(
            "{}",
            serde_json::to_string_pretty(&server.manifest()).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    if let Some(addr) = cli.metrics {
        if let Err(e) = mcp_harden::telemetry::install_prometheus(addr) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    if let Err(e) = ensure_database(&cli.db) {
        eprintln!(
            "error: cannot prepare the database at {}: {e}",
            cli.db.display()
        );
        return ExitCode::FAILURE;
    }
    if !cli.stdio {
        return match serve_http(&cli, server).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    tracing::info!(db = %cli.db.display(), subject = %cli.subject, scopes = ?cli.scopes, "serving MCP over stdio");
    match server.serve_stdio().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves over Streamable HTTP with JWT (and optionally API-key) authentication.
async fn serve_http(cli: &Cli, server: Hardened<App>) -> Result<(), Box<dyn std::error::Error>> {
    use mcp_harden::auth::{random_secret, ApiKeyAuthenticator, DevToken, JwtAuthenticator};
    use mcp_harden::server::http::HttpConfig;

    let configured = std::env::var("MCP_HARDEN_JWT_SECRET")
        .ok()
        .filter(|s| !s.is_empty());
    let generated = configured.is_none();
    let secret = configured.unwrap_or_else(random_secret);
    let issuer = std::env::var("MCP_HARDEN_JWT_ISSUER")
        .ok()
        .filter(|s| !s.is_empty());
    let mut jwt = JwtAuthenticator::builder()
        .hs256(secret.as_bytes())
        .tier_claim("tier");
    if let Some(iss) = &issuer {
        jwt = jwt.issuer(iss);
    }
    // Without an explicit audience, tokens must name this server's resource URL (RFC 8707).
    if let Some(aud) = std::env::var("MCP_HARDEN_JWT_AUDIENCE")
        .ok()
        .filter(|s| !s.is_empty())
    {
        jwt = jwt.audience(aud);
    }
    let mut config = HttpConfig::new(cli.listen).authenticator(jwt.build()?);
    if let Some(path) = &cli.api_keys {
        config = config.authenticator(ApiKeyAuthenticator::from_json_file(path)?);
    }
    if let Some(url) = &cli.public_url {
        config = config.resource_url(url);
    }
    if !cli.allowed_host.is_empty() {
        let mut hosts = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "[::1]".to_owned(),
        ];
        hosts.extend(cli.allowed_host.iter().cloned());
        config = config.allowed_hosts(hosts);
    }
    for a in &cli.authorization_server {
        config = config.authorization_server(a);
    }
    if !cli.trusted_proxy.is_empty() {
        config = config.trusted_proxies(cli.trusted_proxy.iter().cloned());
    }
    if cli.stateless {
        config = config.stateless();
    }
    if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
        config = config.tls_pem_files(cert, key);
    }
    let http = server.bind_http(config).await?;
    if generated {
        let scopes: Vec<String> = if cli.scopes.is_empty() {
            let mut all: Vec<String> = server
                .tool_specs()
                .iter()
                .filter_map(|s| match s.scopes {
                    mcp_harden::spec::Scopes::Required(r) => {
                        Some(r.iter().map(|s| (*s).to_owned()))
                    }
                    mcp_harden::spec::Scopes::Public => None,
                })
                .flatten()
                .collect();
            all.sort();
            all.dedup();
            all
        } else {
            cli.scopes.clone()
        };
        let mut token = DevToken::new("dev", http.resource_url())
            .scopes(&scopes)
            .ttl(std::time::Duration::from_secs(3600));
        if let Some(iss) = &issuer {
            token = token.issuer(iss);
        }
        let token = token.sign_hs256(secret.as_bytes())?;
        eprintln!(
            "\nNo MCP_HARDEN_JWT_SECRET set: a random secret was generated for this run.\n\
             Development token (subject `dev`, scopes `{}`, valid for 1 hour):\n\n{token}\n\n\
             Send it as `Authorization: Bearer <token>` to {}\n",
            scopes.join(" "),
            http.resource_url()
        );
    }
    tracing::info!(db = %cli.db.display(), resource = %http.resource_url(), metadata = %http.metadata_url(), "serving MCP over Streamable HTTP");
    http.serve().await?;
    Ok(())
}
