//! The KM's store (its audit log tables: `audit.rs`, its directory:
//! `directory.rs`).

use super::*;
use crate::db::Role;
use crate::{KmDeviceRow, KmStore, KmUserRow};

/// The Key Manager's store (SQLite or PostgreSQL).
#[derive(Clone)]
pub struct SqlKmStore {
    pub(super) db: Db,
}

impl SqlKmStore {
    /// Open the database at `url` (`sqlite://…` or `postgres://…`),
    /// applying the KM's migrations.
    pub async fn open(url: &str) -> Result<Self> {
        Ok(SqlKmStore {
            db: Db::open(url, Role::Km).await?,
        })
    }
}

impl HasDb for SqlKmStore {
    fn db(&self) -> &Db {
        &self.db
    }
}

impl SqlRoomLog for SqlKmStore {
    const MEMBER_INDEX: bool = false;
}

impl sealed::SqlAudit for SqlKmStore {}

fn km_device(r: &AnyRow) -> Result<KmDeviceRow> {
    Ok(KmDeviceRow {
        device: r.try_get("device")?,
        user: r.try_get("user_id")?,
        cert: r.try_get("cert")?,
        status: r.try_get("status")?,
        issued_at: u(r.try_get("issued_at")?),
    })
}

/// (name, number, wrapped) of a `room_keys` row.
fn wrapped_row(r: &AnyRow) -> Result<(String, u64, Vec<u8>)> {
    Ok((
        r.try_get("room")?,
        u(r.try_get("epoch")?),
        r.try_get("wrapped")?,
    ))
}

fn km_user(r: &AnyRow) -> Result<KmUserRow> {
    Ok(KmUserRow {
        user: r.try_get("user_id")?,
        roles: r.try_get("roles")?,
        status: r.try_get("status")?,
    })
}

