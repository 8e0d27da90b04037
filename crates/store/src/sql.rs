//! The stores on SQL, one implementation for SQLite and PostgreSQL (see
//! `db.rs`). A store type is a [`Db`] and a role; what two stores share (a
//! room's membership log, the audit log, `meta`) is implemented once here
//! and picked up by each store through a marker trait.

use crate::db::{Backend, Db, Sql, i, now_ms, runs, u, unique};
use crate::{
    AuditIn, CaptureRow, LogRow, Result, RoomAppend, RoomLogStore, RoomRow, SideEffect, StoreError,
};
use async_trait::async_trait;
use cloister_proto::{DeviceId, MessageId, RoomId, TenantId, UserId};
use sqlx::Row;
use sqlx::any::AnyRow;

mod audit;
mod directory;
mod km;
mod mls;
mod server;
mod vault;

pub use km::SqlKmStore;
pub use server::SqlServerStore;
pub use vault::SqlVaultStore;

pub(crate) mod sealed {
    /// A store made of one database.
    pub trait HasDb {
        fn db(&self) -> &crate::db::Db;
    }
    /// A store that keeps rooms' membership logs (`rooms`, `room_log`).
    pub trait SqlRoomLog: HasDb {
        /// Whether it also keeps the member index (`room_members`).
        const MEMBER_INDEX: bool;
    }
    /// A store that keeps an audit log (`audit_log`, `audit_checkpoints`).
    pub trait SqlAudit: HasDb {}
}
use sealed::{HasDb, SqlRoomLog};

/// A room id as stored (hex); a malformed one is corruption, not input.
fn room_id(s: &str) -> Result<RoomId> {
    s.parse()
        .map_err(|_| StoreError::Backend(format!("corrupt room id in the database: {s:?}")))
}

/// A room's row (server and KM keep the same table shape).
fn room_row(r: &AnyRow) -> Result<RoomRow> {
    Ok(RoomRow {
        room: room_id(&r.try_get::<String, _>("room")?)?,
        seq: u(r.try_get("seq")?),
        state: r.try_get("state")?,
    })
}

#[async_trait]
impl<T: HasDb + Send + Sync + 'static> crate::Ping for T {
    async fn ping(&self) -> Result<()> {
        self.db().ping().await
    }
}

/// The one room-log store: the server and the KM keep a room's verified
/// membership log and replayed state in the same tables, written the same
/// way.
#[async_trait]
impl<T: SqlRoomLog + Send + Sync + 'static> RoomLogStore for T {
    async fn get_room(&self, room: &RoomId) -> Result<Option<RoomRow>> {
        let r = sqlx::query("SELECT room, seq, state FROM rooms WHERE room = $1")
            .bind(room.to_hex())
            .fetch_optional(&self.db().readers)
            .await?;
        r.as_ref().map(room_row).transpose()
    }

    async fn append_logs(&self, batch: &[RoomAppend<'_>]) -> Result<()> {
        let db = self.db();
        let mut tx = db.begin().await?;
        for a in batch {
            append_room_log(db, &mut tx, a, T::MEMBER_INDEX).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn room_log(&self, room: &RoomId, from_seq: u64, limit: u32) -> Result<Vec<LogRow>> {
        let rows = sqlx::query(
            "SELECT seq, entry, hash FROM room_log WHERE room = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
        )
        .bind(room.to_hex())
        .bind(i(from_seq))
        .bind(limit as i64)
        .fetch_all(&self.db().readers)
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

    async fn room_log_hash(&self, room: &RoomId, seq: u64) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT hash FROM room_log WHERE room = $1 AND seq = $2")
                .bind(room.to_hex())
                .bind(i(seq))
                .fetch_optional(&self.db().readers)
                .await?,
        )
    }
}

const MOVED_ON: &str = "the room's log has moved on; fetch it and retry";

/// Append one room's verified entries and its new state inside `tx`, only
/// if the stored state is still at `a.expected_seq`. Two writers racing on
/// PostgreSQL: the row lock orders them on an existing room, the log's
/// primary key on a new one; the loser gets `Conflict`.
async fn append_room_log(
    db: &Db,
    tx: &mut sqlx::AnyConnection,
    a: &RoomAppend<'_>,
    with_members: bool,
) -> Result<()> {
    let Some(last) = a.entries.last() else {
        return Ok(());
    };
    let room = a.room.to_hex();
    let cur: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT seq FROM rooms WHERE room = $1{}",
        db.for_update()
    )))
    .bind(&room)
    .fetch_optional(&mut *tx)
    .await?;
    if cur.map(u) != a.expected_seq {
        return Err(StoreError::Conflict(MOVED_ON));
    }
    for e in a.entries {
        sqlx::query("INSERT INTO room_log (room, seq, entry, hash) VALUES ($1, $2, $3, $4)")
            .bind(&room)
            .bind(i(e.seq))
            .bind(&e.entry)
            .bind(&e.hash)
            .execute(&mut *tx)
            .await
            .map_err(unique(MOVED_ON))?;
    }
    sqlx::query(
        "INSERT INTO rooms (room, seq, state) VALUES ($1, $2, $3)
         ON CONFLICT (room) DO UPDATE SET seq = excluded.seq, state = excluded.state",
    )
    .bind(&room)
    .bind(i(last.seq))
    .bind(a.state)
    .execute(&mut *tx)
    .await?;
    if with_members {
        sqlx::query("DELETE FROM room_members WHERE room = $1")
            .bind(&room)
            .execute(&mut *tx)
            .await?;
        for chunk in runs(a.members, 256) {
            let q = Sql::insert(
                Backend::of(tx),
                "INSERT INTO room_members (room, user_id)",
                2,
                chunk.len(),
            );
            let mut q = sqlx::query(q.build());
            for m in chunk {
                q = q.bind(&room).bind(m);
            }
            q.execute(&mut *tx).await?;
        }
    }
    Ok(())
}

