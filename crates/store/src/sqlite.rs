//! SQLite (WAL) implementations.

use crate::{
    AuditIn, AuditQuery, AuditRow, AuditStore, BlobRow, CaptureMeta, CaptureRow, ConnectionRow,
    DeviceRow, EnvelopeRow, FetchQuery, HitRow, Inserted, KmDeviceRow, KmStore, KmUserRow, LogRow,
    MessageRow, NewMessage, Result, RoomAppend, RoomRow, ServerStore, SideEffect, StoreError,
    VaultStore,
};
use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::path::Path;
use std::time::Duration;

mod directory;

/// Open (creating if needed) a SQLite database in WAL mode with full fsync.
pub async fn open_sqlite(path: &Path, max_conns: u32) -> Result<SqlitePool> {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
        // 32 MiB page cache per connection: index pages of large tables stay
        // in memory instead of being re-read on every random insert.
        .pragma("cache_size", "-32768")
        // Deleted content is overwritten with zeros (retention must destroy,
        // not hide; see `scrub`).
        .pragma("secure_delete", "ON");
    Ok(SqlitePoolOptions::new()
        .max_connections(max_conns)
        .connect_with(opts)
        .await?)
}

/// A store's two pools on one file: readers share eight connections; every
/// write goes through the one writer connection, so concurrent writers queue
/// in this process (in order, without sleeping) instead of contending for
/// SQLite's write lock and backing off in its busy handler, which cost
/// several milliseconds a transaction under load.
pub(crate) async fn open_pools(path: &Path) -> Result<(SqlitePool, SqlitePool)> {
    let writer = open_sqlite(path, 1).await?;
    let readers = open_sqlite(path, 8).await?;
    Ok((readers, writer))
}

// Every transaction here writes, so each starts with BEGIN IMMEDIATE: it takes
// the write lock up front and waits (busy_timeout) for it, instead of failing
// with SQLITE_BUSY when a read lock cannot be upgraded.

pub(crate) async fn migrate(pool: &SqlitePool, ddl: &'static str) -> Result<()> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    for stmt in ddl.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        sqlx::query(stmt).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Map a uniqueness violation to `Conflict(msg)`, anything else to `Backend`.
fn unique(msg: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(msg),
        e => e.into(),
    }
}

/// A value of a `meta (key, value)` table.
/// Fold the WAL into the database and truncate it, so no WAL frame keeps
/// an old page image; with `secure_delete` the database's freed space is
/// already zero. A busy reader is waited for (up to about a second), then
/// it is an error.
pub(crate) async fn scrub(pool: &SqlitePool) -> Result<()> {
    for _ in 0..20 {
        let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(pool)
            .await?;
        if busy == 0 {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err(StoreError::Backend(
        "the WAL could not be truncated (a reader stays busy); retry".into(),
    ))
}

/// A room's membership-log entries from `from_seq` (the server's and the
/// KM's `room_log` tables have the same shape).
async fn log_rows(pool: &SqlitePool, room: &str, from_seq: u64, limit: u32) -> Result<Vec<LogRow>> {
    let rows = sqlx::query(
        "SELECT seq, entry, hash FROM room_log WHERE room = ? AND seq >= ? ORDER BY seq LIMIT ?",
    )
    .bind(room)
    .bind(i(from_seq))
    .bind(limit as i64)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(LogRow {
                seq: u(r.try_get("seq")?),
                entry: r.try_get("entry")?,
                hash: r.try_get("hash")?,
            })
        })
        .collect()
}