#[async_trait]
impl KmStore for SqlKmStore {
    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        meta_get(&self.db, key).await
    }

    async fn init_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        meta_init(&self.db, key, value).await
    }

    async fn meta_prefixed(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        if prefix.contains(['%', '_', '\\']) {
            return Err(StoreError::Backend(
                "a meta prefix holds no LIKE wildcard".into(),
            ));
        }
        let rows = sqlx::query("SELECT key, value FROM meta WHERE key LIKE $1 ORDER BY key")
            .bind(format!("{prefix}%"))
            .fetch_all(&self.db.readers)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("key")?, r.try_get("value")?)))
            .collect()
    }

    async fn upsert_user(&self, u: &KmUserRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO users (user_id, roles, status) VALUES ($1, $2, $3)
             ON CONFLICT (user_id) DO UPDATE SET roles = excluded.roles, status = excluded.status",
        )
        .bind(&u.user)
        .bind(&u.roles)
        .bind(&u.status)
        .execute(&self.db.writer)
        .await?;
        Ok(())
    }

    async fn get_user(&self, user: &UserId) -> Result<Option<KmUserRow>> {
        let user = user.as_str();
        let r = sqlx::query("SELECT * FROM users WHERE user_id = $1")
            .bind(user)
            .fetch_optional(&self.db.readers)
            .await?;
        r.as_ref().map(km_user).transpose()
    }

    async fn set_user_status(&self, user: &UserId, status: &str) -> Result<bool> {
        let user = user.as_str();
        let r = sqlx::query("UPDATE users SET status = $1 WHERE user_id = $2")
            .bind(status)
            .bind(user)
            .execute(&self.db.writer)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn list_users(&self) -> Result<Vec<KmUserRow>> {
        let rows = sqlx::query("SELECT * FROM users ORDER BY user_id")
            .fetch_all(&self.db.readers)
            .await?;
        rows.iter().map(km_user).collect()
    }

    async fn put_code(&self, code_hash: &[u8], user: &UserId, expires_at: u64) -> Result<()> {
        let user = user.as_str();
        let mut tx = self.db.begin().await?;
        // One live code per user: a new code replaces the old one.
        sqlx::query("DELETE FROM enrol_codes WHERE user_id = $1")
            .bind(user)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO enrol_codes (code_hash, user_id, expires_at) VALUES ($1, $2, $3)")
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
            "DELETE FROM enrol_codes WHERE code_hash = $1 RETURNING user_id, expires_at",
        )
        .bind(code_hash)
        .fetch_optional(&self.db.writer)
        .await?;
        r.map(|r| Ok((r.try_get("user_id")?, u(r.try_get("expires_at")?))))
            .transpose()
    }

    async fn code_failed(&self, user: &UserId, burn_at: u32) -> Result<crate::CodeTries> {
        let mut tx = self.db.begin().await?;
        let r = sqlx::query(
            "UPDATE enrol_codes SET failures = failures + 1 WHERE user_id = $1 RETURNING failures",
        )
        .bind(user.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = r else {
            tx.commit().await?;
            return Ok(crate::CodeTries::NoCode);
        };
        let tries = u32::try_from(r.try_get::<i64, _>("failures")?).unwrap_or(u32::MAX);
        let out = if tries >= burn_at {
            sqlx::query("DELETE FROM enrol_codes WHERE user_id = $1")
                .bind(user.as_str())
                .execute(&mut *tx)
                .await?;
            crate::CodeTries::Burned
        } else {
            crate::CodeTries::Counted(tries)
        };
        tx.commit().await?;
        Ok(out)
    }

    async fn put_device(&self, d: &KmDeviceRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO devices (device, user_id, cert, status, issued_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&d.device)
        .bind(&d.user)
        .bind(&d.cert)
        .bind(&d.status)
        .bind(i(d.issued_at))
        .execute(&self.db.writer)
        .await
        .map_err(unique("device already enrolled"))?;
        Ok(())
    }

    async fn get_device(&self, device: &DeviceId) -> Result<Option<KmDeviceRow>> {
        let device_hex = device.to_hex();
        let device = device_hex.as_str();
        let r = sqlx::query("SELECT * FROM devices WHERE device = $1")
            .bind(device)
            .fetch_optional(&self.db.readers)
            .await?;
        r.as_ref().map(km_device).transpose()
    }

    async fn devices_of_user(&self, user: &UserId) -> Result<Vec<KmDeviceRow>> {
        let user = user.as_str();
        let rows =
            sqlx::query("SELECT * FROM devices WHERE user_id = $1 ORDER BY issued_at, device")
                .bind(user)
                .fetch_all(&self.db.readers)
                .await?;
        rows.iter().map(km_device).collect()
    }

    async fn set_device_status(&self, device: &DeviceId, status: &str) -> Result<bool> {
        let device_hex = device.to_hex();
        let device = device_hex.as_str();
        let r = sqlx::query("UPDATE devices SET status = $1 WHERE device = $2")
            .bind(status)
            .bind(device)
            .execute(&self.db.writer)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn renew_device(&self, device: &DeviceId, cert: &[u8], issued_at: u64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE devices SET cert = $1, issued_at = $2
             WHERE device = $3 AND status = 'active'
               AND EXISTS (SELECT 1 FROM users WHERE users.user_id = devices.user_id AND users.status = 'active')",
        )
        .bind(cert)
        .bind(i(issued_at))
        .bind(device.to_hex())
        .execute(&self.db.writer)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn km_deny_list(&self) -> Result<(Vec<String>, Vec<String>)> {
        let devs = sqlx::query_scalar("SELECT device FROM devices WHERE status != 'active'")
            .fetch_all(&self.db.readers)
            .await?;
        let users = sqlx::query_scalar("SELECT user_id FROM users WHERE status != 'active'")
            .fetch_all(&self.db.readers)
            .await?;
        Ok((devs, users))
    }

    async fn get_room_key(&self, room: &str, epoch: u64) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT wrapped FROM room_keys WHERE room = $1 AND epoch = $2")
                .bind(room)
                .bind(i(epoch))
                .fetch_optional(&self.db.readers)
                .await?,
        )
    }

    async fn put_room_key(&self, room: &str, epoch: u64, wrapped: &[u8]) -> Result<Vec<u8>> {
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO room_keys (room, epoch, wrapped, created_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(room)
        .bind(i(epoch))
        .bind(wrapped)
        .bind(i(now_ms()))
        .execute(&mut *tx)
        .await?;
        let stored: Vec<u8> =
            sqlx::query_scalar("SELECT wrapped FROM room_keys WHERE room = $1 AND epoch = $2")
                .bind(room)
                .bind(i(epoch))
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn list_rooms(&self) -> Result<Vec<RoomRow>> {
        let rows = sqlx::query("SELECT room, seq, state FROM rooms ORDER BY room")
            .fetch_all(&self.db.readers)
            .await?;
        rows.iter().map(room_row).collect()
    }

    async fn room_keys_of(&self, room: &RoomId) -> Result<Vec<(u64, u64, bool)>> {
        let room_hex = room.to_hex();
        let room = room_hex.as_str();
        let rows = sqlx::query(
            "SELECT epoch, created_ms, CASE WHEN length(wrapped) = 0 THEN 1 ELSE 0 END AS shredded
             FROM room_keys WHERE room = $1 ORDER BY epoch",
        )
        .bind(room)
        .fetch_all(&self.db.readers)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    u(r.try_get("epoch")?),
                    u(r.try_get("created_ms")?),
                    r.try_get::<i64, _>("shredded")? != 0,
                ))
            })
            .collect()
    }

    async fn shred_room_key(&self, room: &RoomId, epoch: u64) -> Result<()> {
        let room_hex = room.to_hex();
        let room = room_hex.as_str();
        sqlx::query("UPDATE room_keys SET wrapped = $1 WHERE room = $2 AND epoch = $3")
            .bind(Vec::<u8>::new())
            .bind(room)
            .bind(i(epoch))
            .execute(&self.db.writer)
            .await?;
        Ok(())
    }

    async fn live_wrapped_keys(&self) -> Result<Vec<(String, u64, Vec<u8>)>> {
        let rows =
            sqlx::query("SELECT room, epoch, wrapped FROM room_keys WHERE length(wrapped) > 0")
                .fetch_all(&self.db.readers)
                .await?;
        rows.iter().map(wrapped_row).collect()
    }

    async fn wrapped_keys_below(
        &self,
        generation: u32,
        limit: u32,
    ) -> Result<Vec<(String, u64, Vec<u8>)>> {
        // A wrap begins with its generation, big-endian: bytes compare as numbers.
        let rows = sqlx::query(
            "SELECT room, epoch, wrapped FROM room_keys
             WHERE length(wrapped) > 0 AND substr(wrapped, 1, 4) < $1 LIMIT $2",
        )
        .bind(generation.to_be_bytes().to_vec())
        .bind(i64::from(limit))
        .fetch_all(&self.db.readers)
        .await?;
        rows.iter().map(wrapped_row).collect()
    }

    async fn count_wrapped_below(&self, generation: u32) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM room_keys
             WHERE length(wrapped) > 0 AND substr(wrapped, 1, 4) < $1",
        )
        .bind(generation.to_be_bytes().to_vec())
        .fetch_one(&self.db.readers)
        .await?;
        Ok(u(n))
    }

    async fn rewrap_keys(&self, keys: &[crate::RewrapRow]) -> Result<u64> {
        let mut tx = self.db.begin().await?;
        let mut n = 0;
        for (room, epoch, old, new) in keys {
            n += sqlx::query(
                "UPDATE room_keys SET wrapped = $1
                 WHERE room = $2 AND epoch = $3 AND wrapped = $4 AND length(wrapped) > 0",
            )
            .bind(new)
            .bind(room)
            .bind(i(*epoch))
            .bind(old)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }

    async fn km_scrub(&self) -> Result<()> {
        // The wrapped keys that were shredded, the nonces and codes used.
        self.db.scrub(&["room_keys", "enrol_codes", "nonces"]).await
    }

    async fn set_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        meta_set(&self.db, key, value).await
    }

    async fn put_case(&self, case: &str, version: u32, blob: &[u8]) -> Result<()> {
        sqlx::query(
            "INSERT INTO cases (case_id, version, blob) VALUES ($1, $2, $3)
             ON CONFLICT (case_id) DO UPDATE SET version = excluded.version, blob = excluded.blob",
        )
        .bind(case)
        .bind(version as i64)
        .bind(blob)
        .execute(&self.db.writer)
        .await?;
        Ok(())
    }

    async fn get_case(&self, case: &str) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT blob FROM cases WHERE case_id = $1")
                .bind(case)
                .fetch_optional(&self.db.readers)
                .await?,
        )
    }

    async fn list_cases(&self) -> Result<Vec<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT blob FROM cases ORDER BY case_id")
                .fetch_all(&self.db.readers)
                .await?,
        )
    }

    async fn put_approval(
        &self,
        case: &str,
        version: u32,
        custodian: &UserId,
        blob: &[u8],
    ) -> Result<()> {
        let custodian = custodian.as_str();
        sqlx::query(
            "INSERT INTO approvals (case_id, version, custodian, blob) VALUES ($1, $2, $3, $4)",
        )
        .bind(case)
        .bind(version as i64)
        .bind(custodian)
        .bind(blob)
        .execute(&self.db.writer)
        .await
        .map_err(unique("this custodian already approved this case"))?;
        Ok(())
    }

    async fn approvals(&self, case: &str, version: u32) -> Result<Vec<(String, Vec<u8>)>> {
        let rows = sqlx::query(
            "SELECT custodian, blob FROM approvals WHERE case_id = $1 AND version = $2 ORDER BY custodian",
        )
        .bind(case)
        .bind(version as i64)
        .fetch_all(&self.db.readers)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("custodian")?, r.try_get("blob")?)))
            .collect()
    }

    async fn init_escrow(
        &self,
        generation: u32,
        descriptor: &[u8],
        shares: &[(String, u8, Vec<u8>)],
    ) -> Result<()> {
        let mut tx = self.db.begin().await?;
        let r = sqlx::query(
            "INSERT INTO escrow_keys (generation, descriptor) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(i64::from(generation))
        .bind(descriptor)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Conflict(
                "this escrow generation is already registered",
            ));
        }
        for (custodian, number, share) in shares {
            sqlx::query(
                "INSERT INTO escrow_key_shares (generation, number, custodian, share)
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(i64::from(generation))
            .bind(i64::from(*number))
            .bind(custodian)
            .bind(share)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get_escrow(&self) -> Result<Option<Vec<u8>>> {
        Ok(sqlx::query_scalar(
            "SELECT descriptor FROM escrow_keys ORDER BY generation DESC LIMIT 1",
        )
        .fetch_optional(&self.db.readers)
        .await?)
    }

    async fn escrow_generations(&self) -> Result<Vec<(u32, Vec<u8>)>> {
        let rows =
            sqlx::query("SELECT generation, descriptor FROM escrow_keys ORDER BY generation")
                .fetch_all(&self.db.readers)
                .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64, _>("generation")? as u32,
                    r.try_get("descriptor")?,
                ))
            })
            .collect()
    }

    async fn escrow_shares_of(&self, custodian: &UserId) -> Result<Vec<(u32, u8, Vec<u8>)>> {
        let custodian = custodian.as_str();
        let rows = sqlx::query(
            "SELECT generation, number, share FROM escrow_key_shares WHERE custodian = $1
             ORDER BY generation, number",
        )
        .bind(custodian)
        .fetch_all(&self.db.readers)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64, _>("generation")? as u32,
                    r.try_get::<i64, _>("number")? as u8,
                    r.try_get("share")?,
                ))
            })
            .collect()
    }

    async fn retire_escrow(&self, generation: u32) -> Result<()> {
        let mut tx = self.db.begin().await?;
        sqlx::query("DELETE FROM escrow_key_shares WHERE generation = $1")
            .bind(i64::from(generation))
            .execute(&mut *tx)
            .await?;
        let r = sqlx::query("DELETE FROM escrow_keys WHERE generation = $1")
            .bind(i64::from(generation))
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Conflict("this escrow generation is not live"));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn use_nonce(
        &self,
        device: &str,
        nonce: &[u8],
        ts: u64,
        prune_before: u64,
    ) -> Result<bool> {
        let mut tx = self.db.begin().await?;
        sqlx::query("DELETE FROM nonces WHERE ts < $1")
            .bind(i(prune_before))
            .execute(&mut *tx)
            .await?;
        let r = sqlx::query(
            "INSERT INTO nonces (device, nonce, ts) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(device)
        .bind(nonce)
        .bind(i(ts))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }
}
