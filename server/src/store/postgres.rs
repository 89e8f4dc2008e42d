//! PostgreSQL store, for deployments that run several servers or want a managed database. The SQL
//! lives in [`super::sql`] and is the same as SQLite's; only connecting differs.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use delegate_mcp::types::{Event, RunStatus, SandboxStatus, Usage};
use serde_json::Value;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::sql::{self, db_error, to_i64};
use super::{
    Millis, NewEvent, Result, Role, Run, RunOutcome, Sandbox, Store, StoreError, TokenRecord,
    UsageRecord, User, Workspace, WorkspaceLimits,
};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// A [`Store`] on a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database `url` names (`postgres://user:password@host:port/db`) with a pool
    /// of 10 connections and brings its schema up to date.
    pub async fn connect(url: &str) -> Result<Self> {
        // The parser's message may quote the URL, and with it a password: say only what failed.
        let options = PgConnectOptions::from_str(url)
            .map_err(|_| StoreError::BadUrl("not a valid PostgreSQL URL".into()))?;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Database(format!("connecting to PostgreSQL: {e}")))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        Ok(PostgresStore { pool })
    }
}

super::methods::impl_store!(PostgresStore, "postgres", sqlx::Postgres);
