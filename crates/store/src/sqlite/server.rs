//! The messaging server's store on SQLite.

use super::*;

// `capture_policy` is the table capture notices had before they joined the
// other KM notices in `tenant_notices`; a database that still has rows there
// has them moved at open.
const SERVER_DDL: &str = "
CREATE TABLE IF NOT EXISTS tenants (tenant TEXT PRIMARY KEY, km_pk BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS devices (device TEXT PRIMARY KEY, tenant TEXT NOT NULL, user_id TEXT NOT NULL,
    cert BLOB NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS devices_user ON devices(user_id);
CREATE TABLE IF NOT EXISTS disabled_users (user_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS tenant_notices (tenant TEXT NOT NULL, kind TEXT NOT NULL, version INTEGER NOT NULL,
    notice BLOB NOT NULL, PRIMARY KEY (tenant, kind));
CREATE TABLE IF NOT EXISTS connections (id TEXT PRIMARY KEY, from_user TEXT NOT NULL, to_user TEXT NOT NULL,
    request BLOB NOT NULL, answer BLOB, removal BLOB, created INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS connections_from ON connections(from_user);
CREATE INDEX IF NOT EXISTS connections_to ON connections(to_user);
CREATE TABLE IF NOT EXISTS capture_policy (tenant TEXT PRIMARY KEY, ts INTEGER NOT NULL, notice BLOB NOT NULL);
INSERT OR IGNORE INTO tenant_notices (tenant, kind, version, notice)
    SELECT tenant, 'capture', ts, notice FROM capture_policy;
DELETE FROM capture_policy;
CREATE TABLE IF NOT EXISTS room_directory (room TEXT PRIMARY KEY, tenant TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS room_tenant (room TEXT PRIMARY KEY, tenant TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS room_tenant_tenant ON room_tenant(tenant);
CREATE TABLE IF NOT EXISTS verdicts (room TEXT NOT NULL, message_id TEXT NOT NULL, device TEXT NOT NULL,
    verdict BLOB NOT NULL, PRIMARY KEY (room, message_id, device));
CREATE INDEX IF NOT EXISTS room_directory_tenant ON room_directory(tenant);
CREATE TABLE IF NOT EXISTS user_standing (user_id TEXT PRIMARY KEY, disabled INTEGER NOT NULL, ts INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS shredded_notices (room TEXT NOT NULL, notice BLOB NOT NULL, PRIMARY KEY (room, notice)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rooms (room TEXT PRIMARY KEY, seq INTEGER NOT NULL, state BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS room_log (room TEXT NOT NULL, seq INTEGER NOT NULL, entry BLOB NOT NULL,
    hash BLOB NOT NULL, PRIMARY KEY (room, seq));
CREATE TABLE IF NOT EXISTS room_members (room TEXT NOT NULL, user_id TEXT NOT NULL, PRIMARY KEY (user_id, room));
CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, room TEXT NOT NULL,
    msg_id TEXT NOT NULL UNIQUE, epoch INTEGER NOT NULL, device TEXT NOT NULL, ts INTEGER NOT NULL,
    header BLOB NOT NULL, ciphertext BLOB NOT NULL, sig BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS messages_room ON messages(room, seq);
CREATE TABLE IF NOT EXISTS blobs (id TEXT PRIMARY KEY, room TEXT NOT NULL, device TEXT NOT NULL, size INTEGER NOT NULL)
";

/// The messaging server's SQLite store.
#[derive(Clone)]
pub struct SqliteServerStore {
    pub(super) pool: SqlitePool,
    pub(super) writer: SqlitePool,
}

impl SqliteServerStore {
    pub async fn open(path: &Path) -> Result<Self> {
        let (pool, writer) = open_pools(path).await?;
        migrate(&writer, SERVER_DDL).await?;
        Ok(SqliteServerStore { pool, writer })
    }
}

fn connection_row(r: &sqlx::sqlite::SqliteRow) -> Result<ConnectionRow> {
    Ok(ConnectionRow {
        id: r.try_get("id")?,
        request: r.try_get("request")?,
        answer: r.try_get("answer")?,
        removal: r.try_get("removal")?,
    })
}

fn device_row(r: &sqlx::sqlite::SqliteRow) -> Result<DeviceRow> {
    Ok(DeviceRow {
        device: r.try_get("device")?,
        tenant: r.try_get("tenant")?,
        user: r.try_get("user_id")?,
        cert: r.try_get("cert")?,
        revoked: r.try_get::<i64, _>("revoked")? != 0,
    })
}

#[async_trait]
impl ServerStore for SqliteServerStore {
    async fn put_tenant(&self, tenant: &str, km_pk: &[u8]) -> Result<()> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let existing: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT km_pk FROM tenants WHERE tenant = ?")
                .bind(tenant)
                .fetch_optional(&mut *tx)
                .await?;
        match existing {
            Some(k) if k == km_pk => return Ok(()),
            Some(_) => {
                return Err(StoreError::Conflict(
                    "tenant already registered with another KM key",
                ));
            }
            None => {}
        }
        sqlx::query("INSERT INTO tenants (tenant, km_pk) VALUES (?, ?)")
            .bind(tenant)
            .bind(km_pk)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_tenant(&self, tenant: &str) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT km_pk FROM tenants WHERE tenant = ?")
                .bind(tenant)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn put_device(&self, d: &DeviceRow) -> Result<()> {
        // A revoked device stays revoked even if its certificate is presented again.
        sqlx::query(
            "INSERT INTO devices (device, tenant, user_id, cert, revoked) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT(device) DO UPDATE SET cert = excluded.cert WHERE devices.revoked = 0",
        )
        .bind(&d.device)
        .bind(&d.tenant)
        .bind(&d.user)
        .bind(&d.cert)
        .bind(d.revoked as i64)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn get_device(&self, device: &str) -> Result<Option<DeviceRow>> {
        let r = sqlx::query("SELECT * FROM devices WHERE device = ?")
            .bind(device)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(device_row).transpose()
    }

    async fn devices_of_user(&self, user: &str) -> Result<Vec<DeviceRow>> {
        let rows = sqlx::query("SELECT * FROM devices WHERE user_id = ? ORDER BY device")
            .bind(user)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(device_row).collect()
    }

    async fn revoke_device(&self, device: &str) -> Result<()> {
        sqlx::query("UPDATE devices SET revoked = 1 WHERE device = ?")
            .bind(device)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn disable_user(&self, user: &str) -> Result<()> {
        sqlx::query("INSERT OR IGNORE INTO disabled_users (user_id) VALUES (?)")
            .bind(user)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn set_user_standing(&self, user: &str, disabled: bool, ts: u64) -> Result<bool> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let last: Option<i64> =
            sqlx::query_scalar("SELECT ts FROM user_standing WHERE user_id = ?")
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
        if last.is_some_and(|t| t >= i(ts)) {
            return Ok(false);
        }
        sqlx::query(
            "INSERT OR REPLACE INTO user_standing (user_id, disabled, ts) VALUES (?, ?, ?)",
        )
        .bind(user)
        .bind(disabled as i64)
        .bind(i(ts))
        .execute(&mut *tx)
        .await?;
        let q = if disabled {
            "INSERT OR IGNORE INTO disabled_users (user_id) VALUES (?)"
        } else {
            "DELETE FROM disabled_users WHERE user_id = ?"
        };
        sqlx::query(q).bind(user).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn set_listed(&self, room: &str, tenant: &str, listed: bool) -> Result<()> {
        let q = if listed {
            sqlx::query("INSERT OR REPLACE INTO room_directory (room, tenant) VALUES (?, ?)")
                .bind(room)
                .bind(tenant)
        } else {
            sqlx::query("DELETE FROM room_directory WHERE room = ?").bind(room)
        };
        q.execute(&self.writer).await?;
        Ok(())
    }

    async fn listed_rooms(&self, tenant: &str) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT room FROM room_directory WHERE tenant = ? ORDER BY room")
                .bind(tenant)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn set_room_tenant(&self, room: &str, tenant: &str) -> Result<()> {
        sqlx::query("INSERT OR IGNORE INTO room_tenant (room, tenant) VALUES (?, ?)")
            .bind(room)
            .bind(tenant)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn tenant_rooms(&self, tenant: &str) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT room FROM room_tenant WHERE tenant = ? ORDER BY room")
                .bind(tenant)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn put_verdict(
        &self,
        room: &str,
        message_id: &str,
        device: &str,
        v: &[u8],
    ) -> Result<()> {
        sqlx::query(
            "INSERT OR REPLACE INTO verdicts (room, message_id, device, verdict) VALUES (?, ?, ?, ?)",
        )
        .bind(room)
        .bind(message_id)
        .bind(device)
        .bind(v)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn verdicts(&self, room: &str, message_id: &str) -> Result<Vec<Vec<u8>>> {
        Ok(sqlx::query_scalar(
            "SELECT verdict FROM verdicts WHERE room = ? AND message_id = ? ORDER BY device",
        )
        .bind(room)
        .bind(message_id)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn put_tenant_notice(
        &self,
        tenant: &str,
        kind: &str,
        version: u64,
        notice: &[u8],
    ) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO tenant_notices (tenant, kind, version, notice) VALUES (?, ?, ?, ?)
             ON CONFLICT(tenant, kind) DO UPDATE SET version = excluded.version, notice = excluded.notice
             WHERE excluded.version > tenant_notices.version",
        )
        .bind(tenant)
        .bind(kind)
        .bind(i(version))
        .bind(notice)
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn put_connection(&self, id: &str, from: &str, to: &str, request: &[u8]) -> Result<bool> {
        let r = sqlx::query(
            "INSERT OR IGNORE INTO connections (id, from_user, to_user, request, created)
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(from)
        .bind(to)
        .bind(request)
        .bind(i(now_ms()))
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn set_connection_answer(&self, id: &str, answer: &[u8]) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE connections SET answer = ? WHERE id = ? AND answer IS NULL AND removal IS NULL",
        )
        .bind(answer)
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn set_connection_removal(&self, id: &str, removal: &[u8]) -> Result<bool> {
        let r = sqlx::query("UPDATE connections SET removal = ? WHERE id = ? AND removal IS NULL")
            .bind(removal)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn get_connection(&self, id: &str) -> Result<Option<ConnectionRow>> {
        let r = sqlx::query("SELECT id, request, answer, removal FROM connections WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(connection_row).transpose()
    }

    async fn connections_of(&self, user: &str) -> Result<Vec<ConnectionRow>> {
        let rows = sqlx::query(
            "SELECT id, request, answer, removal FROM connections
             WHERE from_user = ? OR to_user = ? ORDER BY created, id",
        )
        .bind(user)
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(connection_row).collect()
    }

    async fn tenant_notices(&self, kind: &str) -> Result<Vec<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT notice FROM tenant_notices WHERE kind = ?")
                .bind(kind)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn is_user_disabled(&self, user: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM disabled_users WHERE user_id = ?")
            .bind(user)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    async fn deny_list(&self) -> Result<(Vec<String>, Vec<String>)> {
        let devs = sqlx::query_scalar("SELECT device FROM devices WHERE revoked = 1")
            .fetch_all(&self.pool)
            .await?;
        let users = sqlx::query_scalar("SELECT user_id FROM disabled_users")
            .fetch_all(&self.pool)
            .await?;
        Ok((devs, users))
    }

    async fn append_logs(&self, batch: &[RoomAppend<'_>]) -> Result<()> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        for a in batch {
            append_room_log(&mut tx, a, true).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get_log(&self, room: &str, from_seq: u64, limit: u32) -> Result<Vec<LogRow>> {
        log_rows(&self.pool, room, from_seq, limit).await
    }

    async fn get_room(&self, room: &str) -> Result<Option<RoomRow>> {
        let r = sqlx::query("SELECT room, seq, state FROM rooms WHERE room = ?")
            .bind(room)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(room_row).transpose()
    }

    async fn rooms_of_user(&self, user: &str) -> Result<Vec<RoomRow>> {
        let rows = sqlx::query(
            "SELECT r.room, r.seq, r.state FROM room_members m JOIN rooms r ON r.room = m.room
             WHERE m.user_id = ? ORDER BY r.room",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(room_row).collect()
    }

    async fn insert_messages(&self, batch: &[NewMessage]) -> Result<Vec<Inserted>> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let mut out = Vec::with_capacity(batch.len());
        for m in batch {
            let seq: Option<i64> = sqlx::query_scalar(
                "INSERT INTO messages (room, msg_id, epoch, device, ts, header, ciphertext, sig)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(msg_id) DO NOTHING RETURNING seq",
            )
            .bind(&m.room)
            .bind(&m.msg_id)
            .bind(i(m.epoch))
            .bind(&m.device)
            .bind(i(m.ts))
            .bind(&m.header)
            .bind(&m.ciphertext)
            .bind(&m.sig)
            .fetch_optional(&mut *tx)
            .await?;
            out.push(match seq {
                Some(s) => Inserted::Seq(u(s)),
                None => Inserted::Duplicate,
            });
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn history(&self, room: &str, before: u64, limit: u32) -> Result<Vec<MessageRow>> {
        let rows = sqlx::query(
            "SELECT seq, header, ciphertext, sig FROM messages WHERE room = ? AND seq < ?
             ORDER BY seq DESC LIMIT ?",
        )
        .bind(room)
        .bind(i(before))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(MessageRow {
                    seq: u(r.try_get("seq")?),
                    header: r.try_get("header")?,
                    ciphertext: r.try_get("ciphertext")?,
                    sig: r.try_get("sig")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }

    async fn add_shredded(&self, room: &str, notice: &[u8]) -> Result<()> {
        sqlx::query("INSERT OR IGNORE INTO shredded_notices (room, notice) VALUES (?, ?)")
            .bind(room)
            .bind(notice)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn shredded_notices(&self, room: &str) -> Result<Vec<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT notice FROM shredded_notices WHERE room = ?")
                .bind(room)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn put_blob(&self, b: &BlobRow) -> Result<()> {
        sqlx::query("INSERT INTO blobs (id, room, device, size) VALUES (?, ?, ?, ?)")
            .bind(&b.id)
            .bind(&b.room)
            .bind(&b.device)
            .bind(i(b.size))
            .execute(&self.writer)
            .await
            .map_err(unique("blob id already used"))?;
        Ok(())
    }

    async fn get_blob(&self, id: &str) -> Result<Option<BlobRow>> {
        let r = sqlx::query("SELECT id, room, device, size FROM blobs WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.map(|r| {
            Ok(BlobRow {
                id: r.try_get("id")?,
                room: r.try_get("room")?,
                device: r.try_get("device")?,
                size: u(r.try_get("size")?),
            })
        })
        .transpose()
    }
}