/// Append one room's verified entries and its new state inside `tx`, only
/// if the stored state is still at `a.expected_seq` (the server's and the
/// KM's `room_log` and `rooms` tables have the same shape; the server also
/// keeps `room_members`, from `a.members`).
async fn append_room_log(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    a: &RoomAppend<'_>,
    with_members: bool,
) -> Result<()> {
    let Some(last) = a.entries.last() else {
        return Ok(());
    };
    let cur: Option<i64> = sqlx::query_scalar("SELECT seq FROM rooms WHERE room = ?")
        .bind(a.room)
        .fetch_optional(&mut **tx)
        .await?;
    if cur.map(u) != a.expected_seq {
        return Err(StoreError::Conflict(
            "the room's log has moved on; fetch it and retry",
        ));
    }
    for e in a.entries {
        sqlx::query("INSERT INTO room_log (room, seq, entry, hash) VALUES (?, ?, ?, ?)")
            .bind(a.room)
            .bind(i(e.seq))
            .bind(&e.entry)
            .bind(&e.hash)
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query(
        "INSERT INTO rooms (room, seq, state) VALUES (?, ?, ?)
         ON CONFLICT(room) DO UPDATE SET seq = excluded.seq, state = excluded.state",
    )
    .bind(a.room)
    .bind(i(last.seq))
    .bind(a.state)
    .execute(&mut **tx)
    .await?;
    if with_members {
        sqlx::query("DELETE FROM room_members WHERE room = ?")
            .bind(a.room)
            .execute(&mut **tx)
            .await?;
        for m in a.members {
            sqlx::query("INSERT INTO room_members (room, user_id) VALUES (?, ?)")
                .bind(a.room)
                .bind(m)
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

pub(crate) async fn meta_get(pool: &SqlitePool, key: &str) -> Result<Option<Vec<u8>>> {
    Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
        .bind(key)
        .fetch_optional(pool)
        .await?)
}

/// Set a `meta` value once; `Conflict` if it is already set.
pub(crate) async fn meta_init(pool: &SqlitePool, key: &str, value: &[u8]) -> Result<()> {
    let r = sqlx::query("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)")
        .bind(key)
        .bind(value)
        .execute(pool)
        .await?;
    if r.rows_affected() == 0 {
        return Err(StoreError::Conflict("already initialised"));
    }
    Ok(())
}

async fn meta_set(pool: &SqlitePool, key: &str, value: &[u8]) -> Result<()> {
    sqlx::query("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)")
        .bind(key)
        .bind(value)
        .execute(pool)
        .await?;
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn u(v: i64) -> u64 {
    v.max(0) as u64
}

fn i(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

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
    pool: SqlitePool,
    writer: SqlitePool,
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

fn room_row(r: &sqlx::sqlite::SqliteRow) -> Result<RoomRow> {
    Ok(RoomRow {
        room: r.try_get("room")?,
        seq: u(r.try_get("seq")?),
        state: r.try_get("state")?,
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
    pool: SqlitePool,
    writer: SqlitePool,
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

/// `PREFIX VALUES (?, …), …` for `rows` rows of `cols` columns.
fn insert_sql(prefix: &str, cols: usize, rows: usize) -> String {
    let one = format!("({})", placeholders(cols));
    format!("{prefix} VALUES {}", vec![one; rows].join(", "))
}

/// `?, ?, …` (`n` of them).
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// The captures and deletions riding on a batch of audit entries, as a few
/// multi-row statements in the batch's transaction.
async fn apply_side_effects(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    rows: &[AuditIn],
) -> Result<()> {
    let caps: Vec<(u64, &CaptureRow)> = rows
        .iter()
        .filter_map(|r| match &r.side {
            Some(SideEffect::Capture(c)) => Some((r.index, &**c)),
            _ => None,
        })
        .collect();
    for chunk in caps.chunks(100) {
        let sql = insert_sql(
            "INSERT INTO envelopes (message_id, room, ts, ciphertext_sha256, envelope, envelope_sha256,
               received_ms, log_index, device)",
            9,
            chunk.len(),
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (index, c) in chunk {
            q = q
                .bind(&c.message_id)
                .bind(&c.room)
                .bind(i(c.ts))
                .bind(&c.ciphertext_sha256)
                .bind(&c.envelope)
                .bind(&c.envelope_sha256)
                .bind(i(c.received_ms))
                .bind(i(*index))
                .bind(&c.device);
        }
        q.execute(&mut **tx)
            .await
            .map_err(unique("this message is already captured"))?;
    }
    let toks: Vec<(u32, &Vec<u8>, &String)> = caps
        .iter()
        .flat_map(|(_, c)| c.tokens.iter().map(|t| (c.period, t, &c.message_id)))
        .collect();
    for chunk in toks.chunks(300) {
        let sql = insert_sql(
            "INSERT OR IGNORE INTO tokens (period, token, message_id)",
            3,
            chunk.len(),
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (p, t, m) in chunk {
            q = q.bind(*p as i64).bind(*t).bind(*m);
        }
        q.execute(&mut **tx).await?;
    }
    for r in rows {
        if let Some(SideEffect::DeleteEnvelope { message_id }) = &r.side {
            sqlx::query("DELETE FROM tokens WHERE message_id = ?")
                .bind(message_id)
                .execute(&mut **tx)
                .await?;
            sqlx::query("DELETE FROM envelopes WHERE message_id = ?")
                .bind(message_id)
                .execute(&mut **tx)
                .await?;
            // Ids only: the message is never captured again.
            sqlx::query("INSERT OR IGNORE INTO tombstones (message_id, deleted_ms) VALUES (?, ?)")
                .bind(message_id)
                .bind(i(now_ms()))
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A capture policy stored by an older server in `capture_policy` is
    /// a `capture` tenant notice after the next open.
    #[tokio::test]
    async fn legacy_capture_policies_move_to_tenant_notices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(SqliteServerStore::open(&path).await.unwrap());
        let pool = open_sqlite(&path, 1).await.unwrap();
        sqlx::query("INSERT INTO capture_policy (tenant, ts, notice) VALUES ('acme', 5, x'7b7d')")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let s = SqliteServerStore::open(&path).await.unwrap();
        assert_eq!(
            s.tenant_notices("capture").await.unwrap(),
            vec![b"{}".to_vec()]
        );
        // and a newer one replaces it as for any notice
        assert!(
            s.put_tenant_notice("acme", "capture", 6, b"[]")
                .await
                .unwrap()
        );
        assert!(
            !s.put_tenant_notice("acme", "capture", 6, b"[1]")
                .await
                .unwrap()
        );
        assert_eq!(
            s.tenant_notices("capture").await.unwrap(),
            vec![b"[]".to_vec()]
        );
    }

    #[tokio::test]
    async fn server_store_basics() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteServerStore::open(&dir.path().join("s.db"))
            .await
            .unwrap();
        s.put_tenant("acme", b"k1").await.unwrap();
        s.put_tenant("acme", b"k1").await.unwrap();
        assert!(matches!(
            s.put_tenant("acme", b"k2").await,
            Err(StoreError::Conflict(_))
        ));
        let e = LogRow {
            seq: 0,
            entry: b"e0".to_vec(),
            hash: b"h0".to_vec(),
        };
        s.append_log("r1", &e, b"st", &["a@acme".into()])
            .await
            .unwrap();
        // replaying seq 0 or skipping ahead conflicts and writes nothing
        assert!(s.append_log("r1", &e, b"x", &[]).await.is_err());
        let e2 = LogRow {
            seq: 2,
            entry: b"e2".to_vec(),
            hash: b"h2".to_vec(),
        };
        assert!(s.append_log("r1", &e2, b"x", &[]).await.is_err());
        assert_eq!(s.get_room("r1").await.unwrap().unwrap().state, b"st");
        assert_eq!(s.rooms_of_user("a@acme").await.unwrap().len(), 1);
        let m = NewMessage {
            room: "r1".into(),
            msg_id: "m1".into(),
            epoch: 0,
            device: "d".into(),
            ts: 1,
            header: b"h".to_vec(),
            ciphertext: b"c".to_vec(),
            sig: b"s".to_vec(),
        };
        let r = s.insert_messages(&[m.clone(), m.clone()]).await.unwrap();
        assert!(matches!(r[0], Inserted::Seq(_)));
        assert_eq!(r[1], Inserted::Duplicate);
        assert_eq!(s.history("r1", u64::MAX, 10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn km_store_codes_and_keys() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteKmStore::open(&dir.path().join("k.db")).await.unwrap();
        s.put_code(b"h", "a@acme", 10).await.unwrap();
        assert_eq!(
            s.take_code(b"h").await.unwrap(),
            Some(("a@acme".into(), 10))
        );
        assert_eq!(
            s.take_code(b"h").await.unwrap(),
            None,
            "codes are single use"
        );
        let k1 = s.put_room_key("r", 0, b"w1").await.unwrap();
        let k2 = s.put_room_key("r", 0, b"w2").await.unwrap();
        assert_eq!(k1, k2, "first key wins");
        assert!(s.use_nonce("d", b"n", 5, 0).await.unwrap());
        assert!(!s.use_nonce("d", b"n", 5, 0).await.unwrap());
        s.init_meta("x", b"1").await.unwrap();
        assert!(s.init_meta("x", b"2").await.is_err());
    }
}

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
    pool: SqlitePool,
    writer: SqlitePool,
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
