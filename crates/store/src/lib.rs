//! The alchemiscale state store.
//!
//! One [`Store`] type serves both backends through sqlx's `Any` driver: SQLite (WAL,
//! foreign keys on, busy timeout; the embedded default) and PostgreSQL (deployments).
//! The SQL is written once in the common dialect (`$N` placeholders, `ON CONFLICT`,
//! `RETURNING`, recursive CTEs); the few places that differ ask [`Store::backend`].
//! Every rule that touches data lives here, inside transactions; callers (the API
//! servers, the CLI) only parse, authorise and encode.
//!
//! Write transactions on SQLite go through a single-connection pool and start with
//! `BEGIN IMMEDIATE`, so a read-then-write transaction never fails to upgrade its lock
//! and writers queue in-process instead of polling SQLite's busy handler.

mod admin;
pub mod census;
mod checkpoint;
pub mod claim_plan;
mod claim_rank;
mod claim_select;
pub mod claims;
pub mod compute;
pub mod console;
mod db;
pub mod dump;
mod error;
pub mod identities;
pub mod layouts;
mod lease;
pub mod managers;
pub mod networks;
pub mod queries;
pub mod restart;
pub mod results;
pub mod scratch;
pub mod sessions;
mod statistics;
pub mod strategist;
pub mod strategy;
pub mod tasks;
mod url;

pub use admin::SchemaStatus;
pub use error::{Result, StoreError};
pub use url::{neo4j_message as url_neo4j_message, resolve_store_url, StoreLocation};

use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use sqlx::{Any, Executor, Transaction};

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Connection settings beyond the URL.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Connections in the (read) pool.
    pub max_connections: u32,
    /// SQLite `PRAGMA synchronous` (`FULL` fsyncs every commit; `NORMAL` is safe against
    /// process crashes but may lose the last commits on power loss).
    pub sqlite_synchronous: String,
    /// How long a request waits for a pooled connection before the store reports
    /// itself unavailable.
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { max_connections: 8, sqlite_synchronous: "FULL".into(), acquire_timeout: Duration::from_secs(30) }
    }
}

/// Handle to the state store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// Pool for reads (and, on PostgreSQL, for everything).
    read: AnyPool,
    /// Pool for write transactions: one connection on SQLite, the read pool on PostgreSQL.
    write: AnyPool,
    location: String,
    /// Bulk changes since the planner statistics were last refreshed (see `statistics`).
    freshness: std::sync::Arc<statistics::Freshness>,
    /// SQLite: write transactions begun, for the background checkpoints (see `checkpoint`).
    commits: Option<std::sync::Arc<checkpoint::Commits>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend).field("location", &self.location).finish()
    }
}