/// A value of a `meta (key, value)` table.
pub(crate) async fn meta_get(db: &Db, key: &str) -> Result<Option<Vec<u8>>> {
    Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
        .bind(key)
        .fetch_optional(&db.readers)
        .await?)
}

/// Set a `meta` value once; `Conflict` if it is already set.
pub(crate) async fn meta_init(db: &Db, key: &str, value: &[u8]) -> Result<()> {
    let r = sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(key)
        .bind(value)
        .execute(&db.writer)
        .await?;
    if r.rows_affected() == 0 {
        return Err(StoreError::Conflict("already initialised"));
    }
    Ok(())
}

/// Set (or replace) a `meta` value.
pub(crate) async fn meta_set(db: &Db, key: &str, value: &[u8]) -> Result<()> {
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES ($1, $2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(key)
    .bind(value)
    .execute(&db.writer)
    .await?;
    Ok(())
}

/// The captures and deletions riding on a batch of audit entries, as a few
/// multi-row statements in the batch's transaction.
async fn apply_side_effects(tx: &mut sqlx::AnyConnection, rows: &[AuditIn]) -> Result<()> {
    let caps: Vec<(u64, &CaptureRow)> = rows
        .iter()
        .filter_map(|r| match &r.side {
            Some(SideEffect::Capture(c)) => Some((r.index, &**c)),
            _ => None,
        })
        .collect();
    for chunk in runs(&caps, 1024) {
        let sql = Sql::insert(
            Backend::of(tx),
            "INSERT INTO envelopes (message_id, room, ts, ciphertext_sha256, envelope, envelope_sha256,
               received_ms, log_index, device, generation)",
            10,
            chunk.len(),
        );
        let mut q = sqlx::query(sql.build());
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
                .bind(&c.device)
                .bind(i64::from(c.generation));
        }
        q.execute(&mut *tx)
            .await
            .map_err(unique("this message is already captured"))?;
    }
    let mut toks: Vec<(u32, &Vec<u8>, &String)> = caps
        .iter()
        .flat_map(|(_, c)| c.tokens.iter().map(|t| (c.period, t, &c.message_id)))
        .collect();
    // One statement must not name a row twice on PostgreSQL (ON CONFLICT
    // cannot affect a row a second time).
    toks.sort();
    toks.dedup();
    for chunk in runs(&toks, 4096) {
        let mut sql = Sql::insert(
            Backend::of(tx),
            "INSERT INTO tokens (period, token, message_id)",
            3,
            chunk.len(),
        );
        sql.push(" ON CONFLICT DO NOTHING");
        let mut q = sqlx::query(sql.build());
        for (p, t, m) in chunk {
            q = q.bind(*p as i64).bind(*t).bind(*m);
        }
        q.execute(&mut *tx).await?;
    }
    for r in rows {
        if let Some(SideEffect::Reseal(x)) = &r.side {
            let done = sqlx::query(
                "UPDATE envelopes SET envelope = $1, envelope_sha256 = $2, generation = $3,
                   log_index = $4 WHERE message_id = $5 AND envelope_sha256 = $6",
            )
            .bind(&x.envelope)
            .bind(&x.envelope_sha256)
            .bind(i64::from(x.generation))
            .bind(i(r.index))
            .bind(&x.message_id)
            .bind(&x.from_sha256)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                return Err(StoreError::Conflict(
                    "the envelope changed or was deleted before it was re-sealed",
                ));
            }
        }
        if let Some(SideEffect::DeleteEnvelope { message_id }) = &r.side {
            sqlx::query("DELETE FROM tokens WHERE message_id = $1")
                .bind(message_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM envelopes WHERE message_id = $1")
                .bind(message_id)
                .execute(&mut *tx)
                .await?;
            // Ids only: the message is never captured again.
            sqlx::query(
                "INSERT INTO tombstones (message_id, deleted_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(message_id)
            .bind(i(now_ms()))
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}
