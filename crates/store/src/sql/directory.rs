//! The KM's directory records (SCIM users and groups, barriers, SCIM
//! tokens): one JSON document per (kind, id).

use super::SqlKmStore;
use crate::{DirRow, DirectoryStore, Result};
use async_trait::async_trait;
use sqlx::Row;

#[async_trait]
impl DirectoryStore for SqlKmStore {
    async fn dir_all(&self) -> Result<Vec<DirRow>> {
        let rows = sqlx::query("SELECT kind, id, doc FROM directory ORDER BY kind, id")
            .fetch_all(&self.db.readers)
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
        let mut tx = self.db.begin().await?;
        for r in put {
            sqlx::query(
                "INSERT INTO directory (kind, id, doc) VALUES ($1, $2, $3)
                 ON CONFLICT (kind, id) DO UPDATE SET doc = excluded.doc",
            )
            .bind(&r.kind)
            .bind(&r.id)
            .bind(&r.doc)
            .execute(&mut *tx)
            .await?;
        }
        for (kind, id) in delete {
            sqlx::query("DELETE FROM directory WHERE kind = $1 AND id = $2")
                .bind(kind)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
