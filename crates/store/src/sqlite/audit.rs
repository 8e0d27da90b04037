//! The audit log tables on SQLite, for the KM's and the vault's stores.

use super::*;

/// The audit log tables, shared by the KM's and the vault's stores.
macro_rules! sqlite_audit_store {
    ($t:ty) => {
#[async_trait]
impl AuditStore for $t {
    async fn audit_append(&self, rows: &[AuditIn], checkpoint: Option<(u64, &str)>) -> Result<()> {
        let Some(first) = rows.first() else {
            return Ok(());
        };
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let next: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(idx) + 1, 0) FROM audit_log")
            .fetch_one(&mut *tx)
            .await?;
        if u(next) != first.index {
            return Err(StoreError::Conflict(
                "audit log index does not continue the log",
            ));
        }
        apply_side_effects(&mut tx, rows).await?;
        // Multi-row inserts keep the per-entry cost low.
        for chunk in rows.chunks(100) {
            let sql = insert_sql("INSERT INTO audit_log (idx, ts, kind, room, data)", 5, chunk.len());
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for r in chunk {
                q = q
                    .bind(i(r.index))
                    .bind(i(r.ts))
                    .bind(&r.kind)
                    .bind(&r.room)
                    .bind(&r.data);
            }
            q.execute(&mut *tx).await?;
        }
        if let Some((size, note)) = checkpoint {
            sqlx::query("INSERT OR REPLACE INTO audit_checkpoints (size, note) VALUES (?, ?)")
                .bind(i(size))
                .bind(note)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn audit_all(&self) -> Result<Vec<AuditRow>> {
        let rows = sqlx::query("SELECT idx, data FROM audit_log ORDER BY idx")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    index: u(r.try_get("idx")?),
                    data: r.try_get("data")?,
                })
            })
            .collect()
    }

    async fn audit_get(&self, index: u64) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT data FROM audit_log WHERE idx = ?")
                .bind(i(index))
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn audit_list(&self, q: &AuditQuery) -> Result<Vec<AuditRow>> {
        let rows = sqlx::query(
            "SELECT idx, data FROM audit_log WHERE idx >= ?
               AND (? IS NULL OR kind = ?) AND (? IS NULL OR room = ?) AND (? IS NULL OR ts >= ?)
             ORDER BY idx LIMIT ?",
        )
        .bind(i(q.from))
        .bind(&q.kind)
        .bind(&q.kind)
        .bind(&q.room)
        .bind(&q.room)
        .bind(q.since_ms.map(i))
        .bind(q.since_ms.map(i))
        .bind(q.limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    index: u(r.try_get("idx")?),
                    data: r.try_get("data")?,
                })
            })
            .collect()
    }

    async fn audit_put_checkpoint(&self, size: u64, note: &str) -> Result<()> {
        sqlx::query("INSERT OR REPLACE INTO audit_checkpoints (size, note) VALUES (?, ?)")
            .bind(i(size))
            .bind(note)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn audit_latest_checkpoint(&self) -> Result<Option<(u64, String)>> {
        let r = sqlx::query("SELECT size, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        r.map(|r| Ok((u(r.try_get("size")?), r.try_get("note")?)))
            .transpose()
    }
}
    };
}

sqlite_audit_store!(SqliteKmStore);
sqlite_audit_store!(SqliteVaultStore);
