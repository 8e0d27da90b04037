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

mod audit;
mod directory;
mod km;
mod server;
mod vault;

pub use km::SqliteKmStore;
pub use server::SqliteServerStore;
pub use vault::SqliteVaultStore;

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

/// A room's row (server and KM keep the same table shape).
fn room_row(r: &sqlx::sqlite::SqliteRow) -> Result<RoomRow> {
    Ok(RoomRow {
        room: r.try_get("room")?,
        seq: u(r.try_get("seq")?),
        state: r.try_get("state")?,
    })
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
