//! The compliance vault's store on SQLite.

use super::*;

const VAULT_DDL: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS envelopes (message_id TEXT PRIMARY KEY, room TEXT NOT NULL, ts INTEGER NOT NULL,
    ciphertext_sha256 BLOB NOT NULL, envelope BLOB NOT NULL, envelope_sha256 BLOB NOT NULL,
    received_ms INTEGER NOT NULL, log_index INTEGER NOT NULL, device TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS envelopes_ts ON envelopes(ts);
CREATE INDEX IF NOT EXISTS envelopes_room ON envelopes(room, ts);
CREATE UNIQUE INDEX IF NOT EXISTS envelopes_log ON envelopes(log_index);
CREATE TABLE IF NOT EXISTS tokens (period INTEGER NOT NULL, token BLOB NOT NULL, message_id TEXT NOT NULL,
    PRIMARY KEY (period, token, message_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tokens_msg ON tokens(message_id);
CREATE TABLE IF NOT EXISTS audit_log (idx INTEGER PRIMARY KEY, ts INTEGER NOT NULL, kind TEXT NOT NULL,
    room TEXT, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS audit_room ON audit_log(room, idx);
CREATE INDEX IF NOT EXISTS audit_kind ON audit_log(kind, idx);
CREATE TABLE IF NOT EXISTS audit_checkpoints (size INTEGER PRIMARY KEY, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tombstones (message_id TEXT PRIMARY KEY, deleted_ms INTEGER NOT NULL)
";

/// The compliance vault's SQLite store.
#[derive(Clone)]
pub struct SqliteVaultStore {
    pub(super) pool: SqlitePool,
    pub(super) writer: SqlitePool,
}

impl SqliteVaultStore {
    pub async fn open(path: &Path) -> Result<Self> {
        let (pool, writer) = open_pools(path).await?;
        migrate(&writer, VAULT_DDL).await?;
        Ok(SqliteVaultStore { pool, writer })
    }
}

#[async_trait]
impl VaultStore for SqliteVaultStore {
    async fn vault_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        meta_get(&self.pool, key).await
    }

    async fn vault_init_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        meta_init(&self.writer, key, value).await
    }

    async fn vault_set_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        meta_set(&self.writer, key, value).await
    }

    async fn is_deleted(&self, message_id: &str) -> Result<bool> {
        Ok(
            sqlx::query_scalar::<_, i64>("SELECT 1 FROM tombstones WHERE message_id = ?")
                .bind(message_id)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    async fn vault_scrub(&self) -> Result<()> {
        scrub(&self.writer).await
    }

    async fn get_capture(&self, message_id: &str) -> Result<Option<CaptureMeta>> {
        let r = sqlx::query(
            "SELECT ciphertext_sha256, envelope_sha256, received_ms, log_index FROM envelopes WHERE message_id = ?",
        )
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?;
        r.map(|r| {
            Ok(CaptureMeta {
                ciphertext_sha256: r.try_get("ciphertext_sha256")?,
                envelope_sha256: r.try_get("envelope_sha256")?,
                received_ms: u(r.try_get("received_ms")?),
                log_index: u(r.try_get("log_index")?),
            })
        })
        .transpose()
    }

    async fn fetch(&self, q: &FetchQuery) -> Result<Vec<EnvelopeRow>> {
        let mut sql = String::from(
            "SELECT message_id, room, ts, envelope, envelope_sha256, log_index FROM envelopes
             WHERE ts >= ? AND ts <= ? AND log_index > ?",
        );
        if !q.rooms.is_empty() {
            sql.push_str(&format!(" AND room IN ({})", placeholders(q.rooms.len())));
        }
        let toks: Vec<(u32, &Vec<u8>)> = q
            .any_tokens
            .iter()
            .flat_map(|(p, ts)| ts.iter().map(move |t| (*p, t)))
            .collect();
        if !toks.is_empty() {
            sql.push_str(" AND message_id IN (SELECT message_id FROM tokens WHERE ");
            for n in 0..toks.len() {
                sql.push_str(if n == 0 {
                    "(period = ? AND token = ?)"
                } else {
                    " OR (period = ? AND token = ?)"
                });
            }
            sql.push(')');
        }
        sql.push_str(" ORDER BY log_index LIMIT ?");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(i(q.from_ms))
            .bind(i(q.to_ms))
            .bind(q.after.map(i).unwrap_or(-1));
        for r in &q.rooms {
            query = query.bind(r);
        }
        for (p, t) in toks {
            query = query.bind(p as i64).bind(t);
        }
        let rows = query.bind(q.limit as i64).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(EnvelopeRow {
                    message_id: r.try_get("message_id")?,
                    room: r.try_get("room")?,
                    ts: u(r.try_get("ts")?),
                    envelope: r.try_get("envelope")?,
                    envelope_sha256: r.try_get("envelope_sha256")?,
                    log_index: u(r.try_get("log_index")?),
                })
            })
            .collect()
    }

    async fn expired(
        &self,
        room: &str,
        before_ms: u64,
        held: &[(u64, u64)],
    ) -> Result<(Vec<(String, Vec<u8>)>, u64)> {
        let rows = sqlx::query(
            "SELECT message_id, ts, envelope_sha256 FROM envelopes WHERE room = ? AND ts < ? ORDER BY ts",
        )
        .bind(room)
        .bind(i(before_ms))
        .fetch_all(&self.pool)
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
            let mut sql = String::from(
                "SELECT e.message_id, e.room, e.ts, e.ciphertext_sha256 FROM envelopes e JOIN
                   (SELECT message_id FROM tokens WHERE period = ? AND token IN (",
            );
            sql.push_str(&placeholders(toks.len()));
            sql.push_str(
                ") GROUP BY message_id HAVING COUNT(DISTINCT token) = ?) m ON m.message_id = e.message_id
                 WHERE e.ts >= ? AND e.ts <= ? ORDER BY e.ts LIMIT ?",
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(*period as i64);
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
                .fetch_all(&self.pool)
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
            .fetch_one(&self.pool)
            .await?;
        Ok(u(n))
    }
}
