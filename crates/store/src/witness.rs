//! A witness's storage: its key, the logs it follows and, for each, the
//! newest checkpoint it cosigned.

use crate::db::{Db, Role};
use crate::sql::{meta_get, meta_init};
use crate::{Result, StoreError};
use sqlx::Row;

/// A followed log: its verifier key and the newest cosigned `(size, root)`.
#[derive(Debug, Clone)]
pub struct WitnessedLog {
    pub vkey: String,
    pub last: Option<(u64, [u8; 32])>,
}

pub struct WitnessStore {
    db: Db,
}

impl WitnessStore {
    /// Open the database at `url` (`sqlite://…` or `postgres://…`).
    pub async fn open(url: &str) -> Result<Self> {
        Ok(WitnessStore {
            db: Db::open(url, Role::Witness).await?,
        })
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        self.db.ping().await
    }

    pub async fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        meta_get(&self.db, key).await
    }

    pub async fn init_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        meta_init(&self.db, key, value).await
    }

    /// Follow a log (its origin is the verifier key's name); `Conflict` if
    /// the origin is already followed under another key.
    pub async fn add_log(&self, origin: &str, vkey: &str) -> Result<()> {
        sqlx::query("INSERT INTO logs (origin, vkey) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(origin)
            .bind(vkey)
            .execute(&self.db.writer)
            .await?;
        match self.log(origin).await? {
            Some(l) if l.vkey == vkey => Ok(()),
            _ => Err(StoreError::Conflict(
                "this witness already follows that origin under another key",
            )),
        }
    }

    pub async fn log(&self, origin: &str) -> Result<Option<WitnessedLog>> {
        let r = sqlx::query("SELECT vkey, size, root FROM logs WHERE origin = $1")
            .bind(origin)
            .fetch_optional(&self.db.readers)
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
    /// Follow `origin` under `new` instead of `old_key`, at the
    /// checkpoint (`size`, `root`) both keys signed; only if the state is
    /// still (`old_key`, `old`).
    pub async fn hand_over(
        &self,
        origin: &str,
        (old_key, old): (&str, u64),
        new: &str,
        size: u64,
        root: &[u8; 32],
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE logs SET vkey = $1, size = $2, root = $3
             WHERE origin = $4 AND vkey = $5 AND size = $6",
        )
        .bind(new)
        .bind(size.min(i64::MAX as u64) as i64)
        .bind(&root[..])
        .bind(origin)
        .bind(old_key)
        .bind(old.min(i64::MAX as u64) as i64)
        .execute(&self.db.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn advance(
        &self,
        origin: &str,
        old: u64,
        size: u64,
        root: &[u8; 32],
    ) -> Result<bool> {
        let r = sqlx::query("UPDATE logs SET size = $1, root = $2 WHERE origin = $3 AND size = $4")
            .bind(size.min(i64::MAX as u64) as i64)
            .bind(&root[..])
            .bind(origin)
            .bind(old.min(i64::MAX as u64) as i64)
            .execute(&self.db.writer)
            .await?;
        Ok(r.rows_affected() == 1)
    }
}
