//! SQLite store: the embedded default. One file in the data dir, WAL journal (readers never block
//! the writer), `synchronous=NORMAL`, foreign keys on, and a 5 s busy timeout so concurrent writers
//! wait for each other instead of failing. The SQL itself lives in [`super::sql`], shared with
//! PostgreSQL.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use delegate_mcp::types::{Event, RunStatus, SandboxStatus, Usage};
use serde_json::Value;
use sqlx::SqlitePool;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::sql::{self, db_error, to_i64};
use super::{
    Millis, NewEvent, Result, Role, Run, RunOutcome, Sandbox, Store, StoreError, TokenRecord,
    UsageRecord, User, Workspace, WorkspaceLimits,
};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// A [`Store`] on a SQLite database file (or an in-memory database, for tests).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating it if missing) the database `url` names — `sqlite:///abs/path/delegate.db`
    /// or `sqlite::memory:` — and brings its schema up to date.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::BadUrl(format!("not a SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let pool_options = if in_memory {
            // An in-memory database lives as long as its last connection, and a shared-cache
            // database locks per table without honouring busy_timeout: keep exactly one connection
            // open forever.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(8)
        };
        let pool = pool_options
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Database(format!("opening SQLite database: {e}")))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        Ok(SqliteStore { pool })
    }
}

super::methods::impl_store!(SqliteStore, "sqlite", sqlx::Sqlite);
