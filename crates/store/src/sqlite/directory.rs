//! The KM's directory records (SCIM users and groups, barriers, SCIM
//! tokens) in SQLite: one JSON document per (kind, id).

use super::{SqliteKmStore, migrate};
use crate::{DirRow, DirectoryStore, Result};
use async_trait::async_trait;
use sqlx::Row;

const DDL: &str = "
CREATE TABLE IF NOT EXISTS directory (kind TEXT NOT NULL, id TEXT NOT NULL, doc BLOB NOT NULL,
    PRIMARY KEY (kind, id)) WITHOUT ROWID
";

pub(super) async fn migrate_directory(pool: &sqlx::SqlitePool) -> Result<()> {
    migrate(pool, DDL).await
}

#[async_trait]
impl DirectoryStore for SqliteKmStore {
    async fn dir_all(&self) -> Result<Vec<DirRow>> {
        let rows = sqlx::query("SELECT kind, id, doc FROM directory ORDER BY kind, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(DirRow {
                    kind: r.try_get("kind")?,
                    id: r.try_get("id")?,
                    doc: r.try_get("doc")?,
                })
            })
            .collect()
    }

    async fn dir_write(&self, put: &[DirRow], delete: &[(String, String)]) -> Result<()> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        for r in put {
            sqlx::query("INSERT OR REPLACE INTO directory (kind, id, doc) VALUES (?, ?, ?)")
                .bind(&r.kind)
                .bind(&r.id)
                .bind(&r.doc)
                .execute(&mut *tx)
                .await?;
        }
        for (kind, id) in delete {
            sqlx::query("DELETE FROM directory WHERE kind = ? AND id = ?")
                .bind(kind)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
