//! A witness's storage: its key, the logs it follows and, for each, the
//! newest checkpoint it cosigned (SQLite, WAL, full fsync).

use crate::sqlite::{meta_get, meta_init, migrate, open_sqlite};
use crate::{Result, StoreError};
use sqlx::{Row, SqlitePool};
use std::path::Path;

const WITNESS_DDL: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS logs (origin TEXT PRIMARY KEY, vkey TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0, root BLOB);
";

/// A followed log: its verifier key and the newest cosigned `(size, root)`.
#[derive(Debug, Clone)]
pub struct WitnessedLog {
    pub vkey: String,
    pub last: Option<(u64, [u8; 32])>,
}

pub struct SqliteWitnessStore {
    pool: SqlitePool,
}

impl SqliteWitnessStore {
    pub async fn open(path: &Path) -> Result<Self> {
        let pool = open_sqlite(path, 4).await?;
        migrate(&pool, WITNESS_DDL).await?;
        Ok(SqliteWitnessStore { pool })
    }

    pub async fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        meta_get(&self.pool, key).await
    }

    pub async fn init_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        meta_init(&self.pool, key, value).await
    }

    /// Follow a log (its origin is the verifier key's name); `Conflict` if
    /// the origin is already followed under another key.
    pub async fn add_log(&self, origin: &str, vkey: &str) -> Result<()> {
        sqlx::query("INSERT OR IGNORE INTO logs (origin, vkey) VALUES (?, ?)")
            .bind(origin)
            .bind(vkey)
            .execute(&self.pool)
            .await?;
        match self.log(origin).await? {
            Some(l) if l.vkey == vkey => Ok(()),
            _ => Err(StoreError::Conflict(
                "this witness already follows that origin under another key",
            )),
        }
    }

    pub async fn log(&self, origin: &str) -> Result<Option<WitnessedLog>> {
        let r = sqlx::query("SELECT vkey, size, root FROM logs WHERE origin = ?")
            .bind(origin)
            .fetch_optional(&self.pool)
            .await?;
        r.map(|r| {
            let size: i64 = r.try_get("size")?;
            let root: Option<Vec<u8>> = r.try_get("root")?;
            let last = match root {
                Some(b) => Some((
                    size.max(0) as u64,
                    b.try_into()
                        .map_err(|_| StoreError::Backend("corrupt witness root".into()))?,
                )),
                None => None,
            };
            Ok(WitnessedLog {
                vkey: r.try_get("vkey")?,
                last,
            })
        })
        .transpose()
    }

    /// Move a log's cosigned checkpoint from `old` (its size now) to
    /// `(size, root)`, atomically: `false` if another request moved it first.
    pub async fn advance(
        &self,
        origin: &str,
        old: u64,
        size: u64,
        root: &[u8; 32],
    ) -> Result<bool> {
        let r = sqlx::query("UPDATE logs SET size = ?, root = ? WHERE origin = ? AND size = ?")
            .bind(size.min(i64::MAX as u64) as i64)
            .bind(&root[..])
            .bind(origin)
            .bind(old.min(i64::MAX as u64) as i64)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }
}
