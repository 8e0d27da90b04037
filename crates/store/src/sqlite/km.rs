//! The KM's store on SQLite (its audit log tables: `audit.rs`).

use super::*;

const KM_DDL: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS users (user_id TEXT PRIMARY KEY, roles TEXT NOT NULL, status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS enrol_codes (code_hash BLOB PRIMARY KEY, user_id TEXT NOT NULL, expires_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS devices (device TEXT PRIMARY KEY, user_id TEXT NOT NULL, cert BLOB NOT NULL,
    status TEXT NOT NULL, issued_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS km_devices_user ON devices(user_id);
CREATE TABLE IF NOT EXISTS rooms (room TEXT PRIMARY KEY, seq INTEGER NOT NULL, state BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS room_log (room TEXT NOT NULL, seq INTEGER NOT NULL, entry BLOB NOT NULL,
    hash BLOB NOT NULL, PRIMARY KEY (room, seq));
CREATE TABLE IF NOT EXISTS room_keys (room TEXT NOT NULL, epoch INTEGER NOT NULL, wrapped BLOB NOT NULL,
    created_ms INTEGER NOT NULL, PRIMARY KEY (room, epoch));
CREATE TABLE IF NOT EXISTS cases (case_id TEXT PRIMARY KEY, version INTEGER NOT NULL, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS approvals (case_id TEXT NOT NULL, version INTEGER NOT NULL, custodian TEXT NOT NULL,
    blob BLOB NOT NULL, PRIMARY KEY (case_id, version, custodian));
CREATE TABLE IF NOT EXISTS nonces (device TEXT NOT NULL, nonce BLOB NOT NULL, ts INTEGER NOT NULL,
    PRIMARY KEY (device, nonce));
CREATE INDEX IF NOT EXISTS nonces_ts ON nonces(ts);
CREATE TABLE IF NOT EXISTS audit_log (idx INTEGER PRIMARY KEY, ts INTEGER NOT NULL, kind TEXT NOT NULL,
    room TEXT, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS audit_room ON audit_log(room, idx);
CREATE INDEX IF NOT EXISTS audit_kind ON audit_log(kind, idx);
CREATE TABLE IF NOT EXISTS audit_checkpoints (size INTEGER PRIMARY KEY, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS escrow (id INTEGER PRIMARY KEY CHECK (id = 1), descriptor BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS escrow_shares (number INTEGER PRIMARY KEY, custodian TEXT NOT NULL, share BLOB NOT NULL)
";

/// The Key Manager's SQLite store.
#[derive(Clone)]
pub struct SqliteKmStore {
    pub(super) pool: SqlitePool,
    pub(super) writer: SqlitePool,
}

impl SqliteKmStore {
    pub async fn open(path: &Path) -> Result<Self> {
        let (pool, writer) = open_pools(path).await?;
        migrate(&writer, KM_DDL).await?;
        directory::migrate_directory(&writer).await?;
        Ok(SqliteKmStore { pool, writer })
    }
}

fn km_device(r: &sqlx::sqlite::SqliteRow) -> Result<KmDeviceRow> {
    Ok(KmDeviceRow {
        device: r.try_get("device")?,
        user: r.try_get("user_id")?,
        cert: r.try_get("cert")?,
        status: r.try_get("status")?,
        issued_at: u(r.try_get("issued_at")?),
    })
}

fn km_user(r: &sqlx::sqlite::SqliteRow) -> Result<KmUserRow> {
    Ok(KmUserRow {
        user: r.try_get("user_id")?,
        roles: r.try_get("roles")?,
        status: r.try_get("status")?,
    })
}

#[async_trait]
impl KmStore for SqliteKmStore {
    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        meta_get(&self.pool, key).await
    }

    async fn init_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        meta_init(&self.writer, key, value).await
    }

    async fn upsert_user(&self, u: &KmUserRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO users (user_id, roles, status) VALUES (?, ?, ?)
             ON CONFLICT(user_id) DO UPDATE SET roles = excluded.roles, status = excluded.status",
        )
        .bind(&u.user)
        .bind(&u.roles)
        .bind(&u.status)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn get_user(&self, user: &str) -> Result<Option<KmUserRow>> {
        let r = sqlx::query("SELECT * FROM users WHERE user_id = ?")
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(km_user).transpose()
    }

    async fn set_user_status(&self, user: &str, status: &str) -> Result<bool> {
        let r = sqlx::query("UPDATE users SET status = ? WHERE user_id = ?")
            .bind(status)
            .bind(user)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn list_users(&self) -> Result<Vec<KmUserRow>> {
        let rows = sqlx::query("SELECT * FROM users ORDER BY user_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(km_user).collect()
    }

    async fn put_code(&self, code_hash: &[u8], user: &str, expires_at: u64) -> Result<()> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        // One live code per user: a new code replaces the old one.
        sqlx::query("DELETE FROM enrol_codes WHERE user_id = ?")
            .bind(user)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO enrol_codes (code_hash, user_id, expires_at) VALUES (?, ?, ?)")
            .bind(code_hash)
            .bind(user)
            .bind(i(expires_at))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn take_code(&self, code_hash: &[u8]) -> Result<Option<(String, u64)>> {
        let r = sqlx::query(
            "DELETE FROM enrol_codes WHERE code_hash = ? RETURNING user_id, expires_at",
        )
        .bind(code_hash)
        .fetch_optional(&self.writer)
        .await?;
        r.map(|r| Ok((r.try_get("user_id")?, u(r.try_get("expires_at")?))))
            .transpose()
    }

    async fn put_device(&self, d: &KmDeviceRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO devices (device, user_id, cert, status, issued_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&d.device)
        .bind(&d.user)
        .bind(&d.cert)
        .bind(&d.status)
        .bind(i(d.issued_at))
        .execute(&self.writer)
        .await
        .map_err(unique("device already enrolled"))?;
        Ok(())
    }

    async fn get_device(&self, device: &str) -> Result<Option<KmDeviceRow>> {
        let r = sqlx::query("SELECT * FROM devices WHERE device = ?")
            .bind(device)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(km_device).transpose()
    }

    async fn devices_of_user(&self, user: &str) -> Result<Vec<KmDeviceRow>> {
        let rows =
            sqlx::query("SELECT * FROM devices WHERE user_id = ? ORDER BY issued_at, device")
                .bind(user)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(km_device).collect()
    }

    async fn set_device_status(&self, device: &str, status: &str) -> Result<bool> {
        let r = sqlx::query("UPDATE devices SET status = ? WHERE device = ?")
            .bind(status)
            .bind(device)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn km_deny_list(&self) -> Result<(Vec<String>, Vec<String>)> {
        let devs = sqlx::query_scalar("SELECT device FROM devices WHERE status != 'active'")
            .fetch_all(&self.pool)
            .await?;
        let users = sqlx::query_scalar("SELECT user_id FROM users WHERE status != 'active'")
            .fetch_all(&self.pool)
            .await?;
        Ok((devs, users))
    }

    async fn get_room(&self, room: &str) -> Result<Option<RoomRow>> {
        let r = sqlx::query("SELECT room, seq, state FROM rooms WHERE room = ?")
            .bind(room)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(room_row).transpose()
    }

    async fn append_logs(&self, batch: &[RoomAppend<'_>]) -> Result<()> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        for a in batch {
            append_room_log(&mut tx, a, false).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get_log_hash(&self, room: &str, seq: u64) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT hash FROM room_log WHERE room = ? AND seq = ?")
                .bind(room)
                .bind(i(seq))
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn km_log(&self, room: &str, from_seq: u64, limit: u32) -> Result<Vec<LogRow>> {
        log_rows(&self.pool, room, from_seq, limit).await
    }

    async fn get_room_key(&self, room: &str, epoch: u64) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT wrapped FROM room_keys WHERE room = ? AND epoch = ?")
                .bind(room)
                .bind(i(epoch))
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn put_room_key(&self, room: &str, epoch: u64, wrapped: &[u8]) -> Result<Vec<u8>> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "INSERT OR IGNORE INTO room_keys (room, epoch, wrapped, created_ms) VALUES (?, ?, ?, ?)",
        )
        .bind(room)
            .bind(i(epoch))
        .bind(wrapped)
        .bind(i(now_ms()))
        .execute(&mut *tx)
        .await?;
        let stored: Vec<u8> =
            sqlx::query_scalar("SELECT wrapped FROM room_keys WHERE room = ? AND epoch = ?")
                .bind(room)
                .bind(i(epoch))
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn list_rooms(&self) -> Result<Vec<RoomRow>> {
        let rows = sqlx::query("SELECT room, seq, state FROM rooms ORDER BY room")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(room_row).collect()
    }

    async fn room_keys_of(&self, room: &str) -> Result<Vec<(u64, u64, bool)>> {
        let rows = sqlx::query(
            "SELECT epoch, created_ms, length(wrapped) = 0 AS shredded FROM room_keys WHERE room = ? ORDER BY epoch",
        )
        .bind(room)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    u(r.try_get("epoch")?),
                    u(r.try_get("created_ms")?),
                    r.try_get("shredded")?,
                ))
            })
            .collect()
    }

    async fn shred_room_key(&self, room: &str, epoch: u64) -> Result<()> {
        sqlx::query("UPDATE room_keys SET wrapped = x'' WHERE room = ? AND epoch = ?")
            .bind(room)
            .bind(i(epoch))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn live_wrapped_keys(&self) -> Result<Vec<(String, u64, Vec<u8>)>> {
        let rows =
            sqlx::query("SELECT room, epoch, wrapped FROM room_keys WHERE length(wrapped) > 0")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("room")?,
                    u(r.try_get("epoch")?),
                    r.try_get("wrapped")?,
                ))
            })
            .collect()
    }

    async fn rewrap_keys(&self, keys: &[(String, u64, Vec<u8>)]) -> Result<()> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        for (room, epoch, w) in keys {
            sqlx::query("UPDATE room_keys SET wrapped = ? WHERE room = ? AND epoch = ? AND length(wrapped) > 0")
                .bind(w)
                .bind(room)
                .bind(i(*epoch))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn km_scrub(&self) -> Result<()> {
        scrub(&self.writer).await
    }

    async fn set_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        meta_set(&self.writer, key, value).await
    }

    async fn put_case(&self, case: &str, version: u32, blob: &[u8]) -> Result<()> {
        sqlx::query("INSERT OR REPLACE INTO cases (case_id, version, blob) VALUES (?, ?, ?)")
            .bind(case)
            .bind(version as i64)
            .bind(blob)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn get_case(&self, case: &str) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT blob FROM cases WHERE case_id = ?")
                .bind(case)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn list_cases(&self) -> Result<Vec<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT blob FROM cases ORDER BY case_id")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn put_approval(
        &self,
        case: &str,
        version: u32,
        custodian: &str,
        blob: &[u8],
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO approvals (case_id, version, custodian, blob) VALUES (?, ?, ?, ?)",
        )
        .bind(case)
        .bind(version as i64)
        .bind(custodian)
        .bind(blob)
        .execute(&self.writer)
        .await
        .map_err(unique("this custodian already approved this case"))?;
        Ok(())
    }

    async fn approvals(&self, case: &str, version: u32) -> Result<Vec<(String, Vec<u8>)>> {
        let rows = sqlx::query(
            "SELECT custodian, blob FROM approvals WHERE case_id = ? AND version = ? ORDER BY custodian",
        )
        .bind(case)
        .bind(version as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("custodian")?, r.try_get("blob")?)))
            .collect()
    }

    async fn init_escrow(&self, descriptor: &[u8], shares: &[(String, u8, Vec<u8>)]) -> Result<()> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let r = sqlx::query("INSERT OR IGNORE INTO escrow (id, descriptor) VALUES (1, ?)")
            .bind(descriptor)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Conflict("escrow is already initialised"));
        }
        for (custodian, number, share) in shares {
            sqlx::query("INSERT INTO escrow_shares (number, custodian, share) VALUES (?, ?, ?)")
                .bind(*number as i64)
                .bind(custodian)
                .bind(share)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get_escrow(&self) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT descriptor FROM escrow WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn escrow_shares_of(&self, custodian: &str) -> Result<Vec<(u8, Vec<u8>)>> {
        let rows = sqlx::query(
            "SELECT number, share FROM escrow_shares WHERE custodian = ? ORDER BY number",
        )
        .bind(custodian)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<i64, _>("number")? as u8, r.try_get("share")?)))
            .collect()
    }

    async fn use_nonce(
        &self,
        device: &str,
        nonce: &[u8],
        ts: u64,
        prune_before: u64,
    ) -> Result<bool> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("DELETE FROM nonces WHERE ts < ?")
            .bind(i(prune_before))
            .execute(&mut *tx)
            .await?;
        let r = sqlx::query("INSERT OR IGNORE INTO nonces (device, nonce, ts) VALUES (?, ?, ?)")
            .bind(device)
            .bind(nonce)
            .bind(i(ts))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }
}
