//! The messaging server's store.

use super::*;
use crate::db::Role;
use crate::{BlobRow, ConnectionRow, DeviceRow, Inserted, MessageRow, NewMessage, ServerStore};

/// Messages per multi-row insert statement (8 parameters each).
const INSERT_ROWS: usize = 64;

/// The messaging server's store (SQLite or PostgreSQL).
#[derive(Clone)]
pub struct SqlServerStore {
    db: Db,
}

impl SqlServerStore {
    /// Open the database at `url` (`sqlite://…` or `postgres://…`),
    /// applying the server's migrations.
    pub async fn open(url: &str) -> Result<Self> {
        Ok(SqlServerStore {
            db: Db::open(url, Role::Server).await?,
        })
    }
}

impl HasDb for SqlServerStore {
    fn db(&self) -> &Db {
        &self.db
    }
}

impl SqlRoomLog for SqlServerStore {
    const MEMBER_INDEX: bool = true;
}

fn connection_row(r: &AnyRow) -> Result<ConnectionRow> {
    Ok(ConnectionRow {
        id: r.try_get("id")?,
        request: r.try_get("request")?,
        answer: r.try_get("answer")?,
        removal: r.try_get("removal")?,
    })
}

fn device_row(r: &AnyRow) -> Result<DeviceRow> {
    Ok(DeviceRow {
        device: r.try_get("device")?,
        tenant: r.try_get("tenant")?,
        user: r.try_get("user_id")?,
        cert: r.try_get("cert")?,
        revoked: r.try_get::<i64, _>("revoked")? != 0,
    })
}

