//! The audit log tables, one implementation for the KM's and the vault's
//! stores.

use super::*;
use crate::{AuditQuery, AuditRow, AuditStore};

/// An `(idx, data)` row of `audit_log`.
fn audit_row(r: &AnyRow) -> Result<AuditRow> {
    Ok(AuditRow {
        index: u(r.try_get("idx")?),
        data: r.try_get("data")?,
    })
}

#[async_trait]
impl<T: sealed::SqlAudit + Send + Sync + 'static> AuditStore for T {
    async fn audit_append(&self, rows: &[AuditIn], checkpoint: Option<(u64, &str)>) -> Result<()> {
        let Some(first) = rows.first() else {
            return Ok(());
        };
        let mut tx = self.db().begin().await?;
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
        for chunk in runs(rows, 1024) {
            let sql = Sql::insert(
                Backend::of(&tx),
                "INSERT INTO audit_log (idx, ts, kind, room, data)",
                5,
                chunk.len(),
            );
            let mut q = sqlx::query(sql.build());
            for r in chunk {
                q = q
                    .bind(i(r.index))
                    .bind(i(r.ts))
                    .bind(&r.kind)
                    .bind(&r.room)
                    .bind(&r.data);
            }
            // A second appender racing on the same database loses here.
            q.execute(&mut *tx)
                .await
                .map_err(unique("audit log index does not continue the log"))?;
        }
        if let Some((size, note)) = checkpoint {
            sqlx::query(
                "INSERT INTO audit_checkpoints (size, note) VALUES ($1, $2)
                 ON CONFLICT (size) DO UPDATE SET note = excluded.note",
            )
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
            .fetch_all(&self.db().readers)
            .await?;
        rows.iter().map(audit_row).collect()
    }

    async fn audit_get(&self, index: u64) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT data FROM audit_log WHERE idx = $1")
                .bind(i(index))
                .fetch_optional(&self.db().readers)
                .await?,
        )
    }

    async fn audit_list(&self, q: &AuditQuery) -> Result<Vec<AuditRow>> {
        let rows = sqlx::query(
            "SELECT idx, data FROM audit_log WHERE idx >= $1
               AND ($2 IS NULL OR kind = $3) AND ($4 IS NULL OR room = $5) AND ($6 IS NULL OR ts >= $7)
             ORDER BY idx LIMIT $8",
        )
        .bind(i(q.from))
        .bind(&q.kind)
        .bind(&q.kind)
        .bind(&q.room)
        .bind(&q.room)
        .bind(q.since_ms.map(i))
        .bind(q.since_ms.map(i))
        .bind(q.limit as i64)
        .fetch_all(&self.db().readers)
        .await?;
        rows.iter().map(audit_row).collect()
    }

    async fn audit_put_checkpoint(&self, size: u64, note: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_checkpoints (size, note) VALUES ($1, $2)
                 ON CONFLICT (size) DO UPDATE SET note = excluded.note",
        )
        .bind(i(size))
        .bind(note)
        .execute(&self.db().writer)
        .await?;
        Ok(())
    }

    async fn audit_latest_checkpoint(&self) -> Result<Option<(u64, String)>> {
        let r = sqlx::query("SELECT size, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1")
            .fetch_optional(&self.db().readers)
            .await?;
        r.map(|r| Ok((u(r.try_get("size")?), r.try_get("note")?)))
            .transpose()
    }
}