impl Store {
    /// Connect to the store at `location` (see [`resolve_store_url`]). Does not create or
    /// migrate the schema: call [`Store::init`] for that.
    pub async fn connect(location: &StoreLocation, options: &StoreOptions) -> Result<Store> {
        sqlx::any::install_default_drivers();
        match location {
            StoreLocation::Sqlite { path } => {
                if let Some(parent) = path.parent() {
                    if !parent.as_os_str().is_empty() {
                        std::fs::create_dir_all(parent)
                            .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", parent.display())))?;
                    }
                }
                let url = location.url();
                let sync = options.sqlite_synchronous.to_ascii_uppercase();
                if !["OFF", "NORMAL", "FULL", "EXTRA"].contains(&sync.as_str()) {
                    return Err(StoreError::Invalid(format!("invalid SQLite synchronous setting '{sync}'")));
                }
                let pragmas =
                    format!("PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON; {}", checkpoint::pragmas());
                let make = |n: u32, extra: &str| {
                    let pragmas = format!("{pragmas} {extra}");
                    AnyPoolOptions::new().max_connections(n).min_connections(0).acquire_timeout(options.acquire_timeout).after_connect(
                        move |conn, _| {
                            let pragmas = pragmas.clone();
                            Box::pin(async move {
                                conn.execute(pragmas.as_str()).await?;
                                Ok(())
                            })
                        },
                    )
                };
                // the writer connects first so WAL mode is set before readers open the file
                let connect = connect_options(&url)?;
                let write = make(1, &checkpoint::writer_pragmas()).connect_with(connect.clone()).await.map_err(StoreError::from)?;
                write.acquire().await.map_err(StoreError::from)?;
                let read = make(options.max_connections.max(1), "").connect_with(connect).await.map_err(StoreError::from)?;
                let commits = std::sync::Arc::new(checkpoint::Commits::default());
                checkpoint::spawn(read.clone(), write.clone(), &commits);
                Ok(Store {
                    backend: Backend::Sqlite,
                    read,
                    write,
                    location: path.display().to_string(),
                    freshness: Default::default(),
                    commits: Some(commits),
                })
            }
            StoreLocation::Postgres { url } => {
                // A restart of the server terminates every session: a connection idle in
                // the pool is pinged before it is handed out (test_before_acquire) and
                // replaced when dead; while the server is down the pool keeps retrying the
                // connection (refused, or 57P03 while it starts) until acquire_timeout, then
                // requests answer 503. Errors of statements cut off are `Unavailable` too
                // (see `error::sqlx_unavailable`). Tested in server/tests/pg_restart.rs.
                let pool = AnyPoolOptions::new()
                    .max_connections(options.max_connections.max(2))
                    .acquire_timeout(options.acquire_timeout)
                    .test_before_acquire(true)
                    // JIT compilation pays off only for long analytical queries; for ours
                    // it costs more than the query whenever statistics make a cheap plan
                    // look expensive (measured: a 0.4 ms hub query took 400 ms, all JIT)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute("SET jit = off").await?;
                            Ok(())
                        })
                    })
                    .connect_with(connect_options(url)?)
                    .await
                    .map_err(|e| match e {
                        sqlx::Error::Database(d) => StoreError::Unavailable(d.message().to_string()),
                        other => StoreError::from(other),
                    })?;
                Ok(Store {
                    backend: Backend::Postgres,
                    read: pool.clone(),
                    write: pool,
                    location: location.redacted(),
                    freshness: Default::default(),
                    commits: None,
                })
            }
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Human-readable location (file path, or URL without password).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Round-trip to the database.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    /// Close all connections (waits for in-flight work).
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }

    /// Start a write transaction (`BEGIN IMMEDIATE` on SQLite).
    ///
    /// The begin runs in its own task so that a caller dropped while it is under way (a
    /// client that disconnects, an aborted claimer) cannot interrupt it halfway: sqlx
    /// 0.8's SQLite `begin_with` issues the `BEGIN` and only then awaits a connection
    /// check, and a future dropped in between leaves the single writer connection inside a
    /// transaction nothing rolls back — every later write would fail. Completed in a task,
    /// the transaction is handed over, or dropped and rolled back properly.
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        match self.backend {
            Backend::Sqlite => {
                if let Some(c) = &self.commits {
                    c.note();
                }
                let pool = self.write.clone();
                tokio::spawn(async move { pool.begin_with("BEGIN IMMEDIATE").await })
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("could not start a write transaction: {e}")))?
                    .map_err(StoreError::from)
            }
            Backend::Postgres => Ok(self.write.begin().await?),
        }
    }

    /// Start a read transaction that sees one consistent snapshot.
    pub(crate) async fn begin_snapshot(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.read.begin().await?,
            Backend::Postgres => self.read.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?,
        })
    }

    pub(crate) fn reader(&self) -> &AnyPool {
        &self.read
    }
}

/// Connection options with sqlx's statement logging turned down: it would log whole
/// multi-megabyte statements; slow ones are reported at debug level, truncated by us.
fn connect_options(url: &str) -> Result<sqlx::any::AnyConnectOptions> {
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    let opts = sqlx::any::AnyConnectOptions::from_str(url).map_err(|e| StoreError::Invalid(format!("invalid store URL: {e}")))?;
    Ok(opts.log_statements(tracing::log::LevelFilter::Trace).log_slow_statements(tracing::log::LevelFilter::Debug, Duration::from_secs(5)))
}

/// Current time as integer microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

#[cfg(feature = "testing")]
pub mod testing;