#[async_trait]
impl ServerStore for SqlServerStore {
    async fn server_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        meta_get(&self.db, key).await
    }

    async fn init_server_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        meta_init(&self.db, key, value).await
    }

    async fn use_login_nonce(&self, nonce: &[u8], ts: u64, prune_before: u64) -> Result<bool> {
        let mut tx = self.db.begin().await?;
        sqlx::query("DELETE FROM login_nonces WHERE ts < $1")
            .bind(i(prune_before))
            .execute(&mut *tx)
            .await?;
        let r = sqlx::query(
            "INSERT INTO login_nonces (nonce, ts) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(nonce)
        .bind(i(ts))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    async fn put_tenant(&self, tenant: &TenantId, km_pk: &[u8]) -> Result<()> {
        // Insert-if-absent, then compare: two nodes registering the same
        // tenant at once both succeed; another key conflicts.
        sqlx::query("INSERT INTO tenants (tenant, km_pk) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(tenant.as_str())
            .bind(km_pk)
            .execute(&self.db.writer)
            .await?;
        match self.get_tenant(tenant).await? {
            Some(k) if k == km_pk => Ok(()),
            _ => Err(StoreError::Conflict(
                "tenant already registered with another KM key",
            )),
        }
    }

    async fn get_tenant(&self, tenant: &TenantId) -> Result<Option<Vec<u8>>> {
        let tenant = tenant.as_str();
        Ok(
            sqlx::query_scalar("SELECT km_pk FROM tenants WHERE tenant = $1")
                .bind(tenant)
                .fetch_optional(&self.db.readers)
                .await?,
        )
    }

    async fn put_device(&self, d: &DeviceRow) -> Result<()> {
        // A revoked device stays revoked even if its certificate is presented again.
        sqlx::query(
            "INSERT INTO devices (device, tenant, user_id, cert, revoked) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (device) DO UPDATE SET cert = excluded.cert WHERE devices.revoked = 0",
        )
        .bind(&d.device)
        .bind(&d.tenant)
        .bind(&d.user)
        .bind(&d.cert)
        .bind(d.revoked as i64)
        .execute(&self.db.writer)
        .await?;
        Ok(())
    }

    async fn get_device(&self, device: &DeviceId) -> Result<Option<DeviceRow>> {
        let device_hex = device.to_hex();
        let device = device_hex.as_str();
        let r = sqlx::query("SELECT * FROM devices WHERE device = $1")
            .bind(device)
            .fetch_optional(&self.db.readers)
            .await?;
        r.as_ref().map(device_row).transpose()
    }

    async fn devices_of_user(&self, user: &UserId) -> Result<Vec<DeviceRow>> {
        let user = user.as_str();
        let rows = sqlx::query("SELECT * FROM devices WHERE user_id = $1 ORDER BY device")
            .bind(user)
            .fetch_all(&self.db.readers)
            .await?;
        rows.iter().map(device_row).collect()
    }

    async fn revoke_device(&self, device: &DeviceId) -> Result<()> {
        let device_hex = device.to_hex();
        let device = device_hex.as_str();
        sqlx::query("UPDATE devices SET revoked = 1 WHERE device = $1")
            .bind(device)
            .execute(&self.db.writer)
            .await?;
        Ok(())
    }

    async fn disable_user(&self, user: &UserId) -> Result<()> {
        let user = user.as_str();
        sqlx::query("INSERT INTO disabled_users (user_id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(user)
            .execute(&self.db.writer)
            .await?;
        Ok(())
    }

    async fn set_user_standing(&self, user: &UserId, disabled: bool, ts: u64) -> Result<bool> {
        let user = user.as_str();
        let mut tx = self.db.begin().await?;
        // Only a newer notice moves the standing (the upsert's condition is
        // checked under the row's lock, so racing nodes cannot reorder it).
        let r = sqlx::query(
            "INSERT INTO user_standing (user_id, disabled, ts) VALUES ($1, $2, $3)
             ON CONFLICT (user_id) DO UPDATE SET disabled = excluded.disabled, ts = excluded.ts
             WHERE user_standing.ts < excluded.ts",
        )
        .bind(user)
        .bind(disabled as i64)
        .bind(i(ts))
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        let q = if disabled {
            "INSERT INTO disabled_users (user_id) VALUES ($1) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM disabled_users WHERE user_id = $1"
        };
        sqlx::query(q).bind(user).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn set_listed(&self, room: &RoomId, tenant: &TenantId, listed: bool) -> Result<()> {
        let tenant = tenant.as_str();
        let room_hex = room.to_hex();
        let room = room_hex.as_str();
        let q = if listed {
            sqlx::query(
                "INSERT INTO room_directory (room, tenant) VALUES ($1, $2)
                 ON CONFLICT (room) DO UPDATE SET tenant = excluded.tenant",
            )
            .bind(room)
            .bind(tenant)
        } else {
            sqlx::query("DELETE FROM room_directory WHERE room = $1").bind(room)
        };
        q.execute(&self.db.writer).await?;
        Ok(())
    }

    async fn listed_rooms(&self, tenant: &TenantId) -> Result<Vec<String>> {
        let tenant = tenant.as_str();
        Ok(
            sqlx::query_scalar("SELECT room FROM room_directory WHERE tenant = $1 ORDER BY room")
                .bind(tenant)
                .fetch_all(&self.db.readers)
                .await?,
        )
    }

    async fn set_room_tenant(&self, room: &RoomId, tenant: &TenantId) -> Result<()> {
        let tenant = tenant.as_str();
        let room_hex = room.to_hex();
        let room = room_hex.as_str();
        sqlx::query(
            "INSERT INTO room_tenant (room, tenant) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(room)
        .bind(tenant)
        .execute(&self.db.writer)
        .await?;
        Ok(())
    }

    async fn tenant_rooms(&self, tenant: &TenantId) -> Result<Vec<String>> {
        let tenant = tenant.as_str();
        Ok(
            sqlx::query_scalar("SELECT room FROM room_tenant WHERE tenant = $1 ORDER BY room")
                .bind(tenant)
                .fetch_all(&self.db.readers)
                .await?,
        )
    }

    async fn put_verdict(
        &self,
        room: &RoomId,
        message_id: &MessageId,
        device: &DeviceId,
        v: &[u8],
    ) -> Result<()> {
        let device_hex = device.to_hex();
        let device = device_hex.as_str();
        let room_hex = room.to_hex();
        let room = room_hex.as_str();
        let message_id_hex = message_id.to_hex();
        let message_id = message_id_hex.as_str();
        sqlx::query(
            "INSERT INTO verdicts (room, message_id, device, verdict) VALUES ($1, $2, $3, $4)
             ON CONFLICT (room, message_id, device) DO UPDATE SET verdict = excluded.verdict",
        )
        .bind(room)
        .bind(message_id)
        .bind(device)
        .bind(v)
        .execute(&self.db.writer)
        .await?;
        Ok(())
    }

    async fn verdicts(&self, room: &RoomId, message_id: &MessageId) -> Result<Vec<Vec<u8>>> {
        let room_hex = room.to_hex();
        let room = room_hex.as_str();
        let message_id_hex = message_id.to_hex();
        let message_id = message_id_hex.as_str();
        Ok(sqlx::query_scalar(
            "SELECT verdict FROM verdicts WHERE room = $1 AND message_id = $2 ORDER BY device",
        )
        .bind(room)
        .bind(message_id)
        .fetch_all(&self.db.readers)
        .await?)
    }

    async fn put_tenant_notice(
        &self,
        tenant: &TenantId,
        kind: &str,
        version: u64,
        notice: &[u8],
    ) -> Result<bool> {
        let tenant = tenant.as_str();
        let r = sqlx::query(
            "INSERT INTO tenant_notices (tenant, kind, version, notice) VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant, kind) DO UPDATE SET version = excluded.version, notice = excluded.notice
             WHERE excluded.version > tenant_notices.version",
        )
        .bind(tenant)
        .bind(kind)
        .bind(i(version))
        .bind(notice)
        .execute(&self.db.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn put_connection(
        &self,
        id: &[u8; 32],
        from: &UserId,
        to: &UserId,
        request: &[u8],
    ) -> Result<bool> {
        let from = from.as_str();
        let to = to.as_str();
        let id_hex = hex::encode(id);
        let id = id_hex.as_str();
        let r = sqlx::query(
            "INSERT INTO connections (id, from_user, to_user, request, created)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(from)
        .bind(to)
        .bind(request)
        .bind(i(now_ms()))
        .execute(&self.db.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn set_connection_answer(&self, id: &[u8; 32], answer: &[u8]) -> Result<bool> {
        let id_hex = hex::encode(id);
        let id = id_hex.as_str();
        let r = sqlx::query(
            "UPDATE connections SET answer = $1 WHERE id = $2 AND answer IS NULL AND removal IS NULL",
        )
        .bind(answer)
        .bind(id)
        .execute(&self.db.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn set_connection_removal(&self, id: &[u8; 32], removal: &[u8]) -> Result<bool> {
        let id_hex = hex::encode(id);
        let id = id_hex.as_str();
        let r =
            sqlx::query("UPDATE connections SET removal = $1 WHERE id = $2 AND removal IS NULL")
                .bind(removal)
                .bind(id)
                .execute(&self.db.writer)
                .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn get_connection(&self, id: &[u8; 32]) -> Result<Option<ConnectionRow>> {
        let id_hex = hex::encode(id);
        let id = id_hex.as_str();
        let r = sqlx::query("SELECT id, request, answer, removal FROM connections WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.db.readers)
            .await?;
        r.as_ref().map(connection_row).transpose()
    }

    async fn connections_of(&self, user: &UserId) -> Result<Vec<ConnectionRow>> {
        let user = user.as_str();
        let rows = sqlx::query(
            "SELECT id, request, answer, removal FROM connections
             WHERE from_user = $1 OR to_user = $2 ORDER BY created, id",
        )
        .bind(user)
        .bind(user)
        .fetch_all(&self.db.readers)
        .await?;
        rows.iter().map(connection_row).collect()
    }

    async fn tenant_notices(&self, kind: &str) -> Result<Vec<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT notice FROM tenant_notices WHERE kind = $1")
                .bind(kind)
                .fetch_all(&self.db.readers)
                .await?,
        )
    }

    async fn is_user_disabled(&self, user: &UserId) -> Result<bool> {
        let user = user.as_str();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM disabled_users WHERE user_id = $1")
            .bind(user)
            .fetch_one(&self.db.readers)
            .await?;
        Ok(n > 0)
    }

    async fn deny_list(&self) -> Result<(Vec<String>, Vec<String>)> {
        let devs = sqlx::query_scalar("SELECT device FROM devices WHERE revoked = 1")
            .fetch_all(&self.db.readers)
            .await?;
        let users = sqlx::query_scalar("SELECT user_id FROM disabled_users")
            .fetch_all(&self.db.readers)
            .await?;
        Ok((devs, users))
    }

    async fn rooms_of_user(&self, user: &UserId) -> Result<Vec<RoomRow>> {
        let user = user.as_str();
        let rows = sqlx::query(
            "SELECT r.room, r.seq, r.state FROM room_members m JOIN rooms r ON r.room = m.room
             WHERE m.user_id = $1 ORDER BY r.room",
        )
        .bind(user)
        .fetch_all(&self.db.readers)
        .await?;
        rows.iter().map(room_row).collect()
    }

    async fn insert_messages(&self, batch: &[NewMessage]) -> Result<Vec<Inserted>> {
        let mut tx = self.db.begin().await?;
        // Within a room, seq order must be commit order (a client resumes
        // after the last seq it saw): writers of one room queue on its lock,
        // taken in a fixed order so two batches cannot deadlock.
        let mut rooms: Vec<&str> = batch.iter().map(|m| m.room.as_str()).collect();
        rooms.sort_unstable();
        rooms.dedup();
        // Each room's newest seq before this batch: a message's `prev`
        // links it to the one before it in its room, so a node receiving
        // the room's events out of order can put them back in order.
        let mut heads: std::collections::HashMap<&str, u64> = Default::default();
        for r in rooms {
            self.db.lock_key(&mut tx, &format!("messages:{r}")).await?;
            let head: Option<i64> =
                sqlx::query_scalar("SELECT MAX(seq) FROM messages WHERE room = $1")
                    .bind(r)
                    .fetch_one(&mut *tx)
                    .await?;
            heads.insert(r, head.map(u).unwrap_or(0));
        }
        // Multi-row inserts: one statement (one round trip to the engine)
        // per `INSERT_ROWS` messages. A message id seen earlier in the
        // batch is a replay of it.
        let mut seen = std::collections::HashSet::with_capacity(batch.len());
        let fresh: Vec<usize> = (0..batch.len())
            .filter(|&k| seen.insert(batch[k].msg_id.as_str()))
            .collect();
        let mut seqs: std::collections::HashMap<String, u64> =
            std::collections::HashMap::with_capacity(fresh.len());
        for chunk in runs(&fresh, INSERT_ROWS) {
            let mut sql = Sql::insert(
                Backend::of(&tx),
                "INSERT INTO messages (room, msg_id, epoch, device, ts, header, ciphertext, sig)",
                8,
                chunk.len(),
            );
            sql.push(" ON CONFLICT (msg_id) DO NOTHING RETURNING msg_id, seq");
            let mut q = sqlx::query(sql.build());
            for &k in chunk {
                let m = &batch[k];
                q = q
                    .bind(&m.room)
                    .bind(&m.msg_id)
                    .bind(i(m.epoch))
                    .bind(&m.device)
                    .bind(i(m.ts))
                    .bind(&m.header)
                    .bind(&m.ciphertext)
                    .bind(&m.sig);
            }
            for row in q.fetch_all(&mut *tx).await? {
                seqs.insert(row.try_get("msg_id")?, u(row.try_get("seq")?));
            }
        }
        // `prev` follows seq order within each room, whatever order the
        // engine assigned the seqs in.
        let mut order: Vec<(u64, usize)> = fresh
            .iter()
            .filter_map(|&k| seqs.get(&batch[k].msg_id).map(|&seq| (seq, k)))
            .collect();
        order.sort_unstable();
        let mut out = vec![Inserted::Duplicate; batch.len()];
        for (seq, k) in order {
            let prev = heads.insert(batch[k].room.as_str(), seq).unwrap_or(0);
            out[k] = Inserted::Seq { seq, prev };
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn history(&self, room: &RoomId, before: u64, limit: u32) -> Result<Vec<MessageRow>> {
        let room_hex = room.to_hex();
        let room = room_hex.as_str();
        let rows = sqlx::query(
            "SELECT seq, header, ciphertext, sig FROM messages WHERE room = $1 AND seq < $2
             ORDER BY seq DESC LIMIT $3",
        )
        .bind(room)
        .bind(i(before))
        .bind(limit as i64)
        .fetch_all(&self.db.readers)
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

    async fn add_shredded(&self, room: &RoomId, notice: &[u8]) -> Result<()> {
        let room_hex = room.to_hex();
        let room = room_hex.as_str();
        sqlx::query(
            "INSERT INTO shredded_notices (room, notice) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(room)
        .bind(notice)
        .execute(&self.db.writer)
        .await?;
        Ok(())
    }

    async fn shredded_notices(&self, room: &RoomId) -> Result<Vec<Vec<u8>>> {
        let room_hex = room.to_hex();
        let room = room_hex.as_str();
        Ok(
            sqlx::query_scalar("SELECT notice FROM shredded_notices WHERE room = $1")
                .bind(room)
                .fetch_all(&self.db.readers)
                .await?,
        )
    }

    async fn put_blob(&self, b: &BlobRow) -> Result<()> {
        sqlx::query("INSERT INTO blobs (id, room, device, size) VALUES ($1, $2, $3, $4)")
            .bind(&b.id)
            .bind(&b.room)
            .bind(&b.device)
            .bind(i(b.size))
            .execute(&self.db.writer)
            .await
            .map_err(unique("blob id already used"))?;
        Ok(())
    }

    async fn get_blob(&self, id: &str) -> Result<Option<BlobRow>> {
        let r = sqlx::query("SELECT id, room, device, size FROM blobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.db.readers)
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
