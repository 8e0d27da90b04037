//! The compliance vault's store (its audit log tables: `audit.rs`).

use super::*;
use crate::db::Role;
use crate::{
    CaptureMeta, CaptureStatus, EnvelopeRow, FetchQuery, HitRow, MAX_STATUS_BATCH, VaultStore,
};

/// The compliance vault's store (SQLite or PostgreSQL).
#[derive(Clone)]
pub struct SqlVaultStore {
    db: Db,
}

impl SqlVaultStore {
    /// Open the database at `url` (`sqlite://…` or `postgres://…`),
    /// applying the vault's migrations.
    pub async fn open(url: &str) -> Result<Self> {
        Ok(SqlVaultStore {
            db: Db::open(url, Role::Vault).await?,
        })
    }
}

impl HasDb for SqlVaultStore {
    fn db(&self) -> &Db {
        &self.db
    }
}

impl sealed::SqlAudit for SqlVaultStore {}

#[async_trait]
impl VaultStore for SqlVaultStore {
    async fn vault_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        meta_get(&self.db, key).await
    }

    async fn vault_init_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        meta_init(&self.db, key, value).await
    }

    async fn vault_set_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        meta_set(&self.db, key, value).await
    }

    async fn vault_scrub(&self) -> Result<()> {
        self.db.scrub(&["envelopes", "tokens"]).await
    }

    async fn capture_statuses(&self, message_ids: &[MessageId]) -> Result<Vec<CaptureStatus>> {
        if message_ids.is_empty() {
            return Ok(Vec::new());
        }
        if message_ids.len() > MAX_STATUS_BATCH {
            return Err(StoreError::Backend(format!(
                "at most {MAX_STATUS_BATCH} capture statuses in one read"
            )));
        }
        let hex: Vec<String> = message_ids.iter().map(MessageId::to_hex).collect();
        // One statement: the tombstones, then the captured envelopes.
        let mut sql = Sql::new(
            "SELECT message_id, CAST(1 AS BIGINT) AS deleted, NULL AS ciphertext_sha256, NULL AS envelope_sha256,
                    NULL AS received_ms, NULL AS log_index
             FROM tombstones WHERE message_id IN (",
        );
        sql.params(hex.len()).push(
            ") UNION ALL SELECT message_id, CAST(0 AS BIGINT), ciphertext_sha256, envelope_sha256, received_ms, log_index
             FROM envelopes WHERE message_id IN (",
        );
        sql.params(hex.len()).push(")");
        let mut q = sqlx::query(sql.build());
        for h in hex.iter().chain(&hex) {
            q = q.bind(h);
        }
        let rows = q.fetch_all(&self.db.readers).await?;
        let mut found: std::collections::HashMap<String, CaptureStatus> =
            std::collections::HashMap::with_capacity(rows.len());
        for r in rows {
            let id: String = r.try_get("message_id")?;
            let status = if r.try_get::<i64, _>("deleted")? != 0 {
                CaptureStatus::Deleted
            } else {
                CaptureStatus::Captured(CaptureMeta {
                    ciphertext_sha256: r.try_get("ciphertext_sha256")?,
                    envelope_sha256: r.try_get("envelope_sha256")?,
                    received_ms: u(r.try_get("received_ms")?),
                    log_index: u(r.try_get("log_index")?),
                })
            };
            // A tombstone wins over a row (never both; deletion removes it).
            if status == CaptureStatus::Deleted || !found.contains_key(&id) {
                found.insert(id, status);
            }
        }
        Ok(hex
            .iter()
            .map(|h| found.get(h).cloned().unwrap_or(CaptureStatus::New))
            .collect())
    }

    async fn envelope_of(&self, message_id: &str) -> Result<Option<EnvelopeRow>> {
        let r = sqlx::query(
            "SELECT message_id, room, ts, envelope, envelope_sha256, log_index FROM envelopes
             WHERE message_id = $1",
        )
        .bind(message_id)
        .fetch_optional(&self.db.readers)
        .await?;
        r.as_ref().map(envelope_row).transpose()
    }

    async fn fetch(&self, q: &FetchQuery) -> Result<Vec<EnvelopeRow>> {
        let mut sql = Sql::new(
            "SELECT message_id, room, ts, envelope, envelope_sha256, log_index FROM envelopes WHERE ts >= ",
        );
        sql.param()
            .push(" AND ts <= ")
            .param()
            .push(" AND log_index > ")
            .param();
        if !q.rooms.is_empty() {
            sql.push(" AND room IN (").params(q.rooms.len()).push(")");
        }
        if q.generation.is_some() {
            sql.push(" AND generation = ").param();
        }
        let toks: Vec<(u32, &Vec<u8>)> = q
            .any_tokens
            .iter()
            .flat_map(|(p, ts)| ts.iter().map(move |t| (*p, t)))
            .collect();
        if !toks.is_empty() {
            sql.push(" AND message_id IN (SELECT message_id FROM tokens WHERE ");
            for n in 0..toks.len() {
                sql.push(if n == 0 {
                    "(period = "
                } else {
                    " OR (period = "
                })
                .param()
                .push(" AND token = ")
                .param()
                .push(")");
            }
            sql.push(")");
        }
        sql.push(" ORDER BY log_index LIMIT ").param();
        let mut query = sqlx::query(sql.build())
            .bind(i(q.from_ms))
            .bind(i(q.to_ms))
            .bind(q.after.map(i).unwrap_or(-1));
        for r in &q.rooms {
            query = query.bind(r);
        }
        if let Some(g) = q.generation {
            query = query.bind(i64::from(g));
        }
        for (p, t) in toks {
            query = query.bind(p as i64).bind(t);
        }
        let rows = query
            .bind(q.limit as i64)
            .fetch_all(&self.db.readers)
            .await?;
        rows.iter().map(envelope_row).collect()
    }

    async fn expired(
        &self,
        room: &RoomId,
        before_ms: u64,
        held: &[(u64, u64)],
    ) -> Result<(Vec<(String, Vec<u8>)>, u64)> {
        let room_hex = room.to_hex();
        let room = room_hex.as_str();
        let rows = sqlx::query(
            "SELECT message_id, ts, envelope_sha256 FROM envelopes WHERE room = $1 AND ts < $2 ORDER BY ts",
        )
        .bind(room)
        .bind(i(before_ms))
        .fetch_all(&self.db.readers)
        .await?;
        let mut out = Vec::new();
        let mut kept = 0u64;
        for r in rows {
            let ts = u(r.try_get("ts")?);
            if held.iter().any(|(a, b)| ts >= *a && ts <= *b) {
                kept += 1;
                continue;
            }
            out.push((r.try_get("message_id")?, r.try_get("envelope_sha256")?));
        }
        Ok((out, kept))
    }

    async fn search(
        &self,
        queries: &[(u32, Vec<Vec<u8>>)],
        from_ms: u64,
        to_ms: u64,
        limit: u32,
    ) -> Result<Vec<HitRow>> {
        let mut out: Vec<HitRow> = Vec::new();
        for (period, toks) in queries {
            if toks.is_empty() {
                continue;
            }
            let mut sql = Sql::new(
                "SELECT e.message_id, e.room, e.ts, e.ciphertext_sha256 FROM envelopes e JOIN
                   (SELECT message_id FROM tokens WHERE period = ",
            );
            sql.param()
                .push(" AND token IN (")
                .params(toks.len())
                .push(") GROUP BY message_id HAVING COUNT(DISTINCT token) = ")
                .param()
                .push(") m ON m.message_id = e.message_id WHERE e.ts >= ")
                .param()
                .push(" AND e.ts <= ")
                .param()
                .push(" ORDER BY e.ts LIMIT ")
                .param();
            let mut q = sqlx::query(sql.build()).bind(*period as i64);
            for t in toks {
                q = q.bind(t);
            }
            let mut distinct = toks.clone();
            distinct.sort();
            distinct.dedup();
            let rows = q
                .bind(distinct.len() as i64)
                .bind(i(from_ms))
                .bind(i(to_ms))
                .bind(limit as i64)
                .fetch_all(&self.db.readers)
                .await?;
            for r in rows {
                out.push(HitRow {
                    message_id: r.try_get("message_id")?,
                    room: r.try_get("room")?,
                    ts: u(r.try_get("ts")?),
                    ciphertext_sha256: r.try_get("ciphertext_sha256")?,
                });
            }
        }
        out.sort_by_key(|h| h.ts);
        out.truncate(limit as usize);
        Ok(out)
    }

    async fn envelope_count(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM envelopes")
            .fetch_one(&self.db.readers)
            .await?;
        Ok(u(n))
    }

    async fn envelopes_under(&self, generation: u32) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM envelopes WHERE generation = $1")
            .bind(i64::from(generation))
            .fetch_one(&self.db.readers)
            .await?;
        Ok(u(n))
    }
}

/// A stored envelope as selected by `fetch` and `envelope_of`.
fn envelope_row(r: &sqlx::any::AnyRow) -> Result<EnvelopeRow> {
    Ok(EnvelopeRow {
        message_id: r.try_get("message_id")?,
        room: r.try_get("room")?,
        ts: u(r.try_get("ts")?),
        envelope: r.try_get("envelope")?,
        envelope_sha256: r.try_get("envelope_sha256")?,
        log_index: u(r.try_get("log_index")?),
    })
}
